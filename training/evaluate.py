"""Evaluate a segmenter checkpoint on labelled scene folders, on their ORIGINAL points.

    python training/evaluate.py --checkpoint runs/finetune/segmenter.safetensors \
        --root data/scannet --split val [--label-file segment20] [--rotations 4] --out runs/finetune/eval

    python training/evaluate.py --checkpoint seg.safetensors --scenes data/synthetic/val/room_000 ... --out DIR

Every point of every scene is labelled by ``Segmenter.predict`` (grid sampling undone internally), so the
numbers are over the points as stored, not over grid cells. ``--rotations R`` averages the class
probabilities over R rotations about z (test-time augmentation). Writes into ``--out``: results.json
(mIoU, mAcc, allAcc, per-class IoU/accuracy, per-scene mIoU, settings), report.md, confusion.csv and
confusion.png. mIoU and mAcc average over the classes present in the ground truth (see
``gcross_core.evaluation.metrics``).

A checkpoint with an instance head (``task: instance`` in training/finetune.py) is also scored on the
scenes' ``instance.npy``: ScanNet-style AP25 / AP50 / mAP per class and overall, in results.json
(``instance``) and report.md (matching rules in ``gcross_core.evaluation.instance_metrics``).
``--min-gt-points`` sets the smallest ground-truth object that is scored (ScanNet: 100 points).
``--grouping KEY=VALUE`` (repeatable) groups with another setting of the checkpoint's instance grouping
(a field of ``gcross_core.segmentation.instance.InstanceConfig``, e.g. ``shifted_radius_m=0.02`` or
``normal_min_cos=0.3``); the settings used are written to results.json.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from tqdm import tqdm

from gcross_core.cli import cli_main
from gcross_core.config import apply_overrides
from gcross_core.errors import InputError
from gcross_core.evaluation.report import write_metrics_report
from gcross_core.segmentation.dataset import list_scenes
from gcross_core.segmentation.evaluate import evaluate_scenes
from gcross_core.segmentation.instance import InstanceConfig
from gcross_core.segmentation.segmenter import Segmenter

log = logging.getLogger("evaluate")

LABEL_FILE_FOR_CLASSES = {20: "segment20", 200: "segment200"}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="segmenter checkpoint (training/finetune.py)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--root", help="folder holding scene folders (under --split)")
    src.add_argument("--scenes", nargs="+", help="scene folders")
    p.add_argument("--split", default="val", help="sub-folder of --root ('' for none); default val")
    p.add_argument("--label-file", default=None,
                   help="segment20 | segment200 | segment; default: segment20/segment200 for 20/200-class "
                        "checkpoints, else segment")
    p.add_argument("--rotations", type=int, default=1, help="test-time rotations about z to average (>= 1)")
    p.add_argument("--max-scenes", type=int, default=0, help="evaluate the first N scenes only (0 = all)")
    p.add_argument("--min-gt-points", type=int, default=100,
                   help="instance AP: ground-truth objects with fewer points are not scored (ScanNet: 100)")
    p.add_argument("--grouping", action="append", default=[], metavar="KEY=VALUE",
                   help="instance grouping setting instead of the checkpoint's (an InstanceConfig field, e.g. "
                        "shifted_radius_m=0.02); repeatable")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


@cli_main("evaluate.py")
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.rotations < 1:
        raise InputError(f"--rotations must be >= 1, got {args.rotations}")
    segmenter = Segmenter.from_checkpoint(args.checkpoint, device=args.device)
    if args.grouping:
        if segmenter.instance_config is None:
            raise InputError(f"--grouping: {args.checkpoint} has no instance head, so nothing is grouped")
        segmenter.instance_config = InstanceConfig.from_dict(
            apply_overrides(segmenter.instance_config.to_dict(), args.grouping))
    label_file = args.label_file or LABEL_FILE_FOR_CLASSES.get(segmenter.num_classes, "segment")
    scenes = list_scenes(args.root, args.split) if args.root else [Path(s) for s in args.scenes]
    if args.max_scenes:
        scenes = scenes[: args.max_scenes]
    wrap = None if args.no_progress else (lambda it: tqdm(it, desc="evaluate", unit="scene"))
    t0 = time.perf_counter()
    if args.min_gt_points < 1:
        raise InputError(f"--min-gt-points must be >= 1, got {args.min_gt_points}")
    res = evaluate_scenes(segmenter, scenes, label_file, args.rotations, wrap, min_gt_points=args.min_gt_points)
    seconds = time.perf_counter() - t0
    settings = {"checkpoint": str(args.checkpoint), "label_file": label_file, "rotations": args.rotations,
                "grid_size_m": segmenter.grid_size_m, "num_scenes": len(scenes), "seconds": seconds}
    if segmenter.instance_config is not None:
        settings["grouping"] = segmenter.instance_config.to_dict()
    paths = write_metrics_report(args.out, res.conf, res.metrics, segmenter.class_names,
                                 title=f"Segmentation of {len(scenes)} scenes",
                                 extra_json={"settings": settings, "scenes": res.per_scene}, instance=res.instance)
    m = res.metrics
    log.info("%d scenes, %d points: mIoU %.1f  mAcc %.1f  allAcc %.1f  (%.1f s)", len(scenes),
             sum(s["points"] for s in res.per_scene), 100 * m.miou, 100 * m.macc, 100 * m.allacc, seconds)
    if res.instance is not None:
        i = res.instance
        log.info("instances: AP25 %.1f  AP50 %.1f  mAP %.1f", 100 * i.ap25, 100 * i.ap50, 100 * i.map)
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
