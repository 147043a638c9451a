"""Build gsplat's CUDA extension and check the GPU path once (run by setup_env.sh and gpu_check.sh).

    python scripts/gpu_selftest.py             # build gsplat's extension, then spconv and gsplat on the GPU
    python scripts/gpu_selftest.py --dry-run   # what a machine without a GPU can check: imports, toolkit

Prints one line per stage with its seconds. Any failure ends with one line ``gpu_selftest: <cause>; <fix>``
on stderr and exit status 1. The build uses every core (``MAX_JOBS``, default: all) and compiles for the
visible GPUs' architectures only (torch's default when ``TORCH_CUDA_ARCH_LIST`` is unset).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class Failed(Exception):
    pass


def _stage(name: str, fn):
    t0 = time.perf_counter()
    detail = fn()
    print(f"gpu_selftest: {name}: ok in {time.perf_counter() - t0:.1f} s ({detail})", flush=True)


def check_torch(dry_run: bool) -> str:
    import torch

    cuda = torch.version.cuda
    if cuda is None:
        if dry_run:
            return f"torch {torch.__version__} is a CPU build; a GPU machine needs a CUDA build"
        raise Failed(f"torch {torch.__version__} is a CPU build; install the CUDA build (on PyPI torch==2.13.0 "
                     f"is the CUDA 13 build; TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 picks "
                     f"another series) after `pip uninstall torch`")
    if not torch.cuda.is_available():
        if dry_run:
            return f"torch {torch.__version__} (CUDA {cuda}) sees no GPU"
        raise Failed(f"torch {torch.__version__} is built for CUDA {cuda} but sees no GPU; check the NVIDIA "
                     f"driver (nvidia-smi) supports CUDA {cuda}")
    return f"torch {torch.__version__}, CUDA {cuda}, {torch.cuda.get_device_name(0)}"


def check_toolkit(dry_run: bool) -> str:
    import subprocess

    import torch

    from gcross_core.render.gsplat_backend import prepare_build_environment

    home = prepare_build_environment()
    if home is None:
        message = (f"no CUDA toolkit (nvcc) found for building gsplat's extension; install the toolkit of "
                   f"CUDA {torch.version.cuda or '<torch CUDA version>'} and put its nvcc on PATH or set "
                   f"CUDA_HOME to its root")
        if dry_run:
            return message
        raise Failed(message)
    out = subprocess.run([os.path.join(home, "bin", "nvcc"), "--version"], capture_output=True, text=True).stdout
    found = re.search(r"release (\d+\.\d+)", out)
    release = found.group(1) if found else "?"
    torch_cuda = torch.version.cuda
    if torch_cuda and release.split(".")[0] != torch_cuda.split(".")[0]:
        raise Failed(f"nvcc at {home} is CUDA {release} but torch is built for CUDA {torch_cuda}; torch's "
                     f"cpp_extension needs the same major version: set CUDA_HOME to a CUDA {torch_cuda} toolkit")
    return f"CUDA_HOME={home}, nvcc {release}" + (f", torch CUDA {torch_cuda}" if torch_cuda else "")


def check_imports() -> str:
    import gsplat
    import spconv
    import spconv.pytorch  # noqa: F401  the compiled core (and its bundled CUDA runtime) loads here

    import gcross_core.model.encoder  # noqa: F401
    import gcross_core.pretraining.run  # noqa: F401
    import gcross_core.render.gsplat_backend  # noqa: F401
    return f"gsplat {gsplat.__version__}, spconv {spconv.__version__}"


def build_gsplat() -> str:
    from gcross_core.errors import RenderBackendError
    from gcross_core.render.gsplat_backend import load_gsplat

    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    try:
        load_gsplat()
    except RenderBackendError as err:
        raise Failed(str(err)) from err
    from torch.utils.cpp_extension import _get_build_directory

    return f"MAX_JOBS={os.environ['MAX_JOBS']}, built in {_get_build_directory('gsplat_cuda', False)}"


def render_on_gpu() -> str:
    import torch

    from gcross_core.render import render
    from gcross_core.types import Cameras, Gaussians

    g = torch.Generator().manual_seed(0)
    n = 500
    means = torch.randn(n, 3, generator=g) * torch.tensor([0.5, 0.4, 0.2]) + torch.tensor([0.0, 0.0, 2.0])
    gaussians = Gaussians(means=means, quats=torch.randn(n, 4, generator=g),
                          scales=0.02 + 0.05 * torch.rand(n, 3, generator=g), colors=torch.rand(n, 3, generator=g),
                          opacities=0.1 + 0.8 * torch.rand(n, generator=g), features=torch.randn(n, 4, generator=g),
                          batch=torch.zeros(n, dtype=torch.int64)).to("cuda")
    K = torch.tensor([[60.0, 0, 31.5], [0, 60.0, 23.5], [0, 0, 1]])
    cams = Cameras(torch.eye(4)[None], K[None], torch.zeros(1, dtype=torch.int64))
    fast = render(gaussians, cams.to("cuda"), 64, 48, backend="gsplat")
    ref = render(gaussians, cams.to("cuda"), 64, 48, backend="reference")
    diff = max(float((getattr(fast, k) - getattr(ref, k)).abs().max())
               for k in ("color", "depth", "features", "alpha"))
    if not diff < 1e-2:
        raise Failed(f"gsplat and the reference renderer disagree by {diff:.3g} on a 64x48 test image")
    return f"500 Gaussians at 64x48, max |gsplat - reference| = {diff:.2e}"


def spconv_on_gpu() -> str:
    import numpy as np
    import torch

    from gcross_core.data.grid import collate_points, grid_sample
    from gcross_core.model.encoder import SpUNet, SpUNetConfig

    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 2, (4000, 3))
    keep, grid, _ = grid_sample(pts, 0.05)
    batch = collate_points([pts[keep]], [rng.uniform(0, 1, (len(keep), 6))], [grid])
    cfg = SpUNetConfig(base_channels=8, channels=(8, 16, 16, 16, 16, 16, 8, 8), layers=(1,) * 8)
    model = SpUNet(cfg).cuda()
    out = model(batch.to("cuda"))
    out.square().mean().backward()
    if not bool(torch.isfinite(out).all()):
        raise Failed("the SpUNet encoder gave non-finite features on CUDA")
    return f"tiny SpUNet forward+backward on {len(keep)} points, features {tuple(out.shape)}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="check only what needs no GPU")
    args = parser.parse_args(argv)
    try:
        _stage("torch", lambda: check_torch(args.dry_run))
        _stage("toolkit", lambda: check_toolkit(args.dry_run))
        _stage("imports", check_imports)
        if args.dry_run:
            print("gpu_selftest: dry run: gsplat build, gsplat render and spconv on CUDA skipped (no GPU)")
            return 0
        _stage("gsplat extension", build_gsplat)
        _stage("gsplat render", render_on_gpu)
        _stage("spconv encoder", spconv_on_gpu)
    except Failed as err:
        print(f"gpu_selftest: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - one line naming what broke
        print(f"gpu_selftest: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
