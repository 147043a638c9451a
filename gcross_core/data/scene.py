"""Scene folders: Pointcept-layout point clouds plus optional posed RGB-D frames.

On disk (one folder per scene)::

    coord.npy     float32 [N, 3] metres
    color.npy     [N, 3] 0..255 (any numeric dtype; written as uint8, as Pointcept does)
    normal.npy    float32 [N, 3] unit normals
    segment20.npy / segment200.npy / segment.npy   int [N], -1 = ignore (optional)
    instance.npy  int [N], -1 = no instance (optional)
    class_names.json   names of the classes in segment.npy (optional, written for non-ScanNet label sets)
    frames/       ScanNet SensReader export layout (optional):
        color/<i>.jpg|png   RGB
        depth/<i>.png       uint16 millimetres, 0 = no measurement
        pose/<i>.txt        4x4 camera-to-world
        intrinsic/intrinsic_color.txt, intrinsic/intrinsic_depth.txt   4x4 (the top-left 3x3 is K)

A folder with only ``frames/`` (or a bare SensReader export with ``color/ depth/ pose/ intrinsic/``) is a
frames-only scene: it loads with ``coord=None`` and its points come from fusing the frames
(:func:`fuse_frames_to_points`, which uses ``gcross_core.mapping.fusion.VoxelMap``).

Frames load lazily, one at a time. Frames whose pose is not a finite rigid transform (ScanNet writes -inf
where tracking failed) are skipped when the set is opened and counted in ``FrameSet.skipped_frames``.
Depth and color may differ in size and intrinsics (ScanNet: 640x480 depth, 1296x968 color, one shared
pose); :meth:`Frame.resized` resamples both into the depth camera at any resolution.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from gcross_core.geometry import is_valid_pose, scale_intrinsics
from gcross_core.data.classes import SCANNET20_CLASSES, SCANNET200_CLASSES

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

DEPTH_SCALE = 1000.0  # SensReader depth PNGs hold millimetres
# Some exports (7-Scenes among them) mark missing depth with the largest uint16 instead of 0.
_DEPTH_INVALID_RAW = 65535
COLOR_SUFFIXES = (".jpg", ".jpeg", ".png")
SEGMENT_FILES = ("segment20", "segment200", "segment")
_CLASS_NAMES_FILE = "class_names.json"
_ARRAY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ----------------------------------------------------------------------------------------------------
# frames

def _check_K(name: str, K) -> np.ndarray:
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or not (K[0, 0] > 0 and K[1, 1] > 0):
        raise ValueError(f"{name} is {K.tolist() if K.size <= 16 else K.shape}, expected finite [3, 3] "
                         "pinhole intrinsics with fx, fy > 0")
    if abs(K[0, 1]) > 1e-9 or abs(K[1, 0]) > 1e-9 or not np.allclose(K[2], [0, 0, 1]):
        raise ValueError(f"{name} is {K.tolist()}, expected [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]")
    return K


def _target_to_color(K_color: np.ndarray, K_target: np.ndarray) -> Tuple[float, float, float, float]:
    """(a, b, c, d) with color pixel ``(a u + b, c v + d)`` seen by target pixel (u, v), same pose.

    Both intrinsics have zero skew, so ``K_color @ inv(K_target)`` is an axis-aligned affine map.
    """
    M = np.asarray(K_color, np.float64) @ np.linalg.inv(np.asarray(K_target, np.float64))
    return M[0, 0], M[0, 2], M[1, 1], M[1, 2]


def resample_color(color: np.ndarray,  # [Hc, Wc, 3] uint8
                   K_color: np.ndarray,  # [3, 3] intrinsics of ``color``
                   K_target: np.ndarray,  # [3, 3] intrinsics of the wanted image (same pose)
                   width: int, height: int) -> np.ndarray:  # -> [height, width, 3] uint8
    """Color image as seen by another pinhole camera at the same pose (area-averaged when shrinking).

    Target pixel -> color pixel is an axis-aligned affine map (:func:`_target_to_color`): a crop-and-resize,
    which PIL does with sub-pixel boxes. Pixel centres sit at integer indices (see
    ``geometry.scale_intrinsics``); PIL's box is in pixel-edge coordinates, hence the +-0.5.
    """
    hc, wc = color.shape[:2]
    a, b, c, d = _target_to_color(K_color, K_target)
    box = (b - 0.5 * a + 0.5, d - 0.5 * c + 0.5, a * (width - 0.5) + b + 0.5, c * (height - 0.5) + d + 0.5)
    if (width, height) == (wc, hc) and np.allclose(box, (0, 0, wc, hc), atol=1e-6):
        return color.copy()
    box = np.array(box)
    overshoot = max(-box[0], -box[1], box[2] - wc, box[3] - hc)
    if overshoot > 1e-6:
        # The target sees past the color image's border (PIL refuses such boxes): extend it by its edge.
        pad = int(np.ceil(overshoot)) + 1
        color = np.pad(color, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        box = box + pad
    else:
        box = np.clip(box, 0, [wc, hc, wc, hc])  # rounding error only
    # shrinking: area averaging (exact block means at integer factors); enlarging: bilinear
    resample = Image.BOX if max(a, c) > 1 + 1e-9 else Image.BILINEAR
    out = Image.fromarray(color).resize((int(width), int(height)), resample, box=tuple(map(float, box)))
    return np.asarray(out)


def color_seen_mask(color_hw: Tuple[int, int],  # (Hc, Wc) of the color image
                    K_color: np.ndarray,  # [3, 3]
                    K_target: np.ndarray,  # [3, 3] of the wanted image (same pose)
                    width: int, height: int) -> np.ndarray:  # -> [height, width] bool
    """Target pixels whose centre falls on the color image (the map of :func:`_target_to_color`).

    A depth camera with a wider field of view than the color camera (ScanNet's) sees a border the color
    camera does not; :func:`resample_color` extends the color's edge there, this mask says where.
    """
    hc, wc = int(color_hw[0]), int(color_hw[1])
    a, b, c, d = _target_to_color(K_color, K_target)
    x = a * np.arange(int(width)) + b
    y = c * np.arange(int(height)) + d
    eps = 1e-6
    return (((y >= -0.5 - eps) & (y <= hc - 0.5 + eps))[:, None]
            & ((x >= -0.5 - eps) & (x <= wc - 0.5 + eps))[None, :])


def resize_depth_nearest(depth_m: np.ndarray, width: int, height: int) -> np.ndarray:
    """[Hd, Wd] -> [height, width] by nearest neighbour (no averaging across depth edges)."""
    hd, wd = depth_m.shape
    if (hd, wd) == (height, width):
        return depth_m.copy()
    rows = np.minimum(((np.arange(height) + 0.5) * hd / height).astype(np.int64), hd - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * wd / width).astype(np.int64), wd - 1)
    return depth_m[rows[:, None], cols[None, :]]


@dataclass(frozen=True)
class Frame:
    """One posed RGB-D frame. Color and depth share the pose but may differ in size and intrinsics."""

    color: np.ndarray  # [Hc, Wc, 3] uint8 RGB
    depth_m: np.ndarray  # [Hd, Wd] float32 metres, 0 = no measurement
    K_color: np.ndarray  # [3, 3] intrinsics of color, pixels
    K_depth: np.ndarray  # [3, 3] intrinsics of depth, pixels
    cam_to_world: np.ndarray  # [4, 4] rigid camera-to-world (OpenCV camera: x right, y down, z forward)
    frame_id: str = ""  # stem of the source image (the key of teacher-feature caches)

    def __post_init__(self) -> None:
        c, d = np.asarray(self.color), np.asarray(self.depth_m)
        if c.ndim != 3 or c.shape[2] != 3 or c.dtype != np.uint8:
            raise ValueError(f"frame {self.frame_id!r}: color has shape {c.shape} {c.dtype}, expected [H, W, 3] uint8")
        if d.ndim != 2 or d.dtype != np.float32:
            raise ValueError(f"frame {self.frame_id!r}: depth_m has shape {d.shape} {d.dtype}, "
                             "expected [H, W] float32 metres")
        object.__setattr__(self, "K_color", _check_K("K_color", self.K_color))
        object.__setattr__(self, "K_depth", _check_K("K_depth", self.K_depth))
        T = np.asarray(self.cam_to_world, dtype=np.float64)
        if T.shape != (4, 4):
            raise ValueError(f"frame {self.frame_id!r}: cam_to_world has shape {T.shape}, expected [4, 4]")
        object.__setattr__(self, "cam_to_world", T)

    @property
    def depth_size(self) -> Tuple[int, int]:
        """(width, height) of the depth image."""
        return self.depth_m.shape[1], self.depth_m.shape[0]

    def resized(self, width: int, height: int) -> "Frame":
        """Color and depth both ``width`` x ``height`` in the depth camera (K_color == K_depth after).

        Depth is resized by nearest neighbour; color is resampled through both intrinsics, so a ScanNet
        1296x968 color image lands registered on the 640x480 depth grid. Depth pixels the color camera
        does not see (:func:`color_seen_mask`) become 0 = no measurement: a point without a color of its
        own is dropped rather than given an invented one.
        """
        width, height = int(width), int(height)
        if width < 1 or height < 1:
            raise ValueError(f"resized: width and height must be >= 1, got {width}x{height}")
        wd, hd = self.depth_size
        K = scale_intrinsics(self.K_depth, width / wd, height / hd)
        depth = resize_depth_nearest(self.depth_m, width, height)
        seen = color_seen_mask(self.color.shape[:2], self.K_color, K, width, height)
        if not seen.all():
            depth = np.where(seen, depth, np.float32(0))
        return Frame(color=resample_color(self.color, self.K_color, K, width, height),
                     depth_m=depth, K_color=K, K_depth=K.copy(),
                     cam_to_world=self.cam_to_world, frame_id=self.frame_id)

    def registered(self) -> "Frame":
        """Color resampled to the depth resolution and intrinsics (what fusion and the ROS side expect)."""
        return self.resized(*self.depth_size)


class FrameSet:
    """Posed RGB-D frames of one scene, loaded on demand by index ``0 .. len-1``.

    ``frame_ids`` names each frame (file stem); ``skipped_frames`` counts the source frames left out
    because their pose was not a finite rigid transform.
    """

    def __init__(self, frame_ids: Sequence[str], skipped_frames: int = 0):
        self.frame_ids: List[str] = [str(f) for f in frame_ids]
        self.skipped_frames = int(skipped_frames)

    def __len__(self) -> int:
        return len(self.frame_ids)

    def _load(self, i: int) -> Frame:
        raise NotImplementedError

    def frame(self, i: int) -> Frame:
        n = len(self)
        if not -n <= int(i) < n:
            raise IndexError(f"frame index {i} out of range for {n} frames")
        return self._load(int(i) % n)

    def __getitem__(self, i: int) -> Frame:
        return self.frame(i)

    def __iter__(self) -> Iterator[Frame]:
        for i in range(len(self)):
            yield self.frame(i)

    def cam_to_world(self, i: int) -> np.ndarray:
        """[4, 4] pose of frame ``i`` (subclasses answer without decoding images)."""
        return self.frame(i).cam_to_world

    def subset(self, indices: Sequence[int]) -> "FrameSet":
        """A view on some of the frames (e.g. every k-th)."""
        return _SubsetFrames(self, indices)

    def resized(self, width: int, height: int) -> "FrameSet":
        """A view whose frames come back through :meth:`Frame.resized`."""
        return _ResizedFrames(self, int(width), int(height))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} frames, {self.skipped_frames} skipped)"


class FrameList(FrameSet):
    """Frames held in memory (synthetic scenes, tests)."""

    def __init__(self, frames: Sequence[Frame], skipped_frames: int = 0):
        frames = list(frames)
        for k, f in enumerate(frames):
            if not isinstance(f, Frame):
                raise ValueError(f"frames[{k}] is a {type(f).__name__}, expected Frame")
        super().__init__([f.frame_id or str(k) for k, f in enumerate(frames)], skipped_frames)
        self._frames = frames

    def _load(self, i: int) -> Frame:
        return self._frames[i]

    def cam_to_world(self, i: int) -> np.ndarray:
        return self._frames[i].cam_to_world


class _SubsetFrames(FrameSet):
    def __init__(self, base: FrameSet, indices: Sequence[int]):
        idx = [int(i) for i in indices]
        for i in idx:
            if not 0 <= i < len(base):
                raise IndexError(f"subset index {i} out of range for {len(base)} frames")
        super().__init__([base.frame_ids[i] for i in idx], base.skipped_frames)
        self._base, self._idx = base, idx

    def _load(self, i: int) -> Frame:
        return self._base.frame(self._idx[i])

    def cam_to_world(self, i: int) -> np.ndarray:
        return self._base.cam_to_world(self._idx[i])


class _ResizedFrames(FrameSet):
    def __init__(self, base: FrameSet, width: int, height: int):
        if width < 1 or height < 1:
            raise ValueError(f"resized: width and height must be >= 1, got {width}x{height}")
        super().__init__(base.frame_ids, base.skipped_frames)
        self._base, self._size = base, (width, height)

    def _load(self, i: int) -> Frame:
        return self._base.frame(i).resized(*self._size)

    def cam_to_world(self, i: int) -> np.ndarray:
        return self._base.cam_to_world(i)


def _numeric_key(stem: str):
    return (0, int(stem), stem) if stem.isdigit() else (1, 0, stem)


def read_matrix_txt(path: Path, what: str) -> np.ndarray:
    """A 4x4 (or 3x3) matrix from a whitespace-separated text file, as float64; -inf/nan are kept."""
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file {path} is missing") from None
    except ValueError as e:
        raise ValueError(f"{what} file {path} holds non-numeric text ({e})") from None
    if values.size == 16:
        return values.reshape(4, 4)
    if values.size == 9:
        return values.reshape(3, 3)
    raise ValueError(f"{what} file {path} holds {values.size} numbers, expected a 4x4 (16) or 3x3 (9) matrix")


def _K_from_file(path: Path, what: str) -> np.ndarray:
    return _check_K(f"{what} ({path})", read_matrix_txt(path, what)[:3, :3])


def _image_size(path: Path) -> Tuple[int, int]:
    with Image.open(path) as im:
        return im.size


class SensReaderFrames(FrameSet):
    """Frames in the ScanNet SensReader export layout (``color/ depth/ pose/ intrinsic/``)."""

    def __init__(self, frames_dir: PathLike):
        root = Path(frames_dir)
        self.root = root
        color_dir, depth_dir, pose_dir = root / "color", root / "depth", root / "pose"
        for d in (color_dir, depth_dir, pose_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"frames folder {root} has no {d.name}/ directory "
                                        "(expected the SensReader layout color/ depth/ pose/ intrinsic/)")
        colors = {p.stem: p for p in color_dir.iterdir() if p.suffix.lower() in COLOR_SUFFIXES}
        if not colors:
            raise FileNotFoundError(f"{color_dir} holds no .jpg/.png color images")
        ids = sorted(colors, key=_numeric_key)
        missing = [f"depth/{i}.png" for i in ids if not (depth_dir / f"{i}.png").is_file()]
        missing += [f"pose/{i}.txt" for i in ids if not (pose_dir / f"{i}.txt").is_file()]
        if missing:
            raise FileNotFoundError(f"frames folder {root}: {len(missing)} files missing for existing color "
                                    f"images, e.g. {', '.join(missing[:3])}")
        self.K_color = _K_from_file(root / "intrinsic" / "intrinsic_color.txt", "color intrinsics")
        kd = root / "intrinsic" / "intrinsic_depth.txt"
        self._K_depth_file = _K_from_file(kd, "depth intrinsics") if kd.is_file() else None

        kept, poses = [], []
        for i in ids:
            T = read_matrix_txt(pose_dir / f"{i}.txt", "pose")
            if T.shape != (4, 4):
                raise ValueError(f"pose file {pose_dir / f'{i}.txt'} holds a 3x3 matrix, expected 4x4 camera-to-world")
            if is_valid_pose(T):
                kept.append(i)
                poses.append(T)
        skipped = len(ids) - len(kept)
        if skipped:
            log.info("%s: skipped %d of %d frames with invalid (non-finite or non-rigid) poses", root, skipped,
                     len(ids))
        super().__init__(kept, skipped)
        self._colors = colors
        self._poses = np.stack(poses) if poses else np.zeros((0, 4, 4))
        # Image sizes of the first kept frame fix what every frame must match.
        self.color_size = _image_size(colors[kept[0]]) if kept else None
        self.depth_size = _image_size(depth_dir / f"{kept[0]}.png") if kept else None
        if self._K_depth_file is not None:
            self.K_depth = self._K_depth_file
        elif kept:
            # No depth intrinsics: the depth image is taken to be the color image rescaled.
            self.K_depth = scale_intrinsics(self.K_color, self.depth_size[0] / self.color_size[0],
                                            self.depth_size[1] / self.color_size[1])
        else:
            self.K_depth = self.K_color.copy()

    def cam_to_world(self, i: int) -> np.ndarray:
        return self._poses[i].copy()

    def _read_depth(self, path: Path) -> np.ndarray:
        with Image.open(path) as im:
            mode, size = im.mode, im.size
            if mode not in ("I;16", "I;16B", "I;16L", "I"):
                raise ValueError(f"depth image {path} has mode {mode}, expected a 16-bit PNG of millimetres")
            raw = np.asarray(im)
        if size != self.depth_size:
            raise ValueError(f"depth image {path} is {size[0]}x{size[1]}, expected "
                             f"{self.depth_size[0]}x{self.depth_size[1]} like the first frame")
        if raw.dtype != np.uint16:
            if raw.min(initial=0) < 0 or raw.max(initial=0) > 65535:
                raise ValueError(f"depth image {path} holds values outside 0..65535, expected uint16 millimetres")
            raw = raw.astype(np.uint16)
        depth = raw.astype(np.float32) / np.float32(DEPTH_SCALE)
        depth[raw == _DEPTH_INVALID_RAW] = 0.0
        return depth

    def _load(self, i: int) -> Frame:
        fid = self.frame_ids[i]
        cpath = self._colors[fid]
        with Image.open(cpath) as im:
            if im.size != self.color_size:
                raise ValueError(f"color image {cpath} is {im.size[0]}x{im.size[1]}, expected "
                                 f"{self.color_size[0]}x{self.color_size[1]} like the first frame")
            color = np.asarray(im.convert("RGB"))
        depth = self._read_depth(self.root / "depth" / f"{fid}.png")
        return Frame(color=color, depth_m=depth, K_color=self.K_color, K_depth=self.K_depth,
                     cam_to_world=self._poses[i].copy(), frame_id=fid)


def find_frames_dir(scene_dir: PathLike) -> Optional[Path]:
    """``<scene>/frames`` or the scene folder itself when it is a bare SensReader export; else None."""
    scene_dir = Path(scene_dir)
    for d in (scene_dir / "frames", scene_dir):
        if (d / "color").is_dir() and (d / "pose").is_dir():
            return d
    return None


# ----------------------------------------------------------------------------------------------------
# scenes

def _rows(name: str, a, n: Optional[int], trailing: tuple, dtype) -> Optional[np.ndarray]:
    if a is None:
        return None
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{name} has dtype {a.dtype}, expected numbers")
    if a.ndim == 2 and trailing == () and a.shape[1] == 1:
        a = a[:, 0]  # some exports store labels as [N, 1]
    if a.shape[1:] != trailing or (n is not None and a.shape[0] != n):
        raise ValueError(f"{name} has shape {a.shape}, expected {(n if n is not None else 'N', *trailing)}")
    return a.astype(dtype, copy=False)


@dataclass
class Scene:
    """One scene: points (or None for a frames-only scene), optional labels, optional frames."""

    name: str
    coord: Optional[np.ndarray]  # [N, 3] float32 metres, world frame
    color: Optional[np.ndarray]  # [N, 3] float32 RGB 0..255
    normal: Optional[np.ndarray]  # [N, 3] float32 unit normals (zero where unknown)
    segment: Optional[np.ndarray] = None  # [N] int64 class index, -1 = ignore
    instance: Optional[np.ndarray] = None  # [N] int64 instance id, -1 = none
    frames: Optional[FrameSet] = None
    class_names: Optional[Tuple[str, ...]] = None  # names of the classes ``segment`` indexes
    extra: Dict[str, np.ndarray] = field(default_factory=dict)  # further [N] per-point arrays, e.g. segment200

    def __post_init__(self) -> None:
        if self.coord is None:
            for k in ("color", "normal", "segment", "instance"):
                if getattr(self, k) is not None:
                    raise ValueError(f"scene {self.name!r}: {k} is set but coord is None")
            if self.frames is None:
                raise ValueError(f"scene {self.name!r} has neither points nor frames")
        else:
            self.coord = _rows("coord", self.coord, None, (3,), np.float32)
            n = len(self.coord)
            self.color = _rows("color", self.color, n, (3,), np.float32)
            self.normal = _rows("normal", self.normal, n, (3,), np.float32)
            if self.color is None or self.normal is None:
                raise ValueError(f"scene {self.name!r}: color and normal are required with coord")
            if not np.all(np.isfinite(self.coord)):
                raise ValueError(f"scene {self.name!r}: coord contains NaN or inf")
            self.segment = _rows("segment", self.segment, n, (), np.int64)
            self.instance = _rows("instance", self.instance, n, (), np.int64)
            self.extra = {k: _rows(k, v, n, np.asarray(v).shape[1:], np.asarray(v).dtype)
                          for k, v in self.extra.items()}
        if self.class_names is not None:
            self.class_names = tuple(str(c) for c in self.class_names)
            if self.segment is not None and self.segment.size and self.segment.max() >= len(self.class_names):
                raise ValueError(f"scene {self.name!r}: segment holds class {int(self.segment.max())} but only "
                                 f"{len(self.class_names)} class names are given")

    @property
    def num_points(self) -> int:
        return 0 if self.coord is None else len(self.coord)

    @property
    def has_points(self) -> bool:
        return self.coord is not None


def _load_array(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path} is not a plain .npy array ({e})") from None


def load_scene(scene_dir: PathLike, segment: Optional[str] = None, *, frames: bool = True,
               frames_dir: Optional[PathLike] = None, name: Optional[str] = None,
               fuse_voxel_size_m: Optional[float] = None, fuse_every: int = 1, mmap: bool = False) -> Scene:
    """Read a scene folder (layout in the module docstring).

    segment: which label file becomes ``Scene.segment``: ``"segment20"``, ``"segment200"`` or
    ``"segment"`` (an error if absent), ``"none"``, or None for segment20.npy, else segment.npy, else none.
    frames: open ``frames/`` (or ``frames_dir``) when present. fuse_voxel_size_m: for a frames-only
    scene, fuse every ``fuse_every``-th frame into points at this voxel size instead of returning coord=None.
    """
    scene_dir = Path(scene_dir)
    if not scene_dir.is_dir():
        raise FileNotFoundError(f"scene folder {scene_dir} does not exist")
    name = name or scene_dir.name
    fdir = Path(frames_dir) if frames_dir is not None else find_frames_dir(scene_dir)
    if frames_dir is not None and not Path(frames_dir).is_dir():
        raise FileNotFoundError(f"frames folder {frames_dir} does not exist")
    frame_set = SensReaderFrames(fdir) if frames and fdir is not None else None

    if not (scene_dir / "coord.npy").is_file():
        if fdir is None:
            raise FileNotFoundError(f"scene folder {scene_dir} has neither coord.npy nor frames/ "
                                    "(expected the Pointcept layout and/or a SensReader export)")
        if frame_set is None:
            frame_set = SensReaderFrames(fdir)
        if fuse_voxel_size_m is None:
            return Scene(name, None, None, None, frames=frame_set)
        coord, color, normal = fuse_frames_to_points(frame_set, fuse_voxel_size_m, every=fuse_every)
        return Scene(name, coord, color, normal, frames=frame_set)

    arrays = {}
    for key in ("coord", "color", "normal"):
        path = scene_dir / f"{key}.npy"
        if not path.is_file():
            raise FileNotFoundError(f"scene folder {scene_dir} has coord.npy but no {key}.npy")
        arrays[key] = _load_array(path, mmap)
    n = len(arrays["coord"])
    for key in ("color", "normal"):
        if len(arrays[key]) != n:
            raise ValueError(f"{scene_dir}: {key}.npy has {len(arrays[key])} rows but coord.npy has {n}")

    if segment is None:
        chosen = next((s for s in ("segment20", "segment") if (scene_dir / f"{s}.npy").is_file()), None)
    elif segment == "none":
        chosen = None
    elif segment in SEGMENT_FILES:
        if not (scene_dir / f"{segment}.npy").is_file():
            raise FileNotFoundError(f"scene folder {scene_dir} has no {segment}.npy")
        chosen = segment
    else:
        raise ValueError(f"segment={segment!r}: expected one of {SEGMENT_FILES}, 'none' or None")
    seg = class_names = None
    if chosen is not None:
        seg = _load_array(scene_dir / f"{chosen}.npy", mmap)
        if len(seg) != n:
            raise ValueError(f"{scene_dir}: {chosen}.npy has {len(seg)} rows but coord.npy has {n}")
        class_names = {"segment20": SCANNET20_CLASSES, "segment200": SCANNET200_CLASSES}.get(chosen)
        names_file = scene_dir / _CLASS_NAMES_FILE
        if chosen == "segment" and names_file.is_file():
            try:
                class_names = tuple(json.loads(names_file.read_text()))
            except (ValueError, TypeError) as e:
                raise ValueError(f"{names_file} is not a JSON list of class names ({e})") from None
    inst = None
    if (scene_dir / "instance.npy").is_file():
        inst = _load_array(scene_dir / "instance.npy", mmap)
        if len(inst) != n:
            raise ValueError(f"{scene_dir}: instance.npy has {len(inst)} rows but coord.npy has {n}")
    return Scene(name, arrays["coord"], arrays["color"], arrays["normal"], seg, inst, frame_set, class_names)


# ----------------------------------------------------------------------------------------------------
# writing

def _matrix_txt(M: np.ndarray) -> str:
    return "\n".join(" ".join(f"{v:.17g}" for v in row) for row in M) + "\n"


def _K4(K: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = K
    return out


def depth_to_png_mm(depth_m: np.ndarray) -> np.ndarray:  # [H, W] float metres -> [H, W] uint16 mm
    """Round to millimetres; invalid (NaN, inf, <= 0, >= 65.535 m) becomes 0 = no measurement."""
    d = np.asarray(depth_m, dtype=np.float64)
    ok = np.isfinite(d) & (d > 0) & (d * DEPTH_SCALE < _DEPTH_INVALID_RAW - 0.5)
    return np.where(ok, np.rint(np.where(ok, d, 0) * DEPTH_SCALE), 0).astype(np.uint16)


def write_frames(frames_dir: PathLike, frames: Iterable[Frame], color_format: str = "jpg",
                 jpeg_quality: int = 95, progress: Optional[Callable[[int], None]] = None) -> int:
    """Write frames in the SensReader export layout, numbered 0, 1, ...; returns how many.

    All frames must share K_color and K_depth (one intrinsic file each). ``png`` color is lossless.
    """
    if color_format not in ("jpg", "png"):
        raise ValueError(f"color_format must be 'jpg' or 'png', got {color_format!r}")
    root = Path(frames_dir)
    for sub in ("color", "depth", "pose", "intrinsic"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    K_color = K_depth = None
    count = 0
    for n, f in enumerate(frames):
        if K_color is None:
            K_color, K_depth = f.K_color, f.K_depth
            (root / "intrinsic" / "intrinsic_color.txt").write_text(_matrix_txt(_K4(K_color)))
            (root / "intrinsic" / "intrinsic_depth.txt").write_text(_matrix_txt(_K4(K_depth)))
        elif not (np.allclose(f.K_color, K_color) and np.allclose(f.K_depth, K_depth)):
            raise ValueError(f"frame {n} has other intrinsics than frame 0; a SensReader folder holds one set")
        img = Image.fromarray(np.ascontiguousarray(f.color))
        if color_format == "jpg":
            img.save(root / "color" / f"{n}.jpg", quality=jpeg_quality)
        else:
            img.save(root / "color" / f"{n}.png")
        Image.fromarray(depth_to_png_mm(f.depth_m)).save(root / "depth" / f"{n}.png")
        (root / "pose" / f"{n}.txt").write_text(_matrix_txt(f.cam_to_world))
        count += 1
        if progress is not None:
            progress(count)
    return count


def _segment_file_for(class_names: Optional[Tuple[str, ...]]) -> str:
    if class_names == SCANNET20_CLASSES:
        return "segment20"
    if class_names == SCANNET200_CLASSES:
        return "segment200"
    return "segment"


def write_scene(scene: Scene, out_dir: PathLike, *, extra_arrays: Optional[Mapping[str, np.ndarray]] = None,
                color_format: str = "jpg", overwrite: bool = False, write_frames_too: bool = True) -> Path:
    """Write ``scene`` as a scene folder, atomically: everything goes to a temporary sibling folder that is
    renamed into place at the end, so ``out_dir`` is either absent or complete.

    ``scene.segment`` goes to segment20.npy / segment200.npy when ``class_names`` is the ScanNet20 /
    ScanNet200 list, else to segment.npy (plus class_names.json when names are known). ``scene.extra``
    and ``extra_arrays`` (e.g. ``{"segment200": ...}``) are written as ``<name>.npy``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True to replace it")
    extras = dict(scene.extra)
    extras.update(extra_arrays or {})
    for k, v in extras.items():
        if not _ARRAY_NAME.match(k) or k in ("coord", "color", "normal", "instance"):
            raise ValueError(f"extra array name {k!r} is not a valid, unreserved file stem")
        if scene.coord is None or len(v) != scene.num_points:
            raise ValueError(f"extra array {k!r} has {len(v)} rows, expected {scene.num_points}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        if scene.coord is not None:
            np.save(tmp / "coord.npy", scene.coord.astype(np.float32))
            np.save(tmp / "color.npy", np.clip(np.rint(scene.color), 0, 255).astype(np.uint8))
            np.save(tmp / "normal.npy", scene.normal.astype(np.float32))
            if scene.segment is not None:
                stem = _segment_file_for(scene.class_names)
                np.save(tmp / f"{stem}.npy", scene.segment.astype(np.int32))
                if stem == "segment" and scene.class_names is not None:
                    (tmp / _CLASS_NAMES_FILE).write_text(json.dumps(list(scene.class_names)))
            if scene.instance is not None:
                np.save(tmp / "instance.npy", scene.instance.astype(np.int32))
            for k, v in extras.items():
                v = np.asarray(v)
                np.save(tmp / f"{k}.npy", v.astype(np.int32) if np.issubdtype(v.dtype, np.integer) else v)
        if write_frames_too and scene.frames is not None and len(scene.frames):
            write_frames(tmp / "frames", scene.frames, color_format=color_format)
        if out_dir.exists():
            trash = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
            os.replace(out_dir, trash / "old")
            os.replace(tmp, out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# ----------------------------------------------------------------------------------------------------
# frames -> points

def fuse_frames_to_points(frames: FrameSet, voxel_size_m: float, *, every: int = 1,
                          max_frames: Optional[int] = None, max_depth_m: float = 5.0,
                          max_voxels: int = 20_000_000) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fuse posed RGB-D frames into a voxel point map with ``gcross_core.mapping.fusion.VoxelMap``.

    Color is first registered to the depth camera. Returns (coord [M, 3] float32 metres,
    color [M, 3] float32 0..255, normal [M, 3] float32, zero where the frames gave no normal).
    """
    try:
        from gcross_core.mapping.fusion import VoxelMap
    except ImportError as e:  # pragma: no cover - fusion ships with the package
        raise ImportError(f"fusing a frames-only scene needs gcross_core.mapping.fusion.VoxelMap ({e})") from e
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    indices = list(range(0, len(frames), every))[:max_frames]
    if not indices:
        raise ValueError("fuse_frames_to_points: no frames to fuse")
    vmap = VoxelMap(voxel_size_m, max_voxels, 1, max_depth_m=max_depth_m)
    for i in indices:
        f = frames.frame(i).registered()
        vmap.integrate(f.color, f.depth_m, f.K_depth, f.cam_to_world)
    if len(vmap) == 0:
        raise ValueError(f"fusing {len(indices)} frames gave no points (no valid depth within {max_depth_m} m)")
    return (vmap.coords().astype(np.float32), vmap.colors().astype(np.float32),
            vmap.normals().astype(np.float32))
