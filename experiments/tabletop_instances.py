"""Tabletop instance segmentation by category and grouping: which grouping separates objects in clutter?

    python -m experiments.tabletop_instances --runs RUN [RUN ...] --test DIR --clutter DIR [--dev DIR]
        [--variants today shifted_2cm ...] [--out runs/tabletop_instances]

``--runs``: fine-tuning run folders holding ``segmenter.safetensors`` with an instance head (the names
in the report are the folder names; a folder name ending in ``_seedN`` or ``_sN`` groups runs that
differ only by seed, so the report gives mean ± sample std over them). ``--test``: the mOSD test scene
folders (``test0`` ... ``test42``, from ``training/prepare_frames.py``), scored by category;
``--clutter``: a clutter test set (``training/make_clutter.py`` on the test scenes); ``--dev``: a clutter
dev set composed from the learn scenes (``training/make_clutter.py --scenes data/mosd/learn --seed 1``),
where grouping settings are chosen without looking at test data.

Every run is grouped with every variant in :data:`VARIANTS` (``InstanceConfig`` settings over the
checkpoint's own, the way ``training/evaluate.py --grouping`` sets them), and scored with AP50 / AP25 /
mAP (ScanNet rules, objects of 100 points or more) on:

- the mOSD test categories (the dataset's own: test 0-15 boxes, 16-23 stacked boxes, 24-30 occluded
  objects, 31-42 cylindric objects) and all 43 frames;
- the clutter test set, and the dev set when given.

Writes ``<out>/report.md``, ``<out>/report.json`` and, for the first run, ``<out>/clutter/<scene>.png``:
the clutter test scenes seen from above, ground-truth objects | the objects of each variant.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from gcross_core.config import apply_overrides
from gcross_core.errors import InputError
from gcross_core.evaluation.instance_metrics import InstanceAccumulator
from gcross_core.evaluation.metrics import confusion_matrix, segmentation_metrics
from gcross_core.segmentation.dataset import list_scenes, load_labelled_scene
from gcross_core.segmentation.instance import InstanceConfig, thing_mask
from gcross_core.segmentation.segmenter import Segmenter

log = logging.getLogger("tabletop_instances")

# the mOSD test categories (the dataset's README): name -> frame numbers
MOSD_TEST_CATEGORIES: Dict[str, range] = {"boxes": range(0, 16), "stacked": range(16, 24),
                                          "occluded": range(24, 31), "cylinders": range(31, 43)}

# grouping variants: name -> InstanceConfig overrides on the checkpoint's settings (see instance.py); the
# merge_* variants and the recipe (finetune_tabletop_insseg.yaml) add step 6 to the best of the others
VARIANTS: Dict[str, List[str]] = {
    name: [f"cluster_radius_m={o}", f"shifted_radius_m={sh}", f"normal_min_cos={n}", f"merge_centre_m={m}"]
    for name, (o, sh, n, m) in {
        "today": (0.03, "null", "null", "null"),  # PointGroup: one 3 cm radius
        "shifted_2cm": (0.03, 0.02, "null", "null"),
        "shifted_1.5cm": (0.03, 0.015, "null", "null"),
        "shifted_2cm_original_2.5cm": (0.025, 0.02, "null", "null"),
        "shifted_2cm_normals_0.5": (0.03, 0.02, 0.5, "null"),
        "shifted_2cm_original_2.5cm_normals_0.3": (0.025, 0.02, 0.3, "null"),
        "merge_3cm": (0.025, 0.02, 0.3, 0.03),
        "merge_4cm": (0.025, 0.02, 0.3, 0.04),
        "recipe": (0.025, 0.02, 0.3, 0.05),
        "merge_6cm": (0.025, 0.02, 0.3, 0.06),
    }.items()}


def _frame_number(name: str) -> Optional[int]:
    m = re.fullmatch(r"test(\d+)", name)
    return int(m.group(1)) if m else None


def scene_sets(test: Path, clutter: Path, dev: Optional[Path]) -> Dict[str, List[Path]]:
    """name -> scene folders: the test categories, all test frames, the clutter test and the dev set."""
    tests = list_scenes(test, "")
    by_number = {_frame_number(p.name): p for p in tests}
    sets = {cat: [by_number[n] for n in frames if n in by_number] for cat, frames in MOSD_TEST_CATEGORIES.items()}
    missing = [cat for cat, scenes in sets.items() if not scenes]
    if missing:
        raise InputError(f"--test {test}: no scene folders test<N> of the categories {missing}; expected the mOSD "
                         f"test frames prepared by training/prepare_frames.py")
    sets["test0-42"] = tests
    sets["clutter test"] = list_scenes(clutter, "")
    if dev is not None:
        sets["clutter dev"] = list_scenes(dev, "")
    return sets


def score_run(checkpoint: Path, sets: Dict[str, List[Path]], variants: Dict[str, List[str]]) -> dict:
    """variant -> set -> {ap50, ap25, map, miou, instances} of one segmenter checkpoint (each scene is
    segmented once per variant and counted in every set that holds it)."""
    segmenter = Segmenter.from_checkpoint(checkpoint)
    if segmenter.instance_config is None:
        raise InputError(f"{checkpoint}: no instance head (train one with finetune_tabletop_insseg.yaml)")
    own = segmenter.instance_config.to_dict()
    k = segmenter.num_classes
    scenes = sorted({p for paths in sets.values() for p in paths})
    out: dict = {}
    for name, overrides in variants.items():
        segmenter.instance_config = InstanceConfig.from_dict(apply_overrides(own, overrides))
        thing = thing_mask(segmenter.class_names, segmenter.instance_config.stuff_classes)
        acc = {s: InstanceAccumulator(segmenter.class_names, thing, 100) for s in sets}
        conf = {s: np.zeros((k, k), np.int64) for s in sets}
        found = dict.fromkeys(sets, 0)
        for path in scenes:
            scene = load_labelled_scene(path, "segment", segmenter.class_names)
            if scene.instance is None:
                raise InputError(f"{path}: no instance.npy; expected scenes with instance ids")
            pred = segmenter.predict_instances(scene.coord, scene.color, scene.normal)
            for s, paths in sets.items():
                if path in paths:
                    acc[s].add(pred.instances.indices, pred.instances.classes, pred.instances.scores,
                               scene.segment, scene.instance)
                    conf[s] += confusion_matrix(pred.labels, scene.segment, k)
                    found[s] += len(pred.instances)
        out[name] = {}
        for s in sets:
            i = acc[s].metrics()
            out[name][s] = {"ap50": i.ap50, "ap25": i.ap25, "map": i.map,
                            "miou": segmentation_metrics(conf[s]).miou, "instances": found[s]}
    return out


def instance_colours(n: int) -> np.ndarray:
    """[n, 3] uint8 distinct-looking colours for instance ids (golden-ratio hues, fixed)."""
    import colorsys

    return np.array([[int(255 * c) for c in colorsys.hsv_to_rgb((0.61803 * i) % 1.0, 0.75, 0.95)]
                     for i in range(max(n, 1))], np.uint8)


def top_view(coord: np.ndarray,  # [N, 3] z up
             ids: np.ndarray,  # [N] int, -1 = no object
             pixel_m: float = 0.004) -> np.ndarray:  # -> [H, W, 3] uint8
    """The cloud seen from above (the highest point per pixel), objects coloured by id, the rest grey."""
    ij = np.floor((coord[:, :2] - coord[:, :2].min(0)) / pixel_m).astype(np.int64)
    h, w = int(ij[:, 1].max()) + 1, int(ij[:, 0].max()) + 1
    img = np.full((h * w, 3), 255, np.uint8)
    order = np.argsort(coord[:, 2], kind="stable")  # the highest point of a pixel is written last
    pix = (h - 1 - ij[order, 1]) * w + ij[order, 0]
    sel = ids[order]
    cols = instance_colours(int(ids.max()) + 1 if (ids >= 0).any() else 1)
    img[pix] = np.where(sel[:, None] >= 0, cols[np.maximum(sel, 0)], np.array([150, 150, 150], np.uint8))
    return img.reshape(h, w, 3)


def clutter_sheets(out: Path, segmenters: Dict[str, Segmenter], scenes: Sequence[Path]) -> List[Path]:
    """Per scene ``<out>/<scene>.png``: ground-truth objects | each segmenter's objects, seen from above."""
    from PIL import Image, ImageDraw

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in scenes:
        first = next(iter(segmenters.values()))
        scene = load_labelled_scene(path, "segment", first.class_names)
        table = list(first.class_names).index("table") if "table" in first.class_names else -1
        gt = np.where((scene.instance >= 0) & (scene.segment != table), scene.instance, -1)
        _, gt_ids = np.unique(gt, return_inverse=True)
        panels = [(f"ground truth: {len(np.unique(gt[gt >= 0]))} objects",
                   top_view(scene.coord, np.where(gt >= 0, gt_ids - int((gt < 0).any()), -1)))]
        for name, seg in segmenters.items():
            pred = seg.predict_instances(scene.coord, scene.color, scene.normal)
            panels.append((f"{name}: {len(pred.instances)} objects", top_view(scene.coord, pred.instance)))
        h = max(p.shape[0] for _, p in panels)
        w = sum(p.shape[1] + 8 for _, p in panels)
        sheet = Image.new("RGB", (w, h + 18), (255, 255, 255))
        x = 0
        for title, img in panels:
            sheet.paste(Image.fromarray(img), (x, 18))
            ImageDraw.Draw(sheet).text((x + 2, 3), title, fill=(0, 0, 0))
            x += img.shape[1] + 8
        sheet.save(out / f"{path.name}.png")
        written.append(out / f"{path.name}.png")
    return written


def group_name(run: Path) -> str:
    """The run's name without its seed suffix (``_seed3``, ``_s3``)."""
    return re.sub(r"_(seed|s)\d+$", "", run.name)


def _stat(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.fmean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def report(results: Dict[str, dict], set_names: Sequence[str]) -> List[str]:
    """Markdown: per group of runs and variant, AP50 (mean ± std over seeds) on every set; then AP25 and
    mAP on the clutter test."""
    groups: Dict[str, List[str]] = {}
    for run in results:
        groups.setdefault(group_name(Path(run)), []).append(run)
    variants = list(next(iter(results.values())))
    lines = ["# Tabletop instances by category and grouping", "",
             "AP50 in %, mean ± sample std over the runs of a group (seeds); objects of >= 100 points.", "",
             "| runs | grouping | " + " | ".join(set_names) + " |", "|---|---|" + "---|" * len(set_names)]
    for group, runs in groups.items():
        for v in variants:
            cells = [_stat([results[r][v][s]["ap50"] for r in runs]) for s in set_names]
            lines.append(f"| {group} (n={len(runs)}) | {v} | " + " | ".join(cells) + " |")
    lines += ["", "Clutter test: AP25 / mAP / instances found (mean over runs); semantic mIoU on test0-42:", "",
              "| runs | grouping | AP25 | mAP | instances | test0-42 mIoU |", "|---|---|---|---|---|---|"]
    for group, runs in groups.items():
        for v in variants:
            c = [results[r][v]["clutter test"] for r in runs]
            lines.append(f"| {group} | {v} | {_stat([x['ap25'] for x in c])} | {_stat([x['map'] for x in c])} | "
                         f"{statistics.fmean(x['instances'] for x in c):.0f} | "
                         f"{_stat([results[r][v]['test0-42']['miou'] for r in runs])} |")
    return lines


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True,
                    help="fine-tuning run folders with segmenter.safetensors (instance head)")
    ap.add_argument("--test", type=Path, required=True, help="mOSD test scene folders (test0 ... test42)")
    ap.add_argument("--clutter", type=Path, required=True, help="clutter test set (training/make_clutter.py)")
    ap.add_argument("--dev", type=Path, default=None, help="clutter dev set composed from learn scenes")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", type=Path, default=Path("runs/tabletop_instances"))
    return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sets = scene_sets(args.test, args.clutter, args.dev)
    variants = {v: VARIANTS[v] for v in args.variants}
    results = {}
    for k, run in enumerate(args.runs):
        ckpt = run / "segmenter.safetensors"
        if not ckpt.is_file():
            raise InputError(f"--runs {run}: no segmenter.safetensors; expected a finished fine-tuning run")
        results[str(run)] = score_run(ckpt, sets, variants)
        log.info("%d/%d %s: clutter AP50 %s", k + 1, len(args.runs), run.name,
                 "  ".join(f"{v} {100 * r['clutter test']['ap50']:.1f}" for v, r in results[str(run)].items()))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps({"sets": {k: [p.name for p in v] for k, v in sets.items()},
                                                      "variants": variants, "runs": results}, indent=1))
    first = Segmenter.from_checkpoint(args.runs[0] / "segmenter.safetensors")
    own = first.instance_config.to_dict()
    variant_segs = {}
    for v, overrides in variants.items():
        seg = Segmenter.from_checkpoint(args.runs[0] / "segmenter.safetensors")
        seg.instance_config = InstanceConfig.from_dict(apply_overrides(own, overrides))
        variant_segs[v] = seg
    clutter_sheets(args.out / "clutter", variant_segs, sets["clutter test"])
    lines = report(results, list(sets))
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
