"""The GaussianCross pretraining step (paper Sec. 3): batch -> model -> render -> teacher features ->
projection -> losses. ROS-free; the loop around it is :class:`gcross_core.train.trainer.Trainer`.

:class:`PretrainModule` is the module the trainer optimizes (and DDP wraps): the GaussianCross model
(encoder + Gaussian head) under the name ``model`` and the projection heads of eq. 16 under
``projection``. Its state dict therefore holds the encoder as ``model.encoder.*``
(``gcross_core.checkpoint.PRETRAIN_ENCODER_PREFIX``), which is what the downstream segmentation tools
load from a pretraining checkpoint. The frozen teachers are *not* submodules: they carry no trainable
state, would bloat every checkpoint, and DDP must not see them.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from gcross_core.errors import ConfigError
from gcross_core.model.gaussiancross import GaussianCross
from gcross_core.pretraining.config import PretrainConfig, RenderSettings, TeacherConfig
from gcross_core.pretraining.diagnostics import feature_collapse_stats
from gcross_core.pretraining.losses import LossConfig, total_loss, valid_depth_mask
from gcross_core.pretraining.teachers import MultiTeacherProjection, Teacher, TeacherHeadSpec, build_teacher
from gcross_core.render import render
from gcross_core.train.logging import depth_to_rgb, image_grid, pca_basis, pca_rgb, psnr, to_uint8
from gcross_core.types import Cameras, Gaussians


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
                raise ConfigError("loss.use_sem needs model.head.feature_dim > 0 (the rendered feature width d_f)")
            if not teachers:
                raise ConfigError("loss.use_sem needs at least one teacher")
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
            for name in sorted(features or {}):
                # the distillation loss scores every pixel, so do these; see docs/training.md, "Collapse signals"
                for stat, value in feature_collapse_stats(features[name], targets[name]).items():
                    result[f"collapse/{name}/{stat}"] = value
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


def build_teachers(cfgs: Sequence[TeacherConfig]) -> Tuple[Teacher, ...]:
    names = [c.key or c.name for c in cfgs]
    if len(set(names)) != len(names):
        raise ConfigError(f"teachers {names} name one teacher twice (give each a distinct key)")
    teachers = []
    for c in cfgs:
        t = build_teacher(c.name, **dict(c.options))
        if c.key:
            t.name = c.key
        teachers.append(t)
    return tuple(teachers)


def build_pretrain_module(cfg: PretrainConfig) -> PretrainModule:
    # loss.use_sem: false trains on colour and depth alone: the configured teachers are neither built nor used
    teacher_cfgs = tuple(cfg.teachers) if cfg.loss.use_sem else ()
    return PretrainModule(GaussianCross(cfg.model), build_teachers(teacher_cfgs), teacher_cfgs, cfg.loss, cfg.render)
