"""render_source gaussians on a tilted map frame: does turning the map z-up for the model give back the
z-up room's renders?

The shipped GaussianCross model was trained on z-up rooms. For synthetic rooms it has not seen, the first
frames are fused into a voxel map, and the held-out frames are rendered from the model's Gaussians
(:class:`gcross_core.mapping.model_view.ModelMapRenderer`) with the map in the z-up frame, the same map
tilted (turned about x by ``--tilt-deg`` and shifted, cameras moved with it), and the frames fused again in
the tilted frame (another voxel lattice, as a map recorded in a camera's frame would be). Each with the up
direction given, estimated from the fused frames' cameras, or forced to the map's +z (no turn: the model
sees the room tilted). Prints PSNR (whole image) and depth L1 (pixels with sensor depth and a rendered
depth) against the recorded frames, averaged over the held-out frames of all rooms, and the angle between
the cameras' up estimate and the true up:

    python -m experiments.zup_render                  # 4 rooms, 8 fused + 4 held-out frames, 80x60
    python -m experiments.zup_render --rooms 8 --width 160 --height 120
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import numpy as np
import torch

from gcross_core.data.synthetic import make_room
from gcross_core.evaluation.report import class_palette
from gcross_core.mapping.fusion import VoxelMap
from gcross_core.mapping.model_view import ModelMapRenderer
from gcross_core.model.api import DEMO_MODEL, GaussianCrossModel

FIRST_UNSEEN_ROOM = 1000  # the shipped model was trained on rooms 0-7
# (name, map: z-up / moved = the z-up map's voxels moved rigidly / refused = fused in the tilted frame, up)
VARIANTS = [
    ("z-up map, up given (0,0,1)", "z-up", "z"),
    ("z-up map, up from cameras", "z-up", "cameras"),
    ("tilted map, no turn (up = map +z)", "moved", "z"),
    ("tilted map, up given", "moved", "given"),
    ("tilted map, up from cameras", "moved", "cameras"),
    ("tilted map fused again, no turn", "refused", "z"),
    ("tilted map fused again, up from cameras", "refused", "cameras"),
]


def tilt(deg: float) -> np.ndarray:
    """[4, 4] z-up -> tilted map frame: a turn about x by ``deg`` and a shift."""
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    T = np.eye(4)
    T[:3, :3] = [[1, 0, 0], [0, c, -s], [0, s, c]]
    T[:3, 3] = [0.37, -1.21, 2.53]
    return T


def fuse(frames, indices, T, voxel_size_m):
    vmap = VoxelMap(voxel_size_m, 1_000_000, num_classes=4)
    for i in indices:
        f = frames.frame(i)
        vmap.integrate(f.color, f.depth_m, f.K_depth, T @ f.cam_to_world)
    return vmap.snapshot()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rooms", type=int, default=4)
    p.add_argument("--fused", type=int, default=8, help="frames fused into the map per room")
    p.add_argument("--held-out", type=int, default=4, help="frames rendered per room")
    p.add_argument("--width", type=int, default=80)
    p.add_argument("--height", type=int, default=60)
    p.add_argument("--tilt-deg", type=float, default=70.0)
    p.add_argument("--voxel-size-m", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = GaussianCrossModel.from_checkpoint(DEMO_MODEL)
    T = tilt(args.tilt_deg)
    fused = range(args.fused)
    held_out = range(args.fused, args.fused + args.held_out)
    palette = class_palette(4)
    scores = {name: ([], []) for name, _, _ in VARIANTS}
    up_errors = []
    t0 = time.perf_counter()
    for k in range(args.rooms):
        room = make_room(FIRST_UNSEEN_ROOM + k, num_views=args.fused + args.held_out,
                         width=args.width, height=args.height)
        snap = fuse(room.frames, fused, np.eye(4), args.voxel_size_m)
        maps = {"z-up": (snap, np.eye(4)),
                "moved": (replace(snap, coords=(snap.coords @ T[:3, :3].T + T[:3, 3]).astype(np.float32),
                                  normals=(snap.normals @ T[:3, :3].T).astype(np.float32)), T),
                "refused": (fuse(room.frames, fused, T, args.voxel_size_m), T)}
        for name, which, up in VARIANTS:
            m, M = maps[which]
            given = {"z": (0.0, 0.0, 1.0), "given": tuple(M[:3, 2]), "cameras": None}[up]
            r = ModelMapRenderer(model, 50_000, up=given)
            if up == "cameras":
                for i in fused:
                    r.observe_camera(M @ room.frames.frame(i).cam_to_world)
                if which == "moved":
                    up_errors.append(np.degrees(np.arccos(np.clip(r.up @ M[:3, 2], -1.0, 1.0))))
            for i in held_out:
                f = room.frames.frame(i)
                view = r.render(m, M @ f.cam_to_world, f.K_depth, args.width, args.height, palette)
                mse = np.mean((view.color.astype(np.float64) - f.color) ** 2)
                ok = (f.depth_m > 0) & np.isfinite(view.depth_m)
                scores[name][0].append(10 * np.log10(255.0 ** 2 / mse))
                scores[name][1].append(float(np.abs(view.depth_m[ok] - f.depth_m[ok]).mean()))
    print(f"{args.rooms} unseen synthetic rooms, {args.fused} fused + {args.held_out} held-out frames each at "
          f"{args.width}x{args.height}, voxels {args.voxel_size_m} m, tilt {args.tilt_deg} deg about x; "
          f"{DEMO_MODEL.name}; {time.perf_counter() - t0:.0f} s")
    print(f"cameras' up estimate off the true up by {np.mean(up_errors):.1f} deg on average "
          f"(max {np.max(up_errors):.1f})")
    print(f"| {'map, up direction':42s} | PSNR [dB] | depth L1 [m] |")
    print(f"|{'-' * 44}|----------:|-------------:|")
    for name, _, _ in VARIANTS:
        psnr, l1 = scores[name]
        print(f"| {name:42s} | {np.mean(psnr):9.2f} | {np.mean(l1):12.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
