"""Readers for the official ScanNet v2 release: PLY meshes, ``.sens`` RGB-D streams and annotation files,
the conversion of one scan into a scene folder, and of a whole release (``training/prepare_scannet.py`` is
its command line).

Per scan ``scans/<scene>/``:
  ``<scene>_vh_clean_2.ply``                 mesh: vertex x y z red green blue (alpha), faces
  ``<scene>_vh_clean_2.labels.ply``          same vertices with an NYU40 ``label`` per vertex
  ``<scene>_vh_clean_2.0.010000.segs.json``  ``segIndices``: over-segment id per vertex
  ``<scene>.aggregation.json``               ``segGroups``: objects = (objectId, raw label, segment ids)
  ``<scene>.sens``                           RGB-D frames with poses (layout in :class:`SensFile`)
and ``scannetv2-labels.combined.tsv`` mapping each raw label to an NYU40 id and a ScanNet label id.

Labels follow Pointcept's preparation: segment20 and segment200 come from the aggregation (raw label ->
tsv ``nyu40id`` -> ScanNet20 index, raw label -> tsv ``id`` -> ScanNet200 index), instance is the
object id; vertices in no annotated object get -1. Scans without an aggregation but with a labels PLY get
segment20 from its NYU40 labels; test scans get none.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import struct
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from tqdm import tqdm

from gcross_core.geometry import is_valid_pose
from gcross_core.data.classes import SCANNET20_CLASSES, nyu40_to_scannet20, scannet_id_to_scannet200
from gcross_core.data.frames import Frame, FrameSet
from gcross_core.data.scene import Scene, write_scene
from gcross_core.errors import InputError

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

# ----------------------------------------------------------------------------------------------------
# PLY

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


@dataclass
class _PlyElement:
    name: str
    count: int
    props: List[Tuple[str, str, Optional[str]]]  # (name, item type, list count type or None)


def _parse_ply_header(f, path) -> Tuple[str, List[_PlyElement]]:
    if f.readline().strip() != b"ply":
        raise ValueError(f"{path} is not a PLY file (first line is not 'ply')")
    fmt, elements = None, []
    while True:
        line = f.readline()
        if not line:
            raise ValueError(f"{path}: PLY header has no end_header line")
        tok = line.decode("ascii", "replace").split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "end_header":
            break
        if tok[0] == "format":
            fmt = tok[1]
        elif tok[0] == "element":
            elements.append(_PlyElement(tok[1], int(tok[2]), []))
        elif tok[0] == "property":
            if not elements:
                raise ValueError(f"{path}: PLY property before any element")
            if tok[1] == "list":
                elements[-1].props.append((tok[4], _ply_type(tok[3], path), _ply_type(tok[2], path)))
            else:
                elements[-1].props.append((tok[2], _ply_type(tok[1], path), None))
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise ValueError(f"{path}: unsupported PLY format {fmt!r}")
    return fmt, elements


def _ply_type(name: str, path) -> str:
    if name not in _PLY_TYPES:
        raise ValueError(f"{path}: unknown PLY type {name!r}")
    return _PLY_TYPES[name]


def _read_binary_element(buf: memoryview, pos: int, el: _PlyElement, endian: str, path):
    has_list = any(p[2] is not None for p in el.props)
    if not has_list:
        dtype = np.dtype([(n, endian + t) for n, t, _ in el.props])
        end = pos + dtype.itemsize * el.count
        if end > len(buf):
            raise ValueError(f"{path} is truncated: element {el.name} needs {end - pos} bytes, {len(buf) - pos} left")
        arr = np.frombuffer(buf[pos:end], dtype=dtype, count=el.count)
        return {n: arr[n].astype(arr[n].dtype.newbyteorder("=")) for n, _, _ in el.props}, end
    # Fast path: every list has the length of the first one (triangle meshes); verified below.
    fixed = []
    probe = pos
    for n, t, ct in el.props:
        if ct is None:
            fixed.append((n, endian + t))
            probe += np.dtype(t).itemsize
        else:
            if probe + np.dtype(ct).itemsize > len(buf):
                raise ValueError(f"{path} is truncated in element {el.name}")
            k = int(np.frombuffer(buf[probe:probe + np.dtype(ct).itemsize], dtype=endian + ct)[0])
            fixed += [(n + "__count", endian + ct), (n, endian + t, (k,))]
            probe += np.dtype(ct).itemsize + k * np.dtype(t).itemsize
    dtype = np.dtype(fixed)
    end = pos + dtype.itemsize * el.count
    if el.count == 0:
        return {n: np.zeros((0, 0)) for n, _, _ in el.props}, pos
    if end <= len(buf):
        arr = np.frombuffer(buf[pos:end], dtype=dtype, count=el.count)
        if all(np.all(arr[n + "__count"] == arr.dtype[n].shape[0]) for n, _, ct in el.props if ct is not None):
            return {n: np.ascontiguousarray(arr[n]).astype(arr.dtype[n].base.newbyteorder("="))
                    for n, _, _ in el.props}, end
    # Slow path: mixed list lengths (e.g. quads and triangles).
    out: Dict[str, list] = {n: [] for n, _, _ in el.props}
    for _ in range(el.count):
        for n, t, ct in el.props:
            if ct is None:
                size = np.dtype(t).itemsize
                if pos + size > len(buf):
                    raise ValueError(f"{path} is truncated in element {el.name}")
                out[n].append(np.frombuffer(buf[pos:pos + size], dtype=endian + t)[0])
                pos += size
            else:
                cs = np.dtype(ct).itemsize
                if pos + cs > len(buf):
                    raise ValueError(f"{path} is truncated in element {el.name}")
                k = int(np.frombuffer(buf[pos:pos + cs], dtype=endian + ct)[0])
                pos += cs
                size = k * np.dtype(t).itemsize
                if pos + size > len(buf):
                    raise ValueError(f"{path} is truncated in element {el.name}")
                out[n].append(np.frombuffer(buf[pos:pos + size], dtype=endian + t).astype(t))
                pos += size
    return {n: (np.array(v) if ct is None else v) for (n, _, ct), v in zip(el.props, out.values())}, pos


def read_ply(path: PathLike) -> Dict[str, Dict[str, np.ndarray]]:
    """{element: {property: array}} of a binary (either endianness) or ASCII PLY file.

    Scalar properties give [count] arrays; list properties give [count, k] arrays when every list has k
    items (triangle faces) and a list of arrays otherwise.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PLY file {path} is missing")
    with open(path, "rb") as f:
        fmt, elements = _parse_ply_header(f, path)
        body = f.read()
    out = {}
    if fmt == "ascii":
        tokens = body.split()
        pos = 0
        for el in elements:
            cols: Dict[str, list] = {n: [] for n, _, _ in el.props}
            for _ in range(el.count):
                for n, t, ct in el.props:
                    if pos >= len(tokens):
                        raise ValueError(f"{path} is truncated in element {el.name}")
                    if ct is None:
                        cols[n].append(float(tokens[pos]))
                        pos += 1
                    else:
                        k = int(tokens[pos])
                        cols[n].append([float(x) for x in tokens[pos + 1:pos + 1 + k]])
                        pos += 1 + k
            res = {}
            for n, t, ct in el.props:
                v = cols[n]
                if ct is not None and len({len(x) for x in v}) > 1:
                    res[n] = [np.array(x, dtype=t) for x in v]
                else:
                    res[n] = np.array(v, dtype=t)
            out[el.name] = res
        return out
    endian = "<" if fmt == "binary_little_endian" else ">"
    buf = memoryview(body)
    pos = 0
    for el in elements:
        out[el.name], pos = _read_binary_element(buf, pos, el, endian, path)
    return out


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
        raise ValueError(f"{path} has no vertex element")
    v = ply["vertex"]
    for k in ("x", "y", "z", "red", "green", "blue"):
        if k not in v:
            raise ValueError(f"{path}: vertex element has no {k!r} property")
    coord = np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float32)
    color = np.stack([v["red"], v["green"], v["blue"]], 1).astype(np.float32)
    face = ply.get("face", {})
    idx = face.get("vertex_indices", face.get("vertex_index"))
    faces = triangulate(idx) if idx is not None and len(idx) else np.zeros((0, 3), np.int64)
    return coord, color, faces


# ----------------------------------------------------------------------------------------------------
# annotations

@dataclass(frozen=True)
class LabelMap:
    """raw category -> (NYU40 id, ScanNet label id) from scannetv2-labels.combined.tsv."""

    nyu40: Dict[str, int]
    scannet_id: Dict[str, int]

    @classmethod
    def from_tsv(cls, path: PathLike) -> "LabelMap":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"label map {path} is missing (scannetv2-labels.combined.tsv)")
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows or not {"raw_category", "id", "nyu40id"} <= set(rows[0]):
            raise ValueError(f"{path}: expected a tab-separated table with columns raw_category, id, nyu40id")
        nyu40, sid = {}, {}
        for r in rows:
            raw = (r["raw_category"] or "").strip()
            if not raw:
                continue
            nyu40[raw] = int(r["nyu40id"]) if (r["nyu40id"] or "").strip() else 0
            sid[raw] = int(r["id"]) if (r["id"] or "").strip() else 0
        return cls(nyu40, sid)


def read_json(path: PathLike, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} is missing")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{what} {path} is not valid JSON ({e})") from None


def labels_from_aggregation(seg_indices: np.ndarray,  # [V] over-segment id per vertex
                            seg_groups: List[dict], label_map: LabelMap
                            ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(segment20 [V], segment200 [V], instance [V]) int64, -1 where no annotated object covers a vertex."""
    n = len(seg_indices)
    nyu40 = np.zeros(n, dtype=np.int64)
    sid = np.zeros(n, dtype=np.int64)
    instance = np.full(n, -1, dtype=np.int64)
    order = np.argsort(seg_indices, kind="stable")
    sorted_segs = seg_indices[order]
    unknown = set()
    for g in seg_groups:
        segs = np.asarray(g.get("segments", []), dtype=np.int64)
        lo = np.searchsorted(sorted_segs, segs, "left")
        hi = np.searchsorted(sorted_segs, segs, "right")
        pts = order[np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)])] if len(segs) else np.zeros(0, int)
        raw = str(g.get("label", "")).strip()
        if raw not in label_map.nyu40:
            unknown.add(raw)
        nyu40[pts] = label_map.nyu40.get(raw, 0)
        sid[pts] = label_map.scannet_id.get(raw, 0)
        instance[pts] = int(g.get("objectId", g.get("id", -1)))
    if unknown:
        log.debug("raw labels not in the label map (ignored): %s", sorted(unknown))
    return nyu40_to_scannet20(nyu40), scannet_id_to_scannet200(sid), instance


# ----------------------------------------------------------------------------------------------------
# .sens

COLOR_COMPRESSION = {-1: "unknown", 0: "raw", 1: "png", 2: "jpeg"}
DEPTH_COMPRESSION = {-1: "unknown", 0: "raw_ushort", 1: "zlib_ushort", 2: "occi_ushort"}
_FRAME_HEADER = struct.Struct("<16f4Q")  # camera_to_world, timestamp_color, timestamp_depth, color/depth sizes


@dataclass(frozen=True)
class SensHeader:
    version: int
    sensor_name: str
    intrinsic_color: np.ndarray  # [4, 4]
    extrinsic_color: np.ndarray  # [4, 4]
    intrinsic_depth: np.ndarray  # [4, 4]
    extrinsic_depth: np.ndarray  # [4, 4]
    color_compression: int
    depth_compression: int
    color_width: int
    color_height: int
    depth_width: int
    depth_height: int
    depth_shift: float  # raw depth / depth_shift = metres (1000 for ScanNet)
    num_frames: int


class SensFile(FrameSet):
    """Frames of a ScanNet ``.sens`` file (version 4), decoded on demand.

    Layout, little-endian: version u32; sensor-name length u64 and bytes; intrinsic_color,
    extrinsic_color, intrinsic_depth, extrinsic_depth (4x4 f32 each); color and depth compression types
    (i32 each); color width, height, depth width, height (u32 each); depth_shift f32; frame count u64;
    then per frame camera_to_world (4x4 f32), color and depth timestamps (u64), color and depth byte
    counts (u64), the color bytes (JPEG for ScanNet) and the depth bytes (zlib-compressed uint16).

    Opening scans the frame headers (seeking over the images), so a truncated file fails here. Frames
    with a non-finite or non-rigid pose are skipped and counted.
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f".sens file {self.path} is missing")
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            self.header = self._read_header(f)
            h = self.header
            poses, where = [], []
            for k in range(h.num_frames):
                raw = f.read(_FRAME_HEADER.size)
                if len(raw) < _FRAME_HEADER.size:
                    raise ValueError(f"{self.path} is truncated: frame {k} of {h.num_frames} has no header")
                vals = _FRAME_HEADER.unpack(raw)
                color_bytes, depth_bytes = vals[18], vals[19]
                start = f.tell()
                if start + color_bytes + depth_bytes > size:
                    raise ValueError(f"{self.path} is truncated: frame {k} of {h.num_frames} needs "
                                     f"{color_bytes + depth_bytes} bytes, {size - start} left")
                poses.append(np.array(vals[:16], dtype=np.float64).reshape(4, 4))
                where.append((start, color_bytes, depth_bytes))
                f.seek(color_bytes + depth_bytes, 1)
        valid = [k for k, T in enumerate(poses) if is_valid_pose(T)]
        if len(valid) < len(poses):
            log.info("%s: skipped %d of %d frames with invalid poses", self.path, len(poses) - len(valid), len(poses))
        super().__init__([str(k) for k in valid], len(poses) - len(valid))
        self._poses = [poses[k] for k in valid]
        self._where = [where[k] for k in valid]
        self.K_color = h.intrinsic_color[:3, :3].copy()
        self.K_depth = h.intrinsic_depth[:3, :3].copy()

    def _read_header(self, f) -> SensHeader:
        def take(fmt):
            s = struct.Struct("<" + fmt)
            raw = f.read(s.size)
            if len(raw) < s.size:
                raise ValueError(f"{self.path} is truncated inside its header")
            return s.unpack(raw)

        (version,) = take("I")
        if version != 4:
            raise ValueError(f"{self.path}: .sens version {version}, expected 4")
        (name_len,) = take("Q")
        if name_len > 4096:
            raise ValueError(f"{self.path}: sensor name of {name_len} bytes, expected a short string (corrupt header?)")
        name = f.read(name_len).decode("utf-8", "replace")
        mats = [np.array(take("16f"), dtype=np.float64).reshape(4, 4) for _ in range(4)]
        color_comp, depth_comp = take("ii")
        cw, ch, dw, dh = take("4I")
        (shift,) = take("f")
        (num_frames,) = take("Q")
        if color_comp not in COLOR_COMPRESSION or depth_comp not in DEPTH_COMPRESSION:
            raise ValueError(f"{self.path}: unknown compression types color={color_comp} depth={depth_comp}")
        if depth_comp == 2:
            raise ValueError(f"{self.path}: depth compression occi_ushort is not supported")
        if not (cw and ch and dw and dh) or not shift > 0:
            raise ValueError(f"{self.path}: image sizes {cw}x{ch} / {dw}x{dh} and depth_shift {shift} must be > 0")
        return SensHeader(version, name, *mats, color_comp, depth_comp, cw, ch, dw, dh, float(shift), num_frames)

    def cam_to_world(self, i: int) -> np.ndarray:
        return self._poses[i].copy()

    def _load(self, i: int) -> Frame:
        h = self.header
        start, nc, nd = self._where[i]
        with open(self.path, "rb") as f:
            f.seek(start)
            color_raw = f.read(nc)
            depth_raw = f.read(nd)
        fid = self.frame_ids[i]
        if h.color_compression == 0:
            if len(color_raw) != h.color_width * h.color_height * 3:
                raise ValueError(f"{self.path} frame {fid}: raw color has {len(color_raw)} bytes, expected "
                                 f"{h.color_width}x{h.color_height}x3")
            color = np.frombuffer(color_raw, np.uint8).reshape(h.color_height, h.color_width, 3).copy()
        else:
            try:
                with Image.open(io.BytesIO(color_raw)) as im:
                    color = np.asarray(im.convert("RGB"))
            except OSError as e:
                raise ValueError(f"{self.path} frame {fid}: color image does not decode ({e})") from None
        if color.shape[:2] != (h.color_height, h.color_width):
            raise ValueError(f"{self.path} frame {fid}: color image is {color.shape[1]}x{color.shape[0]}, the header "
                             f"says {h.color_width}x{h.color_height}")
        if h.depth_compression == 1:
            try:
                depth_raw = zlib.decompress(depth_raw)
            except zlib.error as e:
                raise ValueError(f"{self.path} frame {fid}: depth does not decompress ({e})") from None
        if len(depth_raw) != h.depth_width * h.depth_height * 2:
            raise ValueError(f"{self.path} frame {fid}: depth has {len(depth_raw)} bytes, expected "
                             f"{h.depth_width}x{h.depth_height} uint16 = {h.depth_width * h.depth_height * 2}")
        depth = np.frombuffer(depth_raw, dtype="<u2").reshape(h.depth_height, h.depth_width)
        depth_m = (depth.astype(np.float32) / np.float32(h.depth_shift))
        return Frame(color=color, depth_m=depth_m, K_color=self.K_color, K_depth=self.K_depth,
                     cam_to_world=self._poses[i].copy(), frame_id=fid)


# ----------------------------------------------------------------------------------------------------
# one scan -> Scene

@dataclass(frozen=True)
class ScanNetPrepConfig:
    frame_every: int = 10  # keep every k-th .sens frame: at 30 Hz neighbouring frames are near duplicates
    frame_width: int = 640  # output frame size; 640x480 is ScanNet's depth grid, so depth is not resampled
    frame_height: int = 480
    frames: bool = True  # decode the .sens at all


def scan_files(scan_dir: PathLike) -> Dict[str, Path]:
    scan_dir = Path(scan_dir)
    s = scan_dir.name
    return {
        "mesh": scan_dir / f"{s}_vh_clean_2.ply",
        "labels": scan_dir / f"{s}_vh_clean_2.labels.ply",
        "segs": scan_dir / f"{s}_vh_clean_2.0.010000.segs.json",
        "aggregation": scan_dir / f"{s}.aggregation.json",
        "sens": scan_dir / f"{s}.sens",
    }


def load_scannet_scan(scan_dir: PathLike, label_map: Optional[LabelMap],
                      cfg: ScanNetPrepConfig = ScanNetPrepConfig()) -> Tuple[Scene, Dict[str, np.ndarray]]:
    """One ScanNet scan -> (Scene with segment20 labels and lazily decoded frames, extra arrays such as
    segment200) ready for ``write_scene``."""
    files = scan_files(scan_dir)
    name = Path(scan_dir).name
    coord, color, faces = read_mesh(files["mesh"])
    normal = vertex_normals(coord, faces)
    n = len(coord)
    segment = instance = None
    extra: Dict[str, np.ndarray] = {}
    if files["aggregation"].is_file() or files["segs"].is_file():
        if label_map is None:
            raise ValueError(f"{name}: annotations present but no label map (scannetv2-labels.combined.tsv) given")
        seg_indices = np.asarray(read_json(files["segs"], "over-segmentation")["segIndices"], dtype=np.int64)
        if len(seg_indices) != n:
            raise ValueError(f"{files['segs']} has {len(seg_indices)} segIndices but the mesh has {n} vertices")
        groups = read_json(files["aggregation"], "aggregation").get("segGroups")
        if groups is None:
            raise ValueError(f"{files['aggregation']} has no segGroups")
        segment, seg200, instance = labels_from_aggregation(seg_indices, groups, label_map)
        extra["segment200"] = seg200
    if files["labels"].is_file():
        lv = read_ply(files["labels"]).get("vertex", {})
        if "label" not in lv or len(lv["label"]) != n:
            raise ValueError(f"{files['labels']} must hold a 'label' per vertex ({n} vertices)")
        seg20_ply = nyu40_to_scannet20(lv["label"])
        if segment is None:
            segment = seg20_ply
        else:
            disagree = float(np.mean(seg20_ply != segment)) if n else 0.0
            if disagree > 0.01:
                log.warning("%s: labels PLY and aggregation disagree on %.1f%% of vertices (aggregation used)",
                            name, 100 * disagree)
    frames = None
    if cfg.frames:
        if cfg.frame_every < 1:
            raise ValueError(f"frame_every must be >= 1, got {cfg.frame_every}")
        sens = SensFile(files["sens"])
        frames = sens.subset(range(0, len(sens), cfg.frame_every)).resized(cfg.frame_width, cfg.frame_height)
    scene = Scene(name, coord, color, normal, segment, instance, frames,
                  class_names=SCANNET20_CLASSES if segment is not None else None)
    return scene, extra


def prepare_scan(scan_dir: str, out_dir: str, tsv: Optional[str], cfg: dict, color_format: str = "jpg",
                 overwrite: bool = False) -> Tuple[str, str, str, float]:
    """Convert one scan into a scene folder (atomically, see ``write_scene``); for process pools.

    Returns (scene name, "done" | "failed", message, seconds) and never raises: one corrupt scan must not
    stop a conversion of hundreds.
    """
    t0 = time.perf_counter()
    name = Path(scan_dir).name
    try:
        label_map = LabelMap.from_tsv(tsv) if tsv else None
        scene, extra = load_scannet_scan(scan_dir, label_map, ScanNetPrepConfig(**cfg))
        write_scene(scene, out_dir, extra_arrays=extra, color_format=color_format, overwrite=overwrite)
        n_frames = 0 if scene.frames is None else len(scene.frames)
        skipped = 0 if scene.frames is None else scene.frames.skipped_frames
        msg = f"{scene.num_points} points, {n_frames} frames written, {skipped} frames with invalid poses skipped"
        return name, "done", msg, time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - reported by the caller
        return name, "failed", f"{type(e).__name__}: {e}", time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------------
# the whole release -> scene folders

SPLITS = ("train", "val", "test")


def find_scans(root: PathLike) -> Dict[str, Path]:
    """scene name -> scan folder, for every ``scans/`` and ``scans_test/`` folder holding its mesh."""
    scans = {}
    for sub in ("scans", "scans_test"):
        d = Path(root) / sub
        if d.is_dir():
            for p in sorted(d.iterdir()):
                if p.is_dir() and (p / f"{p.name}_vh_clean_2.ply").is_file():
                    scans[p.name] = p
    return scans


def read_splits(splits_dir: PathLike) -> Dict[str, str]:
    """scene name -> split, from whichever split lists exist."""
    out = {}
    for split in SPLITS:
        f = Path(splits_dir) / f"scannetv2_{split}.txt"
        if f.is_file():
            for line in f.read_text().split():
                out[line.strip()] = split
    return out


def remove_stale_temporaries(out_root: PathLike) -> int:
    """Delete temporary folders a killed run left behind (``.<scene>.tmp-*`` / ``.<scene>.old-*``)."""
    out_root = Path(out_root)
    n = 0
    for parent in [out_root] + [out_root / s for s in SPLITS]:
        if parent.is_dir():
            for p in parent.glob(".*.tmp-*"):
                shutil.rmtree(p, ignore_errors=True)
                n += 1
            for p in parent.glob(".*.old-*"):
                shutil.rmtree(p, ignore_errors=True)
                n += 1
    return n


def prepare_scannet(root: PathLike, out: PathLike, tsv: Optional[PathLike] = None,
                    splits_dir: Optional[PathLike] = None, scenes: Optional[Sequence[str]] = None,
                    cfg: ScanNetPrepConfig = ScanNetPrepConfig(), color_format: str = "jpg",
                    overwrite: bool = False, workers: int = 2, progress: bool = True) -> List[str]:
    """Convert the scans under ``root`` into scene folders under ``out``; returns the scenes that failed.

    ``tsv`` defaults to ``<root>/scannetv2-labels.combined.tsv`` and ``splits_dir`` to ``root``. With split
    lists, scenes go to ``<out>/<split>/<scene>`` (scenes in no list are skipped), otherwise to
    ``<out>/<scene>``. Finished scene folders are kept unless ``overwrite`` (resume); a failing scene is
    logged, leaves nothing behind and does not stop the others. Raises InputError when ``root`` holds no
    scans or ``scenes`` names one it does not hold.
    """
    root, out = Path(root), Path(out)
    scans = find_scans(root)
    if not scans:
        raise InputError(f"no scans found under {root}/scans or {root}/scans_test")
    if scenes:
        missing = sorted(set(scenes) - set(scans))
        if missing:
            raise InputError(f"scenes not found under {root}: {', '.join(missing)}")
        scans = {k: scans[k] for k in scenes}
    tsv = Path(tsv) if tsv else root / "scannetv2-labels.combined.tsv"
    if not tsv.is_file():
        log.warning("label map %s not found: scenes with annotations will fail", tsv)
        tsv = None
    splits = read_splits(splits_dir or root)
    jobs: List[Tuple[Path, Path]] = []  # (scan folder, scene folder)
    for name, scan_dir in scans.items():
        if splits:
            if name not in splits:
                log.warning("%s is in no split list; skipped", name)
                continue
            out_dir = out / splits[name] / name
        else:
            out_dir = out / name
        jobs.append((scan_dir, out_dir))

    out.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temporaries(out)
    if stale:
        log.info("removed %d temporary folders of an interrupted run", stale)
    todo = [j for j in jobs if overwrite or not j[1].exists()]
    log.info("%d scenes: %d already done, %d to convert", len(jobs), len(jobs) - len(todo), len(todo))
    failed: List[str] = []
    bar = tqdm(total=len(todo), desc="scenes", unit="scene", disable=not progress)

    def report(result):
        name, status, msg, seconds = result
        if status == "done":
            log.info("%s: %s (%.1f s)", name, msg, seconds)
        else:
            failed.append(name)
            log.error("%s failed, nothing written: %s", name, msg)
        bar.update(1)

    # plain values only: the arguments cross into worker processes
    job_args = [(str(s), str(o), None if tsv is None else str(tsv), asdict(cfg), color_format, overwrite)
                for s, o in todo]
    if workers <= 1 or len(todo) <= 1:
        for a in job_args:
            report(prepare_scan(*a))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for fut in as_completed([pool.submit(prepare_scan, *a) for a in job_args]):
                report(fut.result())
    bar.close()
    if failed:
        log.error("%d of %d scenes failed: %s", len(failed), len(todo), ", ".join(sorted(failed)))
    return failed
