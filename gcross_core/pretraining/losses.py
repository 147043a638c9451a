"""Pretraining losses of Sec. 3.4: image L1 (eq. 17), masked depth L1 (eq. 18), feature cosine (eq. 19), and
their weighted sum (eq. 20).

Conventions: V rendered views (the paper's M) of H x W pixels, channels last for what the renderer returns
(``RenderOutput.color [V,H,W,3]``), channels first for feature maps (``[V,d*,h,w]``, as teachers return them).
Every function returns a scalar tensor that is differentiable with respect to the predictions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from gcross_core.errors import ConfigError

TERMS = ("img", "dep", "sem")


def _check_same(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has {tuple(b.shape)}; expected equal")


def _check_mask(mask: Optional[Tensor], shape: tuple, name: str = "mask") -> None:
    if mask is not None and tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {tuple(shape)}")


def image_l1(color: Tensor,  # [V, H, W, 3] rendered RGB (eq. 3)
             color_target: Tensor,  # [V, H, W, 3] real RGB in 0..1
             mask: Optional[Tensor] = None,  # [V, H, W] bool, pixels to compare (default all)
             ) -> Tensor:
    """Eq. 17, L_img = 1/M sum_m |C_m - C*_m|_1, as the mean absolute error over views, pixels and channels.

    The paper's per-view L1 norm is a sum over 3HW values; taking the mean instead only divides the term by
    the constant 3HW (absorbed by lambda_img) and keeps its scale independent of the render resolution.
    With ``mask`` the mean runs over the selected pixels only.
    """
    if color.ndim != 4 or color.shape[-1] != 3:
        raise ValueError(f"color has shape {tuple(color.shape)}, expected [V, H, W, 3]")
    _check_same("color", color, "color_target", color_target)
    err = (color - color_target).abs()
    if mask is None:
        return err.mean()
    _check_mask(mask, color.shape[:3])
    m = mask.to(err.dtype).unsqueeze(-1)
    return (err * m).sum() / (m.sum() * 3).clamp_min(1.0)


def valid_depth_mask(depth_target_m: Tensor) -> Tensor:  # [V, H, W] -> [V, H, W] bool
    """Indicator of eq. 18: sensor depth is valid where it is finite and positive (0 marks missing readings)."""
    return torch.isfinite(depth_target_m) & (depth_target_m > 0)


def depth_l1(depth_m: Tensor,  # [V, H, W] rendered depth (eq. 14), metres
             depth_target_m: Tensor,  # [V, H, W] sensor depth, metres; 0, NaN or inf = no reading
             mask: Optional[Tensor] = None,  # [V, H, W] bool, further restricts the valid pixels
             normalize: str = "all",
             ) -> Tensor:
    """Eq. 18, L_dep = 1/(M H W) sum_{m,h,w} I{D*_{m,h,w} valid} |D_{m,h,w} - D*_{m,h,w}|.

    ``normalize="all"`` divides by every pixel (M*H*W) as in the paper, so a view with few valid readings
    contributes proportionally less; ``"valid"`` divides by the number of valid pixels instead (the mean error
    over valid pixels). Invalid targets never reach the arithmetic, so they give no NaN values or gradients.
    """
    if depth_m.ndim != 3:
        raise ValueError(f"depth_m has shape {tuple(depth_m.shape)}, expected [V, H, W]")
    _check_same("depth_m", depth_m, "depth_target_m", depth_target_m)
    if normalize not in ("all", "valid"):
        raise ValueError(f"normalize must be 'all' or 'valid', got {normalize!r}")
    valid = valid_depth_mask(depth_target_m)
    if mask is not None:
        _check_mask(mask, depth_m.shape)
        valid = valid & mask.bool()
    # Replace invalid targets before subtracting: |x - inf| masked afterwards would still back-propagate NaN.
    target = torch.where(valid, depth_target_m, depth_m.detach())
    err = torch.where(valid, (depth_m - target).abs(), torch.zeros_like(depth_m))
    denom = depth_m.numel() if normalize == "all" else valid.sum().clamp_min(1)
    return err.sum() / denom


def feature_cosine(features: Tensor,  # [V, d*, h, w] projected rendered features F^_m (eq. 16)
                   features_target: Tensor,  # [V, d*, h, w] teacher features F*_m
                   mask: Optional[Tensor] = None,  # [V, h, w] bool, pixels to distil (default all)
                   eps: float = 1e-8,
                   ) -> Tensor:
    """Eq. 19, L_sem = 1/M sum_m [1 - cos(F^_m, F*_m)], the cosine taken per pixel and averaged over pixels.

    A zero vector on either side has cosine 0 (loss 1) rather than NaN.
    """
    if features.ndim != 4:
        raise ValueError(f"features has shape {tuple(features.shape)}, expected [V, d*, h, w]")
    _check_same("features", features, "features_target", features_target)
    cos = F.cosine_similarity(features, features_target.to(features.dtype), dim=1, eps=eps)  # [V, h, w]
    loss = 1.0 - cos
    if mask is None:
        return loss.mean()
    _check_mask(mask, cos.shape)
    m = mask.to(loss.dtype)
    return (loss * m).sum() / m.sum().clamp_min(1.0)


@dataclass(frozen=True)
class LossConfig:
    """Weights and switches of eq. 20. The paper does not publish its lambdas; 1.0 each is our default.

    A switched-off term (``use_* = False``) is neither computed nor required as input: the Table 5 ablation.
    A term kept on with weight 0 is still computed and reported, but does not train anything.
    """

    lambda_img: float = 1.0
    lambda_dep: float = 1.0
    lambda_sem: float = 1.0
    use_img: bool = True
    use_dep: bool = True
    use_sem: bool = True
    depth_normalize: str = "all"  # "all" = paper (divide by M*H*W); "valid" = mean over valid pixels

    def __post_init__(self) -> None:
        if not (self.use_img or self.use_dep or self.use_sem):
            raise ConfigError("LossConfig switches every term off; at least one of use_img/use_dep/use_sem must be true")
        for name in ("lambda_img", "lambda_dep", "lambda_sem"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.depth_normalize not in ("all", "valid"):
            raise ConfigError(f"depth_normalize must be 'all' or 'valid', got {self.depth_normalize!r}")


FeatureArg = Union[Tensor, Mapping[str, Tensor], None]


def total_loss(cfg: LossConfig,
               *,
               color: Optional[Tensor] = None,  # [V, H, W, 3]
               color_target: Optional[Tensor] = None,  # [V, H, W, 3]
               depth_m: Optional[Tensor] = None,  # [V, H, W]
               depth_target_m: Optional[Tensor] = None,  # [V, H, W]
               features: FeatureArg = None,  # [V, d*, h, w] or {teacher: [V, d*_t, h_t, w_t]}
               features_target: FeatureArg = None,  # same structure as ``features``
               feature_weights: Optional[Mapping[str, float]] = None,  # {teacher: weight}, default 1 each
               color_mask: Optional[Tensor] = None,  # [V, H, W] bool
               depth_mask: Optional[Tensor] = None,  # [V, H, W] bool
               feature_mask: Optional[Union[Tensor, Mapping[str, Tensor]]] = None,  # [V, h, w] bool (per teacher)
               ) -> Dict[str, Tensor]:
    """Eq. 20, L = lambda_img L_img + lambda_dep L_dep + lambda_sem L_sem.

    Returns ``{"img", "dep", "sem", "total"}`` (unweighted terms plus the weighted total) for the terms that
    are switched on. With several teachers (a mapping of features), L_sem is the weighted sum of the per-teacher
    cosine losses (the multi-teacher setting), and each one is also returned as ``"sem/<teacher>"``.
    """
    out: Dict[str, Tensor] = {}
    total: Optional[Tensor] = None

    def need(term: str, **inputs) -> None:
        missing = [k for k, v in inputs.items() if v is None]
        if missing:
            raise ValueError(f"loss term {term!r} is switched on but {missing} were not given "
                             f"(switch it off with use_{term}=False)")

    def add(value: Tensor, weight: float) -> None:
        nonlocal total
        total = value * weight if total is None else total + value * weight

    if cfg.use_img:
        need("img", color=color, color_target=color_target)
        out["img"] = image_l1(color, color_target, color_mask)
        add(out["img"], cfg.lambda_img)
    if cfg.use_dep:
        need("dep", depth_m=depth_m, depth_target_m=depth_target_m)
        out["dep"] = depth_l1(depth_m, depth_target_m, depth_mask, normalize=cfg.depth_normalize)
        add(out["dep"], cfg.lambda_dep)
    if cfg.use_sem:
        need("sem", features=features, features_target=features_target)
        if isinstance(features, Tensor):
            if not isinstance(features_target, Tensor):
                raise ValueError("features is a tensor, so features_target must be one too")
            mask = feature_mask if not isinstance(feature_mask, Mapping) else None
            out["sem"] = feature_cosine(features, features_target, mask)
        else:
            if not isinstance(features_target, Mapping) or set(features) != set(features_target):
                got = sorted(features_target) if isinstance(features_target, Mapping) else type(features_target).__name__
                raise ValueError(f"features_target must hold the same teachers as features {sorted(features)}, got {got}")
            if not features:
                raise ValueError("features is an empty mapping; pass at least one teacher or use_sem=False")
            weights = dict(feature_weights or {})
            unknown = set(weights) - set(features)
            if unknown:
                raise ValueError(f"feature_weights names teachers {sorted(unknown)} that have no features")
            sem: Optional[Tensor] = None
            for name in sorted(features):
                mask = feature_mask.get(name) if isinstance(feature_mask, Mapping) else feature_mask
                term = feature_cosine(features[name], features_target[name], mask)
                out[f"sem/{name}"] = term
                w = float(weights.get(name, 1.0))
                sem = term * w if sem is None else sem + term * w
            out["sem"] = sem
        add(out["sem"], cfg.lambda_sem)
    out["total"] = total
    return out


__all__ = ["image_l1", "depth_l1", "feature_cosine", "total_loss", "LossConfig", "valid_depth_mask", "TERMS"]
