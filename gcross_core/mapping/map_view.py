"""What the node renders of a labelled voxel map: the visible voxels as Gaussians, seen from a camera.

Gaussians built from voxels (the "simplest honest" splat of a voxel map): one isotropic Gaussian per
voxel whose standard deviation is half the voxel edge, so neighbours overlap into a closed surface. Its
features are the one-hot labels, so the alpha-blended feature image says which class covers a pixel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gcross_core.geometry import invert_rigid
from gcross_core.render import render
from gcross_core.types import Cameras, Gaussians

VOXEL_GAUSSIAN_SCALE = 0.5  # x voxel_size_m
VOXEL_GAUSSIAN_OPACITY = 0.9
RENDER_MIN_ALPHA = 0.5  # rendered pixels less covered than this have no depth / class


@dataclass(frozen=True)
class MapView:
    color: np.ndarray  # [H, W, 3] uint8
    depth_m: np.ndarray  # [H, W] float32 metres, NaN where nothing is rendered
    semantic: np.ndarray  # [H, W, 3] uint8 class palette colour, 0 where no class wins the pixel


def voxel_gaussians(coords: np.ndarray,  # [N, 3] map frame metres
                    colors: np.ndarray,  # [N, 3] 0..255
                    labels: np.ndarray,  # [N] int, -1 = not segmented
                    num_classes: int, voxel_size_m: float, device: str = "cpu") -> Gaussians:
    """One isotropic Gaussian per voxel; features are the one-hot labels (zero where unlabelled)."""
    n = len(coords)
    for name, arr, shape in (("coords", coords, (n, 3)), ("colors", colors, (n, 3)), ("labels", labels, (n,))):
        if np.shape(arr) != shape:
            raise ValueError(f"{name} has shape {np.shape(arr)}, expected {shape}")
    features = np.zeros((n, num_classes), dtype=np.float32)
    labelled = labels >= 0
    features[np.flatnonzero(labelled), labels[labelled]] = 1.0
    quats = np.zeros((n, 4), dtype=np.float32)
    quats[:, 0] = 1.0

    def as_t(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)

    return Gaussians(means=as_t(coords), quats=as_t(quats),
                     scales=torch.full((n, 3), VOXEL_GAUSSIAN_SCALE * voxel_size_m, device=device),
                     colors=as_t(np.clip(colors, 0, 255) / 255.0),
                     opacities=torch.full((n,), VOXEL_GAUSSIAN_OPACITY, device=device),
                     features=as_t(features), batch=torch.zeros(n, dtype=torch.int64, device=device))


def visible_voxels(coords: np.ndarray,  # [N, 3] map frame
                   cam_to_map: np.ndarray,  # [4, 4]
                   K: np.ndarray,  # [3, 3] for width x height
                   width: int, height: int, margin_m: float, limit: int) -> np.ndarray:
    """Indices of the voxels whose Gaussians can touch the image, the ``limit`` nearest if more."""
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
    if len(idx) > limit:
        idx = idx[np.argpartition(z[idx], limit - 1)[:limit]]
    return idx


def render_map_view(coords: np.ndarray,  # [N, 3] map frame metres
                    colors: np.ndarray,  # [N, 3] 0..255
                    labels: np.ndarray,  # [N] int, -1 = not segmented
                    cam_to_map: np.ndarray,  # [4, 4]
                    K: np.ndarray,  # [3, 3] for width x height
                    width: int, height: int,
                    palette: np.ndarray,  # [num_classes, 3] uint8
                    voxel_size_m: float, max_gaussians: int, device: str = "cpu",
                    backend: str = "auto") -> MapView:
    """Color, depth and class image of the map at a camera (the ``max_gaussians`` nearest visible voxels)."""
    color = np.zeros((height, width, 3), np.uint8)
    depth_m = np.full((height, width), np.nan, np.float32)
    semantic = np.zeros((height, width, 3), np.uint8)
    idx = visible_voxels(coords, cam_to_map, K, width, height, 3 * VOXEL_GAUSSIAN_SCALE * voxel_size_m,
                         max_gaussians)
    if len(idx) == 0:
        return MapView(color, depth_m, semantic)
    g = voxel_gaussians(coords[idx], colors[idx], labels[idx], len(palette), voxel_size_m, device)
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
    return MapView(color, depth_m, semantic)


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
