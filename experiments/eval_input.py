"""Eval-time input of a GaussianCross model: which input gives the best renders at inference?

The encoder is trained on input with gamma = 0.5 of its grid cells masked away (eq. 4) and BatchNorm
statistics of each training batch. This renders every frame of every given scene folder from the model's
Gaussians of the whole scene under each ``EvalInput`` variant and prints PSNR (whole image) and depth L1
(pixels with sensor depth and rendered opacity >= 0.5) against the recorded frames, averaged over frames:

    python -m experiments.eval_input --checkpoint gcross_core/assets/gaussiancross_synthetic.safetensors \
        --scenes runs/demo_checkpoint/data/val/*      # held-out synthetic rooms (make_demo_checkpoint.sh)

Scenes need points (coord.npy, ...) and frames/; frames are resized to --width x --height.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from gcross_core.data.scene import load_scene
from gcross_core.model.api import EvalInput, GaussianCrossModel, pinhole_cameras

VARIANTS = [
    ("full density, running BN (default)", EvalInput()),
    ("full density, input BN", EvalInput(batchnorm="input")),
    ("mask 0.5, running BN", EvalInput(mask_ratio=0.5)),
    ("mask 0.5, input BN (training path)", EvalInput(mask_ratio=0.5, batchnorm="input")),
    ("4 masks 0.5 averaged, running BN", EvalInput(mask_ratio=0.5, num_masks=4)),
    ("4 masks 0.5 averaged, input BN", EvalInput(mask_ratio=0.5, num_masks=4, batchnorm="input")),
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="GaussianCross pretraining checkpoint")
    p.add_argument("--scenes", nargs="+", required=True, help="scene folders with points and frames/")
    p.add_argument("--width", type=int, default=80)
    p.add_argument("--height", type=int, default=60)
    p.add_argument("--max-frames", type=int, default=8, help="frames per scene")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    scenes = [load_scene(s, segment="none") for s in args.scenes]
    print(f"{len(scenes)} scenes, up to {args.max_frames} frames each at {args.width}x{args.height}; "
          f"checkpoint {args.checkpoint}")
    print(f"| {'eval input':40s} | PSNR [dB] | depth L1 [m] | s / scene |")
    print(f"|{'-' * 42}|----------:|-------------:|----------:|")
    for name, ev in VARIANTS:
        model = GaussianCrossModel.from_checkpoint(args.checkpoint, eval_input=ev)
        psnrs, l1s, secs = [], [], []
        for scene in scenes:
            t0 = time.perf_counter()
            sets = model.gaussian_sets(scene)
            frames = scene.frames.resized(args.width, args.height)
            for i in range(min(len(frames), args.max_frames)):
                f = frames.frame(i)
                out = model.render(sets, pinhole_cameras(f.cam_to_world, f.K_depth), args.width, args.height)
                color = torch.from_numpy(f.color).float() / 255.0
                mse = float(((out.color[0].clamp(0, 1) - color) ** 2).mean())
                psnrs.append(10 * np.log10(1.0 / max(mse, 1e-12)))
                depth = torch.from_numpy(f.depth_m)
                ok = (depth > 0) & (out.alpha[0] >= 0.5)
                if bool(ok.any()):
                    l1s.append(float((out.expected_depth[0] - depth).abs()[ok].mean()))
            secs.append(time.perf_counter() - t0)
        print(f"| {name:40s} | {np.mean(psnrs):9.2f} | {np.mean(l1s) if l1s else float('nan'):12.3f} | "
              f"{np.mean(secs):9.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
