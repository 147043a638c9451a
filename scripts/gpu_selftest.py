"""Build gsplat's CUDA extension and check the GPU path once (run by setup_env.sh and gpu_check.sh).

    python scripts/gpu_selftest.py             # spconv on the GPU, build gsplat's extension, a gsplat render
    python scripts/gpu_selftest.py --dry-run   # what a machine without a GPU can check: imports, toolkit
    python scripts/gpu_selftest.py --describe FILE [--wheelhouse-manifest M]
                                               # torch, the visible GPUs and the architecture list to build
                                               # for, as JSON; with M, check that wheelhouse fits this Python

Prints one line per stage with its seconds; each failure is one line ``gpu_selftest: <cause>; <fix>`` on
stderr. Exit status 1 when there is no usable gsplat extension (or torch, the toolkit or an import
failed), 3 when the extension is built but the spconv or the render check failed (gpu_check.sh then
still runs the tests and benchmarks: they would not build anything again). spconv is checked before the
gsplat build, so a build that fails or is cut off still leaves the encoder's outcome in the log. The
build uses every core (``MAX_JOBS``, default: all) and compiles for ``TORCH_CUDA_ARCH_LIST`` (torch's
default when it is unset: the visible GPUs' architectures; gpu_check.sh sets it from the device's
compute capability, :func:`cuda_arch_list`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]


EXIT_FAILED = 1
EXIT_BUILT_BUT_CHECK_FAILED = 3  # gsplat's extension is built; spconv or the render check failed


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

    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "unset: the visible GPUs'")
    return (f"MAX_JOBS={os.environ['MAX_JOBS']}, TORCH_CUDA_ARCH_LIST={arch}, "
            f"built in {_get_build_directory('gsplat_cuda', False)}")


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


def cuda_arch_list(capabilities: Iterable[Tuple[int, int]]) -> Optional[str]:
    """``TORCH_CUDA_ARCH_LIST`` for exactly these compute capabilities: "9.0" for one H100, "8.6;9.0" for
    two kinds of GPU, None without a GPU.

    Each listed architecture is one more compile of every gsplat kernel, and nvcc 13 no longer compiles
    the oldest ones, so a list carried in from the environment can multiply the build or fail it.
    """
    found = sorted({(int(major), int(minor)) for major, minor in capabilities})
    return ";".join(f"{major}.{minor}" for major, minor in found) or None


def spconv_series(torch_cuda: str) -> str:
    """The spconv wheel series for a torch built for CUDA ``torch_cuda``, from the one table of series
    (``spconv_series`` in scripts/gpu_pins.sh)."""
    done = subprocess.run(["bash", "-c", '. "$0" && spconv_series "$1"', str(REPO / "scripts" / "gpu_pins.sh"),
                           torch_cuda], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise Failed(done.stderr.strip() or f"no spconv series for CUDA {torch_cuda}")
    return done.stdout.strip()


def describe_environment() -> dict:
    """This interpreter, its torch and the visible GPUs, with the architecture list to build for. Imports
    torch and nothing of the project or the wheelhouse."""
    import torch

    env = {"python": platform.python_version(), "executable": sys.executable, "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "gpus": [], "compute_capabilities": [], "cuda_arch_list": None,
           "driver": None}
    if torch.version.cuda is not None and torch.cuda.is_available():
        devices = range(torch.cuda.device_count())
        capabilities = [tuple(torch.cuda.get_device_capability(i)) for i in devices]
        env["gpus"] = [torch.cuda.get_device_name(i) for i in devices]
        env["compute_capabilities"] = [f"{major}.{minor}" for major, minor in capabilities]
        env["cuda_arch_list"] = cuda_arch_list(capabilities)
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        env["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        pass
    return env


def check_wheelhouse(manifest: dict, env: dict) -> str:
    """Whether a wheelhouse (its gcross_wheelhouse.json) fits this interpreter: the same Python minor
    version (its numpy and spconv are compiled for one), the spconv series of this torch's CUDA, and the
    distributions it leaves to the image (``gpu_wheelhouse.sh --image-has``) installed here.
    Returns a line saying what was checked; raises Failed naming the mismatch and the rebuild command."""
    from importlib.metadata import PackageNotFoundError, version

    python, here = manifest["python"], env["python"].rsplit(".", 1)[0]
    cuda = env["torch_cuda"] or manifest["torch_cuda"]
    if python != here:
        raise Failed(f"the wheelhouse is for Python {python} but {env['executable']} is {here}: rebuild it with "
                     f"scripts/gpu_wheelhouse.sh --python {here} --cuda {cuda}")
    image_has = manifest.get("image_has", [])
    found, missing = [], []
    for name in image_has:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            missing.append(name)
    if missing:
        kept = ",".join(name for name in image_has if name not in missing)
        raise Failed(f"the wheelhouse leaves {', '.join(missing)} to the image, but {env['executable']} has none: "
                     f"rebuild it with scripts/gpu_wheelhouse.sh --python {here} --cuda {cuda}"
                     + (f" --image-has {kept}" if kept else ""))
    from_image = f"; from the image: {', '.join(found)}" if found else ""
    if env["torch_cuda"] is None:
        return (f"Python {python} fits; torch {env['torch']} is a CPU build, so the CUDA series is not "
                f"checked{from_image}")
    want = spconv_series(env["torch_cuda"])
    if manifest["spconv_series"] != want:
        raise Failed(f"the wheelhouse holds spconv {manifest['spconv_series']} (for torch CUDA "
                     f"{manifest['torch_cuda']}) but torch {env['torch']} is built for CUDA {env['torch_cuda']}, "
                     f"which needs {want}: rebuild it with scripts/gpu_wheelhouse.sh --python {here} "
                     f"--cuda {env['torch_cuda']}")
    return f"Python {python} and spconv {want} fit torch {env['torch']} (CUDA {env['torch_cuda']}){from_image}"


def describe(path: Path, manifest_path: Optional[Path]) -> None:
    """Write :func:`describe_environment` (and the wheelhouse manifest) to ``path`` as JSON, then check the
    wheelhouse fits (:func:`check_wheelhouse`)."""
    env = describe_environment()
    manifest = json.loads(manifest_path.read_text()) if manifest_path else None
    path.write_text(json.dumps({**env, "wheelhouse": manifest}, indent=1) + "\n")
    gpus = ", ".join(f"{name} (compute capability {cap})"
                     for name, cap in zip(env["gpus"], env["compute_capabilities"])) or "no GPU visible"
    print(f"gpu_selftest: Python {env['python']} ({env['executable']}), torch {env['torch']} "
          f"(CUDA {env['torch_cuda']}), {gpus}, driver {env['driver']}")
    if manifest is not None:
        print(f"gpu_selftest: wheelhouse: {check_wheelhouse(manifest, env)}; {len(manifest['packages'])} packages")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="check only what needs no GPU")
    parser.add_argument("--describe", type=Path, default=None, metavar="FILE",
                        help="write torch, the visible GPUs and the architecture list to build for to FILE (JSON)")
    parser.add_argument("--wheelhouse-manifest", type=Path, default=None, metavar="FILE",
                        help="with --describe: check that this gcross_wheelhouse.json fits this interpreter")
    args = parser.parse_args(argv)
    if args.wheelhouse_manifest and not args.describe:
        parser.error("--wheelhouse-manifest goes with --describe")
    try:
        if args.describe:
            describe(args.describe, args.wheelhouse_manifest)
            return 0
        _stage("torch", lambda: check_torch(args.dry_run))
        _stage("toolkit", lambda: check_toolkit(args.dry_run))
        _stage("imports", check_imports)
        if args.dry_run:
            print("gpu_selftest: dry run: gsplat build, gsplat render and spconv on CUDA skipped (no GPU)")
            return 0
        checks_ok = _checked("spconv encoder", spconv_on_gpu)
        _stage("gsplat extension", build_gsplat)
        checks_ok = _checked("gsplat render", render_on_gpu) and checks_ok
    except Exception as err:  # noqa: BLE001 - one line naming what broke
        _report(err)
        return EXIT_FAILED
    return 0 if checks_ok else EXIT_BUILT_BUT_CHECK_FAILED


def _report(err: Exception) -> None:
    print(f"gpu_selftest: {err}" if isinstance(err, Failed) else f"gpu_selftest: {type(err).__name__}: {err}",
          file=sys.stderr, flush=True)


def _checked(name: str, fn) -> bool:
    """Run a check that the later ones do not depend on: a failure is reported and the self-test goes on."""
    try:
        _stage(name, fn)
        return True
    except Exception as err:  # noqa: BLE001 - one line naming what broke
        _report(err)
        return False


if __name__ == "__main__":
    sys.exit(main())
