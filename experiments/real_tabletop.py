"""Real tabletop frames (mOSD): does GaussianCross pretraining help on real sensor data? CPU, minutes.

    python -m experiments.real_tabletop --mosd DIR --frames7 DIR [--out runs/real_tabletop] [--seeds 0 1 2]
        [--steps 150] [--few-steps 100] [--probe-steps 100] [--probe-seeds 0 1 2] [--pretrain-steps 160]
        [--chorus-steps 160] [--instance-steps 300] [--instance-start encoder|semantic]
        [--instance-seeds 0 1 2] [--knob-seeds 0] [--phases full few probe chorus instance knobs] [--threads 1]
        [--report-only]

``--mosd``: the mOSD labelled frames (``learn/learnN``, ``test/testN``, each one frame with
``frames/label`` and ``frames/instance``); ``--frames7``: a 7-Scenes sequence in the SensReader layout
(unlabelled). Steps, each reused when its output exists (an interrupted experiment continues):

1. scene folders: ``training/prepare_frames.py`` logic, mOSD with ``--classes table,object --up plane``
   at 1 cm, 7-Scenes with ``--up cameras`` at 2 cm, every 3rd frame (``<out>/data``);
2. encoders, one per init and seed (a seed varies pretraining and fine-tuning together: a single
   pretraining run per init would leave its own variance out of the spread): synthetic rooms pretraining
   as the shipped checkpoint's lineage (``training/make_demo_checkpoint.sh``: 8 rooms,
   ``synthetic_tiny.yaml``), and ``pretrain_real_frames.yaml`` on the 7-Scenes room plus the 45 mOSD
   learn frames (labels unused; the test frames are never used for pretraining);
3. fine-tuning with ``finetune_tabletop.yaml`` on mOSD learn, evaluated on mOSD test, for each encoder
   init (random, synthetic, real) and seed: all 45 labelled frames (``full``), 5 labelled frames drawn
   by the seed (``few``), the linear probe on the frozen encoder (``probe``);
4. ``chorus``: real-frame pretraining with two teachers from the offline EfficientNet-Lite0, each with its
   own projector (a low-level stride-8 teacher and the semantic 1280-channel head), against one teacher
   with the same two taps concatenated; each fine-tuned on all labels.
5. ``instance``: objects instanced, the table as stuff (``finetune_tabletop_insseg.yaml``: PointGroup's
   offset head, 3 cm clustering radius), scored by AP50 / AP25 on the test frames' instance ids.
   ``--instance-start encoder`` (default, the config): classes and offsets learnt together from the encoder
   init for ``--instance-steps`` (300); ``--instance-start semantic``: continue from the same init's and
   seed's step-3 segmenter (all labels) with the offset head added (lr 0.002). Runs live in
   ``<out>/instance/<start>_<steps>/<init>_seed<seed>``.
6. ``knobs``: what changes the real-frame encoder, one knob at a time against ``pretrain_real_seed<k>``: a 3x
   schedule, mask ratio 0.25, teacher layers s8 + head, a 4 cm pretraining grid, and (eval-time input
   density) the linear probe without its BatchNorm recalibration; each scored by the linear probe
   (``--probe-seeds``) and all-label fine-tuning, for each pretraining seed ``--knob-seeds`` (default 0).
   Runs live in ``<out>/knobs/<knob>``.

The instance runs are also scored per mOSD test category and on a clutter test set composed from the
test objects (``<out>/data/mosd_clutter``, as ``training/make_clutter.py --seed 0`` writes it; seen from
above in ``<out>/clutter/<scene>.png``: ground-truth objects | each init's objects, seed 0).

Writes ``<out>/report.md``, ``<out>/report.json`` and ``<out>/frames/<test scene>.png`` (first row: colour |
ground truth | prediction of each encoder init, seed 0, all labels; class colours: table, object,
grey = no label / no depth; second row, when the instance runs of seed 0 exist: colour | ground-truth
objects | each init's predicted objects, one colour per object).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from gcross_core.config import load_config
from gcross_core.mapping.labelled_frames import (LabelledFramesConfig, apply_class_map,
                                              prepare_labelled_scenes)
from gcross_core.data.scene import load_scene
from gcross_core.evaluation.map_score import transfer_labels
from gcross_core.evaluation.report import class_palette
from gcross_core.pretraining.config import PretrainConfig, TeacherConfig
from gcross_core.pretraining.run import run_pretraining
from gcross_core.segmentation.run import FinetuneConfig, run_finetuning
from experiments.tabletop_instances import (MOSD_TEST_CATEGORIES, clutter_sheets, instance_colours, scene_sets,
                                            score_run)

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = ROOT / "training" / "configs"
FINETUNE = CONFIGS / "finetune_tabletop.yaml"
FINETUNE_INSTANCE = CONFIGS / "finetune_tabletop_insseg.yaml"
CLASS_MAP = {1: "table", 2: "object"}
CLASS_MAP_OBJECT = 1  # index of "object" in the scene folders' class names (table, object)
INITS = ("scratch", "synthetic", "real")
INIT_LABEL = {"scratch": "random (scratch)", "synthetic": "pretrained on synthetic rooms",
              "real": "pretrained on real unlabelled frames (7-Scenes + mOSD learn)"}
log = logging.getLogger("real_tabletop")


# ---------------------------------------------------------------------------------------------- data

def prepare_data(mosd: Path, frames7: Path, data: Path) -> None:
    prepare_labelled_scenes(mosd, data / "mosd", CLASS_MAP, LabelledFramesConfig(voxel_size_m=0.01, up="plane"))
    prepare_labelled_scenes(frames7, data / "frames7", None,
                            LabelledFramesConfig(voxel_size_m=0.02, every=3, up="cameras"))
    real = data / "real_frames"  # the pretraining scenes: links to the 7-Scenes room and the mOSD learn frames
    real.mkdir(parents=True, exist_ok=True)
    sources = [p for p in sorted((data / "frames7").rglob("coord.npy"))]
    sources += sorted((data / "mosd" / "learn").glob("*/coord.npy"))
    for c in sources:
        link = real / (c.parent.name if "frames7" not in str(c) else f"7scenes_{c.parent.name}")
        if not link.exists():
            link.symlink_to(c.parent.resolve(), target_is_directory=True)


def make_synthetic_rooms(data: Path) -> Path:
    rooms = data / "synthetic_rooms"
    if not rooms.is_dir() or len(list(rooms.iterdir())) < 8:
        cmd = [sys.executable, str(ROOT / "training" / "make_synthetic.py"), "--out", str(rooms), "--rooms", "8",
               "--seed", "0", "--views", "8", "--width", "80", "--height", "60", "--points", "20000", "--quiet"]
        if subprocess.run(cmd).returncode:
            raise SystemExit("make_synthetic.py failed")
    return rooms


# ---------------------------------------------------------------------------------------------- runs

def pretrain(out: Path, config: Path, overrides, teachers=None, report_only: bool = False):
    final = out / "final.safetensors"
    if final.is_file():
        return final
    if report_only:
        return None
    cfg = load_config(config, PretrainConfig, overrides)
    if teachers is not None:
        cfg = replace(cfg, teachers=tuple(teachers))
    t = time.perf_counter()
    run_pretraining(cfg, out, progress=False, tensorboard=False)
    log.warning("pretrained %s in %.0f s", out.name, time.perf_counter() - t)
    return final


# the two-stage instance variant (on the all-label segmenter of the same init and seed): the config's
# documented overrides; the config itself is the one-stage variant (from the encoder init)
INSTANCE_FROM_SEGMENTER = ["from_segmenter=true", "optim.lr=0.002"]


def knob_variants(pretrain_steps: int) -> dict:
    """Real-frame pretraining knobs (the ``knobs`` phase): name -> pretraining overrides, teachers (None: the
    config's), probe overrides. Each differs from ``pretrain_real`` in one thing."""
    eff = {"input_size": [120, 160]}
    return {
        f"schedule x3 ({3 * pretrain_steps} steps)": ([f"train.max_steps={3 * pretrain_steps}"], None, []),
        "mask ratio 0.25 (0.5)": (["model.mask_ratio=0.25"], None, []),
        "teacher layers s8 + head (s16 + s32)": ([], [TeacherConfig(name="efficientnet_lite0",
                                                                    options={**eff, "layers": ["s8", "head"]})], []),
        "grid 4 cm (2 cm)": (["model.grid_size_m=0.04", "data.pipeline.grid_size_m=0.04"], None, []),
        # eval-time input density: pretrained on 50 %-masked points, probed at full density; without the
        # BatchNorm recalibration the frozen encoder normalises full-density features with masked statistics
        "probe without BatchNorm recalibration (10 batches)": (None, None, ["bn_recalibration_batches=0"]),
    }


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.split(" (")[0]).strip("_")


def finetune(out: Path, data_root: Path, seed: int, pretrained, steps: int, few: bool = False,
             probe: bool = False, instance: Optional[str] = None, report_only: bool = False, extra=()):
    """One fine-tuning run (reused when its results exist); ``instance``: None (semantic),
    "semantic" (``pretrained`` is a segmenter to continue from) or "encoder"."""
    res_file = out / "eval" / "results.json"
    if not res_file.is_file() and report_only:
        return None
    if not res_file.is_file():
        overrides = [f"data.root={data_root}", f"train.seed={seed}", f"train.max_steps={steps}", "train.device=cpu"]
        if few:
            overrides += ["data.limited_scenes_pct=11.2", f"data.split_seed={seed}"]  # 5 of 45 frames
        if probe:
            overrides += ["linear_probe=true", "bn_recalibration_batches=10", "optim.lr=0.05"]
        if instance == "semantic":
            overrides += INSTANCE_FROM_SEGMENTER
        overrides += list(extra)
        cfg = load_config(FINETUNE_INSTANCE if instance else FINETUNE, FinetuneConfig, overrides)
        t = time.perf_counter()
        run_finetuning(cfg, out, str(pretrained) if pretrained else None, progress=False, tensorboard=False)
        (out / "seconds.txt").write_text(f"{time.perf_counter() - t:.1f}\n")
    res = json.loads(res_file.read_text())
    m = res["metrics"]
    inst = res.get("instance") or m.get("instance")
    return {"miou": m["miou"], "macc": m["macc"], "allacc": m["allacc"],
            "iou": {k: v["iou"] for k, v in m["per_class"].items()},
            "ap50": inst.get("ap50") if inst else None, "ap25": inst.get("ap25") if inst else None,
            "map": inst.get("map") if inst else None,
            "seconds": float((out / "seconds.txt").read_text()) if (out / "seconds.txt").is_file() else None}


# ---------------------------------------------------------------------------------------------- report

def _stat(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return (100 * statistics.fmean(values), 100 * statistics.stdev(values) if len(values) > 1 else 0.0,
            len(values))


def _fmt(stat):
    if stat is None:
        return "not run"
    m, s, n = stat
    return f"{m:.1f} ± {s:.1f} (n={n})" if n > 1 else f"{m:.1f} (n=1)"


def _ap(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return _fmt(_stat(vals)) if vals else "not available"


def frame_pngs(out: Path, test_root: Path, segmenters: dict, instance_segmenters: Optional[dict] = None) -> list:
    """Per test frame: colour | ground truth | each init's prediction, seen from the frame's camera; with
    ``instance_segmenters`` a second row: colour | ground-truth objects | each init's predicted objects
    (one colour per object, the table and unassigned points grey)."""
    from gcross_core.geometry import backproject_depth

    pal = class_palette(2)
    grey = np.array([60, 60, 60], np.uint8)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    written = []
    preds_cache = {}
    for scene_dir in sorted(test_root.iterdir(), key=lambda p: (len(p.name), p.name)):
        if not (scene_dir / "coord.npy").is_file():
            continue
        scene = load_scene(scene_dir, segment="segment")
        f = scene.frames.frame(0)
        h, w = f.depth_m.shape
        pts, pix = backproject_depth(f.depth_m, f.K_depth)
        world = pts @ f.cam_to_world[:3, :3].T + f.cam_to_world[:3, 3]
        label_img = scene.frames.registered_id_image(0, "label")
        gt = np.full(h * w, -1, np.int64)
        gt[pix] = apply_class_map(np.where(label_img.reshape(-1)[pix] > 0, label_img.reshape(-1)[pix], -1),
                                  CLASS_MAP)
        panels = [("colour", f.color)]

        def paint(labels_at_pix):
            img = np.broadcast_to(grey, (h * w, 3)).copy()
            ok = labels_at_pix >= 0
            img[pix[ok]] = pal[labels_at_pix[ok]]
            return img.reshape(h, w, 3)

        panels.append(("ground truth", paint(gt[pix])))
        for name, seg in segmenters.items():
            labels, _, _ = seg.predict(scene.coord, scene.color, scene.normal)
            preds_cache[(scene.name, name)] = labels
            at_pix, _ = transfer_labels(scene.coord, labels, world, 0.015)
            panels.append((name, paint(at_pix)))
        rows = [panels]
        if instance_segmenters:
            inst_img = scene.frames.registered_id_image(0, "instance").reshape(-1)
            gt_obj = np.where((gt >= 0) & (gt == CLASS_MAP_OBJECT) & (inst_img > 0), inst_img, -1)
            _, gt_ids = np.unique(gt_obj, return_inverse=True)  # 0 .. k, with -1 first when present
            gt_ids = np.where(gt_obj >= 0, gt_ids - int((gt_obj < 0).any()), -1)

            def paint_ids(ids_at_pix):
                img = np.broadcast_to(grey, (h * w, 3)).copy()
                ok = ids_at_pix >= 0
                cols = instance_colours(int(ids_at_pix.max()) + 1 if ok.any() else 1)
                img[pix[ok]] = cols[ids_at_pix[ok]]
                return img.reshape(h, w, 3)

            inst_panels = [("colour", f.color), ("ground-truth objects", paint_ids(gt_ids[pix]))]
            for name, seg in instance_segmenters.items():
                pred = seg.predict_instances(scene.coord, scene.color, scene.normal)
                at_pix, _ = transfer_labels(scene.coord, pred.instance, world, 0.015)
                inst_panels.append((f"{name}: {len(pred.instances)} objects", paint_ids(at_pix)))
            rows.append(inst_panels)
        sheets = []
        for row in rows:
            sheets.append(_tile_row(row))
        sheet = Image.new("RGB", (max(t.width for t in sheets), sum(t.height for t in sheets)), (255, 255, 255))
        y = 0
        for t in sheets:
            sheet.paste(t, (0, y))
            y += t.height
        path = out / "frames" / f"{scene.name}.png"
        sheet.save(path)
        written.append(str(path))
    return written


def _tile_row(panels) -> "Image.Image":
    tiles = []
    for title, img in panels:
        im = Image.fromarray(np.ascontiguousarray(img)).resize((320, 240), Image.NEAREST)
        canvas = Image.new("RGB", (320, 258), (255, 255, 255))
        canvas.paste(im, (0, 18))
        ImageDraw.Draw(canvas).text((4, 3), title, fill=(0, 0, 0))
        tiles.append(canvas)
    sheet = Image.new("RGB", (320 * len(tiles), 258), (255, 255, 255))
    for k, t in enumerate(tiles):
        sheet.paste(t, (320 * k, 0))
    return sheet


@dataclass
class Experiment:
    """What the steps share: the arguments, where runs go, the data and the encoders pretrained so far."""
    args: argparse.Namespace
    out: Path
    mosd: Path  # labelled scene folders (learn/, test/)
    rooms: Path  # synthetic rooms of the synthetic pretraining
    real_frames: list  # the data override of every real-frame pretraining
    instance_dir: Path  # runs of the instance phase: <out>/instance/<start>_<steps>
    encoders: dict = field(default_factory=dict)  # (init, seed) -> checkpoint (None: not run)

    def run_overrides(self, seed: int, steps: Optional[int] = None) -> list:
        """What every pretraining here sets: the CPU, its threads, the seed and the step budget."""
        return ["train.device=cpu", f"train.num_threads={self.args.threads}", f"train.seed={seed}",
                f"train.max_steps={self.args.pretrain_steps if steps is None else steps}"]

    def encoder(self, init: str, seed: int):
        """The encoder checkpoint of ``init`` pretrained with ``seed`` (pretraining and fine-tuning seeds are
        paired: a seed varies both), None for scratch or a pretraining not run (--report-only)."""
        if init == "scratch":
            return None
        if (init, seed) not in self.encoders:
            if init == "synthetic":
                config = CONFIGS / "synthetic_tiny.yaml"
                data_over = [f"data.root={self.rooms}", "data.synthetic.rooms=0", "train.epochs=1000"]
            else:
                config, data_over = CONFIGS / "pretrain_real_frames.yaml", self.real_frames
            self.encoders[init, seed] = pretrain(self.out / f"pretrain_{init}_seed{seed}", config,
                                                 data_over + self.run_overrides(seed),
                                                 report_only=self.args.report_only)
        return self.encoders[init, seed]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mosd", type=Path, required=True, help="mOSD labelled frames (learn/, test/)")
    ap.add_argument("--frames7", type=Path, required=True, help="7-Scenes frames (SensReader layout)")
    ap.add_argument("--out", type=Path, default=Path("runs/real_tabletop"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=150, help="fine-tuning steps with all labels")
    ap.add_argument("--few-steps", type=int, default=100, help="fine-tuning steps with 5 labelled frames")
    ap.add_argument("--probe-steps", type=int, default=100)
    ap.add_argument("--probe-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pretrain-steps", type=int, default=160)
    ap.add_argument("--chorus-steps", type=int, default=160, help="pretraining steps of each Chorus variant")
    ap.add_argument("--phases", nargs="+", default=["full", "few", "probe", "chorus", "instance", "knobs"],
                    choices=["full", "few", "probe", "chorus", "instance", "knobs"],
                    help="what to run (finished runs are reused); instance: PointGroup's offset head (objects "
                         "instanced, the table as stuff), scored by AP50 / AP25; knobs: real-frame pretraining "
                         "variants (schedule, mask ratio, teacher layers, grid, probe BatchNorm), each by its "
                         "linear probe (--probe-seeds) and all-label fine-tuning (seed 0)")
    ap.add_argument("--instance-seeds", type=int, nargs="+", default=None, help="default: --seeds")
    ap.add_argument("--knob-seeds", type=int, nargs="+", default=[0],
                    help="pretraining seeds of the knobs phase: each knob (and the reference, the real-frame "
                         "encoder of that seed) is pretrained with each, probed with every --probe-seeds and "
                         "fine-tuned with the same seed")
    ap.add_argument("--instance-steps", type=int, default=300)
    ap.add_argument("--instance-start", choices=["encoder", "semantic"], default="encoder",
                    help="encoder: classes and offsets learnt together from the encoder init (the config); "
                         "semantic: continue from the init's all-label segmenter of the same seed (two stages)")
    ap.add_argument("--inits", nargs="+", default=list(INITS), choices=list(INITS),
                    help="encoder inits of the full, few, probe and instance phases (default: all three)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true",
                    help="start nothing: report the finished runs (the others read 'not run')")
    return ap.parse_args(argv)


def prepare(args: argparse.Namespace) -> Experiment:
    """Step 1: the scene folders and the synthetic rooms."""
    data = args.out / "data"
    prepare_data(args.mosd, args.frames7, data)
    return Experiment(args, args.out, data / "mosd", make_synthetic_rooms(data),
                      [f"data.root={data / 'real_frames'}"],
                      args.out / "instance" / f"{args.instance_start}_{args.instance_steps}")


def run_label_phases(exp: Experiment, results: dict) -> None:
    """Steps 2, 3 and 5: fine-tuning with all labels, with 5 labelled frames, the linear probe and the
    instance runs, for each encoder init and seed (each encoder pretrained when first needed)."""
    args = exp.args
    plan = [("full", args.seeds, args.steps, {}), ("few", args.seeds, args.few_steps, {"few": True}),
            ("probe", args.probe_seeds, args.probe_steps, {"probe": True}),
            ("instance", args.instance_seeds or args.seeds, args.instance_steps, {"instance": args.instance_start})]
    for phase, seeds, steps, kw in plan:
        if phase not in args.phases:
            continue
        for seed in seeds:
            for init in args.inits:
                start, run_dir = exp.encoder(init, seed), exp.out / phase / f"{init}_seed{seed}"
                if init != "scratch" and start is None:
                    continue  # its pretraining has not run (--report-only)
                if phase == "instance":
                    run_dir = exp.instance_dir / run_dir.name
                    if args.instance_start == "semantic":  # stage 2: on the all-label segmenter (init, seed)
                        stage1 = exp.out / "full" / run_dir.name
                        if finetune(stage1, exp.mosd, seed, exp.encoder(init, seed), args.steps,
                                    report_only=args.report_only) is None:
                            continue
                        start = stage1 / "segmenter.safetensors"
                r = finetune(run_dir, exp.mosd, seed, start, steps, report_only=args.report_only, **kw)
                if r is None:
                    continue
                r["seed"] = seed
                if phase == "instance":  # AP with the recipe's grouping of today (the run's own eval may predate it)
                    r["categories"] = instance_categories(exp, run_dir)
                    r.update({k: r["categories"]["test0-42"][k] for k in ("ap50", "ap25", "map")})
                results[phase].setdefault(init, []).append(r)
                ap = (f"  AP50 {100 * r['ap50']:5.1f} AP25 {100 * r['ap25']:5.1f}" if r["ap50"] is not None else "")
                print(f"{phase:6s} {init:9s} seed {seed}: mIoU {100 * r['miou']:5.1f}  IoU table "
                      f"{100 * r['iou']['table']:5.1f} object {100 * r['iou']['object']:5.1f}{ap}  "
                      f"({r['seconds'] or 0:.0f} s)", flush=True)


CATEGORY_SETS = (*MOSD_TEST_CATEGORIES, "test0-42", "clutter test")


def clutter_test(exp: Experiment) -> Path:
    """The clutter test set: ``training/make_clutter.py --scenes <mosd>/test --num-scenes 20 --objects 10 15
    --seed 0`` (test objects only, written once)."""
    from gcross_core.data.clutter import write_clutter_scenes
    from gcross_core.segmentation.dataset import list_scenes

    root = exp.out / "data" / "mosd_clutter"
    if not (root / "clutter_019" / "instance.npy").is_file():
        write_clutter_scenes(list_scenes(exp.mosd / "test", ""), root, 20, (10, 15), 0)
    return root


def recipe_grouping() -> list:
    """The grouping settings of ``finetune_tabletop_insseg.yaml`` as overrides (grouping does not change
    training, so a run is scored with the recipe's grouping of today, whatever its checkpoint stored)."""
    cfg = load_config(FINETUNE_INSTANCE, FinetuneConfig)
    return [f"{k}={json.dumps(v)}" for k, v in cfg.instance.to_dict().items()
            if k not in ("stuff_classes", "offset_l1_weight", "offset_dir_weight")]


def instance_categories(exp: Experiment, run_dir: Path) -> dict:
    """AP50 / AP25 / mAP of an instance run per mOSD test category, on all test frames and on the clutter
    test (``experiments.tabletop_instances``, the recipe's grouping); cached in ``categories.json``."""
    cached, grouping = run_dir / "categories.json", recipe_grouping()
    if cached.is_file():
        got = json.loads(cached.read_text())
        if got.get("grouping") == grouping:
            return got["scores"]
    sets = scene_sets(exp.mosd / "test", clutter_test(exp), None)
    scores = score_run(run_dir / "segmenter.safetensors", sets, {"recipe": grouping})["recipe"]
    cached.write_text(json.dumps({"grouping": grouping, "scores": scores}))
    return scores


def run_chorus(exp: Experiment, results: dict) -> None:
    """Step 4: real-frame pretraining with two teachers, each with its own projector, against one teacher
    with both taps concatenated; each fine-tuned on all labels (seed 0)."""
    args = exp.args
    eff = "efficientnet_lite0"
    opts = {"input_size": [120, 160]}
    variants = {
        "two teachers (s8; head), each with its own projector": [
            TeacherConfig(name=eff, key="lite0_s8", loss_weight=0.5, options={**opts, "layers": ["s8"]}),
            TeacherConfig(name=eff, key="lite0_head", loss_weight=0.5, options={**opts, "layers": ["head"]})],
        "one teacher, s8 + head concatenated": [
            TeacherConfig(name=eff, options={**opts, "layers": ["s8", "head"]})]}
    for k, (label, teachers) in enumerate(variants.items()):
        ckpt = pretrain(exp.out / f"pretrain_chorus_{k}", CONFIGS / "pretrain_real_frames.yaml",
                        exp.real_frames + exp.run_overrides(0, args.chorus_steps),
                        teachers, report_only=args.report_only)
        r = finetune(exp.out / "chorus" / f"variant{k}_seed0", exp.mosd, 0, ckpt, args.steps,
                     report_only=args.report_only) if ckpt else None
        if r is None:
            continue
        results["chorus"][label] = [r]
        print(f"chorus {label}: mIoU {100 * r['miou']:5.1f}", flush=True)


def _knob_tag(k: int, name: str) -> str:
    """Run folder of pretraining seed ``k`` in the knobs phase (seed 0 keeps the plain names)."""
    return name if k == 0 else f"pretrain{k}_{name}"


def run_knobs(exp: Experiment, results: dict) -> None:
    """Step 6: the reference (the real-frame encoder of each --knob-seeds) and each knob, scored by the
    linear probe and all-label fine-tuning."""
    args = exp.args
    ref = {"probe": [], "full": []}
    for k in args.knob_seeds:
        if exp.encoder("real", k) is None:
            continue
        ref["probe"] += [finetune(exp.out / "knobs" / "reference" / _knob_tag(k, f"probe_seed{seed}"), exp.mosd,
                                  seed, exp.encoder("real", k), args.probe_steps, probe=True,
                                  report_only=args.report_only)
                         for seed in args.probe_seeds]
        ref["full"].append(finetune(exp.out / "full" / f"real_seed{k}", exp.mosd, k, exp.encoder("real", k),
                                    args.steps, report_only=args.report_only))
    results["knobs_reference"] = {key: [r for r in v if r is not None] for key, v in ref.items()}
    for label, (pre_over, teachers, probe_over) in knob_variants(args.pretrain_steps).items():
        kdir = exp.out / "knobs" / _slug(label)
        row = {"probe": [], "full": []}
        for k in args.knob_seeds:
            ckpt = exp.encoder("real", k) if pre_over is None else pretrain(
                kdir / _knob_tag(k, "pretrain"), CONFIGS / "pretrain_real_frames.yaml",
                exp.real_frames + exp.run_overrides(k) + pre_over, teachers, report_only=args.report_only)
            if ckpt is None:
                continue
            for seed in args.probe_seeds:
                r = finetune(kdir / _knob_tag(k, f"probe_seed{seed}"), exp.mosd, seed, ckpt, args.probe_steps,
                             probe=True, report_only=args.report_only, extra=probe_over)
                if r is not None:
                    row["probe"].append(r)
            if pre_over is not None:  # the probe knob does not change the encoder: its fine-tuning is "full"
                r = finetune(kdir / f"full_seed{k}", exp.mosd, k, ckpt, args.steps, report_only=args.report_only)
                if r is not None:
                    row["full"].append(r)
        results["knobs"][label] = row
        print(f"knobs  {label}: probe {_fmt(_stat([r['miou'] for r in row['probe']]))}, all labels "
              f"{_fmt(_stat([r['miou'] for r in row['full']]))}", flush=True)


def seed0_segmenters(exp: Experiment):
    """The seed-0 segmenters of each init that exist: all labels, and the instance runs."""
    from gcross_core.segmentation.segmenter import Segmenter

    segs, inst_segs = {}, {}
    for init in INITS:
        ck = exp.out / "full" / f"{init}_seed0" / "segmenter.safetensors"
        if ck.is_file():
            segs[init] = Segmenter.from_checkpoint(ck)
    for init in INITS:
        ck = exp.instance_dir / f"{init}_seed0" / "segmenter.safetensors"
        if ck.is_file():
            inst_segs[init] = Segmenter.from_checkpoint(ck)
    return segs, inst_segs


def init_table(args: argparse.Namespace, results: dict) -> list:
    """The report's heading and its main table: one row per encoder init."""
    lines = ["# Real tabletop frames (mOSD): semantic segmentation (table / object)", "",
             f"Fine-tuned on mOSD learn (45 frames), scored on mOSD test (43 frames) on the fused points "
             f"(1 cm voxels, 2 cm encoder grid). Seeds {args.seeds} (probe: {args.probe_seeds}); "
             f"{args.steps} steps x 4 frames with all labels, {args.few_steps} steps with 5 labelled frames "
             f"(drawn per seed), linear probe {args.probe_steps} steps; pretraining {args.pretrain_steps} "
             f"steps (Chorus variants {args.chorus_steps}), one pretraining per init and seed (a seed varies "
             f"pretraining and fine-tuning together). mIoU in %, mean ± sample std over seeds.", "",
             "| encoder init | mIoU, all labels | IoU table / object | mIoU, 5 labelled frames | "
             "linear probe mIoU | instance AP50 / AP25 |", "|---|---|---|---|---|---|"]
    for init in INITS:
        full, few, probe = (results[p].get(init, []) for p in ("full", "few", "probe"))
        iou_t = _stat([r["iou"]["table"] for r in full])
        iou_o = _stat([r["iou"]["object"] for r in full])
        iou = f"{iou_t[0]:.1f} / {iou_o[0]:.1f}" if iou_t and iou_o else "not run"
        lines.append(f"| {INIT_LABEL[init]} | {_fmt(_stat([r['miou'] for r in full]))} | {iou} | "
                     f"{_fmt(_stat([r['miou'] for r in few]))} | {_fmt(_stat([r['miou'] for r in probe]))} | "
                     f"{_ap(results['instance'].get(init, []), 'ap50')} / "
                     f"{_ap(results['instance'].get(init, []), 'ap25')} |")
    return lines


def chorus_table(results: dict) -> list:
    if not results["chorus"]:
        return []
    lines = ["", "Chorus-style teachers (real-frame pretraining, fine-tuned on all labels, seed 0):", "",
             "| pretraining teachers | mIoU | IoU table / object |", "|---|---|---|"]
    for label, rs in results["chorus"].items():
        r = rs[0]
        lines.append(f"| {label} | {100 * r['miou']:.1f} | {100 * r['iou']['table']:.1f} / "
                     f"{100 * r['iou']['object']:.1f} |")
    return lines


def instance_table(exp: Experiment, results: dict) -> list:
    if not results["instance"]:
        return []
    lines = ["", f"Instance runs ({exp.instance_dir.name}: start, steps), in %, mean ± std over seeds:", "",
             "| encoder init | AP50 | AP25 | mAP | semantic mIoU after the instance run |",
             "|---|---|---|---|---|"]
    for init in INITS:
        rs = results["instance"].get(init, [])
        if rs:
            lines.append(f"| {INIT_LABEL[init]} | {_ap(rs, 'ap50')} | {_ap(rs, 'ap25')} | {_ap(rs, 'map')} | "
                         f"{_fmt(_stat([r['miou'] for r in rs]))} |")
    return lines


def category_table(exp: Experiment, results: dict) -> list:
    """Instance AP50 per mOSD test category and on the clutter test, per encoder init (mean ± std over seeds)."""
    rows = {init: [r["categories"] for r in results["instance"].get(init, []) if r.get("categories")]
            for init in INITS}
    if not any(rows.values()):
        return []
    lines = ["", "Instance AP50 by mOSD test category (frames 0-15 boxes, 16-23 stacked, 24-30 occluded, 31-42 "
             "cylinders) and on the clutter test (20 composites of test objects, 10-15 each; "
             "`clutter/<scene>.png`), in %, mean ± std over seeds:", "",
             "| encoder init | " + " | ".join(CATEGORY_SETS) + " |", "|---|" + "---|" * len(CATEGORY_SETS)]
    for init, cats in rows.items():
        if cats:
            lines.append(f"| {INIT_LABEL[init]} | " + " | ".join(
                _fmt(_stat([c[s]["ap50"] for c in cats])) for s in CATEGORY_SETS) + " |")
    return lines


def knobs_table(args: argparse.Namespace, results: dict) -> list:
    if not results["knobs"]:
        return []
    base = results.get("knobs_reference", {})
    base_probe, base_full = base.get("probe", []), base.get("full", [])
    lines = ["", "Real-frame pretraining knobs, one change each against the real-frame encoder (the default "
             f"in brackets), pretraining seeds {args.knob_seeds}: linear probe mIoU over those encoders x "
             f"probe seeds {args.probe_seeds}, all-label mIoU over the pretraining seeds (fine-tuned with "
             "the same seed), in %:", "",
             "| real-frame pretraining | linear probe mIoU | all labels mIoU |", "|---|---|---|",
             f"| reference ({args.pretrain_steps} steps, mask 0.5, s16 + s32, 2 cm, BatchNorm recalibrated) | "
             f"{_fmt(_stat([r['miou'] for r in base_probe]))} | {_fmt(_stat([r['miou'] for r in base_full]))} |"]
    for label, row in results["knobs"].items():
        full = _fmt(_stat([r["miou"] for r in row["full"]])) if row["full"] else "same encoder as above"
        lines.append(f"| {label} | {_fmt(_stat([r['miou'] for r in row['probe']]))} | {full} |")
    scratch_probe = results["probe"].get("scratch", [])
    if scratch_probe:
        lines.append(f"\nrandom encoder, linear probe: {_fmt(_stat([r['miou'] for r in scratch_probe]))}")
    return lines


COLLAPSE_STATS = ("cos_gain", "cos_teacher", "student_spread", "student_effective_rank")


def collapse_at_end(run: Path, last: int = 10) -> Optional[dict]:
    """The collapse signals of a pretraining run at its end (``gcross_core.pretraining.diagnostics``),
    averaged over its teachers, with its loss; None without them."""
    from gcross_core.pretraining.diagnostics import collapse_at_end as summary_of
    from gcross_core.train.logging import read_metrics

    records = read_metrics(run / "metrics.jsonl")
    teachers = summary_of(records, last)
    if not teachers or any(s not in t for t in teachers.values() for s in COLLAPSE_STATS):
        return None
    out = {s: statistics.fmean(t[s] for t in teachers.values()) for s in COLLAPSE_STATS}
    out["loss"] = statistics.fmean(r["loss"] for r in records[-last:])
    return out


def collapse_table(exp: Experiment, results: dict) -> list:
    """Per pretrained encoder: its collapse signals at the end of pretraining next to what fine-tuning it
    on all labels gave, and scratch's mean, to see whether the signals tell a bad pretraining run early."""
    scratch = [r["miou"] for r in results["full"].get("scratch", [])]
    rows = []
    for init in ("synthetic", "real"):
        for r in results["full"].get(init, []):
            sig = collapse_at_end(exp.out / f"pretrain_{init}_seed{r['seed']}")
            if sig is not None:
                rows.append(f"| {init} | {r['seed']} | {sig['loss']:.3f} | " + " | ".join(
                    f"{sig[k]:.3f}" for k in COLLAPSE_STATS) + f" | {100 * r['miou']:.1f} |")
    if not rows:
        return []
    ref = f"{100 * statistics.fmean(scratch):.1f}" if scratch else "not run"
    return ["", f"Collapse signals at the end of pretraining (mean of the last 10 logged steps; "
            f"docs/training.md) and the all-label fine-tuned mIoU; scratch's mean mIoU {ref}:", "",
            "| init | seed | loss | " + " | ".join(COLLAPSE_STATS) + " | fine-tuned mIoU |",
            "|---|---|---|" + "---|" * len(COLLAPSE_STATS) + "---|"] + rows


def paired_differences(results: dict) -> list:
    """Pretrained minus scratch, paired by seed, where both ran."""
    lines = []
    for a, b in (("real", "scratch"), ("synthetic", "scratch")):
        for phase, key in (("full", "miou"), ("few", "miou"), ("instance", "ap50")):
            ra, rb = results[phase].get(a, []), results[phase].get(b, [])
            if ra and rb:
                d = [100 * (x[key] - y[key]) for x, y in zip(ra, rb)]
                lines.append(f"\n{phase}: {a} minus {b}, {key} {statistics.fmean(d):+.1f} (paired by seed: "
                             f"{', '.join(f'{v:+.1f}' for v in d)})")
    return lines


def notes(exp: Experiment, segs: dict) -> list:
    """How the instance runs were made and where the frame sheets are."""
    args = exp.args
    inst_seeds = args.instance_seeds or args.seeds
    how = (f"continuing from the init's all-label segmenter of the same seed for {args.instance_steps} steps "
           f"({', '.join(INSTANCE_FROM_SEGMENTER)})" if args.instance_start == "semantic" else
           f"classes and offsets learnt together from the encoder init for {args.instance_steps} steps")
    return ["", f"Instance AP (in %, mean ± std over seeds {inst_seeds}): {FINETUNE_INSTANCE.name} (objects "
            f"instanced, the table as stuff), {how}; 'not available' where that run did not happen.",
            "Per test frame (colour | ground truth | " + " | ".join(segs) + f", seed 0): {exp.out / 'frames'}/"]


def write_report(exp: Experiment, results: dict, pngs: list, text: str) -> None:
    print(text)
    (exp.out / "report.md").write_text(text + "\n")
    (exp.out / "report.json").write_text(json.dumps({"results": results, "pngs": pngs, "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(exp.args).items()}}, indent=2) + "\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    t0 = time.perf_counter()
    exp = prepare(args)
    results = {"full": {}, "few": {}, "probe": {}, "chorus": {}, "instance": {}, "knobs": {}, "knobs_reference": {}}
    run_label_phases(exp, results)
    if "chorus" in args.phases:
        run_chorus(exp, results)
    if "knobs" in args.phases and exp.encoder("real", 0) is not None:
        run_knobs(exp, results)
    segs, inst_segs = seed0_segmenters(exp)
    pngs = frame_pngs(exp.out, exp.mosd / "test", segs, inst_segs) if segs else []
    if inst_segs:
        pngs += [str(p) for p in clutter_sheets(exp.out / "clutter", inst_segs,
                                                sorted(clutter_test(exp).iterdir()))]
    lines = (init_table(args, results) + chorus_table(results) + instance_table(exp, results)
             + category_table(exp, results) + collapse_table(exp, results)
             + knobs_table(args, results) + paired_differences(results) + notes(exp, segs)
             + [f"\n({time.perf_counter() - t0:.0f} s for this invocation)"])
    write_report(exp, results, pngs, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
