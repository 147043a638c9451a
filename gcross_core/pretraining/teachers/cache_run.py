"""Fill the teacher-feature cache (:mod:`~gcross_core.pretraining.teachers.cache`): run a frozen teacher over
every color frame of some scenes. ``training/cache_features.py`` is its command line.

Each scene needs SensReader color frames (``<scene>/frames/color/<i>.jpg|png``, or ``<scene>/color/...``); the
frame id is the file stem. Frames already cached for the same teacher are skipped, so an interrupted run
resumes; a cache written by another teacher under the same key is discarded and recomputed.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from gcross_core.data.frames import COLOR_IMAGE, color_images
from gcross_core.errors import InputError, reading
from gcross_core.pretraining.teachers.base import Teacher
from gcross_core.pretraining.teachers.cache import FeatureCache

log = logging.getLogger(__name__)

PathLike = Union[str, Path]


def color_frames(scene_dir: PathLike) -> List[Tuple[str, Path]]:
    """(frame id, path) of the scene's color images in numeric order; the id is the file stem."""
    scene_dir = Path(scene_dir)
    for color_dir in (scene_dir / "frames" / "color", scene_dir / "color"):
        if color_dir.is_dir():
            return color_images(color_dir)  # the order SensReaderFrames reads them in
    raise FileNotFoundError(f"scene {scene_dir} has no color frames: expected {scene_dir}/frames/color/<i>.jpg|png "
                            "(ScanNet SensReader export layout)")


def load_rgb(path: PathLike) -> torch.Tensor:  # -> [3, H, W] float32 RGB in 0..1
    with reading(path, COLOR_IMAGE), Image.open(path) as im:
        arr = np.array(im.convert("RGB"), dtype=np.uint8)  # a writable copy for torch
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def cache_scene(teacher: Teacher, scene_dir: PathLike, out_root: Optional[PathLike], batch_size: int,
                overwrite: bool, limit: Optional[int] = None, progress: bool = True) -> Tuple[int, int]:
    """Fill one scene's cache; returns (frames computed, frames already cached)."""
    if batch_size < 1:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    scene_dir = Path(scene_dir)
    frames = color_frames(scene_dir)[:limit]
    cache = FeatureCache.for_teacher(scene_dir, teacher, root=out_root)
    todo = frames if overwrite else [(fid, p) for fid, p in frames if not cache.has(fid)]
    device = teacher.pixel_mean.device
    for start in tqdm(range(0, len(todo), batch_size), desc=scene_dir.name, unit="batch", leave=False,
                      disable=not progress):
        chunk = todo[start:start + batch_size]
        images = [load_rgb(p) for _, p in chunk]
        # Frames of one scene normally share a size; mixed sizes are resized one by one by the teacher.
        if all(im.shape == images[0].shape for im in images):
            feats = teacher(torch.stack(images).to(device))
        else:
            feats = torch.cat([teacher(im[None].to(device)) for im in images])
        for (fid, _), f in zip(chunk, feats):
            cache.put(fid, f)
    return len(todo), len(frames) - len(todo)


def cache_scenes(teacher: Teacher, scene_dirs: Sequence[PathLike], out_root: Optional[PathLike] = None,
                 batch_size: int = 4, overwrite: bool = False, limit: Optional[int] = None,
                 progress: bool = True) -> Tuple[int, int]:
    """Fill the cache of every scene (``out_root`` unset: inside each scene folder), logging progress;
    returns (frames computed, frames already cached) over all scenes."""
    log.info("teacher %s: %d channels at %dx%d for %dx%d input, fingerprint %s", teacher.name,
             teacher.feature_dim, *teacher.output_size, *teacher.input_size, teacher.fingerprint())
    t0, total_new, total_kept = time.perf_counter(), 0, 0
    for scene in tqdm(scene_dirs, desc="scenes", unit="scene", disable=not progress):
        new, kept = cache_scene(teacher, scene, out_root, batch_size, overwrite, limit, progress)
        total_new, total_kept = total_new + new, total_kept + kept
        log.info("%s: %d frames computed, %d already cached", scene, new, kept)
    dt = time.perf_counter() - t0
    log.info("done: %d frames computed in %.1f s (%.3f s/frame), %d reused", total_new, dt,
             dt / max(total_new, 1), total_kept)
    return total_new, total_kept


__all__ = ["color_frames", "load_rgb", "cache_scene", "cache_scenes"]
