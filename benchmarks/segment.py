"""Segmenter.predict on CPU: wall time and peak memory for 20k, 50k and 100k points; instance grouping
(PointGroup's dual-set clustering, ``gcross_core.segmentation.instance.group_instances``) at 50k and
100k points.

    python -m benchmarks.segment [--quick] [--threads N] [--models spunet34c,synthetic_tiny] [--rotations 1] \
        [--grouping-sizes 50000,100000] [--grouping-only]

Grouping input: the room's true classes as probabilities (0.9 on the true class) and its true offsets to
the instance centres plus 3 cm Gaussian noise, the ScanNet settings of
training/configs/finetune_scannet_insseg.yaml (0.03 m radius, 50 points), walls and floors as stuff;
the grouping runs on every point (no grid sampling), so its cost is that of the raw cloud.

The points are procedural rooms (``gcross_core.data.synthetic.make_room``) with that many surface
samples, so grid sampling (2 cm, the paper's setting) keeps a realistic share of them. Weights are
random: the cost does not depend on their values. Time: median over a few calls after one warm-up call.
Memory: the peak resident set size (RSS) during the calls, sampled every 2 ms, minus the RSS before
them (``extra``), and the process's lifetime peak (``ru_maxrss``).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from gcross_core.data.classes import SCANNET20_CLASSES
from gcross_core.data.grid import grid_sample
from gcross_core.data.synthetic import make_room
from gcross_core.model.encoder import SpUNetConfig
from gcross_core.data.classes import SYNTHETIC_CLASSES
from gcross_core.segmentation.instance import (InstanceConfig, group_instances, instance_centres,
                                               thing_mask)
from gcross_core.segmentation.model import build_segmenter_checkpoint
from gcross_core.segmentation.segmenter import Segmenter

MODELS = {
    "spunet34c": SpUNetConfig(),  # the paper's backbone (ScanNet checkpoints)
    # training/configs/synthetic_tiny.yaml / finetune_synthetic.yaml (the demo checkpoint)
    "synthetic_tiny": SpUNetConfig(base_channels=16, channels=(16, 32, 48, 64, 48, 32, 32, 32), layers=(1,) * 8),
}
PAGE = resource.getpagesize()


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """Samples the RSS on a thread; ``peak`` is the largest value seen while active."""

    def __init__(self, period_s: float = 0.002):
        self.period_s = period_s
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.period_s)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def room_points(n: int, seed: int = 0):
    scene = make_room(seed, num_points=n, num_views=0, room_size_m=(6.0, 9.0))
    return scene.coord, scene.color, scene.normal


def grouping_table(sizes, repeats: int) -> None:
    cfg = InstanceConfig(stuff_classes=("wall", "floor"))  # finetune_scannet_insseg.yaml's grouping settings
    thing = thing_mask(SYNTHETIC_CLASSES, cfg.stuff_classes)
    print(f"\nInstance grouping on CPU (radius {cfg.cluster_radius_m} m, min {cfg.min_points} points, "
          f"original + shifted sets, NMS {cfg.nms_iou}), median of {repeats} after a warm-up")
    print("| points | objects (truth) | instances found | time ms | peak extra RSS MiB |")
    print("|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for n in sizes:
        scene = make_room(0, num_points=n, num_views=0, room_size_m=(6.0, 9.0))
        labels = np.clip(scene.segment, 0, None)
        probs = np.full((n, len(SYNTHETIC_CLASSES)), 0.1 / (len(SYNTHETIC_CLASSES) - 1), np.float32)
        probs[np.arange(n), labels] = 0.9
        offset = instance_centres(scene.coord, scene.instance) - scene.coord
        offset += rng.normal(0.0, 0.03, offset.shape).astype(np.float32)
        objects = len(np.unique(scene.instance[thing[labels]]))
        group_instances(scene.coord, offset, probs, thing, cfg)  # warm-up
        times = []
        before = rss_bytes()
        with PeakRSS() as mem:
            for _ in range(repeats):
                t0 = time.perf_counter()
                found = group_instances(scene.coord, offset, probs, thing, cfg)
                times.append(time.perf_counter() - t0)
        print(f"| {n} | {objects} | {len(found)} | {1e3 * statistics.median(times):.0f} | "
              f"{(mem.peak - before) / 2 ** 20:.0f} |", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one timed call per size, small model only")
    ap.add_argument("--threads", type=int, default=0, help="torch/OpenMP threads (0: torch default)")
    ap.add_argument("--models", default=None, help=f"comma-separated subset of {sorted(MODELS)}")
    ap.add_argument("--sizes", default="20000,50000,100000")
    ap.add_argument("--rotations", type=int, default=1, help="test-time rotations per call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--grouping-sizes", default="50000,100000", help="cloud sizes of the grouping table")
    ap.add_argument("--grouping-only", action="store_true", help="only the instance-grouping table")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.models.split(",") if args.models else (["synthetic_tiny"] if args.quick else sorted(MODELS))
    sizes = [int(s) for s in args.sizes.split(",")]
    repeats = 1 if args.quick else args.repeats
    if args.grouping_only:
        grouping_table([int(s) for s in args.grouping_sizes.split(",")], repeats)
        return 0
    print(f"Segmenter.predict on CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"grid 0.02 m, {args.rotations} rotation(s), median of {repeats} after a warm-up")
    print("| model | points | grid cells | time ms | ms per 1k points | peak extra RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    clouds = {n: room_points(n) for n in sizes}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            path = build_segmenter_checkpoint(Path(tmp) / f"{name}.safetensors", SCANNET20_CLASSES, MODELS[name])
            seg = Segmenter.from_checkpoint(path)
            for n in sizes:
                coord, color, normal = clouds[n]
                cells = len(grid_sample(coord, seg.grid_size_m)[0])
                seg.predict(coord, color, normal, rotations=args.rotations)  # warm-up
                times = []
                before = rss_bytes()
                with PeakRSS() as mem:
                    for _ in range(repeats):
                        t0 = time.perf_counter()
                        labels, _, _ = seg.predict(coord, color, normal, rotations=args.rotations)
                        times.append(time.perf_counter() - t0)
                assert len(labels) == n
                ms = 1e3 * statistics.median(times)
                print(f"| {name} | {n} | {cells} | {ms:.0f} | {ms / (n / 1000):.2f} | "
                      f"{(mem.peak - before) / 2 ** 20:.0f} |", flush=True)
    grouping_table([int(s) for s in args.grouping_sizes.split(",")], repeats)
    print(f"process peak RSS (ru_maxrss): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
