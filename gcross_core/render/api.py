"""One entry point for rendering Gaussians: :func:`render`, with a CPU reference and a gsplat (CUDA) backend."""
from __future__ import annotations

import functools
import logging
from dataclasses import fields, replace
from typing import Optional

import torch
from torch import Tensor

from gcross_core.errors import InputError
from gcross_core.render.config import BACKENDS, RenderConfig
from gcross_core.types import Cameras, Gaussians, RenderOutput

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def _announce_backend(backend: str, device: str, reason: str) -> None:
    """Log an automatic backend choice at INFO the first time it is made for a device and reason (cached
    per process); every later call is a cache hit and logs nothing, see :func:`choose_backend`."""
    log.info("render backend=auto picked %r for tensors on %s (%s)", backend, device, reason)


def choose_backend(device: torch.device, dtype: torch.dtype) -> str:
    """What ``backend="auto"`` renders Gaussians on ``device`` of ``dtype`` with, logged once per choice.

    gsplat for float32 CUDA tensors; the reference otherwise: on CPU, and on CUDA for dtypes gsplat's
    kernels are not compiled for (float64 parity checks, half precision), which the reference renders in
    their own precision.
    """
    from gcross_core.render.gsplat_backend import SUPPORTED_DTYPES

    if device.type != "cuda":
        backend, reason = "reference", "gsplat renders CUDA tensors only"
    elif dtype not in SUPPORTED_DTYPES:
        backend, reason = "reference", f"gsplat renders float32 only, these are {dtype}"
    else:
        backend, reason = "gsplat", "float32 CUDA tensors"
    log.debug("render backend=auto picked %r (%s)", backend, reason)
    _announce_backend(backend, str(device), reason)
    return backend


def render(gaussians: Gaussians, cameras: Cameras, width: int, height: int, backend: str = "auto",
           *, config: Optional[RenderConfig] = None, num_scenes: Optional[int] = None, **kw) -> RenderOutput:
    """Render each camera from the Gaussians of its scene (paper eqs. 1-3, 14, 15).

    Args:
        gaussians: Gaussians of one or more scenes (``gaussians.batch`` says which). Quaternions need not
            be unit: they are normalized here (gradients flow through the normalization).
        cameras: world_to_cam [C, 4, 4], K [C, 3, 3] for a ``width`` x ``height`` image (OpenCV: x right,
            y down, z forward), and ``cameras.batch`` [C] the scene each camera looks at.
        width, height: image size in pixels.
        backend: "reference" (pure PyTorch, any device), "gsplat" (float32 CUDA tensors only; a
            RenderBackendError (a RuntimeError) naming cause and fix without CUDA or without a built gsplat
            extension, never a silent fallback), or "auto": gsplat for float32 CUDA tensors, the
            reference otherwise (CPU, float64, half precision; see :func:`choose_backend`, logged once).
        config: rasterization settings; ``**kw`` overrides single fields, e.g. ``tile_size=8``.
        num_scenes: number of scenes; defaults to ``gaussians.batch.max() + 1``. Pass it when a scene
            may have no Gaussians left (e.g. all pruned) but still has cameras.

    Returns:
        RenderOutput with, per camera and pixel, background black:
        color [C, H, W, 3] (eq. 3); depth [C, H, W] (eq. 14: camera-space z of the Gaussian means,
        alpha-blended, *not* divided by the accumulated opacity); expected_depth [C, H, W]
        = depth / alpha (0 where alpha is 0; alpha is 0 or >= 1/255, so its gradient is scaled by at most 255);
        features [C, H, W, d_f] (eq. 15); alpha [C, H, W] = 1 - prod(1 - alpha_i).

        The depth loss (eq. 18) uses ``depth``, eq. 14 as the paper writes it, on pixels with valid
        sensor depth: it needs no division by a possibly tiny alpha, and where the Gaussians leave a
        hole in front of a valid sensor reading it pulls opacity up, like the colour loss does against
        the black background.
    """
    if backend not in BACKENDS:
        raise InputError(f"backend {backend!r} is not one of {BACKENDS}")
    cfg = config or RenderConfig()
    if kw:
        names = {f.name for f in fields(RenderConfig)}
        unknown = sorted(set(kw) - names)
        if unknown:
            raise ValueError(f"unknown render options {unknown}; expected some of {sorted(names)}")
        cfg = replace(cfg, **kw)
    gaussians = _validated(gaussians, cameras, width, height, num_scenes)

    if backend == "auto":
        backend = choose_backend(gaussians.means.device, gaussians.means.dtype)

    # The project's intrinsics follow OpenCV (pixel i's centre at coordinate i, as in
    # geometry.backproject_depth); both rasterizers put pixel centres at i + 0.5 like gsplat. Shift the
    # principal point here, once, so rendered views line up with the RGB-D frames they are compared to.
    K_raster = cameras.K.clone()
    K_raster[:, 0, 2] += 0.5
    K_raster[:, 1, 2] += 0.5
    cameras = Cameras(cameras.world_to_cam, K_raster, cameras.batch)

    if backend == "gsplat":
        from gcross_core.render.gsplat_backend import render_gsplat

        blended = render_gsplat(gaussians, cameras, width, height, cfg)
    else:
        from gcross_core.render.reference import render_reference

        blended = render_reference(gaussians, cameras, width, height, cfg)
    return split_channels(blended, gaussians.features.shape[1])


def split_channels(blended: Tensor,  # [C, H, W, 3 + 1 + d_f + 1]
                   feature_dim: int) -> RenderOutput:
    """Blended (colour, z, features, opacity) channels -> RenderOutput."""
    color = blended[..., :3]
    depth = blended[..., 3]
    features = blended[..., 4:4 + feature_dim]
    alpha = blended[..., 4 + feature_dim]
    expected_depth = depth / alpha.clamp_min(1e-10)  # depth is 0 where alpha is 0, as in gsplat "ED"
    return RenderOutput(color=color, depth=depth, expected_depth=expected_depth, features=features,
                        alpha=alpha)


def _validated(g: Gaussians, cams: Cameras, width: int, height: int,
               num_scenes: Optional[int]) -> Gaussians:
    """Check shapes and values of the inputs; returns the Gaussians with unit quaternions."""
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise InputError(f"{name} must be a positive int, got {value!r}")
    n = len(g.means)
    for name, t, trailing in (("means", g.means, (3,)), ("quats", g.quats, (4,)), ("scales", g.scales, (3,)),
                              ("colors", g.colors, (3,)), ("opacities", g.opacities, ())):
        if tuple(t.shape) != (n, *trailing):
            raise ValueError(f"gaussians.{name} has shape {tuple(t.shape)}, expected {(n, *trailing)}")
    if g.features.ndim != 2 or g.features.shape[0] != n:
        raise ValueError(f"gaussians.features has shape {tuple(g.features.shape)}, expected [{n}, d_f]")
    if tuple(g.batch.shape) != (n,):
        raise ValueError(f"gaussians.batch has shape {tuple(g.batch.shape)}, expected ({n},)")
    c = cams.world_to_cam.shape[0]
    if tuple(cams.world_to_cam.shape) != (c, 4, 4):
        raise ValueError(f"cameras.world_to_cam has shape {tuple(cams.world_to_cam.shape)}, expected [C, 4, 4]")
    if tuple(cams.K.shape) != (c, 3, 3):
        raise ValueError(f"cameras.K has shape {tuple(cams.K.shape)}, expected ({c}, 3, 3) "
                         f"(one per world_to_cam)")
    if tuple(cams.batch.shape) != (c,):
        raise ValueError(f"cameras.batch has shape {tuple(cams.batch.shape)}, expected ({c},)")

    device = g.means.device
    dtype = g.means.dtype
    if not dtype.is_floating_point:
        raise ValueError(f"gaussians.means has dtype {dtype}, expected a floating point type")
    for name, t in (("gaussians.quats", g.quats), ("gaussians.scales", g.scales), ("gaussians.colors", g.colors),
                    ("gaussians.opacities", g.opacities), ("gaussians.features", g.features),
                    ("gaussians.batch", g.batch), ("cameras.world_to_cam", cams.world_to_cam),
                    ("cameras.K", cams.K), ("cameras.batch", cams.batch)):
        if t.device != device:
            raise ValueError(f"{name} is on {t.device}, expected {device} like gaussians.means")
    for name, t in (("gaussians.quats", g.quats), ("gaussians.scales", g.scales), ("gaussians.colors", g.colors),
                    ("gaussians.opacities", g.opacities), ("gaussians.features", g.features)):
        if t.dtype != dtype:
            raise ValueError(f"{name} has dtype {t.dtype}, expected {dtype} like gaussians.means")
    for name, t in (("gaussians.batch", g.batch), ("cameras.batch", cams.batch)):
        if t.dtype != torch.int64:
            raise ValueError(f"{name} has dtype {t.dtype}, expected torch.int64")

    with torch.no_grad():
        for name, t in (("gaussians.means", g.means), ("gaussians.quats", g.quats),
                        ("gaussians.scales", g.scales), ("gaussians.colors", g.colors),
                        ("gaussians.opacities", g.opacities), ("gaussians.features", g.features),
                        ("cameras.world_to_cam", cams.world_to_cam), ("cameras.K", cams.K)):
            bad = ~torch.isfinite(t)
            if bool(bad.any()):
                raise ValueError(f"{name} has {int(bad.sum())} NaN/inf values")
        if n and bool((g.scales <= 0).any()):
            raise ValueError(f"gaussians.scales must be > 0 (standard deviations in metres); "
                             f"min is {float(g.scales.min()):.3g}")
        if n and bool(((g.opacities < 0) | (g.opacities > 1)).any()):
            raise ValueError(f"gaussians.opacities must lie in [0, 1]; range is "
                             f"[{float(g.opacities.min()):.3g}, {float(g.opacities.max()):.3g}]")
        qnorm = g.quats.norm(dim=-1)
        if n and bool((qnorm < 1e-12).any()):
            raise ValueError(f"gaussians.quats has {int((qnorm < 1e-12).sum())} zero quaternions")
        if c and bool(((cams.K[:, 0, 0] <= 0) | (cams.K[:, 1, 1] <= 0)).any()):
            raise ValueError("cameras.K must have positive focal lengths fx, fy")
        if n and int(g.batch.min()) < 0:
            raise ValueError(f"gaussians.batch has negative scene index {int(g.batch.min())}")
        if c and int(cams.batch.min()) < 0:
            raise ValueError(f"cameras.batch has negative scene index {int(cams.batch.min())}")
        scenes = num_scenes if num_scenes is not None else (int(g.batch.max()) + 1 if n else 0)
        if n and int(g.batch.max()) >= scenes:
            raise ValueError(f"gaussians.batch has scene index {int(g.batch.max())} but num_scenes={scenes}")
        if c and int(cams.batch.max()) >= scenes:
            raise ValueError(f"cameras.batch refers to scene {int(cams.batch.max())}, but the Gaussians "
                             f"cover {scenes} scene(s); pass num_scenes= if a scene has no Gaussians")
    # Normalized outside no_grad so that gradients flow through the normalization.
    unit_quats = g.quats / g.quats.norm(dim=-1, keepdim=True)
    return Gaussians(means=g.means, quats=unit_quats, scales=g.scales, colors=g.colors, opacities=g.opacities,
                     features=g.features, batch=g.batch)
