"""gsplat (CUDA) backend of :func:`gcross_core.render.render`; the only module that imports gsplat.

gsplat is imported when a render is asked for, so importing this module works on CPU-only machines.
gsplat 1.5.3 ships its CUDA kernels as sources that torch's cpp_extension compiles on first import
(``scripts/setup_env.sh`` and ``scripts/gpu_check.sh`` do it ahead of time); :func:`load_gsplat` imports
that compiled extension up front and turns every way it can be missing into one
:class:`~gcross_core.errors.RenderBackendError` that names the cause and the fix, instead of the
``'NoneType' object has no attribute ...`` gsplat itself raises at the first kernel call.

Conventions are those of the reference renderer (gsplat 'classic' rasterization, no antialiasing
compensation, eps2d dilation, opacity-aware 3.33-sigma boxes, alpha clamp 0.999, skip alpha < 1/255,
stop at T <= 1e-4). Colour and features are rendered as one block of colour channels (gsplat pads the
channel count itself) with the camera z appended by ``render_mode="RGB+D"`` (eq. 14).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from gcross_core.errors import InputError, RenderBackendError
from gcross_core.render.config import RenderConfig
from gcross_core.types import Cameras, Gaussians

GSPLAT_TILE_SIZE = 16  # gsplat's default and the size its kernels are tuned for
# gsplat's rasterization kernels launch one thread per tile pixel in one block, and CUDA blocks hold at
# most 1024 threads: a tile wider than 32 px fails to launch.
GSPLAT_MAX_TILE_SIZE = 32
SUPPORTED_DTYPES = (torch.float32,)  # gsplat's kernels are compiled for float32 only

_FIX = ("run `bash scripts/setup_env.sh` on this machine (it sets CUDA_HOME from nvcc's real location and "
        "builds gsplat's extension), or on an offline machine `bash scripts/gpu_check.sh --wheelhouse ARCHIVE`; "
        "or render with backend='reference'")


def gsplat_tile_size(cfg: RenderConfig) -> int:
    """The tile edge in pixels gsplat will use for ``cfg`` (None -> 16); an InputError above 32."""
    tile_size = cfg.tile_size or GSPLAT_TILE_SIZE
    if not 1 <= tile_size <= GSPLAT_MAX_TILE_SIZE:
        raise InputError(f"tile_size={tile_size} is too large for backend='gsplat': its kernels run "
                         f"tile_size x tile_size threads per block, so expected 1..{GSPLAT_MAX_TILE_SIZE} "
                         f"(default {GSPLAT_TILE_SIZE})")
    return tile_size


def find_cuda_home() -> Optional[str]:
    """The CUDA toolkit root gsplat's extension is built with, or None without a toolkit.

    ``$CUDA_HOME`` when it holds ``bin/nvcc``; otherwise the folder above nvcc's real location. nvcc on
    PATH may be a wrapper script (``exec /usr/local/cuda-13.0/bin/nvcc "$@"``), and then torch's own guess,
    two folders above ``which nvcc``, names the wrapper's folder, whose include/ has no CUDA headers; so
    nvcc is asked where it lives (the ``_HERE_`` line of ``nvcc --dryrun``).
    """
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.access(os.path.join(home, "bin", "nvcc"), os.X_OK):
        return home
    nvcc = shutil.which("nvcc")
    if nvcc is None and os.access("/usr/local/cuda/bin/nvcc", os.X_OK):
        nvcc = "/usr/local/cuda/bin/nvcc"
    if nvcc is None:
        return None
    here = None
    try:
        dry = subprocess.run([nvcc, "--dryrun", "-E", "-x", "cu", os.devnull], capture_output=True, text=True,
                             timeout=60)
        for line in (dry.stdout + dry.stderr).splitlines():
            if line.startswith("#$ _HERE_="):
                here = line.split("=", 1)[1].strip()
                break
    except (OSError, subprocess.SubprocessError):
        pass
    here = here or os.path.dirname(os.path.realpath(nvcc))
    return os.path.dirname(here) if os.access(os.path.join(here, "nvcc"), os.X_OK) else None


def prepare_build_environment() -> Optional[str]:
    """Point torch's cpp_extension at the toolkit :func:`find_cuda_home` finds and at gsplat's ninja.

    Needed at run time too, not only for the first build: in every new process torch rewrites the
    extension's build.ninja from CUDA_HOME and reruns ninja, which recompiles (and fails with a wrong
    CUDA_HOME) when the paths changed. Returns the CUDA_HOME in effect.
    """
    home = find_cuda_home()
    if home:
        os.environ["CUDA_HOME"] = home
        cpp_extension = sys.modules.get("torch.utils.cpp_extension")
        if cpp_extension is not None:  # it read CUDA_HOME when it was imported
            cpp_extension.CUDA_HOME = home
    if shutil.which("ninja") is None:  # the ninja wheel's binary is on PATH only in an activated venv
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except (ImportError, AttributeError):
            pass
    return home


def _cuda_home_hint() -> str:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    return f"CUDA_HOME={home}" if home else "CUDA_HOME is not set and no nvcc was found"


# What the first load_gsplat() in this process found: gsplat.rasterization or the error. A failed build is
# not retried on every render (each try recompiles for minutes).
_loaded: Optional[Union[Callable, RenderBackendError]] = None


def load_gsplat() -> Callable:
    """Import gsplat and its compiled CUDA extension; returns ``gsplat.rasterization``.

    Raises:
        RenderBackendError: without CUDA, without gsplat, when the extension failed to build, or when
            gsplat found no CUDA toolkit to build it with (then gsplat leaves its extension as None).
    """
    global _loaded
    if not torch.cuda.is_available():
        raise RenderBackendError("backend='gsplat' needs CUDA, but torch.cuda.is_available() is False; use "
                                 "backend='reference' (or 'auto', which picks it for CPU tensors)")
    if _loaded is None:
        try:
            _loaded = _import_gsplat()
        except RenderBackendError as err:
            _loaded = err
    if isinstance(_loaded, RenderBackendError):
        raise _loaded
    return _loaded


def _import_gsplat() -> Callable:
    try:
        import gsplat
        from gsplat import rasterization
    except ImportError as err:
        raise RenderBackendError(f"backend='gsplat': gsplat is not importable ({err}); install gsplat==1.5.3 "
                                 f"(requirements/common.txt) and then {_FIX}") from err
    version = getattr(gsplat, "__version__", "?")
    prepare_build_environment()
    try:
        # Importing the backend module compiles the extension the first time (minutes) and loads it after.
        from gsplat.cuda._backend import _C
    except Exception as err:  # noqa: BLE001 - a failed build surfaces as OSError, RuntimeError, ImportError...
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RenderBackendError(
            f"backend='gsplat': building or loading gsplat {version}'s CUDA extension failed "
            f"({type(err).__name__}: {first_line}); torch is built for CUDA {torch.version.cuda} and needs nvcc "
            f"of that CUDA major version ({_cuda_home_hint()}); {_FIX}") from err
    if _C is None:
        raise RenderBackendError(
            f"backend='gsplat': gsplat {version} is installed but its CUDA extension is not built: gsplat found "
            f"no CUDA toolkit ({_cuda_home_hint()}; torch is built for CUDA {torch.version.cuda}); install the "
            f"toolkit with nvcc, point CUDA_HOME at its root, then {_FIX}")
    return rasterization


def _check_tensors(g: Gaussians) -> None:
    if g.means.dtype not in SUPPORTED_DTYPES:
        raise InputError(f"backend='gsplat' renders float32, got gaussians.means of dtype {g.means.dtype}; "
                         f"use backend='reference' (or 'auto', which picks it for other dtypes)")
    if not g.means.is_cuda:
        raise RenderBackendError(f"backend='gsplat' renders CUDA tensors, but the Gaussians are on "
                                 f"{g.means.device}; move them with .to('cuda') or use backend='reference'")


def render_gsplat(gaussians: Gaussians, cameras: Cameras, width: int, height: int,
                  cfg: RenderConfig = RenderConfig()) -> Tensor:
    """Same contract as :func:`gcross_core.render.reference.render_reference`, on CUDA tensors.

    Returns the blended channels [C, H, W, 3 + 1 + d_f + 1]: colour (eq. 3), camera z (eq. 14),
    features (eq. 15), accumulated opacity. No cameras give an empty [0, H, W, 3 + 1 + d_f + 1] batch.
    """
    tile_size = gsplat_tile_size(cfg)
    rasterization = load_gsplat()
    g = gaussians
    _check_tensors(g)
    d_f = g.features.shape[1]
    if len(cameras) == 0:
        return g.means.new_zeros(0, height, width, 3 + 1 + d_f + 1)
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
