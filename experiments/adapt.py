"""Self-supervised adaptation to one room, scored on held-out views of that room.

Every 5th frame of a SensReader frames folder is held out; the others form the training scene (linked,
not copied, under --out). Pretraining continues from the synthetic-pretrained checkpoint on them for
--steps steps (training/configs/adapt_frames.yaml), then each model renders the held-out views from the
points fused from the training frames only:

  random init           GaussianCross with fresh weights (seed 0), same architecture
  synthetic-pretrained  the --pretrained checkpoint (training/make_demo_checkpoint.sh: synthetic_tiny.yaml)
  adapted               the same after --steps steps on the room's training frames
  point splat           one isotropic Gaussian per fused voxel (gcross_core.mapping.map_view, what the node
                        rendered before render_source: gaussians)

Printed per method: colour PSNR (dB, all pixels), depth L1 (m, over pixels with sensor depth that the
render covers, alpha >= 0.5) and that coverage (a splat with holes is scored on fewer pixels). Feature quality: cosine between the teacher's features of
a held-out image and the model's rendered features lifted by its projection head (eq. 16), against the
cosine of the constant mean teacher feature (over the training views). Eval-time input of the adapted
model: full density (BatchNorm running statistics), full density with the input's statistics, the
trained 50 % mask, each with BatchNorm running or input statistics, and the mean of 4 masks
(gcross_core.model.api.EvalInput). The method table uses GaussianCrossModel's default EvalInput().
The point splat is rendered as the node did (its voxel_size_m 0.02 and max_render_gaussians 50k nearest
visible voxels) and, as a second row, with every voxel.
A PNG (held-out frame | point splat as the node | adapted model; colour and depth rows, 3 views) goes to --out.

    python -m experiments.adapt --frames DIR [--steps 200] [--out runs/bench_adapt] [--pretrained CKPT]

Finished adaptation runs under --out are reused (delete <out>/adapt to rerun).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from gcross_core.config import load_config, to_dict
from gcross_core.data.frames import SensReaderFrames, find_frames_dir
from gcross_core.data.scene import Scene
from gcross_core.mapping.fusion_cache import FusionSettings, default_cache_dir, fused_points
from gcross_core.mapping.map_view import render_map_view
from gcross_core.model.api import DEMO_MODEL, EvalInput, GaussianCrossModel, pinhole_cameras, save_model
from gcross_core.model.gaussiancross import GaussianCross
from gcross_core.pretraining.config import PretrainConfig
from gcross_core.pretraining.dataset import transform_scene, up_transform
from gcross_core.pretraining.init import config_for_init, load_init_weights
from gcross_core.pretraining.module import build_pretrain_module
from gcross_core.pretraining.run import run_pretraining
from gcross_core.train.logging import depth_to_rgb, image_grid, to_uint8

REPO = Path(__file__).resolve().parents[1]

log = logging.getLogger("bench_adapt")
HOLDOUT_EVERY = 5


def link_training_scene(frames_dir: Path, ids: List[str], out: Path) -> Path:
    """A scene folder whose frames/ holds links to the training frames only."""
    dst = out / "frames"
    for sub in ("color", "depth", "pose", "intrinsic"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    for f in (frames_dir / "intrinsic").iterdir():
        target = dst / "intrinsic" / f.name
        if not target.exists():
            target.symlink_to(f.resolve())
    colors = {p.stem: p for p in (frames_dir / "color").iterdir()}
    for i in ids:
        for src, target in ((colors[i], dst / "color" / colors[i].name),
                            (frames_dir / "depth" / f"{i}.png", dst / "depth" / f"{i}.png"),
                            (frames_dir / "pose" / f"{i}.txt", dst / "pose" / f"{i}.txt")):
            if not target.exists():
                target.symlink_to(src.resolve())
    return out


def held_out_views(frames, indices, width: int, height: int):
    views = []
    for i in indices:
        f = frames.frame(i).resized(width, height)
        views.append(f)
    return views


def score(color: np.ndarray, depth: np.ndarray, alpha: np.ndarray, view) -> Dict[str, float]:
    """color [H, W, 3] 0..1, depth [H, W] m, alpha [H, W] against a view (color uint8, depth_m)."""
    gt = view.color.astype(np.float32) / 255.0
    mse = float(np.mean((np.clip(color, 0, 1) - gt) ** 2))
    valid = view.depth_m > 0
    covered = valid & (alpha >= 0.5) & np.isfinite(depth)
    l1 = float(np.abs(depth[covered] - view.depth_m[covered]).mean()) if covered.any() else float("nan")
    return {"psnr": -10 * np.log10(max(mse, 1e-10)), "depth_l1_m": l1,
            "coverage": float(covered.sum() / max(valid.sum(), 1))}


def mean_scores(rows: List[Dict[str, float]]) -> Dict[str, float]:
    return {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}


def render_model(ckpt: Path, scene: Scene, views, width, height, eval_input: EvalInput = EvalInput()):
    model = GaussianCrossModel.from_checkpoint(ckpt, eval_input=eval_input)
    sets = model.gaussian_sets(scene)
    outs = []
    for v in views:
        r = model.render(sets, pinhole_cameras(v.cam_to_world, v.K_depth), width, height)
        outs.append((r.color[0].numpy(), r.expected_depth[0].numpy(), r.alpha[0].numpy(), r.features[0]))
    return outs, sum(len(g) for g in sets) / len(sets)


def feature_cosines(run_cfg: PretrainConfig, ckpt: Path, renders, views, train_views) -> Optional[Dict[str, float]]:
    """Mean per-pixel cosine of projected rendered features vs the teacher on held-out views, and of the
    constant mean teacher feature of the training views (the baseline a feature field must beat)."""
    module = build_pretrain_module(run_cfg)
    report = load_init_weights(module, ckpt)
    if module.projection is None or any(f.startswith("projection") for f in report["fresh"]):
        return None
    name, teacher = next(iter(module.teachers.items()))
    teacher.eval()

    def teach(vs):
        imgs = torch.from_numpy(np.stack([v.color for v in vs])).float().div(255).permute(0, 3, 1, 2)
        with torch.no_grad():
            return teacher(imgs)  # [V, d*, h, w]

    mean_feat = teach(train_views).mean(dim=(0, 2, 3))  # [d*]
    target = teach(views)
    feats = torch.stack([r[3] for r in renders])  # [V, H, W, d_f]
    with torch.no_grad():
        projected = module.projection(feats, {name: tuple(target.shape[-2:])})[name]
    cos = torch.nn.functional.cosine_similarity(projected, target, dim=1).mean()
    base = torch.nn.functional.cosine_similarity(mean_feat[None, :, None, None].expand_as(target), target, dim=1).mean()
    return {"rendered": float(cos), "mean_teacher": float(base)}


@dataclass
class HeldOut:
    """What every method is scored on: the held-out views of the room and the points rendered for them."""
    scene: Scene  # the training frames' fused points, turned z-up as in training
    splat_scene: Scene  # the same frames fused at the node's voxel size (the point splat's input)
    views: list  # the scored held-out frames, resized to width x height
    train_views: list  # training frames (their mean teacher feature is the cosine's baseline)
    width: int
    height: int


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", required=True, type=Path, help="SensReader frames folder (or a scene with frames/)")
    p.add_argument("--steps", type=int, default=200, help="adaptation steps")
    p.add_argument("--out", type=Path, default=Path("runs/bench_adapt"))
    p.add_argument("--pretrained", type=Path, default=DEMO_MODEL,
                   help="pretraining checkpoint to adapt (default: the shipped synthetic-pretrained model, which "
                        "holds no projection head: adaptation starts a fresh one and its feature cosine is not printed)")
    p.add_argument("--config", type=Path, default=REPO / "training" / "configs" / "adapt_frames.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--eval-size", type=int, nargs=2, default=(120, 160), metavar=("H", "W"))
    p.add_argument("--max-eval-views", type=int, default=24, help="held-out views scored (evenly spaced)")
    p.add_argument("--splat-voxel-size-m", type=float, default=0.02, help="the node's voxel_size_m")
    p.add_argument("--splat-max-gaussians", type=int, default=50_000,
                   help="the node's max_render_gaussians (nearest visible voxels rendered); a second row renders all")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def split_frames(frames_arg: Path, out: Path):
    """Every HOLDOUT_EVERY-th frame held out; the others linked into the training scene folder. Returns
    (frames, held-out indices, training indices, training scene folder)."""
    fdir = find_frames_dir(frames_arg)
    if fdir is None:
        raise SystemExit(f"--frames {frames_arg}: no SensReader frames (color/ depth/ pose/) found")
    frames = SensReaderFrames(fdir)
    n = len(frames)
    held = [i for i in range(n) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]
    train = [i for i in range(n) if i not in set(held)]
    scene_dir = link_training_scene(fdir, [frames.frame_ids[i] for i in train], out / "train_scene")
    return frames, held, train, scene_dir


def adapt(args: argparse.Namespace, scene_dir: Path, run_dir: Path):
    """Pretraining continued on the training scene (reused when finished). Returns (the run's resolved
    config, seconds spent in this call)."""
    cfg = load_config(args.config, PretrainConfig, [
        f"init_checkpoint={args.pretrained}", f"data.scenes=[{scene_dir}]", f"train.max_steps={args.steps}",
        f"train.num_threads={args.threads}", "train.device=cpu", *args.overrides])
    t0 = time.perf_counter()
    if not (run_dir / "final.safetensors").is_file():
        state, _ = run_pretraining(cfg, run_dir, progress=False, tensorboard=False)
        log.info("adapted %d steps in %.0f s", state.step, time.perf_counter() - t0)
    return config_for_init(cfg), time.perf_counter() - t0


def held_out(args: argparse.Namespace, run_cfg: PretrainConfig, frames, held: List[int], train: List[int],
             scene_dir: Path, out: Path) -> HeldOut:
    """The training room's points (cached by the run), turned z-up exactly as in training, and the views."""
    pipe = run_cfg.data.pipeline
    train_frames = SensReaderFrames(scene_dir / "frames")
    settings = FusionSettings(pipe.fuse_voxel_size_m, pipe.fuse_every, pipe.fuse_max_depth_m)
    fused = fused_points(train_frames, settings, default_cache_dir(scene_dir, pipe.fuse_cache_root))
    T = up_transform(train_frames, fused.coord, pipe.up, "room")  # what the dataset applied in training
    scene = transform_scene(Scene("room", fused.coord, fused.color, fused.normal, frames=frames), T)
    splat_settings = FusionSettings(args.splat_voxel_size_m)
    splat = fused if splat_settings == settings else fused_points(train_frames, splat_settings, out / "splat_points")
    splat_scene = transform_scene(Scene("room", splat.coord, splat.color, splat.normal, frames=frames), T)
    h, w = args.eval_size
    pick = np.unique(np.linspace(0, len(held) - 1, min(args.max_eval_views, len(held))).round().astype(int))
    eval_idx = [held[k] for k in pick]
    views = held_out_views(scene.frames, eval_idx, w, h)
    train_views = held_out_views(scene.frames, train[:: max(1, len(train) // 24)], w, h)
    return HeldOut(scene, splat_scene, views, train_views, w, h)


def score_models(models: Dict[str, Path], room: HeldOut):
    """Each checkpoint's renders of the held-out views and their mean scores."""
    table, renders_of = {}, {}
    for name, ckpt in models.items():
        t = time.perf_counter()
        renders, ng = render_model(ckpt, room.scene, room.views, room.width, room.height)
        table[name] = {**mean_scores([score(c, d, a, v) for (c, d, a, _), v in zip(renders, room.views)]),
                       "gaussians": ng, "seconds": time.perf_counter() - t}
        renders_of[name] = renders
    return table, renders_of


def score_point_splats(args: argparse.Namespace, room: HeldOut):
    """One isotropic Gaussian per voxel, as the node rendered: its nearest visible voxels, and every voxel."""
    w, h, scene = room.width, room.height, room.splat_scene
    palette = np.zeros((1, 3), np.uint8)
    table, splat_views = {}, {}
    for name, limit in (("point splat (node)", args.splat_max_gaussians), ("point splat, every voxel", 10**9)):
        t = time.perf_counter()
        rendered = []
        for v in room.views:
            mv = render_map_view(scene.coord, scene.color, np.full(len(scene.coord), -1),
                                 v.cam_to_world, v.K_depth, w, h, palette, args.splat_voxel_size_m, max_gaussians=limit)
            alpha = np.isfinite(mv.depth_m).astype(np.float32)
            rendered.append((mv.color.astype(np.float32) / 255, np.nan_to_num(mv.depth_m), alpha))
        table[name] = {**mean_scores([score(c, d, a, v) for (c, d, a), v in zip(rendered, room.views)]),
                       "gaussians": float(min(limit, len(scene.coord))), "seconds": time.perf_counter() - t}
        splat_views[name] = rendered
    return table, splat_views


def score_eval_inputs(run_cfg: PretrainConfig, ckpt: Path, room: HeldOut) -> Dict[str, dict]:
    """The adapted model's eval-time input handling: density, BatchNorm statistics, masks averaged."""
    mask = run_cfg.model.mask_ratio
    variants = {"full density, BN running (model.eval())": EvalInput(mask_ratio=0.0, batchnorm="running"),
                "full density, BN from input": EvalInput(mask_ratio=0.0, batchnorm="input"),
                f"mask {mask:g}, BN running": EvalInput(mask_ratio=mask, batchnorm="running"),
                f"mask {mask:g}, BN from input (default)": EvalInput(mask_ratio=mask, batchnorm="input"),
                f"mask {mask:g}, BN from input, mean of 4": EvalInput(mask_ratio=mask, num_masks=4, batchnorm="input")}
    eval_table = {}
    for name, ev in variants.items():
        renders, ng = render_model(ckpt, room.scene, room.views, room.width, room.height, ev)
        cos = feature_cosines(run_cfg, ckpt, renders, room.views, room.train_views)
        eval_table[name] = {**mean_scores([score(c, d, a, v) for (c, d, a, _), v in zip(renders, room.views)]),
                            "gaussians": ng, "feature_cosine": None if cos is None else cos["rendered"]}
    return eval_table


def side_by_side_png(path: Path, views, splat, adapted) -> Path:
    """Held-out | point splat | adapted, a colour row and a depth row per view, for 3 views."""
    rows = []
    for k in np.unique(np.linspace(0, len(views) - 1, 3).round().astype(int)):
        v, (sc, sd, sa), (ac, ad, aa, _) = views[k], splat[k], adapted[k]
        far = float(np.percentile(v.depth_m[v.depth_m > 0], 99)) if (v.depth_m > 0).any() else None
        rows.append([v.color, to_uint8(sc), to_uint8(ac)])
        rows.append([depth_to_rgb(v.depth_m, far), depth_to_rgb(sd * (sa > 0.5), far), depth_to_rgb(ad * (aa > 0.5), far)])
    Image.fromarray(image_grid(rows)).save(path)
    return path


def print_results(result: dict, n: int, out: Path) -> None:
    h, w = result["eval_size"]
    print(f"held-out views: {result['scored_views']} of {result['held_out']} (every {HOLDOUT_EVERY}th of {n} "
          f"frames), {w}x{h}; adaptation: {result['steps']} steps on {result['train_frames']} frames "
          f"({result['adapt_seconds']:.0f} s this call)")
    print(f"{'method':44s} {'PSNR dB':>8s} {'depth L1 m':>10s} {'coverage':>8s} {'Gaussians':>9s} {'feat cos':>8s}")
    for name, r in {**result["methods"], **{f'adapted, {k}': v for k, v in result["eval_input"].items()}}.items():
        cos = r.get("feature_cosine")
        print(f"{name:44s} {r['psnr']:8.2f} {r['depth_l1_m']:10.3f} {r['coverage']:8.2f} {r['gaussians']:9.0f} "
              f"{'' if cos is None else format(cos, '8.3f')}")
    for name, c in result["feature_cosine"].items():
        if c is None:
            print(f"feature cosine {name}: no projection head in the checkpoint")
        else:
            print(f"feature cosine {name}: rendered {c['rendered']:.3f} vs constant mean teacher feature "
                  f"{c['mean_teacher']:.3f}")
    print(f"wrote {result['png']} and {out / 'results.json'}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    frames, held, train, scene_dir = split_frames(args.frames, out)
    run_dir = out / "adapt"
    run_cfg, adapt_s = adapt(args, scene_dir, run_dir)
    room = held_out(args, run_cfg, frames, held, train, scene_dir, out)

    random_ckpt = out / "random_init.safetensors"
    torch.manual_seed(0)
    save_model(random_ckpt, GaussianCross(run_cfg.model), to_dict(run_cfg))
    models = {"random init": random_ckpt, "synthetic-pretrained": args.pretrained,
              "adapted": run_dir / "final.safetensors"}
    table, renders_of = score_models(models, room)
    splat_table, splat_views = score_point_splats(args, room)
    table.update(splat_table)
    eval_table = score_eval_inputs(run_cfg, models["adapted"], room)
    cosines = {name: feature_cosines(run_cfg, ckpt, renders_of[name], room.views, room.train_views)
               for name, ckpt in models.items() if name != "random init"}
    png = side_by_side_png(out / "adapt_side_by_side.png", room.views, splat_views["point splat (node)"],
                           renders_of["adapted"])

    result = {"frames": len(frames), "held_out": len(held), "scored_views": len(room.views),
              "train_frames": len(train), "steps": args.steps, "adapt_seconds": adapt_s,
              "eval_size": [room.height, room.width], "methods": table, "eval_input": eval_table,
              "feature_cosine": cosines, "png": str(png)}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print_results(result, len(frames), out)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
