"""What the node renders of a labelled voxel map: the visible voxels as Gaussians, seen from a camera.

Gaussians built from voxels (the "simplest honest" splat of a voxel map): one isotropic Gaussian per
voxel whose standard deviation is half the voxel edge, so neighbours overlap into a closed surface. Its
features are the one-hot labels, so the alpha-blended feature image says which class covers a pixel.

Level of detail: when more voxels are in view than the Gaussian budget, distant voxels are merged into
coarser cells (edge 2, 4, 8, ... voxels, doubling with each doubling of the depth beyond a threshold
chosen so the budget is met) instead of being left out, so the whole frustum stays covered: a cell's
Gaussian has the mean position, colour and label mix of its voxels and a standard deviation of half the
cell edge. A distant cell then projects to about as many pixels as a near voxel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from gcross_core.geometry import invert_rigid
from gcross_core.render import render
from gcross_core.types import Cameras, Gaussians

VOXEL_GAUSSIAN_SCALE = 0.5  # x voxel_size_m
VOXEL_GAUSSIAN_OPACITY = 0.9
RENDER_MIN_ALPHA = 0.5  # rendered pixels less covered than this have no depth / class
LOD_MAX_LEVEL = 6  # coarsest cell: 64 voxels on an edge (1.3 m at 2 cm)
LOD_BISECTION_STEPS = 12  # depth threshold to ~0.1 % of its range (log scale); each step is one np.unique


@dataclass(frozen=True)
class MapView:
    color: np.ndarray  # [H, W, 3] uint8
    depth_m: np.ndarray  # [H, W] float32 metres, NaN where nothing is rendered
    semantic: np.ndarray  # [H, W, 3] uint8 class palette colour, 0 where no class wins the pixel
    voxels_in_view: int = 0  # voxels whose Gaussians can touch the image
    gaussians: int = 0  # Gaussians rendered (fewer than voxels_in_view when the level of detail merged some)


def voxel_gaussians(coords: np.ndarray,  # [N, 3] map frame metres
                    colors: np.ndarray,  # [N, 3] 0..255
                    labels: np.ndarray,  # [N] int, -1 = not segmented
                    num_classes: int, voxel_size_m: float, device: str = "cpu") -> Gaussians:
    """One isotropic Gaussian per voxel; features are the one-hot labels (zero where unlabelled)."""
    n = len(coords)
    for name, arr, shape in (("coords", coords, (n, 3)), ("colors", colors, (n, 3)), ("labels", labels, (n,))):
        if np.shape(arr) != shape:
            raise ValueError(f"{name} has shape {np.shape(arr)}, expected {shape}")
    return splat_gaussians(coords, colors, one_hot(labels, num_classes),
                           np.full(n, VOXEL_GAUSSIAN_SCALE * voxel_size_m, np.float32), device)


def one_hot(labels: np.ndarray,  # [N] int, -1 = not segmented
            num_classes: int) -> np.ndarray:  # -> [N, num_classes] float32, zero rows where unlabelled
    features = np.zeros((len(labels), num_classes), dtype=np.float32)
    labelled = labels >= 0
    features[np.flatnonzero(labelled), labels[labelled]] = 1.0
    return features


def splat_gaussians(means: np.ndarray,  # [N, 3] map frame metres
                    colors: np.ndarray,  # [N, 3] 0..255
                    features: np.ndarray,  # [N, C]
                    sigma_m: np.ndarray,  # [N] isotropic standard deviation, metres
                    device: str = "cpu") -> Gaussians:
    """Isotropic, equally opaque Gaussians (the voxels, or the coarse cells of a level of detail)."""
    n = len(means)
    quats = np.zeros((n, 4), dtype=np.float32)
    quats[:, 0] = 1.0

    def as_t(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)

    return Gaussians(means=as_t(means), quats=as_t(quats), scales=as_t(np.repeat(sigma_m[:, None], 3, axis=1)),
                     colors=as_t(np.clip(colors, 0, 255) / 255.0),
                     opacities=torch.full((n,), VOXEL_GAUSSIAN_OPACITY, device=device),
                     features=as_t(features), batch=torch.zeros(n, dtype=torch.int64, device=device))


@dataclass(frozen=True)
class LevelOfDetail:
    """Voxels in view merged into at most ``limit`` splats (see the module docstring)."""

    means: np.ndarray  # [M, 3] metres
    colors: np.ndarray  # [M, 3] 0..255
    features: np.ndarray  # [M, C] mean one-hot labels of the merged voxels
    sigma_m: np.ndarray  # [M] standard deviation: VOXEL_GAUSSIAN_SCALE x cell edge
    near_m: float  # voxels nearer than this are kept as they are (inf: nothing was merged)


def _cell_ids(coords: np.ndarray, level: np.ndarray, voxel_size_m: float):
    """(number of distinct (level, cell) pairs, [N] cell index of every voxel)."""
    grid = np.floor(coords / (voxel_size_m * np.exp2(level))[:, None]).astype(np.int64)
    grid -= grid.min(axis=0)
    span = grid.max(axis=0) + 1
    if float(LOD_MAX_LEVEL + 1) * float(np.prod(span.astype(np.float64))) < 2.0 ** 62:
        key = ((level * span[0] + grid[:, 0]) * span[1] + grid[:, 1]) * span[2] + grid[:, 2]
        uniq, inverse = np.unique(key, return_inverse=True)
    else:  # a map too large for one int64 key per cell
        uniq, inverse = np.unique(np.column_stack([level, grid]), axis=0, return_inverse=True)
    return len(uniq), inverse.reshape(-1)


def level_of_detail(coords: np.ndarray,  # [N, 3] map frame metres
                    colors: np.ndarray,  # [N, 3] 0..255
                    features: np.ndarray,  # [N, C]
                    depth_m: np.ndarray,  # [N] depth of each voxel in the camera, > 0
                    voxel_size_m: float, limit: int) -> LevelOfDetail:
    """Merge the voxels beyond a depth into coarser cells so that at most ``limit`` splats remain.

    Level l (cell edge voxel_size_m * 2^l) applies from depth near_m * 2^(l-1) on, so a cell projects to
    about as many pixels as a voxel at near_m; near_m is the largest depth (found by bisection) that meets
    the budget. If even LOD_MAX_LEVEL everywhere does not, the nearest cells are kept.
    """
    n = len(coords)
    sigma = np.full(n, VOXEL_GAUSSIAN_SCALE * voxel_size_m, np.float32)
    if n <= limit:
        return LevelOfDetail(coords, colors, features, sigma, float("inf"))
    z = np.maximum(depth_m.astype(np.float64), 1e-3)

    def levels(near_m):
        return np.clip(np.ceil(np.log2(z / near_m)), 0, LOD_MAX_LEVEL).astype(np.int64)

    # bisection on log(near_m): fewer splats the nearer coarsening starts
    lo, hi = np.log(z.min()) - LOD_MAX_LEVEL * np.log(2), np.log(z.max())
    best = lo
    for _ in range(LOD_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        count, _ = _cell_ids(coords, levels(np.exp(mid)), voxel_size_m)
        if count <= limit:
            best, lo = mid, mid
        else:
            hi = mid
    near_m = float(np.exp(best))
    level = levels(near_m)
    m, cell = _cell_ids(coords, level, voxel_size_m)
    weight = np.bincount(cell, minlength=m).astype(np.float64)

    def mean(a):
        a = np.asarray(a, np.float64)
        out = np.zeros((m, a.shape[1]))
        np.add.at(out, cell, a)
        return out / weight[:, None]

    cell_level = np.zeros(m, np.int64)
    cell_level[cell] = level
    means, cell_colors, cell_features = mean(coords), mean(colors), mean(features)
    cell_sigma = (VOXEL_GAUSSIAN_SCALE * voxel_size_m * np.exp2(cell_level)).astype(np.float32)
    if m > limit:  # the coarsest level did not meet the budget: keep the nearest cells
        cell_z = np.zeros(m)
        np.add.at(cell_z, cell, z)
        keep = np.argpartition(cell_z / weight, limit - 1)[:limit]
        means, cell_colors, cell_features, cell_sigma = (means[keep], cell_colors[keep], cell_features[keep],
                                                         cell_sigma[keep])
    return LevelOfDetail(means.astype(np.float32), cell_colors.astype(np.float32),
                         cell_features.astype(np.float32), cell_sigma, near_m)


def visible_voxels(coords: np.ndarray,  # [N, 3] map frame
                   cam_to_map: np.ndarray,  # [4, 4]
                   K: np.ndarray,  # [3, 3] for width x height
                   width: int, height: int, margin_m: float, limit: Optional[int] = None,
                   return_depth: bool = False):
    """Indices of the voxels whose Gaussians can touch the image, the ``limit`` nearest if more (and, with
    ``return_depth``, their depth in the camera)."""
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords has shape {coords.shape}, expected [N, 3]")
    T = invert_rigid(cam_to_map)
    pts = coords @ T[:3, :3].T.astype(np.float32) + T[:3, 3].astype(np.float32)
    z = pts[:, 2]
    front = z > 0.01
    zs = np.where(front, z, 1.0)
    u = K[0, 0] * pts[:, 0] / zs + K[0, 2]
    v = K[1, 1] * pts[:, 1] / zs + K[1, 2]
    pad_u, pad_v = K[0, 0] * margin_m / zs, K[1, 1] * margin_m / zs
    inside = front & (u > -pad_u) & (u < width + pad_u) & (v > -pad_v) & (v < height + pad_v)
    idx = np.flatnonzero(inside)
    if limit is not None and len(idx) > limit:
        idx = idx[np.argpartition(z[idx], limit - 1)[:limit]]
    return (idx, z[idx]) if return_depth else idx


def render_map_view(coords: np.ndarray,  # [N, 3] map frame metres
                    colors: np.ndarray,  # [N, 3] 0..255
                    labels: np.ndarray,  # [N] int, -1 = not segmented
                    cam_to_map: np.ndarray,  # [4, 4]
                    K: np.ndarray,  # [3, 3] for width x height
                    width: int, height: int,
                    palette: np.ndarray,  # [num_classes, 3] uint8
                    voxel_size_m: float, max_gaussians: int, device: str = "cpu",
                    backend: str = "auto") -> MapView:
    """Color, depth and class image of the map at a camera; beyond ``max_gaussians`` voxels in view the
    distant ones are merged (:func:`level_of_detail`)."""
    color = np.zeros((height, width, 3), np.uint8)
    depth_m = np.full((height, width), np.nan, np.float32)
    semantic = np.zeros((height, width, 3), np.uint8)
    idx, z = visible_voxels(coords, cam_to_map, K, width, height, 3 * VOXEL_GAUSSIAN_SCALE * voxel_size_m,
                            return_depth=True)
    if len(idx) == 0:
        return MapView(color, depth_m, semantic)
    lod = level_of_detail(coords[idx], colors[idx], one_hot(labels[idx], len(palette)), z, voxel_size_m,
                          max_gaussians)
    g = splat_gaussians(lod.means, lod.colors, lod.features, lod.sigma_m, device)
    counts = dict(voxels_in_view=len(idx), gaussians=len(lod.means))
    world_to_cam = torch.from_numpy(invert_rigid(cam_to_map)).float()[None].to(device)
    cams = Cameras(world_to_cam, torch.from_numpy(np.asarray(K)).float()[None].to(device),
                   torch.zeros(1, dtype=torch.int64, device=device))
    with torch.no_grad():
        out = render(g, cams, width, height, backend=backend)
    alpha = out.alpha[0].cpu().numpy()
    color = (out.color[0].clamp(0, 1) * 255).round().byte().cpu().numpy()
    covered = alpha >= RENDER_MIN_ALPHA
    depth_m = np.where(covered, out.expected_depth[0].cpu().numpy(), np.nan).astype(np.float32)
    semantic = semantic_image(out.features[0].cpu().numpy(), alpha, palette)
    return MapView(color, depth_m, semantic, **counts)


def semantic_image(onehot: np.ndarray,  # [H, W, K] alpha-blended one-hot labels
                   alpha: np.ndarray,  # [H, W] accumulated opacity
                   palette: np.ndarray,  # [K, 3] uint8
                   ) -> np.ndarray:  # [H, W, 3] uint8, 0 where no class wins the pixel
    """Class palette image of rendered one-hot label features."""
    semantic = np.zeros(alpha.shape + (3,), np.uint8)
    if onehot.shape[2] == 0:
        return semantic
    # a class wins a pixel when it carries most of the pixel's opacity and enough of it
    cls = onehot.argmax(axis=2)
    labelled = (alpha >= RENDER_MIN_ALPHA) & (onehot.max(axis=2) >= RENDER_MIN_ALPHA * alpha)
    semantic[labelled] = palette[cls[labelled]]
    return semantic
