"""Fused points of a frames-only scene, cached on disk and keyed by the fusion settings.

Fusing every frame of a room into points (:func:`gcross_core.mapping.frame_sets.fuse_frames_to_points`)
takes 10-25 s for a few hundred 640x480 frames; every pretraining run and every dataset load would
repeat it. :func:`fused_points` does it once per (settings, frames) and keeps the result in a folder:

    <cache>/coord.npy    float32 [N, 3] metres, world frame of the poses
    <cache>/color.npy    float32 [N, 3] 0..255
    <cache>/normal.npy   float32 [N, 3] unit normals, zero where the frames gave none
    <cache>/fusion.json  the settings and a fingerprint of the frames (ids and poses) it was made from

``<cache>`` is ``<scene>/fused`` by default, or ``<cache_root>/<scene name>-<hash of its path>`` when
the scene folder is read-only or a cache root is given. A cache whose settings or frames differ from
the ones asked for is stale: it is fused again and overwritten (logged), never read.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from gcross_core.data.frames import FrameSet
from gcross_core.errors import InputError
from gcross_core.files import atomic_path
from gcross_core.mapping import frame_sets

log = logging.getLogger(__name__)

CACHE_DIRNAME = "fused"
META_FILE = "fusion.json"
CACHE_VERSION = 1  # bump when the fused output of equal settings changes
_ARRAYS = ("coord", "color", "normal")


@dataclass(frozen=True)
class FusionSettings:
    """What the fused points depend on besides the frames themselves."""

    voxel_size_m: float = 0.02  # edge of a fusion voxel (one point per voxel)
    every: int = 1  # fuse every k-th frame
    max_depth_m: float = 5.0  # depth beyond this is ignored (Kinect-class sensors are noisy past ~5 m)

    def __post_init__(self) -> None:
        if not (np.isfinite(self.voxel_size_m) and self.voxel_size_m > 0):
            raise InputError(f"fusion voxel_size_m must be > 0, got {self.voxel_size_m}")
        if int(self.every) != self.every or self.every < 1:
            raise InputError(f"fusion every must be an integer >= 1, got {self.every}")
        if not (np.isfinite(self.max_depth_m) and self.max_depth_m > 0):
            raise InputError(f"fusion max_depth_m must be > 0, got {self.max_depth_m}")


@dataclass(frozen=True)
class FusedPoints:
    coord: np.ndarray  # [N, 3] float32 metres
    color: np.ndarray  # [N, 3] float32 0..255
    normal: np.ndarray  # [N, 3] float32
    from_cache: bool  # True when read from disk, False when fused by this call
    cache_dir: Optional[Path]  # where the cache lives (None: not cached)


def frames_fingerprint(frames: FrameSet) -> str:
    """sha1 of the frame ids and poses: changes when frames are added, removed, renamed or re-posed."""
    h = hashlib.sha1()
    for i, fid in enumerate(frames.frame_ids):
        h.update(fid.encode())
        h.update(np.round(np.asarray(frames.cam_to_world(i), np.float64), 9).tobytes())
    return h.hexdigest()


def default_cache_dir(scene_dir: Union[str, Path], cache_root: Optional[Union[str, Path]] = None) -> Path:
    """``<scene>/fused``, or a folder under ``cache_root`` named after the scene and its absolute path."""
    scene_dir = Path(scene_dir)
    if cache_root is None:
        return scene_dir / CACHE_DIRNAME
    digest = hashlib.sha1(str(scene_dir.resolve()).encode()).hexdigest()[:10]
    return Path(cache_root) / f"{scene_dir.name}-{digest}"


def _wanted_meta(frames: FrameSet, settings: FusionSettings) -> dict:
    return {"version": CACHE_VERSION, "settings": asdict(settings), "frames": len(frames),
            "fingerprint": frames_fingerprint(frames)}


def _read(cache_dir: Path, wanted: dict) -> Tuple[Optional[Tuple[np.ndarray, ...]], str]:
    """(arrays, "") when the cache matches ``wanted``; (None, why not) otherwise."""
    meta_path = cache_dir / META_FILE
    if not meta_path.is_file():
        return None, "no cache"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return None, f"unreadable {META_FILE} ({e})"
    for key in ("version", "settings", "frames", "fingerprint"):
        if meta.get(key) != wanted[key]:
            return None, f"{key} changed ({meta.get(key)} -> {wanted[key]})"
    try:
        arrays = tuple(np.load(cache_dir / f"{name}.npy") for name in _ARRAYS)
    except (OSError, ValueError) as e:
        return None, f"unreadable arrays ({e})"
    n = len(arrays[0])
    if any(a.shape != (n, 3) for a in arrays):
        return None, f"arrays of shapes {[a.shape for a in arrays]}"
    return arrays, ""


def _write(cache_dir: Path, arrays: Tuple[np.ndarray, ...], meta: dict) -> None:
    """Arrays first, metadata last (each renamed into place): a crash leaves no valid-looking stale cache."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / META_FILE).unlink(missing_ok=True)
    for name, arr in zip(_ARRAYS, arrays):
        with atomic_path(cache_dir / f"{name}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, arr)
    with atomic_path(cache_dir / META_FILE) as tmp, open(tmp, "w") as f:
        json.dump(meta, f, indent=1)


def _writable(cache_dir: Path) -> bool:
    probe = cache_dir
    while not probe.exists():
        probe = probe.parent
    return os.access(probe, os.W_OK)


def fused_points(frames: FrameSet, settings: FusionSettings = FusionSettings(),
                 cache_dir: Optional[Union[str, Path]] = None) -> FusedPoints:
    """Points of ``frames`` fused with ``settings``, read from ``cache_dir`` when it holds them.

    ``cache_dir`` None: fuse without caching. A cache that does not match (settings, frame ids, poses)
    is fused again and rewritten; a read-only location is fused every time, with a warning.
    """
    if len(frames) == 0:
        raise InputError("fused_points: the frame set is empty")
    wanted = _wanted_meta(frames, settings)
    cache = None if cache_dir is None else Path(cache_dir)
    if cache is not None:
        arrays, why = _read(cache, wanted)
        if arrays is not None:
            log.info("fused points of %d frames read from %s (%d points)", len(frames), cache, len(arrays[0]))
            return FusedPoints(*arrays, from_cache=True, cache_dir=cache)
        if why != "no cache":
            log.info("fused-points cache %s is stale (%s); fusing again", cache, why)
    log.info("fusing %d frames into points (voxel %.3f m, every %d, depth <= %.1f m)", len(frames),
             settings.voxel_size_m, settings.every, settings.max_depth_m)
    arrays = frame_sets.fuse_frames_to_points(frames, settings.voxel_size_m, every=settings.every,
                                          max_depth_m=settings.max_depth_m)[:3]
    if cache is not None:
        if _writable(cache):
            _write(cache, arrays, wanted)
        else:
            log.warning("cannot write the fused-points cache %s (read-only); set a cache root "
                        "(data.pipeline.fuse_cache_root) to fuse once", cache)
            cache = None
    return FusedPoints(*arrays, from_cache=False, cache_dir=cache)
