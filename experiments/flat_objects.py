"""Flat objects against the table: how well are object points labelled by their height above the table?

    python -m experiments.flat_objects --runs RUN [RUN ...] --test DIR [--out runs/flat_objects]

``--runs``: fine-tuning run folders holding ``segmenter.safetensors`` (tabletop classes table / object);
runs whose folder names differ only by a ``_seedN`` / ``_sN`` suffix are reported together (mean ± std).
``--test``: labelled tabletop scene folders, z up (``training/prepare_frames.py --up plane``).

The table top of a scene is the median z of its ground-truth table points. Every ground-truth object point
falls in a height band above it (``BANDS``); per band the report gives the share of object points labelled
object (recall), and, over the points predicted object there, the share that are object (precision). A
book or DVD case lying flat has all its points in the lowest bands: a model that labels them table
shows a low recall there while higher bands stay near 100 %.

Writes ``<out>/report.md`` and ``<out>/report.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from experiments.tabletop_instances import group_name
from gcross_core.errors import InputError
from gcross_core.segmentation.dataset import list_scenes, load_labelled_scene
from gcross_core.segmentation.segmenter import Segmenter

# height above the table top, metres: [low, high)
BANDS = ((-1.0, 0.01), (0.01, 0.02), (0.02, 0.04), (0.04, 0.08), (0.08, 10.0))


def band_name(low: float, high: float) -> str:
    if low < -0.5:
        return f"< {100 * high:.0f} cm"
    if high > 5:
        return f">= {100 * low:.0f} cm"
    return f"{100 * low:.0f}-{100 * high:.0f} cm"


def band_counts(segmenter: Segmenter, scenes: Sequence[Path]) -> Dict[str, Dict[str, int]]:
    """Per band: object points, those labelled object, points labelled object, and of those the object ones."""
    names = list(segmenter.class_names)
    if "table" not in names or "object" not in names:
        raise InputError(f"flat_objects needs a table / object segmenter, got classes {names}")
    table, obj = names.index("table"), names.index("object")
    counts = {band_name(*b): {"object": 0, "object_as_object": 0, "pred_object": 0, "pred_object_true": 0}
              for b in BANDS}
    for path in scenes:
        scene = load_labelled_scene(path, "segment", names)
        if not (scene.segment == table).any():
            raise InputError(f"{path}: no table points; expected a tabletop scene with segment labels")
        height = scene.coord[:, 2] - np.median(scene.coord[scene.segment == table, 2])
        labels, _, _ = segmenter.predict(scene.coord, scene.color, scene.normal)
        for low, high in BANDS:
            c = counts[band_name(low, high)]
            inside = (height >= low) & (height < high) & (scene.segment >= 0)
            is_obj, said_obj = inside & (scene.segment == obj), inside & (labels == obj)
            c["object"] += int(is_obj.sum())
            c["object_as_object"] += int((is_obj & (labels == obj)).sum())
            c["pred_object"] += int(said_obj.sum())
            c["pred_object_true"] += int((said_obj & (scene.segment == obj)).sum())
    return counts


def _share(a: int, b: int) -> Optional[float]:
    return a / b if b else None


def _stat(values: List[Optional[float]]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{100 * vals[0]:.1f}"
    return f"{100 * statistics.fmean(vals):.1f} ± {100 * statistics.stdev(vals):.1f}"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="fine-tuning run folders")
    ap.add_argument("--test", type=Path, required=True, help="labelled tabletop scene folders, z up")
    ap.add_argument("--out", type=Path, default=Path("runs/flat_objects"))
    return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    scenes = list_scenes(args.test, "")
    results = {}
    for run in args.runs:
        ckpt = run / "segmenter.safetensors"
        if not ckpt.is_file():
            raise InputError(f"--runs {run}: no segmenter.safetensors; expected a finished fine-tuning run")
        results[str(run)] = band_counts(Segmenter.from_checkpoint(ckpt), scenes)
    groups: Dict[str, List[str]] = {}
    for run in results:
        groups.setdefault(group_name(Path(run)), []).append(run)
    bands = [band_name(*b) for b in BANDS]
    first = next(iter(results.values()))
    lines = ["# Object points by height above the table", "",
             f"{len(scenes)} scenes; object points per band: " + ", ".join(f"{b} {first[b]['object']}" for b in bands),
             "", "Recall (object points labelled object) / precision (points labelled object that are object), %, "
             "mean ± std over the runs of a group:", "",
             "| runs | " + " | ".join(bands) + " |", "|---|" + "---|" * len(bands)]
    for group, runs in groups.items():
        cells = []
        for b in bands:
            rec = _stat([_share(results[r][b]["object_as_object"], results[r][b]["object"]) for r in runs])
            pre = _stat([_share(results[r][b]["pred_object_true"], results[r][b]["pred_object"]) for r in runs])
            cells.append(f"{rec} / {pre}")
        lines.append(f"| {group} (n={len(runs)}) | " + " | ".join(cells) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps({"bands": bands, "runs": results}, indent=1))
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
