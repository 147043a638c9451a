"""Convert the official ScanNet v2 release into scene folders (Pointcept layout + SensReader frames).

    python training/prepare_scannet.py --scannet-root /data/ScanNet --out data/scannet \
        [--workers 4] [--frame-every 10] [--frame-size 640x480] [--no-frames] [--scenes scene0000_00 ...]

Reads ``<root>/scans/<scene>/`` (and ``<root>/scans_test/``): the ``_vh_clean_2.ply`` mesh, labels from
``.aggregation.json`` + ``_vh_clean_2.0.010000.segs.json`` (or ``_vh_clean_2.labels.ply``) mapped through
``scannetv2-labels.combined.tsv``, and frames from ``<scene>.sens``. Writes per scene coord, color,
normal (area-weighted from the mesh faces), segment20, segment200, instance and ``frames/`` (every k-th
frame, color registered to the depth camera and both resized to ``--frame-size``).

With the split lists ``scannetv2_{train,val,test}.txt`` (in ``--splits-dir``, default the root) scenes go
to ``<out>/<split>/<scene>``, otherwise to ``<out>/<scene>``. Scenes run in parallel. Each scene is
written to a temporary folder and renamed when complete, so a finished scene folder is always whole: a
rerun skips finished scenes (resume), and a scene that fails is logged, leaves nothing behind and does
not stop the others. Once every other scene is done, the last line names what failed and the exit status
says why: 2 when every failed scene failed on bad input (a scan file missing, truncated or garbled; the
line names the first such file), 1 when any failed for another reason; 0 when none failed.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence, Tuple

from gcross_core.cli import cli_main
from gcross_core.data.scannet import SceneFailure, ScanNetPrepConfig, prepare_scannet
from gcross_core.errors import GcrossError, InputError


def parse_size(text: str) -> Tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 640x480, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"frame size must be positive, got {text!r}")
    return w, h


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[-1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scannet-root", type=Path, required=True, help="folder holding scans/ (and scans_test/)")
    ap.add_argument("--out", type=Path, required=True, help="output root for the scene folders")
    ap.add_argument("--tsv", type=Path, default=None,
                    help="scannetv2-labels.combined.tsv (default: <root>/scannetv2-labels.combined.tsv)")
    ap.add_argument("--splits-dir", type=Path, default=None, help="folder with scannetv2_{train,val,test}.txt")
    ap.add_argument("--scenes", nargs="*", default=None, help="only these scene names")
    ap.add_argument("--workers", type=int, default=2, help="scenes converted in parallel")
    ap.add_argument("--frame-every", type=int, default=ScanNetPrepConfig.frame_every, help="keep every k-th frame")
    ap.add_argument("--frame-size", type=parse_size, default=(ScanNetPrepConfig.frame_width,
                                                              ScanNetPrepConfig.frame_height),
                    help="WIDTHxHEIGHT of the written frames (default 640x480, the depth grid)")
    ap.add_argument("--no-frames", action="store_true", help="skip the .sens files")
    ap.add_argument("--color-format", choices=("jpg", "png"), default="jpg")
    ap.add_argument("--overwrite", action="store_true", help="redo scenes whose folder already exists")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap.parse_args(argv)


@cli_main("prepare_scannet.py")
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = ScanNetPrepConfig(frame_every=args.frame_every, frame_width=args.frame_size[0],
                            frame_height=args.frame_size[1], frames=not args.no_frames)
    failed = prepare_scannet(args.scannet_root, args.out, tsv=args.tsv, splits_dir=args.splits_dir,
                             scenes=args.scenes, cfg=cfg, color_format=args.color_format,
                             overwrite=args.overwrite, workers=args.workers, progress=not args.quiet)
    raise_for_failures(failed)
    return 0


def raise_for_failures(failed: Sequence[SceneFailure]) -> None:
    """One error for the scenes that failed: an InputError (exit 2) when all failed on bad input."""
    if not failed:
        return
    others = [f for f in failed if not f.bad_input]
    first = (others or failed)[0]
    text = f"{len(failed)} scene{'s' if len(failed) > 1 else ''} failed, nothing written for them; " \
           f"{first.scene}: {first.message}"
    raise GcrossError(text) if others else InputError(text)


if __name__ == "__main__":
    sys.exit(main())
