"""Time and memory of the SpUNet34C encoder on CPU (optionally with the Gaussian head).

Synthetic input: points on the walls, floor and ceiling of a 6 x 5 x 3 m room plus two boxes, with colours
and normals, grid-sampled at 0.02 m (the default grid) and cut to the requested number of rows.

    python -m benchmarks.encoder            # 20k, 50k, 100k points, 3 timed runs each
    python -m benchmarks.encoder --quick    # 20k points, 1 timed run
    python -m benchmarks.encoder --with-head  # also the full GaussianCross model (default 128x128x32 grid)
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from gcross_core.data.grid import collate_points, grid_sample
from gcross_core.model.encoder import SpUNet, SpUNetConfig
from gcross_core.model.gaussiancross import GaussianCross, GaussianCrossConfig


def room_points(num_points: int, grid_size_m: float, seed: int = 0):
    """Grid-sampled points on axis-aligned box surfaces: (coord [M, 3], feat [M, 6], grid_coord [M, 3])."""
    rng = np.random.default_rng(seed)
    boxes = [(np.zeros(3), np.array([6.0, 5.0, 3.0])),  # the room
             (np.array([1.0, 1.0, 0.0]), np.array([2.2, 1.8, 0.75])),  # a table-sized box
             (np.array([4.0, 3.0, 0.0]), np.array([4.6, 4.5, 2.0]))]  # a cupboard
    areas = np.array([2 * ((hi - lo)[0] * (hi - lo)[1] + (hi - lo)[1] * (hi - lo)[2] + (hi - lo)[0] * (hi - lo)[2])
                      for lo, hi in boxes])
    n_raw = num_points * 3  # oversample: grid sampling merges points sharing a 2 cm cell
    which = rng.choice(len(boxes), n_raw, p=areas / areas.sum())
    lo = np.stack([boxes[i][0] for i in which])
    hi = np.stack([boxes[i][1] for i in which])
    pts = lo + rng.uniform(0, 1, (n_raw, 3)) * (hi - lo)
    axis = rng.integers(0, 3, n_raw)
    side = rng.integers(0, 2, n_raw)
    rows = np.arange(n_raw)
    pts[rows, axis] = np.where(side == 1, hi[rows, axis], lo[rows, axis])
    normal = np.zeros((n_raw, 3))
    normal[rows, axis] = np.where(side == 1, 1.0, -1.0)
    color = rng.uniform(0, 1, (n_raw, 3))
    keep, grid, _ = grid_sample(pts, grid_size_m)
    if len(keep) < num_points:
        raise RuntimeError(f"only {len(keep)} grid cells for {num_points} requested points")
    sub = rng.choice(len(keep), num_points, replace=False)
    idx = keep[sub]
    return pts[idx], np.concatenate([color[idx], normal[idx]], 1), grid[sub]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_one(num_points: int, part: str, mode: str, repeats: int, grid_size_m: float) -> tuple:
    """Median and fastest seconds and peak memory (MB above the level after building model and data) of one case.

    Runs in its own process (see main) so ru_maxrss is the peak of this case alone.
    """
    torch.manual_seed(0)
    cfg = SpUNetConfig()
    if part == "encoder":
        module = SpUNet(cfg)
        call = module
        loss_fn = lambda out: out.square().mean()  # noqa: E731
    else:  # masking off so both parts see the same rows
        module = GaussianCross(GaussianCrossConfig(encoder=cfg, mask_ratio=0.0))
        call = lambda pts: module(pts).gaussians  # noqa: E731
        loss_fn = lambda g: g.colors.mean() + g.scales.mean() + g.features.square().mean()  # noqa: E731
    coord, feat, grid = room_points(num_points, grid_size_m)
    points = collate_points([coord], [feat], [grid])

    def step():
        if mode == "fwd":
            module.eval()
            with torch.no_grad():
                call(points)
        else:
            module.train()
            module.zero_grad(set_to_none=True)
            loss_fn(call(points)).backward()

    base = _rss_bytes()
    step()  # warm-up: first calls build spconv index tables and allocator pools
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return float(np.median(times)), float(min(times)), (peak - base) / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="20k points, one timed run")
    p.add_argument("--sizes", type=int, nargs="+", default=[20_000, 50_000, 100_000])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--grid-size-m", type=float, default=0.02)
    p.add_argument("--with-head", action="store_true",
                   help="also time GaussianCross (masking off) with the default Gaussian head")
    p.add_argument("--worker", nargs=3, metavar=("POINTS", "PART", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    sizes, repeats = ([20_000], 1) if args.quick else (args.sizes, args.repeats)
    if args.worker:
        n, part, mode = args.worker
        t_med, t_min, mb = run_one(int(n), part, mode, repeats, args.grid_size_m)
        print(f"RESULT {t_med} {t_min} {mb}")
        return
    n_params = sum(p.numel() for p in SpUNet(SpUNetConfig()).parameters())
    print(f"SpUNet34C {n_params / 1e6:.1f}M parameters, CPU, {torch.get_num_threads()} threads, "
          f"grid {args.grid_size_m} m, {repeats} run(s) after a warm-up, seconds as median/fastest "
          "(the fastest is the least disturbed by other load); MB = peak RSS above the level after building "
          "model and input (one process per cell)")
    print(f"{'points':>8} {'part':>14} {'fwd s':>12} {'fwd MB':>8} {'fwd+bwd s':>12} {'fwd+bwd MB':>11}")
    parts = ["encoder"] + (["encoder+head"] if args.with_head else [])
    for n in sizes:
        for part in parts:
            cells = []
            for mode in ("fwd", "fwd+bwd"):
                cmd = [sys.executable, "-m", "benchmarks.encoder", "--worker", str(n), part, mode,
                       "--repeats", str(repeats), "--grid-size-m", str(args.grid_size_m)]
                cmd += ["--quick"] if args.quick else []
                out = subprocess.run(cmd, capture_output=True, text=True)
                line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
                if out.returncode != 0 or not line:
                    raise RuntimeError(f"{part} {mode} at {n} points failed:\n{out.stderr[-2000:]}")
                cells.append(tuple(float(x) for x in line[-1].split()[1:]))
            (tf_med, tf_min, m_f), (tb_med, tb_min, m_fb) = cells
            print(f"{n:>8} {part:>14} {f'{tf_med:.2f}/{tf_min:.2f}':>12} {m_f:>8.0f} "
                  f"{f'{tb_med:.2f}/{tb_min:.2f}':>12} {m_fb:>11.0f}", flush=True)


if __name__ == "__main__":
    main()
