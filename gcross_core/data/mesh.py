"""Triangle meshes read from PLY files: coloured vertices, faces fanned into triangles, vertex normals."""
from __future__ import annotations

from pathlib import Path
from typing import Tuple, Union

import numpy as np

from gcross_core.data.ply import read_ply
from gcross_core.errors import InputError

PathLike = Union[str, Path]


def vertex_normals(vertices: np.ndarray,  # [V, 3] float
                   faces: np.ndarray,  # [F, 3] int vertex indices
                   ) -> np.ndarray:  # [V, 3] float32
    """Area-weighted vertex normals: the unnormalised face normal (cross product, length = 2 x area) is
    summed over the faces around each vertex, then normalised. Vertices on no face get zero."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices has shape {vertices.shape}, expected [V, 3]")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces has shape {faces.shape}, expected [F, 3] triangles")
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError(f"faces index vertices in [{faces.min()}, {faces.max()}], expected [0, {len(vertices)})")
    v0, v1, v2 = (vertices[faces[:, k]] for k in range(3))
    fn = np.cross(v1 - v0, v2 - v0)
    acc = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(acc, faces[:, k], fn)
    norm = np.linalg.norm(acc, axis=1, keepdims=True)
    return np.where(norm > 0, acc / np.maximum(norm, 1e-30), 0.0).astype(np.float32)


def triangulate(faces) -> np.ndarray:
    """Faces as [F, 3], fanning any polygon with more than 3 vertices."""
    if isinstance(faces, np.ndarray) and faces.ndim == 2:
        if faces.shape[1] == 3:
            return faces.astype(np.int64)
        faces = list(faces)
    tris = [(f[0], f[j], f[j + 1]) for f in faces for j in range(1, len(f) - 1)]
    return np.array(tris, dtype=np.int64).reshape(-1, 3)


def read_mesh(path: PathLike) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coord [V, 3] float32, color [V, 3] float32 0..255, faces [F, 3] int64) of a ScanNet mesh PLY."""
    ply = read_ply(path)
    if "vertex" not in ply:
        raise InputError(f"{path} has no vertex element")
    v = ply["vertex"]
    for k in ("x", "y", "z", "red", "green", "blue"):
        if k not in v:
            raise InputError(f"{path}: vertex element has no {k!r} property")
    coord = np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float32)
    color = np.stack([v["red"], v["green"], v["blue"]], 1).astype(np.float32)
    face = ply.get("face", {})
    idx = face.get("vertex_indices", face.get("vertex_index"))
    faces = triangulate(idx) if idx is not None and len(idx) else np.zeros((0, 3), np.int64)
    if faces.size and (faces.min() < 0 or faces.max() >= len(coord)):
        raise InputError(f"{path}: faces index vertices in [{faces.min()}, {faces.max()}], expected indices in "
                         f"[0, {len(coord)}) (the file has {len(coord)} vertices)")
    return coord, color, faces
