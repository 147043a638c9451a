"""Does GaussianCross pretraining help downstream segmentation? Synthetic rooms, CPU.

    python -m experiments.linear_probe [--out runs/linear_probe] [--pretrained CKPT] [--seeds 0 1 2] \
        [--probe-steps 300] [--finetune-steps 300] [--threads 1] [--quick] [--task instance]

``--task instance`` asks the same of instance segmentation (paper Sec. 4.2.4): fine-tuning only, with
training/configs/finetune_synthetic_insseg.yaml (PointGroup offset head), pretrained vs scratch, and
reports AP50 / AP25 / mAP (ScanNet-style, on the original points) next to mIoU; default output folder
``runs/instance_ap``.

Four runs per seed, all with training/configs/finetune_synthetic.yaml (the tiny encoder of
synthetic_tiny.yaml) and identical data order, augmentation and step count for a given seed:

- probe / pretrained: linear probe on the frozen pretrained encoder
- probe / random:     linear probe on a frozen, randomly initialised encoder (seeded by the run seed)
- fine-tune / pretrained: the whole network trained from the pretrained encoder
- fine-tune / scratch:    the whole network trained from random initialisation

Both probes first re-estimate the frozen encoder's BatchNorm statistics on the same training batches
(``bn_recalibration_batches``); without that a random encoder keeps mean 0 / variance 1 statistics that
shrink its features layer by layer, which would make the random baseline artificially weak.

Data: 8 training rooms (seeds 0-7) and 4 validation rooms (seeds 1000-1003) written with
training/make_synthetic.py into ``<out>/data`` unless ``--data`` names such a folder. Without
``--pretrained`` the encoder is pretrained first with training/pretrain.py and synthetic_tiny.yaml on the
training rooms only (``<out>/pretrain``). Finished runs are reused (their eval/results.json), so an
interrupted experiment continues. Prints a table of validation mIoU / mAcc / allAcc (mean and standard
deviation over seeds, on the original points) and writes it to ``<out>/results.json`` and ``results.md``.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from gcross_core.config import load_config
from gcross_core.pretraining.config import PretrainConfig
from gcross_core.pretraining.run import run_pretraining
from gcross_core.segmentation.run import FinetuneConfig, run_finetuning

ROOT = Path(__file__).resolve().parents[1]

CONFIG = ROOT / "training" / "configs" / "finetune_synthetic.yaml"
INSTANCE_CONFIG = ROOT / "training" / "configs" / "finetune_synthetic_insseg.yaml"
PRETRAIN_CONFIG = ROOT / "training" / "configs" / "synthetic_tiny.yaml"
MODES = (  # name, linear probe, use the pretrained encoder
    ("probe / pretrained", True, True),
    ("probe / random", True, False),
    ("fine-tune / pretrained", False, True),
    ("fine-tune / scratch", False, False),
)


def make_data(data: Path, rooms: int, val_rooms: int, points: int) -> None:
    common = ["--views", "8", "--width", "80", "--height", "60", "--points", str(points), "--quiet"]
    for split, n, seed in (("train", rooms, 0), ("val", val_rooms, 1000)):
        if not (data / split).is_dir() or len(list((data / split).iterdir())) < n:
            cmd = [sys.executable, str(ROOT / "training" / "make_synthetic.py"), "--out", str(data / split),
                   "--rooms", str(n), "--seed", str(seed)] + common
            if subprocess.run(cmd).returncode:
                raise SystemExit(f"make_synthetic failed for {data / split}")


def pretrain(data: Path, out: Path, steps: int) -> Path:
    final = out / "final.safetensors"
    if final.is_file():
        return final
    overrides = [f"data.root={data / 'train'}", "data.synthetic.rooms=0", "train.epochs=1000",
                 f"train.max_steps={steps}", "train.seed=0"]
    cfg = load_config(PRETRAIN_CONFIG, PretrainConfig, overrides)
    run_pretraining(cfg, out, progress=False, tensorboard=False)
    if not final.is_file():
        raise SystemExit(f"pretraining wrote no {final}")
    return final


def run_one(out: Path, data: Path, seed: int, probe: bool, pretrained, steps: int, batch: int, recal: int,
            probe_lr: float, config: Path = CONFIG, extra=()) -> dict:
    res_file = out / "eval" / "results.json"
    if not res_file.is_file():
        overrides = [f"data.root={data}", f"train.seed={seed}", f"train.max_steps={steps}", "train.device=cpu",
                     f"train.batch_size={batch}", *extra]
        if probe:
            overrides += ["linear_probe=true", f"bn_recalibration_batches={recal}", f"optim.lr={probe_lr}"]
        cfg = load_config(config, FinetuneConfig, overrides)
        run_finetuning(cfg, out, str(pretrained) if pretrained else None, progress=False, tensorboard=False)
    results = json.loads(res_file.read_text())
    m = results["metrics"]
    row = {"miou": m["miou"], "macc": m["macc"], "allacc": m["allacc"],
           "iou": {k: v["iou"] for k, v in m["per_class"].items()}}
    if "instance" in results:
        i = results["instance"]
        row.update({"ap50": i["ap50"], "ap25": i["ap25"], "map": i["map"],
                    "ap50_per_class": {k: v["ap50"] for k, v in i["per_class"].items()}})
    return row


def summarize(values):
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The arguments, with --task instance and --quick applied (fine-tuning only, fewer steps, their own
    output folders)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/linear_probe"))
    ap.add_argument("--data", type=Path, default=None, help="folder with train/ and val/ rooms")
    ap.add_argument("--pretrained", type=Path, default=None, help="pretraining checkpoint (else pretrain)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--probe-steps", type=int, default=300)
    ap.add_argument("--finetune-steps", type=int, default=300)
    ap.add_argument("--probe-batch", type=int, default=4, help="rooms per probing step")
    ap.add_argument("--finetune-batch", type=int, default=2, help="rooms per fine-tuning step")
    ap.add_argument("--pretrain-steps", type=int, default=160)
    ap.add_argument("--probe-lr", type=float, default=0.05,
                    help="learning rate of both probes (a linear head on fixed features takes a larger one)")
    ap.add_argument("--recalibration-batches", type=int, default=10)
    ap.add_argument("--modes", default="all", help="'all', 'probe' or 'finetune'")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch/OpenMP threads; 1 avoids oversubscription on a shared 2-core machine")
    ap.add_argument("--quick", action="store_true", help="3 seeds, 40 steps each, 40 pretraining steps")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config override for every run, e.g. data.max_points=8000 (repeatable)")
    ap.add_argument("--task", choices=("semantic", "instance"), default="semantic",
                    help="instance: fine-tuning with the PointGroup head, AP50 pretrained vs scratch")
    args = ap.parse_args(argv)
    if args.task == "instance":
        args.modes = "finetune"
        if args.out == Path("runs/linear_probe"):
            args.out = Path("runs/instance_ap")
    if args.quick:
        args.probe_steps = args.finetune_steps = args.pretrain_steps = 40
        args.out = args.out.with_name(args.out.name + "_quick")
    return args


def run_seeds(args: argparse.Namespace, data: Path, pretrained: Path, instance: bool) -> dict:
    """Every mode for every seed (finished runs reused); run name -> one result per seed."""
    modes = [m for m in MODES if args.modes == "all" or (args.modes == "probe") == m[1]]
    rows = {name: [] for name, _, _ in modes}
    for seed in args.seeds:
        for name, probe, use_pre in modes:
            steps = args.probe_steps if probe else args.finetune_steps
            batch = args.probe_batch if probe else args.finetune_batch
            tag = name.replace(" / ", "_").replace("-", "")
            t = time.perf_counter()
            r = run_one(args.out / f"{tag}_seed{seed}", data, seed, probe, pretrained if use_pre else None, steps,
                        batch, args.recalibration_batches, args.probe_lr, INSTANCE_CONFIG if instance else CONFIG,
                        args.overrides)
            rows[name].append(r)
            ap = f"AP50 {100 * r['ap50']:5.1f}  AP25 {100 * r['ap25']:5.1f}  mAP {100 * r['map']:5.1f}  " \
                if instance else ""
            print(f"seed {seed} {name:24s} {ap}mIoU {100 * r['miou']:5.1f}  mAcc {100 * r['macc']:5.1f}  "
                  f"allAcc {100 * r['allacc']:5.1f}  ({time.perf_counter() - t:.0f} s)", flush=True)
    return rows


def results_table(args: argparse.Namespace, rows: dict, pretrained: Path, instance: bool):
    """The table's lines (mean ± std over seeds per run) and the summary written to results.json."""
    lines = [f"Synthetic rooms (8 train / 4 val), encoder of {PRETRAIN_CONFIG.name}, seeds {args.seeds}, "
             f"probe {args.probe_steps} steps x {args.probe_batch} rooms (lr {args.probe_lr}), fine-tune "
             f"{args.finetune_steps} steps x {args.finetune_batch} rooms, "
             f"pretrained: {pretrained}" + (f", overrides {args.overrides}" if args.overrides else ""), "",
             "| run | mIoU | mAcc | allAcc | mIoU per seed |", "|---|---:|---:|---:|---|"]
    keys = ("ap50", "ap25", "map", "miou") if instance else ("miou", "macc", "allacc")
    if instance:
        lines[-2:] = ["| run | AP50 | AP25 | mAP | mIoU | AP50 per seed |", "|---|---:|---:|---:|---:|---|"]
    summary = {}
    for name, rs in rows.items():
        if instance:
            stats = {k: summarize([100 * r[k] for r in rs]) for k in keys}
            summary[name] = {"runs": rs, **{k: {"mean": m, "std": s} for k, (m, s) in stats.items()}}
            cells = " | ".join(f"{stats[k][0]:.1f} ± {stats[k][1]:.1f}" for k in keys)
            per_seed = ", ".join(f"{100 * r['ap50']:.1f}" for r in rs)
            lines.append(f"| {name} | {cells} | {per_seed} |")
            continue
        stats = {k: summarize([100 * r[k] for r in rs]) for k in ("miou", "macc", "allacc")}
        summary[name] = {"runs": rs, **{k: {"mean": m, "std": s} for k, (m, s) in stats.items()}}
        per_seed = ", ".join(f"{100 * r['miou']:.1f}" for r in rs)
        lines.append(f"| {name} | {stats['miou'][0]:.1f} ± {stats['miou'][1]:.1f} | {stats['macc'][0]:.1f} ± "
                     f"{stats['macc'][1]:.1f} | {stats['allacc'][0]:.1f} ± {stats['allacc'][1]:.1f} | {per_seed} |")
    return lines, summary


def paired_differences(rows: dict, instance: bool) -> list:
    """Pretrained minus random / scratch, paired by seed."""
    lines = []
    key = "ap50" if instance else "miou"
    for a, b in (("probe / pretrained", "probe / random"), ("fine-tune / pretrained", "fine-tune / scratch")):
        if a in rows and b in rows:
            diffs = [100 * (x[key] - y[key]) for x, y in zip(rows[a], rows[b])]
            m, s = summarize(diffs)
            lines.append(f"\n{a} minus {b}: {'AP50' if instance else 'mIoU'} {m:+.1f} ± {s:.1f} (paired by seed: "
                         f"{', '.join(f'{d:+.1f}' for d in diffs)})")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    instance = args.task == "instance"
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    data = args.data or args.out / "data"
    t0 = time.perf_counter()
    if args.data is None:
        make_data(data, rooms=8, val_rooms=4, points=20000)
    pretrained = args.pretrained or pretrain(data, args.out / "pretrain", args.pretrain_steps)
    rows = run_seeds(args, data, pretrained, instance)
    lines, summary = results_table(args, rows, pretrained, instance)
    lines += paired_differences(rows, instance)
    lines.append(f"\n(mean ± sample standard deviation over seeds; {time.perf_counter() - t0:.0f} s in all)")
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
