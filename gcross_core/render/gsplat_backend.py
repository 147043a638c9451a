"""gsplat (CUDA) backend of :func:`gcross_core.render.render`; the only module that imports gsplat.

gsplat is imported when a render is asked for, so importing this module works on CPU-only machines.
Conventions are those of the reference renderer (gsplat 'classic' rasterization, no antialiasing
compensation, eps2d dilation, opacity-aware 3.33-sigma boxes, alpha clamp 0.999, skip alpha < 1/255,
stop at T <= 1e-4). Colour and features are rendered as one block of colour channels (gsplat pads the
channel count itself) with the camera z appended by ``render_mode="RGB+D"`` (eq. 14).
"""
from __future__ import annotations

import torch
from torch import Tensor

from gcross_core.render.config import RenderConfig
from gcross_core.types import Cameras, Gaussians

GSPLAT_TILE_SIZE = 16  # gsplat's default and the size its kernels are tuned for


def _rasterization():
    if not torch.cuda.is_available():
        raise RuntimeError("backend='gsplat' needs CUDA, but torch.cuda.is_available() is False; "
                           "use backend='reference' (or 'auto', which picks it for CPU tensors)")
    try:
        from gsplat import rasterization
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise RuntimeError(f"backend='gsplat' could not import gsplat ({err}); install gsplat==1.5.3 or use "
                           f"backend='reference'") from err
    return rasterization


def render_gsplat(gaussians: Gaussians, cameras: Cameras, width: int, height: int,
                  cfg: RenderConfig = RenderConfig()) -> Tensor:
    """Same contract as :func:`gcross_core.render.reference.render_reference`, on CUDA tensors.

    Returns the blended channels [C, H, W, 3 + 1 + d_f + 1]: colour (eq. 3), camera z (eq. 14),
    features (eq. 15), accumulated opacity.
    """
    rasterization = _rasterization()
    g = gaussians
    if not g.means.is_cuda:
        raise RuntimeError(f"backend='gsplat' renders CUDA tensors, but the Gaussians are on {g.means.device}; "
                           f"move them with .to('cuda') or use backend='reference'")
    if g.means.dtype != torch.float32:
        raise ValueError(f"backend='gsplat' renders float32, got gaussians.means of dtype {g.means.dtype}; "
                         f"use backend='reference' for other dtypes")
    d_f = g.features.shape[1]
    tile_size = cfg.tile_size or GSPLAT_TILE_SIZE
    world_to_cam = cameras.world_to_cam.to(torch.float32)
    K = cameras.K.to(torch.float32)

    parts, order = [], []
    for scene in torch.unique(cameras.batch).tolist():
        cam_idx = torch.nonzero(cameras.batch == scene).squeeze(1)
        sel = torch.nonzero(g.batch == scene).squeeze(1)
        order.append(cam_idx)
        if len(sel) == 0:
            parts.append(g.means.new_zeros(len(cam_idx), height, width, 3 + 1 + d_f + 1))
            continue
        colors, alphas, _ = rasterization(
            means=g.means[sel], quats=g.quats[sel], scales=g.scales[sel], opacities=g.opacities[sel],
            colors=torch.cat([g.colors[sel], g.features[sel]], 1),  # [N, 3 + d_f]
            viewmats=world_to_cam[cam_idx], Ks=K[cam_idx], width=width, height=height,
            near_plane=cfg.near_plane_m, far_plane=cfg.far_plane_m, radius_clip=0.0, eps2d=cfg.eps2d,
            packed=False, tile_size=tile_size, render_mode="RGB+D", rasterize_mode="classic",
        )  # colors [Cs, H, W, 3 + d_f + 1] (blended z last), alphas [Cs, H, W, 1]
        parts.append(torch.cat([colors[..., :3], colors[..., -1:], colors[..., 3:3 + d_f], alphas], -1))
    blended = torch.cat(parts)
    inverse = torch.empty_like(cameras.batch)
    inverse[torch.cat(order)] = torch.arange(len(cameras), device=cameras.batch.device)
    return blended[inverse]
