"""Time and peak memory of the reference (pure PyTorch, CPU) Gaussian renderer.

Renders color + depth + 16 feature channels of Gaussians scattered on the surfaces of a box-shaped room
(walls, floor, ceiling, a table and a cabinet) as one camera inside the room sees them: every Gaussian
lies in the view frustum, scales 1-3 cm, random orientations, opacities 0.3-1 (what survives the
opacity threshold tau = 0.3), Kinect-like intrinsics scaled to the image size.

    python -m benchmarks.render            # 10k and 50k Gaussians at 120x160 and 240x320
    python -m benchmarks.render --quick    # 10k at 120x160 only, fewer repeats

Peak memory is the largest resident set size seen by a sampling thread during the measured calls, and
the increase over the resident size before them.
"""
from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np
import torch

from gcross_core.geometry import scale_intrinsics
from gcross_core.render import render
from gcross_core.types import Cameras, Gaussians

ROOM_M = (5.0, 4.0, 2.6)
# (min corner, max corner) of furniture boxes standing on the floor
BOXES_M = [((2.5, 2.0, 0.0), (3.7, 2.8, 0.75)), ((4.2, 0.3, 0.0), (4.9, 1.5, 1.9))]
K_640 = np.array([[525.0, 0.0, 319.5], [0.0, 525.0, 239.5], [0.0, 0.0, 1.0]])


def _look_at(eye, target) -> np.ndarray:
    """world_to_cam (OpenCV axes) of a camera at ``eye`` looking at ``target`` with world z up."""
    z = np.asarray(target, float) - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = -R @ eye
    return T


def _box_faces(lo, hi):
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    faces = []
    for axis in range(3):
        for value in (lo[axis], hi[axis]):
            faces.append((axis, value, lo, hi))
    return faces


def _sample_surfaces(rng: np.random.Generator, n: int) -> np.ndarray:
    faces = _box_faces((0, 0, 0), ROOM_M)
    for lo, hi in BOXES_M:
        faces += [f for f in _box_faces(lo, hi) if not (f[0] == 2 and f[1] == 0.0)]  # no box bottoms
    areas = np.array([np.prod([(f[3] - f[2])[a] for a in range(3) if a != f[0]]) for f in faces])
    which = rng.choice(len(faces), size=n, p=areas / areas.sum())
    pts = np.empty((n, 3))
    for i, (axis, value, lo, hi) in enumerate(faces):
        sel = which == i
        p = lo + rng.random((int(sel.sum()), 3)) * (hi - lo)
        p[:, axis] = value
        pts[sel] = p
    return pts


def make_scene(num_gaussians: int, width: int, height: int, feature_dim: int = 16, seed: int = 0):
    """Gaussians on room surfaces inside the view frustum of one camera, and that camera."""
    rng = np.random.default_rng(seed)
    world_to_cam = _look_at(np.array([0.8, 0.7, 1.5]), np.array([4.0, 3.2, 0.9]))
    K = scale_intrinsics(K_640, width / 640, height / 480)
    kept = []
    while sum(len(k) for k in kept) < num_gaussians:
        pts = _sample_surfaces(rng, 4 * num_gaussians)
        pc = pts @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
        uv = pc[:, :2] / np.maximum(pc[:, 2:], 1e-9) * K[[0, 1], [0, 1]] + K[:2, 2]
        inside = (pc[:, 2] > 0.3) & (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
        kept.append(pts[inside])
    means = np.concatenate(kept)[:num_gaussians]
    g = torch.Generator().manual_seed(seed)
    n = num_gaussians
    gaussians = Gaussians(
        means=torch.from_numpy(means).float(),
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
        scales=0.01 + 0.02 * torch.rand(n, 3, generator=g),
        colors=torch.rand(n, 3, generator=g),
        opacities=0.3 + 0.7 * torch.rand(n, generator=g),
        features=torch.randn(n, feature_dim, generator=g),
        batch=torch.zeros(n, dtype=torch.int64),
    )
    cameras = Cameras(torch.from_numpy(world_to_cam).float()[None], torch.from_numpy(K).float()[None],
                      torch.zeros(1, dtype=torch.int64))
    return gaussians, cameras


class PeakRSS:
    """Largest resident set size (bytes) seen while the context is open, sampled every few ms."""

    def __init__(self, period_s: float = 0.002):
        self.period_s = period_s
        self.page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.period_s)

    def __enter__(self):
        self.base = self._rss()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def _leaves(gaussians: Gaussians, grad: bool) -> Gaussians:
    return Gaussians(**{k: (v.detach().clone().requires_grad_(grad) if v.is_floating_point() else v)
                        for k, v in vars(gaussians).items()})


def bench(num_gaussians: int, width: int, height: int, repeats: int, **render_kw):
    gaussians, cameras = make_scene(num_gaussians, width, height)
    g_fixed = _leaves(gaussians, grad=False)
    cot = None

    def forward():
        with torch.no_grad():
            return render(g_fixed, cameras, width, height, backend="reference", **render_kw)

    def forward_backward():
        nonlocal cot
        g = _leaves(gaussians, grad=True)
        out = render(g, cameras, width, height, backend="reference", **render_kw)
        if cot is None:
            gen = torch.Generator().manual_seed(1)
            cot = [torch.randn(t.shape, generator=gen) for t in (out.color, out.depth, out.features)]
        loss = sum((t * c).sum() for t, c in zip((out.color, out.depth, out.features), cot))
        loss.backward()
        return out

    results = {}
    for name, fn in (("forward", forward), ("forward+backward", forward_backward)):
        out = fn()  # warm-up
        times = []
        with PeakRSS() as mem:
            for _ in range(repeats):
                t0 = time.perf_counter()
                out = fn()
                times.append(time.perf_counter() - t0)
        results[name] = (min(times), float(np.median(times)), mem.peak, mem.peak - mem.base)
    coverage = float((out.alpha > 0.5).float().mean())
    return results, coverage


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10k Gaussians at 120x160 only, 2 repeats")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--tile-size", type=int, default=None)
    parser.add_argument("--chunk-size", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kw = {}
    if args.tile_size:
        kw["tile_size"] = args.tile_size
    if args.chunk_size:
        kw["chunk_size"] = args.chunk_size
    sizes = [(10_000, 160, 120)] if args.quick else [(10_000, 160, 120), (10_000, 320, 240),
                                                       (50_000, 160, 120), (50_000, 320, 240)]
    repeats = 2 if args.quick else args.repeats
    print(f"reference renderer, color + depth + 16 features, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, options {kw or 'default'}")
    print(f"{'gaussians':>9} {'image':>8} {'pass':>17} {'min s':>7} {'median s':>8} {'peak RSS':>9} "
          f"{'increase':>9}  coverage")
    for n, w, h in sizes:
        results, coverage = bench(n, w, h, repeats, **kw)
        for name, (t_min, t_med, peak, inc) in results.items():
            print(f"{n:>9} {f'{h}x{w}':>8} {name:>17} {t_min:7.3f} {t_med:8.3f} {peak / 2**30:7.2f}GB "
                  f"{inc / 2**30:7.2f}GB  {coverage:.2f}")


if __name__ == "__main__":
    main()
