"""Scene folders: Pointcept-layout point clouds plus optional posed RGB-D frames.

On disk (one folder per scene)::

    coord.npy     float32 [N, 3] metres
    color.npy     [N, 3] 0..255 (any numeric dtype; written as uint8, as Pointcept does)
    normal.npy    float32 [N, 3] unit normals
    segment20.npy / segment200.npy / segment.npy   int [N], -1 = ignore (optional)
    instance.npy  int [N], -1 = no instance (optional)
    class_names.json   names of the classes in segment.npy (optional, written for non-ScanNet label sets)
    frames/       posed RGB-D frames in the SensReader export layout (optional; ``gcross_core.data.frames``)

A folder with only ``frames/`` (or a bare SensReader export with ``color/ depth/ pose/ intrinsic/``) is a
frames-only scene: it loads with ``coord=None``; callers that need points fuse the frames explicitly
(``gcross_core.mapping.frame_sets.fuse_frames_to_points``).
"""

import errno
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from gcross_core.data.classes import SCANNET20_CLASSES, SCANNET200_CLASSES
from gcross_core.data.frames import FrameSet, SensReaderFrames, find_frames_dir, write_frames
from gcross_core.errors import InputError, reading

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

SEGMENT_FILES = ("segment20", "segment200", "segment")
_CLASS_NAMES_FILE = "class_names.json"
_ARRAY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ----------------------------------------------------------------------------------------------------
# scenes

def _rows(name: str, a, n: Optional[int], trailing: tuple, dtype) -> Optional[np.ndarray]:
    if a is None:
        return None
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.number):
        raise InputError(f"{name} has dtype {a.dtype}, expected numbers")
    if a.ndim == 2 and trailing == () and a.shape[1] == 1:
        a = a[:, 0]  # some exports store labels as [N, 1]
    if a.shape[1:] != trailing or (n is not None and a.shape[0] != n):
        raise InputError(f"{name} has shape {a.shape}, expected {(n if n is not None else 'N', *trailing)}")
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
                    raise InputError(f"scene {self.name!r}: {k} is set but coord is None")
            if self.frames is None:
                raise InputError(f"scene {self.name!r} has neither points nor frames")
        else:
            self.coord = _rows("coord", self.coord, None, (3,), np.float32)
            n = len(self.coord)
            self.color = _rows("color", self.color, n, (3,), np.float32)
            self.normal = _rows("normal", self.normal, n, (3,), np.float32)
            if self.color is None or self.normal is None:
                raise InputError(f"scene {self.name!r}: color and normal are required with coord")
            if not np.all(np.isfinite(self.coord)):
                raise InputError(f"scene {self.name!r}: coord contains NaN or inf")
            self.segment = _rows("segment", self.segment, n, (), np.int64)
            self.instance = _rows("instance", self.instance, n, (), np.int64)
            self.extra = {k: _rows(k, v, n, np.asarray(v).shape[1:], np.asarray(v).dtype)
                          for k, v in self.extra.items()}
        if self.class_names is not None:
            self.class_names = tuple(str(c) for c in self.class_names)
            if self.segment is not None and self.segment.size and self.segment.max() >= len(self.class_names):
                raise InputError(f"scene {self.name!r}: segment holds class {int(self.segment.max())} but only "
                                 f"{len(self.class_names)} class names are given")

    @property
    def num_points(self) -> int:
        return 0 if self.coord is None else len(self.coord)

    @property
    def has_points(self) -> bool:
        return self.coord is not None


def _load_array(path: Path, mmap: bool) -> np.ndarray:
    with reading(path, "a plain .npy array"):
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def load_scene(scene_dir: PathLike, segment: Optional[str] = None, *, frames: bool = True,
               frames_dir: Optional[PathLike] = None, name: Optional[str] = None,
               mmap: bool = False) -> Scene:
    """Read a scene folder (layout in the module docstring).

    segment: which label file becomes ``Scene.segment``: ``"segment20"``, ``"segment200"`` or
    ``"segment"`` (an error if absent), ``"none"``, or None for segment20.npy, else segment.npy, else none.
    frames: open ``frames/`` (or ``frames_dir``) when present. A frames-only scene comes back with
    ``coord=None``; fuse its frames with ``gcross_core.mapping.frame_sets.fuse_frames_to_points``.
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
        return Scene(name, None, None, None, frames=frame_set)

    arrays = {}
    for key in ("coord", "color", "normal"):
        path = scene_dir / f"{key}.npy"
        if not path.is_file():
            raise FileNotFoundError(f"scene folder {scene_dir} has coord.npy but no {key}.npy")
        arrays[key] = _load_array(path, mmap)
    n = len(arrays["coord"])
    for key in ("color", "normal"):
        if len(arrays[key]) != n:
            raise InputError(f"{scene_dir}: {key}.npy has {len(arrays[key])} rows but coord.npy has {n}")

    if segment is None:
        chosen = next((s for s in ("segment20", "segment") if (scene_dir / f"{s}.npy").is_file()), None)
    elif segment == "none":
        chosen = None
    elif segment in SEGMENT_FILES:
        if not (scene_dir / f"{segment}.npy").is_file():
            raise FileNotFoundError(f"scene folder {scene_dir} has no {segment}.npy")
        chosen = segment
    else:
        raise InputError(f"segment={segment!r}: expected one of {SEGMENT_FILES}, 'none' or None")
    seg = class_names = None
    if chosen is not None:
        seg = _load_array(scene_dir / f"{chosen}.npy", mmap)
        if len(seg) != n:
            raise InputError(f"{scene_dir}: {chosen}.npy has {len(seg)} rows but coord.npy has {n}")
        class_names = {"segment20": SCANNET20_CLASSES, "segment200": SCANNET200_CLASSES}.get(chosen)
        names_file = scene_dir / _CLASS_NAMES_FILE
        if chosen == "segment" and names_file.is_file():
            with reading(names_file, "a JSON list of class names"):
                class_names = tuple(json.loads(names_file.read_text()))
    inst = None
    if (scene_dir / "instance.npy").is_file():
        inst = _load_array(scene_dir / "instance.npy", mmap)
        if len(inst) != n:
            raise InputError(f"{scene_dir}: instance.npy has {len(inst)} rows but coord.npy has {n}")
    try:
        return Scene(name, arrays["coord"], arrays["color"], arrays["normal"], seg, inst, frame_set, class_names)
    except InputError as e:
        raise InputError(f"scene folder {scene_dir}: {e}") from e




def _segment_file_for(class_names: Optional[Tuple[str, ...]]) -> str:
    if class_names == SCANNET20_CLASSES:
        return "segment20"
    if class_names == SCANNET200_CLASSES:
        return "segment200"
    return "segment"


def write_scene(scene: Scene, out_dir: PathLike, *, extra_arrays: Optional[Mapping[str, np.ndarray]] = None,
                color_format: str = "jpg", overwrite: bool = False, write_frames_too: bool = True) -> Path:
    """Write ``scene`` as a scene folder, atomically (:func:`move_into_place`): ``out_dir`` is either absent,
    the previous folder (``overwrite=True``) or the complete new one, also when writing fails.

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
    move_into_place(out_dir, lambda folder: _write_scene_files(scene, folder, extras, color_format,
                                                               write_frames_too))
    return out_dir


def _write_scene_files(scene: Scene, folder: Path, extras: Mapping[str, np.ndarray], color_format: str,
                       write_frames_too: bool) -> None:
    if scene.coord is not None:
        np.save(folder / "coord.npy", scene.coord.astype(np.float32))
        np.save(folder / "color.npy", np.clip(np.rint(scene.color), 0, 255).astype(np.uint8))
        np.save(folder / "normal.npy", scene.normal.astype(np.float32))
        if scene.segment is not None:
            stem = _segment_file_for(scene.class_names)
            np.save(folder / f"{stem}.npy", scene.segment.astype(np.int32))
            if stem == "segment" and scene.class_names is not None:
                (folder / _CLASS_NAMES_FILE).write_text(json.dumps(list(scene.class_names)))
        if scene.instance is not None:
            np.save(folder / "instance.npy", scene.instance.astype(np.int32))
        for k, v in extras.items():
            v = np.asarray(v)
            np.save(folder / f"{k}.npy", v.astype(np.int32) if np.issubdtype(v.dtype, np.integer) else v)
    if write_frames_too and scene.frames is not None and len(scene.frames):
        write_frames(folder / "frames", scene.frames, color_format=color_format)


def move_into_place(out_dir: Path, write: Callable[[Path], None]) -> None:
    """Fill a new folder with ``write(folder)`` and move it to ``out_dir``, replacing an existing folder there:
    readers see the previous folder or the complete new one, never a half-written one.

    Raises what ``write`` or a rename raises (OSError: no permission, disk full, a file at ``out_dir``, ...)
    with nothing left behind but the previous folder, as it was. Only if the previous folder can be neither
    replaced nor put back does it stay where it was moved aside; the OSError says where.
    """
    if os.path.lexists(out_dir) and not out_dir.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", str(out_dir))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # The one folder this call creates, next to out_dir so that renames stay on its file system: the new
    # folder is written to staging/new and a previous one is moved to staging/old while new takes its place,
    # so removing staging leaves no trace of a failure.
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    new, old = staging / "new", staging / "old"
    try:
        new.mkdir()  # not staging itself: mkdtemp makes that private, and the folder is for others to read
        write(new)
        _swap_in(new, out_dir, old)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        if not os.path.lexists(old):  # else the previous folder could not be put back and is only there now
            shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)


def _swap_in(new: Path, out_dir: Path, old: Path) -> None:
    """Rename ``new`` to ``out_dir``; an existing ``out_dir`` is first renamed to ``old`` (in the caller's
    staging folder) and renamed back when ``new`` cannot take its place."""
    if not os.path.lexists(out_dir):
        os.replace(new, out_dir)
        return
    os.replace(out_dir, old)
    try:
        os.replace(new, out_dir)
    except BaseException as e:
        try:
            os.replace(old, out_dir)
        except OSError:
            raise OSError(e.errno if isinstance(e, OSError) else None,
                          f"{out_dir} could not be replaced and the previous folder could not be put back: it "
                          f"is in {old}", str(out_dir)) from e
        raise
