"""Bag evaluation against offline evaluation of the same scenes (issue #24): at which voxel size should the node
map so that ``gcross-bag eval`` does not lose to ``training/evaluate.py``? CPU, minutes.

    python -m experiments.bag_vs_offline --mosd DIR [--out /tmp/bvo] [--steps 300] [--seeds 0 1 2]
        [--scenes all | 16-30 0 5 ...] [--variants 0 0.02 0.01 0.01@0.04 0.005 0.005@0.04] [--checkpoint CKPT]
        [--per-scene] [--demo] [--demo-variants 0 0.025 0.025@0.1] [--check-cli 2] [--threads 1]

Steps, each reused when its output exists:

1. scene folders from the mOSD frames as ``experiments/real_tabletop.py`` makes them (``training/prepare_frames.py
   --classes table,object --up plane``, 1 cm fusion) in ``<out>/data/mosd``;
2. the scratch one-stage instance segmenter (``finetune_tabletop_insseg.yaml``, ``--steps``) per ``--seeds``
   (default 0) in ``<out>/train/scratch_insseg_<steps>[_seed<k>]`` (or ``--checkpoint``);
3. each selected test scene recorded as a bag (``gcross-bag record``: its frame, and its points with
   segment / instance as ground truth) in ``<out>/bags``;
4. offline: ``training/evaluate.py``'s evaluation (``evaluate_scenes``) of the segmenter on the scene folders,
   and its instances ranked by mean class confidence (the map's rule for objects the tracker has no score of,
   e.g. a live node's cloud; isolates the score rule);
5. bag: for each variant ``VOXEL[@RADIUS]`` (VOXEL 0: half the segmenter's grid, the node's default; RADIUS: the
   label-transfer radius, default ``gcross-bag eval``'s: twice the segmenter's grid) every bag goes through what
   ``gcross-bag eval BAG --checkpoint CKPT --voxel-size-m VOXEL [--radius-m RADIUS]`` runs (the node's frame
   assembly and SegmentationPipeline with the node's default parameters, a final segmentation, the map scored
   on the ground-truth points by nearest map point within RADIUS, objects ranked by the tracker's score). ``--check-cli N`` also runs the real
   command on the first N bags of every variant and prints its mIoU / AP50 next to this script's.

Aggregation, the same on both sides: mIoU over all points of the selected scenes (one confusion matrix),
mIoU averaged over scenes, and AP25 / AP50 / mAP of one ScanNet-style accumulator over all scenes (as
``training/evaluate.py`` pools them; a single 1-frame bag has too few objects for a stable AP).
Timings are per frame on this CPU with ``--threads``: fusion, the final segmentation (the only one in a
1-frame bag) and their sum; map voxels and the encoder's grid cells are per scene means.

``--demo``: the synthetic demo room of ``python -m gcross_ros.demo`` (seed 1000, 30 views at 320x240, the
shipped 5 cm segmenter, ``config/segment.yaml``): its bag evaluated at each ``--demo-variants`` against the
offline evaluation of its scene folder (``<out>/demo``).

Prints one table per segmenter and data set and writes ``<out>/report.md`` and ``<out>/report.json``
(``report_scenes_<spec>.*`` with ``--scenes``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

FINETUNE_INSTANCE = ROOT / "training" / "configs" / "finetune_tabletop_insseg.yaml"
NODE_PARAMS = ROOT / "config" / "segment.yaml"
CLASS_MAP = {1: "table", 2: "object"}
LABEL_FILE_FOR_CLASSES = {20: "segment20", 200: "segment200"}  # training/evaluate.py's choice
log = logging.getLogger("bag_vs_offline")


@dataclass(frozen=True)
class Variant:
    voxel_size_m: float  # 0: half the segmenter's grid (the node's default)
    radius_m: Optional[float]  # label transfer; None: gcross-bag eval's default, 2 * the map's voxel

    @classmethod
    def parse(cls, text: str) -> "Variant":
        voxel, _, radius = text.partition("@")
        return cls(float(voxel), float(radius) if radius else None)

    def label(self, grid_m: float) -> str:
        voxel = f"{100 * self.voxel_size_m:g} cm" if self.voxel_size_m else f"0 (half the grid: {50 * grid_m:g} cm)"
        radius = 2 * (self.voxel_size_m or grid_m) if self.radius_m is None else self.radius_m
        return f"{voxel}, r {100 * radius:g} cm" + ("" if self.radius_m is None else " (set)")

    @property
    def slug(self) -> str:
        return f"v{self.voxel_size_m:g}" + ("" if self.radius_m is None else f"_r{self.radius_m:g}")


# ---------------------------------------------------------------------------------------------- inputs

def prepare_mosd(mosd: Path, data: Path) -> Path:
    from gcross_core.mapping.labelled_frames import LabelledFramesConfig, prepare_labelled_scenes

    prepare_labelled_scenes(mosd, data, CLASS_MAP, LabelledFramesConfig(voxel_size_m=0.01, up="plane"))
    return data


def train_segmenter(data: Path, run_dir: Path, steps: int, seed: int, threads: int) -> Path:
    from gcross_core.config import load_config
    from gcross_core.segmentation.run import FinetuneConfig, run_finetuning

    ckpt = run_dir / "segmenter.safetensors"
    if ckpt.is_file():
        return ckpt
    overrides = [f"data.root={data}", f"train.seed={seed}", f"train.max_steps={steps}", "train.device=cpu",
                 f"train.num_threads={threads}"]
    cfg = load_config(FINETUNE_INSTANCE, FinetuneConfig, overrides)
    t = time.perf_counter()
    run_finetuning(cfg, run_dir, None, progress=False, tensorboard=False)
    (run_dir / "seconds.txt").write_text(f"{time.perf_counter() - t:.1f}\n")
    return ckpt


def select_scenes(test_root: Path, spec: Sequence[str]) -> List[Path]:
    """``all`` or test indices and ranges (``16-30 0 5``) -> scene folders in index order."""
    found = {int(p.name[len("test"):]): p for p in test_root.glob("test*") if (p / "coord.npy").is_file()}
    if not spec or list(spec) == ["all"]:
        return [found[k] for k in sorted(found)]
    wanted = []
    for item in spec:
        lo, _, hi = item.partition("-")
        wanted += range(int(lo), int(hi or lo) + 1)
    missing = [k for k in wanted if k not in found]
    if missing:
        raise SystemExit(f"--scenes: test scenes {missing} are not in {test_root}")
    return [found[k] for k in sorted(set(wanted))]


def record_bag(scene_dir: Path, bag: Path, segment: str) -> Path:
    from gcross_core.data.scene import load_scene
    from gcross_ros.bag.format import RecordConfig
    from gcross_ros.bag.writer import record_scene

    if not bag.exists():
        record_scene(load_scene(scene_dir, segment=segment), bag, RecordConfig())
    return bag


# ---------------------------------------------------------------------------------------------- scoring

class Pooled:
    """One confusion matrix and one instance accumulator over many scenes, plus per-scene mIoU and AP."""

    def __init__(self, segmenter, min_gt_points: int = 100):
        from gcross_core.segmentation.instance import thing_mask

        k = segmenter.num_classes
        self.conf = np.zeros((k, k + 1), np.int64)  # last column: ground-truth points no map point covers
        self.per_scene: List[Dict[str, float]] = []
        self.min_gt_points = min_gt_points
        self.thing = None
        if getattr(segmenter, "has_instance_head", False):
            self.thing = thing_mask(segmenter.class_names, segmenter.instance_config.stuff_classes)
        self.class_names = list(segmenter.class_names)
        self.acc = self._accumulator()

    def _accumulator(self):
        from gcross_core.evaluation.instance_metrics import InstanceAccumulator

        return None if self.thing is None else InstanceAccumulator(self.class_names, self.thing, self.min_gt_points)

    def add(self, conf: np.ndarray, instances=None) -> None:
        """One scene: its confusion [K, K] or [K, K + 1] and (pred indices, classes, scores, gt label, gt
        instance) for AP."""
        from gcross_core.evaluation.metrics import segmentation_metrics

        if conf.shape[1] == self.conf.shape[0]:
            conf = np.concatenate([conf, np.zeros((len(conf), 1), np.int64)], 1)
        self.conf += conf
        row = {"miou": segmentation_metrics(conf).miou}
        if instances is not None and self.acc is not None:
            self.acc.add(*instances)
            one = self._accumulator()
            one.add(*instances)
            row["ap50"] = one.metrics().ap50
        self.per_scene.append(row)

    def summary(self) -> Dict:
        from gcross_core.evaluation.metrics import segmentation_metrics

        k = self.conf.shape[0]
        out = {"miou": segmentation_metrics(self.conf).miou,
               "miou_covered": segmentation_metrics(self.conf[:, :k]).miou,  # uncovered points left out
               "coverage": float(self.conf[:, :k].sum() / max(self.conf.sum(), 1)),
               "miou_scene_mean": float(np.mean([r["miou"] for r in self.per_scene])),
               "per_scene": self.per_scene}
        if self.acc is not None:
            m = self.acc.metrics()
            out.update({"ap25": m.ap25, "ap50": m.ap50, "map": m.map})
        return out


def offline_eval(segmenter, scene_dirs: Sequence[Path], label_file: str) -> Dict:
    """``training/evaluate.py`` on the scene folders (its evaluate_scenes, all scenes pooled), and each scene on
    its own for the per-scene AP50."""
    from gcross_core.segmentation.evaluate import evaluate_scenes

    t = time.perf_counter()
    res = evaluate_scenes(segmenter, list(scene_dirs), label_file)
    seconds = time.perf_counter() - t
    per_scene = []
    for s, row in zip(scene_dirs, res.per_scene):
        one = evaluate_scenes(segmenter, [s], label_file).instance
        per_scene.append({"miou": row["miou"], **({"ap50": one.ap50} if one is not None else {})})
    out = {"miou": res.metrics.miou, "miou_covered": res.metrics.miou,
           "coverage": 1.0, "miou_scene_mean": float(np.mean([s["miou"] for s in res.per_scene])),
           "per_scene": per_scene, "ms_per_scene": 1000 * seconds / len(scene_dirs),
           "points": float(np.mean([s["points"] for s in res.per_scene]))}
    if res.instance is not None:
        out.update({"ap25": res.instance.ap25, "ap50": res.instance.ap50, "map": res.instance.map})
    return out


def offline_ranked_by_confidence(segmenter, scene_dirs: Sequence[Path], label_file: str) -> Optional[Dict]:
    """Offline instances on the scene points, ranked by their points' mean class confidence as the map ranks its
    objects (``map_objects``) instead of by the grouping score: what separates the two sides' AP when the
    masks agree."""
    from gcross_core.evaluation.instance_metrics import InstanceAccumulator
    from gcross_core.segmentation.dataset import load_labelled_scene
    from gcross_core.segmentation.instance import thing_mask

    if not getattr(segmenter, "has_instance_head", False):
        return None
    acc = InstanceAccumulator(segmenter.class_names,
                              thing_mask(segmenter.class_names, segmenter.instance_config.stuff_classes))
    for path in scene_dirs:
        scene = load_labelled_scene(path, label_file, segmenter.class_names)
        if scene.instance is None:
            continue
        out = segmenter.predict_instances(scene.coord, scene.color, scene.normal)
        scores = np.array([out.confidence[i].mean() if len(i) else 0.0 for i in out.instances.indices])
        acc.add(out.instances.indices, out.instances.classes, scores, scene.segment, scene.instance)
    m = acc.metrics()
    return {"ap25": m.ap25, "ap50": m.ap50, "map": m.map}


def bag_eval(segmenter, bags: Sequence[Path], variant: Variant, params_file: Optional[Path] = None) -> Dict:
    """What ``gcross-bag eval`` runs on each bag (gcross_ros.bag.evaluate.evaluate_bag without its report
    files), scored pooled over the bags."""
    from gcross_core.data.grid import grid_sample
    from gcross_core.evaluation.map_score import map_objects, score_labelled_map, transfer_labels
    from gcross_core.mapping.pipeline import SegmentationPipeline
    from gcross_ros.bag.evaluate import (EvalConfig, assembly_config_from_params, labels_for_classes,
                                        default_radius_m, load_ground_truth, pipeline_config_from_params,
                                        run_pipeline_on_bag)

    params = str(params_file) if params_file else None
    pool = Pooled(segmenter)
    fusion_ms, segment_ms, frame_ms, voxels, cells = [], [], [], [], []
    for bag in bags:
        gt = load_ground_truth(bag)
        gt_label = labels_for_classes(gt, segmenter.class_names, bag)
        cfg = pipeline_config_from_params(params, {"voxel_size_m": variant.voxel_size_m}).with_segmenter_grid(
            segmenter)
        pipe = SegmentationPipeline(segmenter, cfg)
        pts, perf = run_pipeline_on_bag(bag, segmenter, cfg, EvalConfig(), pipeline=pipe,
                                        assembly_config=assembly_config_from_params(params))
        radius = variant.radius_m if variant.radius_m is not None else default_radius_m(segmenter.grid_size_m,
                                                                                         cfg.voxel_size_m)
        conf = score_labelled_map(pts.coord, pts.label, gt.coord, gt_label, segmenter.num_classes, radius).conf
        instances = None
        if pool.acc is not None and pts.instance is not None and gt.instance is not None:
            # score_map_instances, also into one accumulator for all bags
            transferred, _ = transfer_labels(pts.coord, pts.instance.astype(np.int64), gt.coord, radius)
            ids, _, classes, scores = map_objects(pts.label, pts.confidence, pts.instance,
                                                  object_scores={o.object_id: o.score for o in pipe.objects()})
            keep = classes >= 0
            instances = ([np.flatnonzero(transferred == i) for i in ids[keep]], classes[keep], scores[keep], gt_label,
                         gt.instance)
        pool.add(conf, instances)
        n = perf["frames"]
        fusion_ms.append(perf["fusion_latency"]["mean_ms"])
        seg = perf["segmentation_latency"]
        segment_ms.append(seg["mean_ms"] * seg["count"] / n if seg.get("count") else 0.0)
        frame_ms.append(1000.0 / perf["frames_per_s"])
        voxels.append(len(pts))
        cells.append(len(grid_sample(pts.coord, segmenter.grid_size_m,
                                     lattice=segmenter.convention.grid_lattice)[0]))
    return {**pool.summary(), "fusion_ms": float(np.mean(fusion_ms)), "segment_ms": float(np.mean(segment_ms)),
            "frame_ms": float(np.mean(frame_ms)), "voxels": float(np.mean(voxels)), "cells": float(np.mean(cells)),
            "voxel_size_m": cfg.voxel_size_m if variant.voxel_size_m else 0.0, "radius_m": radius}


def check_cli(bag: Path, checkpoint: Path, variant: Variant, out: Path, params_file: Optional[Path]) -> Dict:
    """The real ``gcross-bag eval`` on one bag -> its results.json numbers."""
    cmd = [sys.executable, "-m", "gcross_ros.bag.cli", "-q", "eval", str(bag), "--checkpoint", str(checkpoint),
           "--out", str(out), "--voxel-size-m", str(variant.voxel_size_m)]
    if variant.radius_m is not None:
        cmd += ["--radius-m", str(variant.radius_m)]
    if params_file:
        cmd += ["--params-file", str(params_file)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    res = json.loads((out / "results.json").read_text())
    inst = res.get("instance") or {}
    return {"miou": res["metrics"]["miou"] if "metrics" in res else res["miou"], "ap50": inst.get("ap50")}


# ---------------------------------------------------------------------------------------------- report

def _pct(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"


def table(title: str, offline: Dict, rows: Dict[str, Dict]) -> List[str]:
    lines = [f"### {title}", "",
             "| map voxel, transfer radius | mIoU (all points) | mIoU (scene mean) | AP25 | AP50 | mAP | covered | "
             "mIoU (covered points) | ms/frame fusion + segmentation = total | map voxels | encoder cells |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
             f"| offline (training/evaluate.py, scene points) | {_pct(offline['miou'])} | "
             f"{_pct(offline['miou_scene_mean'])} | {_pct(offline.get('ap25'))} | {_pct(offline.get('ap50'))} | "
             f"{_pct(offline.get('map'))} | 100 | {_pct(offline['miou'])} | {offline['ms_per_scene']:.0f} per scene "
             f"(load + predict) | {offline['points']:.0f} points | {offline['cells']:.0f} |"]
    for label, r in rows.items():
        lines.append(f"| bag eval, {label} | {_pct(r['miou'])} | {_pct(r['miou_scene_mean'])} | {_pct(r.get('ap25'))} "
                     f"| {_pct(r.get('ap50'))} | {_pct(r.get('map'))} | {_pct(r['coverage'])} | "
                     f"{_pct(r['miou_covered'])} | {r['fusion_ms']:.0f} + {r['segment_ms']:.0f} = "
                     f"{r['frame_ms']:.0f} | {r['voxels']:.0f} | {r['cells']:.0f} |")
    ranked = offline.get("ranked_by_confidence")
    if ranked:
        lines.append(f"| offline, objects ranked as the map ranks them (mean confidence, not the group score) | | | "
                     f"{_pct(ranked['ap25'])} | {_pct(ranked['ap50'])} | {_pct(ranked['map'])} | | | | | |")
    return lines + [""]


def per_scene_table(names: Sequence[str], offline: Dict, rows: Dict[str, Dict]) -> List[str]:
    """Per scene: offline mIoU / AP50, and each bag variant's difference to it."""
    labels = list(rows)
    lines = ["| scene | offline mIoU / AP50 | " + " | ".join(f"bag {k}: d mIoU / d AP50" for k in labels) + " |",
             "|---|---:|" + "---:|" * len(labels)]

    def d(a, b):
        return "n/a" if a is None or b is None or not (np.isfinite(a) and np.isfinite(b)) else f"{100 * (a - b):+.1f}"

    for i, name in enumerate(names):
        o = offline["per_scene"][i]
        cells = [f"{d(rows[k]['per_scene'][i]['miou'], o['miou'])} / "
                 f"{d(rows[k]['per_scene'][i].get('ap50'), o.get('ap50'))}" for k in labels]
        lines.append(f"| {name} | {_pct(o['miou'])} / {_pct(o.get('ap50'))} | " + " | ".join(cells) + " |")
    return lines + [""]


def encoder_cells(segmenter, scene_dirs: Sequence[Path]) -> float:
    """Mean grid cells the encoder gets from the scene folders' points (offline evaluation's input)."""
    from gcross_core.data.grid import grid_sample

    return float(np.mean([len(grid_sample(np.load(s / "coord.npy"), segmenter.grid_size_m,
                                          lattice=segmenter.convention.grid_lattice)[0]) for s in scene_dirs]))


def run_demo(out: Path, variants: Sequence[Variant]):
    from gcross_core.segmentation.segmenter import DEMO_CHECKPOINT, Segmenter
    from gcross_ros.bag.format import RecordConfig
    from gcross_ros.bag.writer import record_scene
    from gcross_ros.demo import build_scene

    scene_dir, bag = out / "scene", out / "scene_bag"
    if not bag.exists():
        scene = build_scene(scene_dir, 1000, 30, 320, 240)  # python -m gcross_ros.demo's defaults
        record_scene(scene, bag, RecordConfig())
    seg = Segmenter.from_checkpoint(DEMO_CHECKPOINT, device="cpu")
    label_file = LABEL_FILE_FOR_CLASSES.get(seg.num_classes, "segment")
    offline = offline_eval(seg, [scene_dir], label_file)
    offline["cells"] = encoder_cells(seg, [scene_dir])
    offline["ranked_by_confidence"] = offline_ranked_by_confidence(seg, [scene_dir], label_file)
    rows = {v.label(seg.grid_size_m): bag_eval(seg, [bag], v, NODE_PARAMS) for v in variants}
    return seg, offline, rows


def mosd_seed(args, data: Path, seed_ckpt: Path, scenes: Sequence[Path], bags: Sequence[Path]):
    """Offline and bag evaluation of one segmenter on the selected mOSD test scenes."""
    from gcross_core.segmentation.segmenter import Segmenter

    seg = Segmenter.from_checkpoint(seed_ckpt, device="cpu")
    offline = offline_eval(seg, scenes, "segment")
    offline["cells"] = encoder_cells(seg, scenes)
    offline["ranked_by_confidence"] = offline_ranked_by_confidence(seg, scenes, "segment")
    print(f"{seed_ckpt}: offline mIoU {_pct(offline['miou'])} AP50 {_pct(offline.get('ap50'))}", flush=True)
    rows = {}
    for text in args.variants:
        v = Variant.parse(text)
        r = bag_eval(seg, bags, v)
        rows[v.label(seg.grid_size_m)] = r
        print(f"  bag {v.label(seg.grid_size_m)}: mIoU {_pct(r['miou'])} AP50 {_pct(r.get('ap50'))} "
              f"({r['frame_ms']:.0f} ms/frame, {r['voxels']:.0f} voxels)", flush=True)
        for bag in bags[: args.check_cli]:
            cli = check_cli(bag, seed_ckpt, v, args.out / "cli" / seed_ckpt.parent.name / v.slug / bag.name, None)
            one = bag_eval(seg, [bag], v)
            print(f"    gcross-bag eval {bag.name}: mIoU {_pct(cli['miou'])} AP50 {_pct(cli['ap50'])}; "
                  f"this script: mIoU {_pct(one['miou'])} AP50 {_pct(one.get('ap50'))}", flush=True)
    return seg, offline, rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mosd", type=Path, required=True, help="mOSD labelled frames (learn/, test/)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bvo"))
    ap.add_argument("--steps", type=int, default=300, help="fine-tuning steps of the instance segmenter")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="one segmenter trained per seed")
    ap.add_argument("--checkpoint", type=Path, default=None, help="a segmenter to use instead of training one")
    ap.add_argument("--scenes", nargs="+", default=["all"], help="'all' or test indices / ranges: 16-30 0 5")
    ap.add_argument("--variants", nargs="+", default=["0", "0.02", "0.01", "0.01@0.04", "0.005", "0.005@0.04"],
                    help="map voxel in metres (0: half the segmenter's grid) [@ label-transfer radius in metres]")
    ap.add_argument("--per-scene", action="store_true", help="also a per-scene table (first seed)")
    ap.add_argument("--demo", action="store_true", help="also the synthetic demo room")
    ap.add_argument("--demo-variants", nargs="+", default=["0", "0.025", "0.025@0.1"])
    ap.add_argument("--check-cli", type=int, default=0, help="run the real gcross-bag eval on the first N bags")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    out = args.out
    data = prepare_mosd(args.mosd, out / "data" / "mosd")
    ckpts = [args.checkpoint] if args.checkpoint else [
        train_segmenter(data, out / "train" / f"scratch_insseg_{args.steps}{'' if s == 0 else f'_seed{s}'}",
                        args.steps, s, args.threads) for s in args.seeds]
    scenes = select_scenes(data / "test", args.scenes)
    bags = [record_bag(s, out / "bags" / s.name, "segment") for s in scenes]
    names = " ".join(s.name[len("test"):] for s in scenes)
    print(f"{len(scenes)} mOSD test scenes: {names}", flush=True)
    report = {"scenes": [s.name for s in scenes], "mosd": {}}
    lines = [f"## Bag evaluation vs offline evaluation: mOSD test, {len(scenes)} scenes ({names})", ""]
    for k, ckpt in enumerate(ckpts):
        seg, offline, rows = mosd_seed(args, data, ckpt, scenes, bags)
        report["mosd"][str(ckpt)] = {"offline": offline, "bag": rows}
        lines += table(f"mOSD test as bags, `{ckpt}` (grid {100 * seg.grid_size_m:g} cm)", offline, rows)
        if args.per_scene and k == 0:
            lines += per_scene_table([s.name for s in scenes], offline, rows)
    if args.demo:
        dseg, doff, drows = run_demo(out / "demo", [Variant.parse(t) for t in args.demo_variants])
        report["demo"] = {"offline": doff, "bag": drows}
        lines += table(f"synthetic demo room (seed 1000, 30 views, shipped segmenter, grid "
                       f"{100 * dseg.grid_size_m:g} cm, config/segment.yaml)", doff, drows)
    lines.append(f"`python -m experiments.bag_vs_offline {' '.join(sys.argv[1:])}`, torch threads {args.threads}.")
    text = "\n".join(lines)
    print(text)
    stem = "report" if args.scenes == ["all"] else "report_scenes_" + "_".join(args.scenes)
    (out / f"{stem}.md").write_text(text + "\n")
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
