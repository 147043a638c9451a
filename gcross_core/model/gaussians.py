"""Cuboid-normalized Gaussian initialization and the feed-forward Gaussian head (paper Sec. 3.2-3.3).

Per scene: points -> unit cube (one isotropic scale, eq. 6) -> X x Y x Z voxels -> scatter-mean of the point
features (eq. 7, empty voxels zero) -> dense 3D CNN (eq. 8) -> per-voxel attribute MLPs (eqs. 9-12) ->
opacity pruning (eq. 13) -> Gaussians in world metres.

Batches hold scenes of different sizes (Pointcept offsets); every scene gets its own cube and its own
dense volume, and the dense CNN has no normalisation layers, so a scene's Gaussians never depend on the
other scenes of the batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gcross_core.config import DictConfig
from gcross_core.errors import ConfigError, InputError
from gcross_core.types import Gaussians, PointBatch, offset_to_batch


@dataclass(frozen=True)
class GaussianHeadConfig(DictConfig):
    grid: Tuple[int, int, int] = (128, 128, 32)  # X, Y, Z voxels over the unit cube (eq. 6), PonderV2's choice
    dense_channels: int = 32  # d_o of eq. 8; kept small so the encoder, not the decoder, carries the scene
    dense_blocks: int = 2  # residual blocks (two 3^3 convs each) after the first 3^3 conv of eq. 8
    head_hidden: int = 32  # hidden width of each attribute MLP G_* of eqs. 9-12
    feature_dim: int = 16  # d_f of eq. 12, the rendered feature width (d_f << teacher width)
    offset_scale: float = 1.0  # Delta of eq. 11, in voxel sides along each axis
    opacity_threshold: float = 0.3  # tau of eq. 13
    # Initialisation (see GaussianHead.reset_head_parameters): Gaussians start axis-aligned at the voxel
    # centres with standard deviations of this fraction of the voxel side along each axis ...
    init_scale_voxels: float = 0.5
    # ... visible (above tau) where the voxel holds points and pruned where it is empty, so the first
    # renders show the observed surfaces instead of a fog filling the whole cube.
    init_opacity_occupied: float = 0.6
    init_opacity_empty: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        if len(self.grid) != 3 or min(self.grid) <= 0:
            raise ConfigError(f"GaussianHeadConfig: grid must be three positive voxel counts (X, Y, Z), got {self.grid}")
        if min(self.dense_channels, self.head_hidden) <= 0 or self.dense_blocks < 0 or self.feature_dim < 0:
            raise ConfigError(f"GaussianHeadConfig: channel counts must be positive, got {self}")
        if self.offset_scale < 0 or self.init_scale_voxels <= 0:
            raise ConfigError("GaussianHeadConfig: offset_scale must be >= 0 and init_scale_voxels > 0")
        for name in ("opacity_threshold", "init_opacity_occupied", "init_opacity_empty"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"GaussianHeadConfig: {name} must lie in (0, 1), got {getattr(self, name)}")


@dataclass
class CubeTransform:
    """Per-scene similarity world <-> unit cube: ``world = cube * size_m + origin_m`` (no rotation, no shear).

    One isotropic scale per scene keeps angles, so quaternions are shared by both frames and Gaussian
    standard deviations convert by a single factor.
    """

    origin_m: Tensor  # [B, 3] world point (metres) that maps to the cube corner (0, 0, 0)
    size_m: Tensor  # [B] metres per cube unit

    def __post_init__(self) -> None:
        b = self.size_m.shape[0]
        if self.size_m.ndim != 1 or tuple(self.origin_m.shape) != (b, 3):
            raise InputError(f"CubeTransform: origin_m {tuple(self.origin_m.shape)} and size_m "
                             f"{tuple(self.size_m.shape)} must be [B, 3] and [B]")

    def to_cube(self, coord_m: Tensor,  # [N, 3] world metres
                batch: Tensor,  # [N] int64 scene index
                ) -> Tensor:  # [N, 3] cube units
        return (coord_m - self.origin_m[batch]) / self.size_m[batch, None]

    def to_world(self, cube: Tensor,  # [N, 3] cube units
                 batch: Tensor,  # [N] int64 scene index
                 ) -> Tensor:  # [N, 3] world metres
        return cube * self.size_m[batch, None] + self.origin_m[batch]

    def scales_to_world(self, scales_cube: Tensor,  # [N, 3] standard deviations in cube units
                        batch: Tensor,  # [N] int64 scene index
                        ) -> Tensor:  # [N, 3] metres
        return scales_cube * self.size_m[batch, None]

    def cube_to_world_matrix(self) -> Tensor:  # [B, 4, 4]
        m = torch.zeros(len(self.size_m), 4, 4, dtype=self.size_m.dtype, device=self.size_m.device)
        m[:, 0, 0] = m[:, 1, 1] = m[:, 2, 2] = self.size_m
        m[:, :3, 3] = self.origin_m
        m[:, 3, 3] = 1.0
        return m


def check_point_coords(where: str, coord: Tensor,  # [N, 3] metres
                       offset: Tensor,  # [B] int64
                       ) -> Tensor:  # [B] int64 points per scene
    """Raise InputError (prefixed by ``where``) unless every scene is non-empty and every coordinate finite."""
    if coord.ndim != 2 or coord.shape[1] != 3:
        raise InputError(f"{where}: coord has shape {tuple(coord.shape)}, expected [N, 3]")
    if coord.shape[0] == 0:
        raise InputError(f"{where}: the point cloud is empty (0 points)")
    if offset.ndim != 1 or len(offset) == 0 or int(offset[-1]) != coord.shape[0]:
        raise InputError(f"{where}: offset {offset.tolist()} must be non-empty and end at N={coord.shape[0]}")
    counts = torch.diff(offset, prepend=offset.new_zeros(1))
    if bool((counts <= 0).any()):
        empty = torch.nonzero(counts <= 0).flatten().tolist()
        raise InputError(f"{where}: scene(s) {empty} of the batch are empty (offset {offset.tolist()})")
    if not bool(torch.isfinite(coord).all()):
        bad = int((~torch.isfinite(coord)).any(1).sum())
        raise InputError(f"{where}: coord contains NaN or inf in {bad} point(s)")
    return counts


def to_unit_cube(coord: Tensor,  # [N, 3] world metres
                 offset: Tensor,  # [B] int64 cumulative end index per scene
                 margin: float = 1e-3,  # padding on each side, as a fraction of the scene's largest extent
                 min_size_m: float = 1e-2,  # floor on the cube size so a degenerate (flat, 1-point) scene is finite
                 ) -> Tuple[Tensor, CubeTransform]:
    """Map each scene into the unit cube [0, 1]^3 with one isotropic scale (transformation I of eq. 6).

    The largest bounding-box side becomes the cube side (plus a small margin, so no point sits on the
    far faces); x and y are centred, and the lowest point (the floor of a gravity-aligned room) sits at the
    bottom of the cube, as PonderV2 does, so heights keep a canonical meaning across scenes.
    Returns (cube [N, 3] in [0, 1), CubeTransform back to world metres).
    """
    check_point_coords("to_unit_cube", coord, offset)
    coord = coord.detach()
    batch = offset_to_batch(offset)
    b = len(offset)
    index = batch[:, None].expand(-1, 3)
    lo = coord.new_zeros(b, 3).scatter_reduce(0, index, coord, "amin", include_self=False)
    hi = coord.new_zeros(b, 3).scatter_reduce(0, index, coord, "amax", include_self=False)
    extent = (hi - lo).amax(1).clamp_min(min_size_m)
    pad = margin * extent
    size = extent + 2 * pad
    origin = torch.stack([(lo[:, 0] + hi[:, 0] - size) / 2, (lo[:, 1] + hi[:, 1] - size) / 2, lo[:, 2] - pad], 1)
    tf = CubeTransform(origin_m=origin, size_m=size)
    return tf.to_cube(coord, batch), tf


def scatter_to_voxels(cube: Tensor,  # [N, 3] unit-cube coordinates from to_unit_cube
                      batch: Tensor,  # [N] int64 scene index
                      feat: Tensor,  # [N, C] per-point features
                      grid: Tuple[int, int, int],  # X, Y, Z
                      num_scenes: int,
                      ) -> Tuple[Tensor, Tensor, Tensor]:
    """Discretise the cube (V of eq. 6) and average the features per voxel (eq. 7).

    Returns volume [B * X*Y*Z, C] (voxel-major, flat index b * XYZ + (x * Y + y) * Z + z; unoccupied
    voxels are zero), occupied [B * X*Y*Z] bool and the flat voxel index of every point [N].
    """
    if cube.ndim != 2 or cube.shape[1] != 3 or feat.ndim != 2 or feat.shape[0] != cube.shape[0] \
            or batch.shape != (cube.shape[0],):
        raise InputError(f"scatter_to_voxels: cube {tuple(cube.shape)}, batch {tuple(batch.shape)} and feat "
                         f"{tuple(feat.shape)} must be [N, 3], [N] and [N, C]")
    nx, ny, nz = grid
    num_voxels = nx * ny * nz
    size = torch.tensor(grid, device=cube.device)
    # points on a far face (cube coordinate 1) are clamped into the last voxel
    ijk = torch.minimum((cube * size).floor().long().clamp_min(0), size - 1)
    flat = batch * num_voxels + (ijk[:, 0] * ny + ijk[:, 1]) * nz + ijk[:, 2]
    c = feat.shape[1]
    volume = feat.new_zeros(num_scenes * num_voxels, c).scatter_reduce(
        0, flat[:, None].expand(-1, c), feat, reduce="mean", include_self=False)
    occupied = torch.zeros(num_scenes * num_voxels, dtype=torch.bool, device=cube.device)
    occupied[flat] = True
    return volume, occupied, flat


@dataclass
class HeadOutput:
    gaussians: Gaussians  # kept Gaussians (eq. 13), world metres, scene index in .batch
    transform: CubeTransform  # per-scene world <-> cube map used for this batch
    anchors_m: Tensor  # [G, 3] world position of each kept Gaussian's voxel centre (nu_i); means = anchors + offset
    voxel_index: Tensor  # [G] int64 flat voxel index (x * Y + y) * Z + z of each kept Gaussian within its scene
    occupied: Tensor  # [B, X, Y, Z] bool, voxels holding at least one point
    opacity_volume: Tensor  # [B, X, Y, Z] opacity of every voxel before pruning (for regularisers / inspection)


def _mlp(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(), nn.Linear(hidden, out_channels))


class _DenseResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, X, Y, Z]
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class DenseVolumeCNN(nn.Module):
    """E_theta^den of eq. 8 after its (point-side) 1x1x1 input layer: F_v -> F_d, same resolution.

    Its input carries one extra channel, the voxel occupancy, so an empty voxel is distinguishable from a
    voxel whose mean feature happens to be zero. No normalisation layers: most voxels are empty and their
    share changes from scene to scene, which would make batch or group statistics scene-dependent.
    """

    def __init__(self, channels: int, num_blocks: int):
        super().__init__()
        self.stem = nn.Conv3d(channels + 1, channels, 3, padding=1)
        self.blocks = nn.ModuleList(_DenseResBlock(channels) for _ in range(num_blocks))

    def forward(self, x: Tensor) -> Tensor:  # [B, C + 1, X, Y, Z] -> [B, C, X, Y, Z]
        x = torch.relu(self.stem(x))
        for block in self.blocks:
            x = block(x)
        return x


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class GaussianHead(nn.Module):
    """Point features F_s -> pruned 3D Gaussians in world metres (eqs. 6-13)."""

    def __init__(self, in_channels: int, cfg: GaussianHeadConfig = GaussianHeadConfig()):
        super().__init__()
        if in_channels <= 0:
            raise InputError(f"GaussianHead: in_channels must be > 0, got {in_channels}")
        self.in_channels = in_channels
        self.cfg = cfg
        d_o, h = cfg.dense_channels, cfg.head_hidden
        # First layer of eq. 8 as a bias-free 1x1x1 conv. Being linear it commutes with the scatter-mean of
        # eq. 7, so it runs on the points before scattering and the dense volume has d_o channels, not d_s;
        # without a bias, empty voxels stay exactly zero.
        self.point_proj = nn.Linear(in_channels, d_o, bias=False)
        self.dense = DenseVolumeCNN(d_o, cfg.dense_blocks)
        self.quat_head = _mlp(d_o, h, 4)  # G_q, eq. 9
        self.scale_head = _mlp(d_o, h, 3)  # G_s, eq. 9
        self.color_head = _mlp(d_o, h, 3)  # G_c, eq. 10
        self.opacity_head = _mlp(d_o, h, 1)  # G_sigma, eq. 10
        # G_sigma also sees the voxel's occupancy bit through this learnable weight on its logit
        self.opacity_occupancy_logit = nn.Parameter(torch.zeros(()))
        self.offset_head = _mlp(d_o, h, 3)  # G_delta, eq. 11
        self.feature_head = _mlp(d_o, h, cfg.feature_dim) if cfg.feature_dim > 0 else None  # G_f, eq. 12
        grid = torch.tensor(cfg.grid, dtype=torch.float32)
        self.register_buffer("_voxel_side", 1.0 / grid, persistent=False)  # [3] cube units
        self.reset_head_parameters()

    @torch.no_grad()
    def reset_head_parameters(self) -> None:
        """Initialise the last layer of every attribute MLP so the first Gaussians are usable.

        Last-layer weights are shrunk (x0.1) so the biases set the starting point and the encoder's
        features perturb it:
        - scale: softplus(bias) = init_scale_voxels x the voxel side along each axis (cube units), i.e.
          about half a voxel in metres whatever the scene size: neither invisible specks nor blobs
          covering the room;
        - opacity: sigmoid(bias) = init_opacity_empty and the occupancy weight lifts occupied voxels to
          init_opacity_occupied, so with tau = 0.3 the voxels that hold points survive pruning and the
          empty ones do not;
        - quaternion: bias (1, 0, 0, 0), identity rotation, far from the zero vector normalisation divides by;
        - offset: bias 0 (Gaussians start at voxel centres); color: bias 0 (mid grey).
        """
        cfg = self.cfg
        heads = [self.quat_head, self.scale_head, self.color_head, self.opacity_head, self.offset_head]
        if self.feature_head is not None:
            heads.append(self.feature_head)
        for head in heads:
            head[-1].weight.mul_(0.1)
            head[-1].bias.zero_()
        self.quat_head[-1].bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        # per axis, because voxels are cuboids (the default 128 x 128 x 32 ones are 4x taller than wide):
        # with the identity start rotation each Gaussian spans its own voxel without gaps between layers
        self.scale_head[-1].bias.copy_(torch.tensor(
            [_inverse_softplus(cfg.init_scale_voxels / n) for n in cfg.grid]))
        self.opacity_head[-1].bias.fill_(_logit(cfg.init_opacity_empty))
        self.opacity_occupancy_logit.fill_(_logit(cfg.init_opacity_occupied) - _logit(cfg.init_opacity_empty))

    def forward(self, points: PointBatch, point_feat: Tensor,  # [N, in_channels] F_s of eq. 5
                ) -> HeadOutput:
        cfg = self.cfg
        n = points.coord.shape[0]
        if point_feat.ndim != 2 or point_feat.shape[0] != n or point_feat.shape[1] != self.in_channels:
            raise InputError(f"GaussianHead: point_feat has shape {tuple(point_feat.shape)}, expected "
                             f"[{n}, {self.in_channels}] (one encoder feature per point row)")
        cube, tf = to_unit_cube(points.coord, points.offset)  # eq. 6, transformation I
        num_scenes = points.num_scenes
        nx, ny, nz = cfg.grid
        num_voxels = nx * ny * nz

        proj = self.point_proj(point_feat)
        volume, occupied, _ = scatter_to_voxels(cube, points.batch, proj, cfg.grid, num_scenes)  # eqs. 6-7
        d_o = proj.shape[1]
        volume = torch.cat([volume, occupied[:, None].to(volume.dtype)], 1)
        volume = volume.view(num_scenes, nx, ny, nz, d_o + 1).permute(0, 4, 1, 2, 3)

        # eq. 8: F_d, then one row per voxel
        dense = self.dense(volume).permute(0, 2, 3, 4, 1).reshape(num_scenes * num_voxels, d_o)

        # eq. 10 (opacity) on every voxel, then eq. 13 pruning; the other heads only run on kept voxels
        opacity_logit = self.opacity_head(dense).squeeze(1) + self.opacity_occupancy_logit * occupied
        opacity = torch.sigmoid(opacity_logit)
        kept = torch.nonzero(opacity > cfg.opacity_threshold).squeeze(1)
        f = dense[kept]
        scene = kept // num_voxels
        voxel = kept % num_voxels
        vox_ijk = torch.stack([voxel // (ny * nz), (voxel // nz) % ny, voxel % nz], 1)
        anchor = (vox_ijk.to(f.dtype) + 0.5) * self._voxel_side  # nu_i: voxel centre, cube units

        quats = F.normalize(self.quat_head(f), dim=1)  # eq. 9
        scales_cube = F.softplus(self.scale_head(f))  # eq. 9
        colors = torch.sigmoid(self.color_head(f))  # eq. 10
        offset = torch.tanh(self.offset_head(f)) * (cfg.offset_scale * self._voxel_side)  # eq. 11
        features = self.feature_head(f) if self.feature_head is not None else f.new_zeros(len(f), 0)  # eq. 12

        gaussians = Gaussians(
            means=tf.to_world(anchor + offset, scene),  # mu_i = nu_i + delta_i
            quats=quats,
            scales=tf.scales_to_world(scales_cube, scene),
            colors=colors,
            opacities=opacity[kept],
            features=features,
            batch=scene,
        )
        shape = (num_scenes, nx, ny, nz)
        return HeadOutput(
            gaussians=gaussians,
            transform=tf,
            anchors_m=tf.to_world(anchor, scene),
            voxel_index=voxel,
            occupied=occupied.view(shape),
            opacity_volume=opacity.view(shape),
        )
