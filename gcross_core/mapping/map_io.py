"""Saving a fused, labelled voxel map to a folder and starting a map from one.

A saved map is one folder, written atomically (written in a temporary sibling folder and renamed into place, so
a reader sees either the previous map or the complete new one, and a failed save leaves the previous one)::

    map.ply     binary little-endian PLY, one vertex per voxel: x y z (float, metres, map frame),
                red green blue (uchar), label (int, -1 = never segmented), instance (int, -1 = none; only
                when the map has instance ids), confidence (float, fused probability of the label).
                Open3D, CloudCompare and MeshLab read it.
    map.json    voxel_size_m, map_frame, class_names, num_voxels, has_instance, format version.
    scene/      a scene folder (gcross_core.data.scene): coord, color, normal, segment20/segment200/segment
                (by the class names), instance (when present) .npy, plus confidence.npy [N],
                probability.npy [N, C] (fused class probabilities), count.npy [N] (points fused per voxel)
                and voxel_index.npy [N, 3] (integer voxel coordinates). training/* and map scoring read it
                like any other scene.

``load_map`` reads the folder back and ``restore_map`` puts it into a :class:`VoxelMap` of the same voxel
size and classes: fusion then continues on it as if its frames had been integrated by this process.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np

from gcross_core.data.scene import Scene, move_into_place, write_scene
from gcross_core.errors import InputError, reading
from gcross_core.mapping.fusion import VoxelMap
from gcross_core.mapping.voxel_keys import unpack_keys

PathLike = Union[str, Path]
MAP_FORMAT_VERSION = 1
PLY_FILE, META_FILE, SCENE_DIR = "map.ply", "map.json", "scene"
_EXTRAS = ("confidence", "probability", "count", "voxel_index")
T = TypeVar("T")


@dataclass(frozen=True)
class SavedMap:
    """A labelled voxel map as arrays, one row per voxel."""

    voxel_index: np.ndarray  # [N, 3] int64 integer voxel coordinates
    coord: np.ndarray  # [N, 3] float32 metres, map frame (mean of the points fused into the voxel)
    color: np.ndarray  # [N, 3] uint8 RGB
    normal: np.ndarray  # [N, 3] float32 unit normals, zero where unknown
    count: np.ndarray  # [N] int64 points fused into each voxel
    probability: np.ndarray  # [N, C] float32 fused class probabilities, zero rows where never segmented
    class_names: Tuple[str, ...]
    voxel_size_m: float
    map_frame: str = "map"
    instance: Optional[np.ndarray] = None  # [N] int64 instance id, -1 = none

    def __len__(self) -> int:
        return len(self.coord)

    @property
    def label(self) -> np.ndarray:  # [N] int64, -1 = never segmented
        segmented = self.probability.sum(axis=1) > 0
        return np.where(segmented, self.probability.argmax(axis=1), -1).astype(np.int64)

    @property
    def confidence(self) -> np.ndarray:  # [N] float32, 0 where never segmented
        return self.probability.max(axis=1, initial=0).astype(np.float32)

    @classmethod
    def from_voxel_map(cls, vmap: VoxelMap, class_names: Sequence[str], map_frame: str = "map",
                       instance: Optional[np.ndarray] = None,
                       instance_of: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> "SavedMap":
        """The content of ``vmap`` now (one consistent snapshot); ``instance``: [N] ids of its voxels, if any,
        or ``instance_of``: voxel keys [N] -> their ids (-1 = none), applied to the snapshot's keys."""
        snap, probability = vmap.export()
        if instance_of is not None:
            instance = instance_of(snap.keys)
        if instance is not None and np.shape(instance) != (len(snap),):
            raise ValueError(f"instance has shape {np.shape(instance)}, expected ({len(snap)},)")
        return cls(voxel_index=unpack_keys(snap.keys), coord=snap.coords.astype(np.float32),
                   color=np.clip(np.rint(snap.colors), 0, 255).astype(np.uint8),
                   normal=snap.normals.astype(np.float32), count=snap.counts.astype(np.int64),
                   probability=probability.astype(np.float32), class_names=tuple(class_names),
                   voxel_size_m=vmap.voxel_size_m, map_frame=map_frame,
                   instance=None if instance is None else np.asarray(instance, np.int64))


def write_labelled_ply(path: PathLike,
                       coord: np.ndarray,  # [N, 3] float metres
                       color: np.ndarray,  # [N, 3] uint8 RGB
                       label: np.ndarray,  # [N] int, -1 = unlabelled
                       confidence: np.ndarray,  # [N] float
                       instance: Optional[np.ndarray] = None,  # [N] int, -1 = none
                       ) -> Path:
    """A binary little-endian PLY point cloud with per-vertex label, [instance] and confidence."""
    n = len(coord)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
              ("label", "<i4")]
    if instance is not None:
        fields.append(("instance", "<i4"))
    fields.append(("confidence", "<f4"))
    rows = np.empty(n, dtype=np.dtype(fields))
    coord = np.asarray(coord)
    rows["x"], rows["y"], rows["z"] = coord[:, 0], coord[:, 1], coord[:, 2]
    color = np.asarray(color)
    rows["red"], rows["green"], rows["blue"] = color[:, 0], color[:, 1], color[:, 2]
    rows["label"] = label
    if instance is not None:
        rows["instance"] = instance
    rows["confidence"] = confidence
    ply_types = {"<f4": "float", "u1": "uchar", "<i4": "int"}
    header = ["ply", "format binary_little_endian 1.0", "comment gcross labelled voxel map",
              f"element vertex {n}"] + [f"property {ply_types[t]} {name}" for name, t in fields] + ["end_header"]
    path = Path(path)
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(rows.tobytes())
    return path


def save_map(out_dir: PathLike, saved: SavedMap) -> Path:
    """Write ``saved`` to ``out_dir`` (layout in the module docstring), replacing it if it exists.

    Raises OSError (no permission, disk full, a file at ``out_dir``, ...) with nothing left behind but the
    previous map, as it was.
    """
    out_dir = Path(out_dir).expanduser().absolute()
    move_into_place(out_dir, lambda folder: _write_map(folder, saved, out_dir.name))
    return out_dir


def _write_map(folder: Path, saved: SavedMap, name: str) -> None:
    label, confidence = saved.label, saved.confidence
    write_labelled_ply(folder / PLY_FILE, saved.coord, saved.color, label, confidence, saved.instance)
    scene = Scene(name, saved.coord, saved.color, saved.normal, segment=label, instance=saved.instance,
                  class_names=saved.class_names)
    write_scene(scene, folder / SCENE_DIR, extra_arrays={
        "confidence": confidence, "probability": saved.probability, "count": saved.count,
        "voxel_index": saved.voxel_index})
    meta = {"format_version": MAP_FORMAT_VERSION, "voxel_size_m": saved.voxel_size_m,
            "map_frame": saved.map_frame, "class_names": list(saved.class_names), "num_voxels": len(saved),
            "has_instance": saved.instance is not None}
    (folder / META_FILE).write_text(json.dumps(meta, indent=1))


def _read_map_file(file: Path, what: str, parse: Callable[[Path], T]) -> T:
    """``parse(file)``; InputError naming ``file`` when it is damaged (truncated, garbled, other content)."""
    with reading(file, what):
        return parse(file)


def _parse_meta(file: Path) -> Tuple[float, Tuple[str, ...], str]:
    meta = json.loads(file.read_text())
    return float(meta["voxel_size_m"]), tuple(meta["class_names"]), str(meta.get("map_frame", "map"))


def _parse_npy(file: Path) -> np.ndarray:
    array = np.load(file, allow_pickle=False)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"its values are {array.dtype}, expected numbers")
    return array


def load_map(path: PathLike) -> SavedMap:
    """Read a folder written by :func:`save_map`; InputError naming the file when it is not one.

    Reads map.json and the scene's arrays; map.ply and the scene's segment/class-name files are for other
    readers and are not read here.
    """
    path = Path(path).expanduser()
    meta_file, scene_dir = path / META_FILE, path / SCENE_DIR
    if not meta_file.is_file() or not scene_dir.is_dir():
        raise InputError(f"map folder {path} lacks {META_FILE} or {SCENE_DIR}/ (expected a folder written by "
                         "save_map)")
    voxel_size_m, class_names, map_frame = _read_map_file(meta_file, "a map description", _parse_meta)
    names = ("coord", "color", "normal") + _EXTRAS
    if (scene_dir / "instance.npy").is_file():
        names += ("instance",)
    arrays = {}
    for name in names:
        file = scene_dir / f"{name}.npy"
        if not file.is_file():
            raise InputError(f"map folder {path} lacks {SCENE_DIR}/{name}.npy")
        arrays[name] = _read_map_file(file, "a complete .npy array of numbers", _parse_npy)
    n = len(arrays["coord"])
    expected = {"coord": (n, 3), "color": (n, 3), "normal": (n, 3), "confidence": (n,),
                "probability": (n, len(class_names)), "count": (n,), "voxel_index": (n, 3), "instance": (n,)}
    for name, array in arrays.items():
        if array.shape != expected[name]:
            raise InputError(f"{scene_dir / name}.npy has shape {array.shape}, expected {expected[name]}")
    instance = arrays.get("instance")
    return SavedMap(voxel_index=arrays["voxel_index"].astype(np.int64), coord=arrays["coord"].astype(np.float32),
                    color=arrays["color"].astype(np.uint8), normal=arrays["normal"].astype(np.float32),
                    count=arrays["count"].astype(np.int64), probability=arrays["probability"].astype(np.float32),
                    class_names=class_names, voxel_size_m=voxel_size_m, map_frame=map_frame,
                    instance=None if instance is None else instance.astype(np.int64))


def restore_map(vmap: VoxelMap, saved: SavedMap, class_names: Sequence[str], source: str = "the saved map") -> None:
    """Replace ``vmap``'s content with ``saved``; InputError when voxel size or classes differ."""
    if not np.isclose(saved.voxel_size_m, vmap.voxel_size_m, rtol=1e-6, atol=0):
        raise InputError(f"{source} was saved with voxel_size_m={saved.voxel_size_m:g}, this map uses "
                         f"{vmap.voxel_size_m:g}: set voxel_size_m to {saved.voxel_size_m:g} to continue it")
    if tuple(class_names) != tuple(saved.class_names):
        raise InputError(f"{source} was labelled with classes {list(saved.class_names)}, the segmenter has "
                         f"{list(class_names)}")
    if len(saved) > vmap.max_voxels:
        raise InputError(f"{source} holds {len(saved)} voxels, more than max_voxels={vmap.max_voxels}")
    vmap.restore(saved.voxel_index, saved.coord, saved.color.astype(np.float32), saved.normal,
                 np.maximum(saved.count, 1), saved.probability)
