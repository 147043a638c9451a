"""The GaussianCross pretraining step (paper Sec. 3): batch -> model -> render -> teacher features ->
projection -> losses. ROS-free; the loop around it is :class:`gcross_core.train.trainer.Trainer`.

:class:`PretrainModule` is the module the trainer optimizes (and DDP wraps): the GaussianCross model
(encoder + Gaussian head) under the name ``model`` and the projection heads of eq. 16 under
``projection``. Its state dict therefore holds the encoder as ``model.encoder.*``, which is what the
downstream segmentation tools load from a pretraining checkpoint. The frozen teachers are *not*
submodules: they carry no trainable state, would bloat every checkpoint, and DDP must not see them.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from gcross_core.pretraining.dataset import PretrainDataConfig, PretrainDataset, collate_pretrain
from gcross_core.pretraining.losses import LossConfig, total_loss, valid_depth_mask
from gcross_core.model.gaussiancross import GaussianCross, GaussianCrossConfig
from gcross_core.render import render
from gcross_core.pretraining.teachers import MultiTeacherProjection, Teacher, TeacherHeadSpec, build_teacher
from gcross_core.train.config import OptimConfig, RunConfig, TrainerConfig, to_dict
from gcross_core.train.distributed import barrier, init_distributed, shutdown_distributed
from gcross_core.train.logging import depth_to_rgb, image_grid, pca_basis, pca_rgb, psnr, to_uint8
from gcross_core.train.schedule import ScheduleConfig
from gcross_core.train.trainer import FINAL_CHECKPOINT, Trainer, TrainState, seed_everything
from gcross_core.types import Cameras, Gaussians

log = logging.getLogger(__name__)

PRETRAIN_KIND = "pretrain"
ENCODER_PREFIX = "model.encoder"  # where the encoder weights live in a pretraining checkpoint


@dataclass(frozen=True)
class TeacherConfig:
    name: str = "efficientnet_lite0"  # see gcross_core.pretraining.teachers.TEACHER_NAMES
    loss_weight: float = 1.0  # this teacher's share of L_sem (several teachers: the Chorus setting)
    head_hidden: Optional[int] = None  # projection head of eq. 16: None = one 1x1 conv, else a 2-layer MLP
    # keyword arguments of build_teacher(name, ...), e.g. {input_size: [480, 640]} or {repo_dir: ...}
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RenderSettings:
    backend: str = "auto"  # auto: gsplat on CUDA, the pure-PyTorch reference on CPU
    # rasterizer options of gcross_core.render.api.RenderConfig (e.g. {tile_size: 16})
    options: Dict[str, Any] = field(default_factory=dict)


def _views_per_scene(view_scene: Tensor, num_scenes: int) -> Tensor:
    return torch.bincount(view_scene, minlength=num_scenes)


class PretrainModule(nn.Module):
    """GaussianCross + projection heads; ``forward(batch)`` returns the loss terms of one step.

    ``batch`` is a ``PretrainBatch``: points (PointBatch), images [V, H, W, 3] in 0..1, depths_m
    [V, H, W], cameras (Cameras, intrinsics for H x W), view_scene [V]. When the batch carries
    ``teacher_features`` ({teacher: [V, d*, h, w]}, e.g. read from a FeatureCache) they are used;
    otherwise the teachers run on the images.
    """

    def __init__(self, model: GaussianCross, teachers: Sequence[Teacher], teacher_cfgs: Sequence[TeacherConfig],
                 loss: LossConfig = LossConfig(), render_settings: RenderSettings = RenderSettings()):
        super().__init__()
        if len(teachers) != len(teacher_cfgs):
            raise ValueError(f"{len(teachers)} teachers for {len(teacher_cfgs)} teacher configs")
        self.model = model
        self.loss_cfg = loss
        self.render_settings = render_settings
        d_f = model.cfg.head.feature_dim
        self.projection: Optional[MultiTeacherProjection] = None
        if loss.use_sem:
            if d_f <= 0:
                raise ValueError("loss.use_sem needs model.head.feature_dim > 0 (the rendered feature width d_f)")
            if not teachers:
                raise ValueError("loss.use_sem needs at least one teacher")
            self.projection = MultiTeacherProjection(d_f, {
                t.name: TeacherHeadSpec(t.feature_dim, c.loss_weight, c.head_hidden)
                for t, c in zip(teachers, teacher_cfgs)})
        # a plain dict keeps the frozen teachers out of parameters(), state_dict() and DDP
        self._teachers: Dict[str, Teacher] = {t.name: t for t in teachers} if loss.use_sem else {}

    @property
    def teachers(self) -> Dict[str, Teacher]:
        return self._teachers

    def _teacher_features(self, batch, images: Tensor) -> Dict[str, Tensor]:  # images [V, H, W, 3]
        cached = getattr(batch, "teacher_features", None) or {}
        out = {}
        for name, teacher in self._teachers.items():
            if name in cached and cached[name] is not None:
                out[name] = cached[name].to(images.device, torch.float32)
                continue
            if teacher.pixel_mean.device != images.device:
                teacher.to(images.device)
            out[name] = teacher(images.permute(0, 3, 1, 2))  # F*_m = X_f(C*_m)
        return out

    def forward(self, batch) -> Dict[str, Any]:
        images, depths_m, cameras = batch.images, batch.depths_m, batch.cameras
        v, h, w = depths_m.shape
        if images.shape != (v, h, w, 3):
            raise ValueError(f"batch.images has shape {tuple(images.shape)}, expected {(v, h, w, 3)} to match depths_m")
        num_scenes = batch.points.num_scenes
        out = self.model(batch.points)  # masking (eq. 4) happens inside when training
        g = _float32(out.gaussians)
        features, targets = None, None
        if self.projection is not None:
            targets = self._teacher_features(batch, images)
        # render, project and compare in float32 whatever the autocast context: gsplat wants fp32, depth
        # needs the range, and 1 - cos of nearly aligned features loses everything in half precision
        with torch.autocast(device_type=images.device.type, enabled=False):
            r = render(g, Cameras(cameras.world_to_cam.float(), cameras.K.float(), cameras.batch), w, h,
                       backend=self.render_settings.backend, num_scenes=num_scenes, **self.render_settings.options)
            if self.projection is not None:
                sizes = {name: tuple(t.shape[-2:]) for name, t in targets.items()}
                features = self.projection(r.features, sizes)  # eq. 16
            terms = total_loss(self.loss_cfg, color=r.color, color_target=images.float(), depth_m=r.depth,
                               depth_target_m=depths_m.float(), features=features, features_target=targets,
                               feature_weights=self.projection.loss_weights if self.projection is not None else None)
        loss = terms.pop("total")
        if len(g) == 0:
            # every Gaussian pruned: keep every parameter in the graph so backward (and DDP) still work
            loss = loss + 0.0 * sum(p.sum() for p in self.parameters() if p.requires_grad)
        result: Dict[str, Any] = {"loss": loss}
        for k, t in terms.items():
            result[f"loss_{k.replace('/', '_')}"] = t
        with torch.no_grad():
            valid = valid_depth_mask(depths_m)
            covered = valid & (r.alpha > 0.5)
            result["psnr"] = psnr(r.color, images)
            result["depth_mae_m"] = ((r.expected_depth - depths_m).abs()[covered].mean() if covered.any()
                                     else torch.tensor(float("nan")))
            result["coverage"] = covered.sum() / valid.sum().clamp_min(1)
            result["gaussians_per_scene"] = torch.tensor(len(g) / max(num_scenes, 1), dtype=torch.float32)
        result["_vis"] = {"color": r.color[0].detach(), "depth_m": r.expected_depth[0].detach(),
                          "alpha": r.alpha[0].detach(), "features": r.features[0].detach(),
                          "color_target": images[0].detach(), "depth_target_m": depths_m[0].detach()}
        if features:
            name = sorted(features)[0]
            result["_vis"]["projected"] = features[name][0].detach()
            result["_vis"]["teacher"] = targets[name][0].detach()
        return result


def _float32(g: Gaussians) -> Gaussians:
    if g.means.dtype == torch.float32 and g.features.dtype == torch.float32:
        return g
    return Gaussians(means=g.means.float(), quats=g.quats.float(), scales=g.scales.float(),
                     colors=g.colors.float(), opacities=g.opacities.float(), features=g.features.float(),
                     batch=g.batch)


def visualize(out: Mapping[str, Any], batch: Any = None) -> Dict[str, np.ndarray]:
    """Panel for the first view of the step: rendered colour / depth / features next to the ground truth.

    Row 1: real colour | rendered colour; row 2: sensor depth | rendered depth (same colour scale);
    row 3 (with a teacher): teacher features | projected rendered features (PCA basis of the teacher) |
    raw rendered d_f features (own PCA basis).
    """
    vis = out["_vis"]
    cpu = {k: v.detach().float().cpu().numpy() for k, v in vis.items()}
    gt_depth = cpu["depth_target_m"]
    valid = np.isfinite(gt_depth) & (gt_depth > 0)
    max_depth = float(np.percentile(gt_depth[valid], 99)) if valid.any() else None
    rows = [[to_uint8(cpu["color_target"]), to_uint8(cpu["color"])],
            [depth_to_rgb(gt_depth, max_depth), depth_to_rgb(cpu["depth_m"] * (cpu["alpha"] > 0.05), max_depth)]]
    if cpu["features"].shape[-1] > 0:
        raw = pca_rgb(cpu["features"])
        if "teacher" in cpu:
            teacher = np.transpose(cpu["teacher"], (1, 2, 0))  # [h, w, d*]
            projected = np.transpose(cpu["projected"], (1, 2, 0))
            basis = pca_basis(teacher.reshape(-1, teacher.shape[-1]))
            rows.append([pca_rgb(teacher, basis), pca_rgb(projected, basis), raw])
        else:
            rows.append([raw])
    return {"render": image_grid(rows)}


# ----------------------------------------------------------------------------------------------------


def build_teachers(cfgs: Sequence[TeacherConfig]) -> Tuple[Teacher, ...]:
    names = [c.name for c in cfgs]
    if len(set(names)) != len(names):
        raise ValueError(f"teachers {names} name one teacher twice")
    return tuple(build_teacher(c.name, **dict(c.options)) for c in cfgs)


def pretrain_metadata(model_cfg: GaussianCrossConfig, config: Any) -> Dict[str, Any]:
    """Checkpoint metadata of a pretraining run (see ``ENCODER_PREFIX`` for where the encoder is)."""
    return {"kind": PRETRAIN_KIND, "model_config": to_dict(model_cfg), "encoder_config": to_dict(model_cfg.encoder),
            "encoder_prefix": ENCODER_PREFIX, "grid_size_m": model_cfg.grid_size_m, "config": to_dict(config)}


# ----------------------------------------------------------------------------------------------------
# run configuration and the whole run


@dataclass(frozen=True)
class SyntheticRooms:
    """Procedural rooms (gcross_core.data.synthetic) written once as scene folders and reused."""

    rooms: int = 0  # 0: no synthetic rooms
    seed: int = 0  # room k is make_room(seed + k)
    views: int = 8  # RGB-D frames per room
    width: int = 160  # frame size, pixels
    height: int = 120
    points: int = 40_000  # surface points per room
    cache_dir: Optional[str] = None  # where the rooms go; None: <run dir>/cache/synthetic


@dataclass(frozen=True)
class DataSection:
    scenes: Tuple[str, ...] = ()  # scene folders (Pointcept layout, frames/ in the SensReader layout)
    root: Optional[str] = None  # or a folder whose sub-folders are scenes (every one with frames/)
    synthetic: SyntheticRooms = field(default_factory=SyntheticRooms)
    loop: int = 1  # each scene appears this many times per epoch (few scenes, large batches)
    pipeline: PretrainDataConfig = field(default_factory=PretrainDataConfig)

    def __post_init__(self) -> None:
        if self.loop < 1:
            raise ValueError(f"data.loop must be >= 1, got {self.loop}")


@dataclass(frozen=True)
class PretrainConfig:
    name: str = "pretrain"
    model: GaussianCrossConfig = field(default_factory=GaussianCrossConfig)
    data: DataSection = field(default_factory=DataSection)
    teachers: Tuple[TeacherConfig, ...] = (TeacherConfig(),)
    loss: LossConfig = field(default_factory=LossConfig)
    render: RenderSettings = field(default_factory=RenderSettings)
    train: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def __post_init__(self) -> None:
        if abs(self.data.pipeline.grid_size_m - self.model.grid_size_m) > 1e-12:
            raise ValueError(f"data.pipeline.grid_size_m {self.data.pipeline.grid_size_m} differs from "
                             f"model.grid_size_m {self.model.grid_size_m}; the encoder is trained at one grid")

    def run_config(self) -> RunConfig:
        return RunConfig(train=self.train, optim=self.optim, schedule=self.schedule)


class _Looped(Dataset):
    """``loop`` passes over a dataset per epoch; item i is scene i % n (its augmentation differs)."""

    def __init__(self, dataset: Dataset, loop: int):
        self.dataset, self.loop = dataset, int(loop)

    def __len__(self) -> int:
        return len(self.dataset) * self.loop

    def __getitem__(self, index: int):
        return self.dataset[index % len(self.dataset)]


def synthetic_scene_dirs(cfg: SyntheticRooms, run_dir, create: bool = True) -> List[Path]:
    """Folders of the configured synthetic rooms, generating the missing ones when ``create``."""
    from gcross_core.data.scene import write_scene
    from gcross_core.data.synthetic import make_room

    root = Path(cfg.cache_dir) if cfg.cache_dir else Path(run_dir) / "cache" / "synthetic"
    dirs = []
    for k in range(cfg.rooms):
        seed = cfg.seed + k
        out = root / f"synthetic_{seed:04d}_{cfg.points}p_{cfg.views}v_{cfg.width}x{cfg.height}"
        if create and not (out / "coord.npy").is_file():
            t0 = time.perf_counter()
            scene = make_room(seed, num_points=cfg.points, num_views=cfg.views, width=cfg.width, height=cfg.height)
            write_scene(scene, out, color_format="png", overwrite=True)
            log.info("synthetic room %s written in %.1f s", out, time.perf_counter() - t0)
        dirs.append(out)
    return dirs


def scene_dirs(cfg: DataSection, run_dir, create: bool = True) -> List[Path]:
    dirs = [Path(s) for s in cfg.scenes]
    if cfg.root:
        root = Path(cfg.root)
        if not root.is_dir():
            raise FileNotFoundError(f"data.root {root} is not a folder")
        dirs += sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    dirs += synthetic_scene_dirs(cfg.synthetic, run_dir, create)
    if not dirs:
        raise ValueError("no scenes: set data.scenes, data.root or data.synthetic.rooms")
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise FileNotFoundError(f"scene folders do not exist: {missing[:5]}")
    return dirs


def build_pretrain_module(cfg: PretrainConfig) -> PretrainModule:
    teachers = build_teachers(cfg.teachers) if cfg.loss.use_sem else ()
    return PretrainModule(GaussianCross(cfg.model), teachers, cfg.teachers, cfg.loss, cfg.render)


def run_pretraining(cfg: PretrainConfig, run_dir, resume: bool = False, progress: bool = True,
                    tensorboard: bool = True) -> Tuple[TrainState, Optional[Path]]:
    """The whole pretraining run (one process of a torchrun group, or alone).

    Returns the final train state and, on the main process, the path of ``final.safetensors`` (encoder
    under ``model.encoder.*``, metadata kind "pretrain" with model_config and the resolved config).
    """
    run_dir = Path(run_dir)
    dist = init_distributed(cfg.train.device)
    try:
        if dist.is_main:
            scene_dirs(cfg.data, run_dir, create=True)
        barrier(dist)
        dirs = scene_dirs(cfg.data, run_dir, create=False)
        dataset = PretrainDataset(dirs, cfg.data.pipeline)
        if cfg.data.loop > 1:
            dataset = _Looped(dataset, cfg.data.loop)
        seed_everything(cfg.train.seed)  # identical initial weights on every rank (DDP also broadcasts)
        module = build_pretrain_module(cfg)
        log.info("pretraining %s: %.2fM trainable parameters, %d scenes, teachers %s", cfg.name,
                 sum(p.numel() for p in module.parameters() if p.requires_grad) / 1e6, len(dirs),
                 [t.name for t in cfg.teachers] if cfg.loss.use_sem else "none")
        trainer = Trainer(module, _step, dataset, collate_pretrain, cfg.run_config(), run_dir, dist_info=dist,
                          visualize_fn=visualize, checkpoint_metadata=pretrain_metadata(cfg.model, cfg),
                          resolved_config=cfg, progress=progress, tensorboard=tensorboard)
        state = trainer.fit(resume=resume)
        return state, (run_dir / FINAL_CHECKPOINT) if dist.is_main else None
    finally:
        shutdown_distributed(dist)


def _step(model: nn.Module, batch) -> Dict[str, Any]:
    return model(batch)


__all__ = ["PretrainModule", "PretrainConfig", "DataSection", "SyntheticRooms", "TeacherConfig",
           "RenderSettings", "visualize", "build_teachers", "build_pretrain_module", "run_pretraining",
           "pretrain_metadata", "scene_dirs", "PRETRAIN_KIND", "ENCODER_PREFIX"]
