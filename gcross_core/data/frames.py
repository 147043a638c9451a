"""Posed RGB-D frames in the ScanNet SensReader export layout, read lazily and written back.

On disk::

    color/<i>.jpg|png   RGB
    depth/<i>.png       uint16 millimetres, 0 (and 65535) = no measurement (units: ``gcross_core.image``)
    pose/<i>.txt        4x4 camera-to-world
    intrinsic/intrinsic_color.txt, intrinsic/intrinsic_depth.txt   4x4 (the top-left 3x3 is K)
    label/<i>.png       optional: semantic id per pixel, 0 = unlabelled (8 or 16 bit), in the color camera
    instance/<i>.png    optional: instance id per pixel, 0 = none (8 or 16 bit), in the color camera

Frames whose pose is not a finite rigid transform (ScanNet writes -inf where tracking failed) are skipped
when the set is opened and counted in ``FrameSet.skipped_frames``. Depth and color may differ in size and
intrinsics (ScanNet: 640x480 depth, 1296x968 color, one shared pose); :meth:`Frame.resized` resamples both
into the depth camera at any resolution.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from gcross_core.errors import InputError, reading
from gcross_core.geometry import is_valid_pose, scale_intrinsics
from gcross_core.image import (check_intrinsics, color_seen_mask, depth_m_to_mm, depth_mm_to_m, resample_color,
                               resample_ids_nearest, resize_depth_nearest)

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

COLOR_SUFFIXES = (".jpg", ".jpeg", ".png")
# What each image of the layout must be (the InputError of a damaged one says so).
COLOR_IMAGE = "a JPEG or PNG color image"
DEPTH_IMAGE = "a 16-bit PNG of millimetres"
ID_IMAGE = "a single-channel 8 or 16-bit PNG of integer ids"


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
            raise InputError(f"frame {self.frame_id!r}: color has shape {c.shape} {c.dtype}, expected [H, W, 3] uint8")
        if d.ndim != 2 or d.dtype != np.float32:
            raise InputError(f"frame {self.frame_id!r}: depth_m has shape {d.shape} {d.dtype}, "
                             "expected [H, W] float32 metres")
        object.__setattr__(self, "K_color", check_intrinsics(self.K_color, "K_color"))
        object.__setattr__(self, "K_depth", check_intrinsics(self.K_depth, "K_depth"))
        T = np.asarray(self.cam_to_world, dtype=np.float64)
        if T.shape != (4, 4):
            raise InputError(f"frame {self.frame_id!r}: cam_to_world has shape {T.shape}, expected [4, 4]")
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
            raise InputError(f"resized: width and height must be >= 1, got {width}x{height}")
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

    def transformed(self, T: np.ndarray) -> "FrameSet":
        """A view whose poses are ``T @ cam_to_world`` (e.g. :func:`gcross_core.data.gravity.rotation_to_z_up`)."""
        return _TransformedFrames(self, T)

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
            raise InputError(f"resized: width and height must be >= 1, got {width}x{height}")
        super().__init__(base.frame_ids, base.skipped_frames)
        self._base, self._size = base, (width, height)

    def _load(self, i: int) -> Frame:
        return self._base.frame(i).resized(*self._size)

    def cam_to_world(self, i: int) -> np.ndarray:
        return self._base.cam_to_world(i)


class _TransformedFrames(FrameSet):
    def __init__(self, base: FrameSet, T: np.ndarray):
        T = np.asarray(T, dtype=np.float64)
        if T.shape != (4, 4) or not is_valid_pose(T):
            raise InputError(f"transformed: T must be a rigid [4, 4] transform, got {np.round(T, 4).tolist()}")
        super().__init__(base.frame_ids, base.skipped_frames)
        self._base, self._T = base, T

    def _load(self, i: int) -> Frame:
        f = self._base.frame(i)
        return Frame(color=f.color, depth_m=f.depth_m, K_color=f.K_color, K_depth=f.K_depth,
                     cam_to_world=self._T @ f.cam_to_world, frame_id=f.frame_id)

    def cam_to_world(self, i: int) -> np.ndarray:
        return self._T @ self._base.cam_to_world(i)


def frame_order_key(stem: str):
    """Sort key of frame ids: numeric ids by number (``2`` before ``10``), then the others by name."""
    return (0, int(stem), stem) if stem.isdigit() else (1, 0, stem)


def color_images(color_dir: PathLike) -> List[Tuple[str, Path]]:
    """(frame id, path) of the .jpg/.png images in a SensReader ``color/`` folder, in frame order.

    The frame id is the file stem; numeric stems sort by number (``2`` before ``10``).
    """
    files = [p for p in Path(color_dir).iterdir() if p.suffix.lower() in COLOR_SUFFIXES]
    return sorted(((p.stem, p) for p in files), key=lambda item: frame_order_key(item[0]))


def read_matrix_txt(path: Path, what: str) -> np.ndarray:
    """A 4x4 (or 3x3) matrix from a whitespace-separated text file, as float64; -inf/nan are kept."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} is missing")
    with reading(path, f"a {what} file of whitespace-separated numbers"):
        values = np.array(path.read_text().split(), dtype=np.float64)
    if values.size == 16:
        return values.reshape(4, 4)
    if values.size == 9:
        return values.reshape(3, 3)
    raise InputError(f"{what} file {path} holds {values.size} numbers, expected a 4x4 (16) or 3x3 (9) matrix")


def _K_from_file(path: Path, what: str) -> np.ndarray:
    return check_intrinsics(read_matrix_txt(path, what)[:3, :3], f"{what} ({path})")


def _image_size(path: Path, what: str) -> Tuple[int, int]:
    with reading(path, what), Image.open(path) as im:
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
        colors = dict(color_images(color_dir))
        if not colors:
            raise FileNotFoundError(f"{color_dir} holds no .jpg/.png color images")
        ids = list(colors)
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
                raise InputError(f"pose file {pose_dir / f'{i}.txt'} holds a 3x3 matrix, expected 4x4 camera-to-world")
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
        self.color_size = _image_size(colors[kept[0]], COLOR_IMAGE) if kept else None
        self.depth_size = _image_size(depth_dir / f"{kept[0]}.png", DEPTH_IMAGE) if kept else None
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
        with reading(path, DEPTH_IMAGE), Image.open(path) as im:
            mode, size = im.mode, im.size
            if mode not in ("I;16", "I;16B", "I;16L", "I"):
                raise InputError(f"depth image {path} has mode {mode}, expected {DEPTH_IMAGE}")
            raw = np.asarray(im)
        if size != self.depth_size:
            raise InputError(f"depth image {path} is {size[0]}x{size[1]}, expected "
                             f"{self.depth_size[0]}x{self.depth_size[1]} like the first frame")
        if raw.dtype != np.uint16:
            if raw.min(initial=0) < 0 or raw.max(initial=0) > 65535:
                raise InputError(f"depth image {path} holds values outside 0..65535, expected uint16 millimetres")
            raw = raw.astype(np.uint16)
        return depth_mm_to_m(raw)

    def has_id_images(self, kind: str = "label") -> bool:
        """Whether a ``label/`` (or ``instance/``) folder is present."""
        return (self.root / _check_kind(kind)).is_dir()

    def id_image(self, i: int, kind: str = "label") -> Optional[np.ndarray]:
        """Frame ``i``'s ``label/<id>.png`` or ``instance/<id>.png`` as [Hc, Wc] int64 in the color camera,
        or None when that frame has none. Must be a single-channel 8/16-bit PNG of the color image's size."""
        kind = _check_kind(kind)
        fid = self.frame_ids[int(i) % len(self)]
        path = self.root / kind / f"{fid}.png"
        if not path.is_file():
            return None
        with reading(path, ID_IMAGE), Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise InputError(f"{kind} image {path} has mode {im.mode}, expected {ID_IMAGE}")
            size = im.size
            ids = np.asarray(im).astype(np.int64)
        if size != self.color_size:
            raise InputError(f"{kind} image {path} is {size[0]}x{size[1]}, expected the color image's "
                             f"{self.color_size[0]}x{self.color_size[1]}")
        return ids

    def registered_id_image(self, i: int, kind: str = "label") -> Optional[np.ndarray]:
        """:meth:`id_image` resampled (nearest) onto the depth grid, as :meth:`Frame.registered` does with
        color: [Hd, Wd] int64, or None."""
        ids = self.id_image(i, kind)
        if ids is None:
            return None
        return resample_ids_nearest(ids, self.K_color, self.K_depth, *self.depth_size)

    def _load(self, i: int) -> Frame:
        fid = self.frame_ids[i]
        cpath = self._colors[fid]
        with reading(cpath, COLOR_IMAGE), Image.open(cpath) as im:
            if im.size != self.color_size:
                raise InputError(f"color image {cpath} is {im.size[0]}x{im.size[1]}, expected "
                                 f"{self.color_size[0]}x{self.color_size[1]} like the first frame")
            color = np.asarray(im.convert("RGB"))
        depth = self._read_depth(self.root / "depth" / f"{fid}.png")
        return Frame(color=color, depth_m=depth, K_color=self.K_color, K_depth=self.K_depth,
                     cam_to_world=self._poses[i].copy(), frame_id=fid)


ID_IMAGE_KINDS = ("label", "instance")


def _check_kind(kind: str) -> str:
    if kind not in ID_IMAGE_KINDS:
        raise ValueError(f"id image kind {kind!r} is unknown, expected one of {ID_IMAGE_KINDS}")
    return kind


def find_frames_dir(scene_dir: PathLike) -> Optional[Path]:
    """``<scene>/frames`` or the scene folder itself when it is a bare SensReader export; else None."""
    scene_dir = Path(scene_dir)
    for d in (scene_dir / "frames", scene_dir):
        if (d / "color").is_dir() and (d / "pose").is_dir():
            return d
    return None




def _matrix_txt(M: np.ndarray) -> str:
    return "\n".join(" ".join(f"{v:.17g}" for v in row) for row in M) + "\n"


def _K4(K: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = K
    return out


def write_frames(frames_dir: PathLike, frames: Iterable[Frame], color_format: str = "jpg",
                 jpeg_quality: int = 95, progress: Optional[Callable[[int], None]] = None) -> int:
    """Write frames in the SensReader export layout, numbered 0, 1, ...; returns how many.

    All frames must share K_color and K_depth (one intrinsic file each). ``png`` color is lossless.
    """
    if color_format not in ("jpg", "png"):
        raise InputError(f"color_format must be 'jpg' or 'png', got {color_format!r}")
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
            raise InputError(f"frame {n} has other intrinsics than frame 0; a SensReader folder holds one set")
        img = Image.fromarray(np.ascontiguousarray(f.color))
        if color_format == "jpg":
            img.save(root / "color" / f"{n}.jpg", quality=jpeg_quality)
        else:
            img.save(root / "color" / f"{n}.png")
        Image.fromarray(depth_m_to_mm(f.depth_m)).save(root / "depth" / f"{n}.png")
        (root / "pose" / f"{n}.txt").write_text(_matrix_txt(f.cam_to_world))
        count += 1
        if progress is not None:
            progress(count)
    return count
