"""Projection heads P_psi of eq. 16: rendered d_f-channel feature maps lifted to a teacher's width d*.

Rendering a d*-wide feature field (768-1280 channels) would dominate the cost of splatting, so the Gaussians
carry a small d_f feature (eq. 12) and a learned head lifts the rendered map to d* (eq. 16). The head works at
the teacher's feature resolution: the rendered map [V,H,W,d_f] is first resized to the teacher grid (area
averaging when shrinking, which mirrors a patch token summarising its patch; bilinear when enlarging), then
projected. Resizing first is cheaper (d_f << d*), and for the linear head it gives the same result as
projecting first, since both operations are linear.

Several teachers (the Chorus multi-teacher setting) share one rendered map; each has its own head and its own
loss weight (``MultiTeacherProjection``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from gcross_core.errors import ConfigError


def resize_feature_map(features: Tensor, size: Sequence[int]) -> Tensor:  # [V, C, H, W] -> [V, C, *size]
    """Area averaging when both sides shrink, bilinear otherwise; identity when the size already matches."""
    size = (int(size[0]), int(size[1]))
    if tuple(features.shape[-2:]) == size:
        return features
    if size[0] <= features.shape[-2] and size[1] <= features.shape[-1]:
        return F.interpolate(features, size=size, mode="area")
    return F.interpolate(features, size=size, mode="bilinear", align_corners=False)


class ProjectionHead(nn.Module):
    """Eq. 16, F^_m = P_psi(F_m): a 1x1 convolution (``hidden=None``) or a two-layer 1x1 MLP with GELU."""

    def __init__(self, d_f: int, d_teacher: int, hidden: Optional[int] = None):
        super().__init__()
        if d_f <= 0 or d_teacher <= 0 or (hidden is not None and hidden <= 0):
            raise ConfigError(f"ProjectionHead widths must be positive: d_f={d_f}, d_teacher={d_teacher}, hidden={hidden}")
        self.d_f, self.d_teacher = int(d_f), int(d_teacher)
        if hidden is None:
            self.net = nn.Conv2d(d_f, d_teacher, 1)
        else:
            self.net = nn.Sequential(nn.Conv2d(d_f, hidden, 1), nn.GELU(), nn.Conv2d(hidden, d_teacher, 1))

    def forward(self, rendered: Tensor,  # [V, H, W, d_f] rendered features (RenderOutput.features, eq. 15)
                size: Optional[Sequence[int]] = None,  # (h, w) of the teacher's features; None keeps H x W
                ) -> Tensor:  # [V, d_teacher, h, w]
        if rendered.ndim != 4 or rendered.shape[-1] != self.d_f:
            raise ValueError(f"rendered has shape {tuple(rendered.shape)}, expected [V, H, W, {self.d_f}]")
        x = rendered.permute(0, 3, 1, 2)
        if size is not None:
            x = resize_feature_map(x, size)
        return self.net(x)


@dataclass(frozen=True)
class TeacherHeadSpec:
    """One teacher's head in a multi-teacher setting."""

    feature_dim: int  # d* of the teacher (Teacher.feature_dim)
    loss_weight: float = 1.0  # weight of this teacher's cosine term inside L_sem
    hidden: Optional[int] = None  # None: linear head (the paper's choice is not specified; linear is the leanest)


_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


class MultiTeacherProjection(nn.Module):
    """One ProjectionHead and one loss weight per teacher, all reading the same rendered feature map.

    With a single teacher this is GaussianCross; with several it is the multi-teacher setting of Chorus.
    ``forward`` returns ``{teacher: [V, d*_t, h_t, w_t]}`` for the requested feature sizes, ready for
    ``gcross_core.pretraining.losses.total_loss(features=..., feature_weights=self.loss_weights)``.
    """

    def __init__(self, d_f: int, teachers: Mapping[str, TeacherHeadSpec]):
        super().__init__()
        if not teachers:
            raise ConfigError("MultiTeacherProjection needs at least one teacher")
        for name, spec in teachers.items():
            if not _NAME.match(name):
                raise ConfigError(f"teacher name {name!r} may only contain letters, digits, '_' and '-'")
            if spec.loss_weight < 0:
                raise ConfigError(f"teacher {name!r} has negative loss_weight {spec.loss_weight}")
        self.d_f = int(d_f)
        self.specs: Dict[str, TeacherHeadSpec] = dict(teachers)
        self.heads = nn.ModuleDict({name: ProjectionHead(d_f, spec.feature_dim, spec.hidden)
                                    for name, spec in teachers.items()})

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(self.specs)

    @property
    def loss_weights(self) -> Dict[str, float]:
        return {name: spec.loss_weight for name, spec in self.specs.items()}

    def forward(self, rendered: Tensor,  # [V, H, W, d_f]
                sizes: Mapping[str, Sequence[int]],  # {teacher: (h, w)} of its feature map
                ) -> Dict[str, Tensor]:  # {teacher: [V, d*, h, w]}
        missing = set(self.specs) - set(sizes)
        unknown = set(sizes) - set(self.specs)
        if missing or unknown:
            raise ValueError(f"sizes must name exactly the teachers {sorted(self.specs)}; "
                             f"missing {sorted(missing)}, unknown {sorted(unknown)}")
        return {name: self.heads[name](rendered, sizes[name]) for name in self.specs}


__all__ = ["ProjectionHead", "MultiTeacherProjection", "TeacherHeadSpec", "resize_feature_map"]
