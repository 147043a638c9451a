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
rerun skips finished scenes (resume), and a scene that fails (corrupt or truncated input) is reported,
leaves nothing behind, and makes the exit status 1 once all other scenes are done.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from gcross_core.cli import cli_main  # noqa: E402
from gcross_core.errors import InputError  # noqa: E402
from gcross_core.data.scannet import ScanNetPrepConfig, prepare_scan  # noqa: E402

logger = logging.getLogger("prepare_scannet")

SPLITS = ("train", "val", "test")


def parse_size(text: str) -> Tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 640x480, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"frame size must be positive, got {text!r}")
    return w, h


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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


def find_scans(root: Path) -> Dict[str, Path]:
    scans = {}
    for sub in ("scans", "scans_test"):
        d = root / sub
        if d.is_dir():
            for p in sorted(d.iterdir()):
                if p.is_dir() and (p / f"{p.name}_vh_clean_2.ply").is_file():
                    scans[p.name] = p
    return scans


def read_splits(splits_dir: Path) -> Dict[str, str]:
    """scene name -> split, from whichever split lists exist."""
    out = {}
    for split in SPLITS:
        f = splits_dir / f"scannetv2_{split}.txt"
        if f.is_file():
            for line in f.read_text().split():
                out[line.strip()] = split
    return out


def remove_stale_temporaries(out_root: Path) -> int:
    """Delete temporary folders a killed run left behind (``.<scene>.tmp-*`` / ``.<scene>.old-*``)."""
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


@cli_main("prepare_scannet.py")
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root = args.scannet_root
    scans = find_scans(root)
    if not scans:
        raise InputError(f"no scans found under {root}/scans or {root}/scans_test")
    if args.scenes:
        missing = sorted(set(args.scenes) - set(scans))
        if missing:
            raise InputError(f"scenes not found under {root}: {', '.join(missing)}")
        scans = {k: scans[k] for k in args.scenes}
    tsv = args.tsv or root / "scannetv2-labels.combined.tsv"
    if not tsv.is_file():
        logger.warning("label map %s not found: scenes with annotations will fail", tsv)
        tsv = None
    splits = read_splits(args.splits_dir or root)
    jobs: List[Tuple[str, Path, Path]] = []
    for name, scan_dir in scans.items():
        if splits:
            if name not in splits:
                logger.warning("%s is in no split list; skipped", name)
                continue
            out_dir = args.out / splits[name] / name
        else:
            out_dir = args.out / name
        jobs.append((name, scan_dir, out_dir))

    args.out.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temporaries(args.out)
    if stale:
        logger.info("removed %d temporary folders of an interrupted run", stale)
    todo = [j for j in jobs if args.overwrite or not j[2].exists()]
    logger.info("%d scenes: %d already done, %d to convert", len(jobs), len(jobs) - len(todo), len(todo))
    cfg = asdict(ScanNetPrepConfig(frame_every=args.frame_every, frame_width=args.frame_size[0],
                                   frame_height=args.frame_size[1], frames=not args.no_frames))
    failed = []
    bar = tqdm(total=len(todo), desc="scenes", unit="scene", disable=args.quiet)

    def report(result):
        name, status, msg, seconds = result
        if status == "done":
            logger.info("%s: %s (%.1f s)", name, msg, seconds)
        else:
            failed.append(name)
            logger.error("%s failed, nothing written: %s", name, msg)
        bar.update(1)

    job_args = [(str(s), str(o), None if tsv is None else str(tsv), cfg, args.color_format, args.overwrite)
                for _, s, o in todo]
    if args.workers <= 1 or len(todo) <= 1:
        for a in job_args:
            report(prepare_scan(*a))
    else:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            for fut in as_completed([pool.submit(prepare_scan, *a) for a in job_args]):
                report(fut.result())
    bar.close()
    if failed:
        logger.error("%d of %d scenes failed: %s", len(failed), len(todo), ", ".join(sorted(failed)))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
