"""GaussianCross: masked point encoder + feed-forward Gaussian head (paper Sec. 3.2-3.3, eqs. 4-13)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from gcross_core.model.encoder import SpUNet, SpUNetConfig
from gcross_core.model.gaussians import GaussianHead, GaussianHeadConfig, HeadOutput, check_point_coords
from gcross_core.config import DictConfig
from gcross_core.errors import ConfigError, InputError
from gcross_core.types import Gaussians, PointBatch


@dataclass(frozen=True)
class GaussianCrossConfig(DictConfig):
    encoder: SpUNetConfig = field(default_factory=SpUNetConfig)
    head: GaussianHeadConfig = field(default_factory=GaussianHeadConfig)
    mask_ratio: float = 0.5  # gamma of eq. 4: share of point rows dropped before the encoder while training
    grid_size_m: float = 0.02  # grid sampling cell g of eq. 4 (applied by the data pipeline to build grid_coord)

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ConfigError(f"GaussianCrossConfig: mask_ratio must lie in [0, 1), got {self.mask_ratio}")
        if self.grid_size_m <= 0:
            raise ConfigError(f"GaussianCrossConfig: grid_size_m must be > 0, got {self.grid_size_m}")


@dataclass
class ModelOutput:
    gaussians: Gaussians  # pruned Gaussians in world metres (eq. 13)
    point_feat: Tensor  # [N', C] encoder features F_s of the rows that survived masking (eq. 5)
    kept: Tensor  # [N] bool, rows of the input batch that were kept by masking (all True in eval)
    head: Optional[HeadOutput] = None  # everything else the head computed (cube transform, volumes, anchors)


def mask_points(points: PointBatch, ratio: float,
                generator: Optional[torch.Generator] = None) -> Tuple[PointBatch, Tensor]:
    """Drop floor(ratio * n_b) random rows of every scene b (eq. 4), keeping at least one per scene.

    Returns the masked batch (its ``inverse`` maps are dropped: they point at rows that may be gone) and
    kept [N] bool over the input rows. ``generator`` must be a CPU generator; draws happen on the CPU so a
    seed gives the same mask on every device.
    """
    if not 0.0 <= ratio < 1.0:
        raise InputError(f"mask_points: ratio must lie in [0, 1), got {ratio}")
    n = points.coord.shape[0]
    offset = points.offset.cpu()
    counts = torch.diff(offset, prepend=offset.new_zeros(1))
    if bool((counts <= 0).any()):
        raise InputError(f"mask_points: every scene needs at least one row, offset {offset.tolist()}")
    batch = torch.repeat_interleave(torch.arange(len(counts)), counts)
    keep_per_scene = (counts - torch.floor(counts.double() * ratio).long()).clamp_min(1)
    # rank the rows of each scene by a random score; a row is kept if its rank is below the scene's quota
    score = torch.rand(n, generator=generator, dtype=torch.float64)
    order = torch.argsort(batch.double() * 2.0 + score)  # scores lie in [0, 1): scenes never interleave
    start = offset - counts
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n) - start[batch[order]]
    kept = rank < keep_per_scene[batch]
    new_offset = torch.cumsum(keep_per_scene, 0)
    kept_dev = kept.to(points.coord.device)
    masked = PointBatch(
        coord=points.coord[kept_dev],
        feat=points.feat[kept_dev],
        offset=new_offset.to(points.offset.device),
        grid_coord=None if points.grid_coord is None else points.grid_coord[kept_dev],
    )
    return masked, kept_dev


class GaussianCross(nn.Module):
    """Encoder E_phi (SpUNet) and Gaussian head; rendering and losses live elsewhere."""

    def __init__(self, cfg: GaussianCrossConfig = GaussianCrossConfig()):
        super().__init__()
        self.cfg = cfg
        self.encoder = SpUNet(cfg.encoder)
        self.head = GaussianHead(self.encoder.out_channels, cfg.head)

    def forward(self, points: PointBatch, generator: Optional[torch.Generator] = None) -> ModelOutput:
        check_point_coords("GaussianCross", points.coord, points.offset)  # fail before any compute
        if self.training and self.cfg.mask_ratio > 0:
            points, kept = mask_points(points, self.cfg.mask_ratio, generator)  # eq. 4
        else:
            kept = torch.ones(points.coord.shape[0], dtype=torch.bool, device=points.coord.device)
        point_feat = self.encoder(points)  # eq. 5
        head = self.head(points, point_feat)  # eqs. 6-13
        return ModelOutput(gaussians=head.gaussians, point_feat=point_feat, kept=kept, head=head)

    def encode(self, points: PointBatch) -> Tensor:  # [N, encoder.out_channels]
        """Encoder features for every row, never masked (downstream segmentation and probing)."""
        return self.encoder(points)
