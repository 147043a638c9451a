"""The gsplat backend's error paths and bookkeeping on CPU, with gsplat and its CUDA extension faked.

The real kernels run only in tests/gpu; here ``sys.modules`` holds stand-ins for ``gsplat`` and
``gsplat.cuda._backend`` so that each way the extension can be missing is exercised, and a stand-in
``rasterization`` built on the reference renderer checks how render_gsplat groups cameras by scene and
reorders channels.
"""
import logging
import os
import sys
import types

import pytest
import torch

from gcross_core.errors import InputError, RenderBackendError
from gcross_core.render import RenderConfig, render
from gcross_core.render import api as render_api
from gcross_core.render import gsplat_backend
from gcross_core.render.reference import render_reference
from gcross_core.types import Cameras, Gaussians

K = [[12.0, 0, 6.3], [0, 12.0, 4.8], [0, 0, 1]]
WIDTH, HEIGHT = 13, 10


def _gaussians(n=40, num_scenes=2, feature_dim=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=dtype) * torch.tensor([0.6, 0.5, 0.3], dtype=dtype)
    means[:, 2] += 2.0
    return Gaussians(means=means, quats=torch.randn(n, 4, generator=g, dtype=dtype),
                     scales=0.05 + 0.15 * torch.rand(n, 3, generator=g, dtype=dtype),
                     colors=torch.rand(n, 3, generator=g, dtype=dtype),
                     opacities=0.2 + 0.7 * torch.rand(n, generator=g, dtype=dtype),
                     features=torch.randn(n, feature_dim, generator=g, dtype=dtype),
                     batch=torch.arange(n) % num_scenes)


def _cameras(batch, dtype=torch.float32):
    c = len(batch)
    world_to_cam = torch.eye(4, dtype=dtype).repeat(c, 1, 1)
    world_to_cam[:, 0, 3] = 0.1 * torch.arange(c, dtype=dtype)  # each camera sees a different view
    return Cameras(world_to_cam, torch.tensor(K, dtype=dtype).repeat(c, 1, 1),
                   torch.tensor(batch, dtype=torch.int64))


def _reference_as_gsplat(calls):
    """A stand-in for gsplat.rasterization with its output layout, computed by the reference renderer."""
    def rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height, tile_size, **kw):
        calls.append({"n": len(means), "cameras": len(viewmats), "tile_size": tile_size, **kw})
        d_f = colors.shape[1] - 3
        g = Gaussians(means=means, quats=quats, scales=scales, colors=colors[:, :3], opacities=opacities,
                      features=colors[:, 3:], batch=torch.zeros(len(means), dtype=torch.int64))
        cams = Cameras(viewmats, Ks, torch.zeros(len(viewmats), dtype=torch.int64))
        cfg = RenderConfig(near_plane_m=kw["near_plane"], far_plane_m=kw["far_plane"], eps2d=kw["eps2d"])
        out = render_reference(g, cams, width, height, cfg)  # [C, H, W, 3 + 1 + d_f + 1]
        rgbd = torch.cat([out[..., :3], out[..., 4:4 + d_f], out[..., 3:4]], -1)  # gsplat: colour, features, z
        return rgbd, out[..., -1:], {}
    return rasterization


@pytest.fixture
def fake_gsplat(monkeypatch):
    """Install fake gsplat modules; returns a function setting what the extension import does."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gsplat_backend, "_loaded", None)
    monkeypatch.setattr(gsplat_backend, "prepare_build_environment", lambda: None)
    calls = []
    pkg = types.ModuleType("gsplat")
    pkg.__version__ = "1.5.3"
    pkg.rasterization = _reference_as_gsplat(calls)
    cuda = types.ModuleType("gsplat.cuda")
    backend = types.ModuleType("gsplat.cuda._backend")
    backend._C = object()
    for name, module in (("gsplat", pkg), ("gsplat.cuda", cuda), ("gsplat.cuda._backend", backend)):
        monkeypatch.setitem(sys.modules, name, module)

    def configure(extension="built"):
        if extension == "no toolkit":  # what gsplat leaves when it finds no CUDA toolkit to build with
            backend._C = None
        elif extension == "build fails":
            del backend._C

            def fail(name):
                raise RuntimeError("Error building extension 'gsplat_cuda': nvcc fatal: Unsupported gpu "
                                   "architecture 'compute_120'\nsecond line")
            backend.__getattr__ = fail
        return calls
    return configure


@pytest.fixture
def cpu_tensors_allowed(monkeypatch):
    """Let render_gsplat take CPU tensors (the device check is the one thing the fake cannot satisfy)."""
    monkeypatch.setattr(gsplat_backend, "_check_tensors", lambda g: None)


def test_no_cuda_is_an_error_naming_the_way_out(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RenderBackendError, match="needs CUDA.*backend='reference'"):
        render(_gaussians(), _cameras([0]), WIDTH, HEIGHT, backend="gsplat")


def test_gsplat_not_installed(monkeypatch, fake_gsplat):
    monkeypatch.setitem(sys.modules, "gsplat", None)  # import gsplat -> ImportError
    with pytest.raises(RenderBackendError, match=r"gsplat is not importable.*gsplat==1\.5\.3.*setup_env\.sh"):
        render(_gaussians(), _cameras([0]), WIDTH, HEIGHT, backend="gsplat")


def test_extension_without_toolkit_names_cause_and_fix(monkeypatch, fake_gsplat):
    fake_gsplat("no toolkit")
    monkeypatch.setenv("CUDA_HOME", "/opt/nowhere")
    with pytest.raises(RenderBackendError) as err:
        render(_gaussians(), _cameras([0]), WIDTH, HEIGHT, backend="gsplat")
    text = str(err.value)
    assert "CUDA extension is not built" in text and "CUDA_HOME=/opt/nowhere" in text
    assert "scripts/setup_env.sh" in text and "scripts/gpu_check.sh" in text and "backend='reference'" in text
    assert "NoneType" not in text


def test_failed_build_is_reported_once_and_not_retried(fake_gsplat):
    fake_gsplat("build fails")
    for _ in range(2):
        with pytest.raises(RenderBackendError, match="building or loading gsplat 1.5.3's CUDA extension failed "
                                                     r"\(RuntimeError: Error building extension") as err:
            render(_gaussians(), _cameras([0]), WIDTH, HEIGHT, backend="gsplat")
        assert "second line" not in str(err.value)
    assert isinstance(gsplat_backend._loaded, RenderBackendError)  # cached: the build is not retried


def test_cpu_tensors_are_refused_after_the_extension_loads(fake_gsplat):
    fake_gsplat()
    with pytest.raises(RuntimeError, match=r"renders CUDA tensors.*\.to\('cuda'\)"):
        render(_gaussians(), _cameras([0]), WIDTH, HEIGHT, backend="gsplat")


def test_float64_is_refused_by_gsplat(fake_gsplat):
    fake_gsplat()
    with pytest.raises(ValueError, match="renders float32"):
        gsplat_backend._check_tensors(_gaussians(dtype=torch.float64))


@pytest.mark.parametrize("tile_size", [0, 33, 64])
def test_tile_size_outside_gsplat_limits(tile_size, fake_gsplat, cpu_tensors_allowed):
    calls = fake_gsplat()
    with pytest.raises(ValueError, match=f"tile_size={tile_size}|tile_size must be"):
        render(_gaussians(), _cameras([0]), WIDTH, HEIGHT, backend="gsplat", tile_size=tile_size)
    assert not calls


def test_tile_size_reaches_gsplat(fake_gsplat, cpu_tensors_allowed):
    calls = fake_gsplat()
    render(_gaussians(), _cameras([0]), WIDTH, HEIGHT, backend="gsplat", tile_size=32)
    render(_gaussians(), _cameras([0]), WIDTH, HEIGHT, backend="gsplat")
    assert [c["tile_size"] for c in calls] == [32, gsplat_backend.GSPLAT_TILE_SIZE]
    assert gsplat_backend.gsplat_tile_size(RenderConfig(tile_size=8)) == 8
    with pytest.raises(InputError, match="1..32"):
        gsplat_backend.gsplat_tile_size(RenderConfig(tile_size=48))


def test_zero_cameras_give_an_empty_batch(fake_gsplat, cpu_tensors_allowed):
    calls = fake_gsplat()
    g = _gaussians(feature_dim=5)
    out = render(g, _cameras([]), WIDTH, HEIGHT, backend="gsplat")
    ref = render(g, _cameras([]), WIDTH, HEIGHT, backend="reference")
    assert out.color.shape == ref.color.shape == (0, HEIGHT, WIDTH, 3)
    assert out.features.shape == ref.features.shape == (0, HEIGHT, WIDTH, 5)
    assert out.depth.shape == (0, HEIGHT, WIDTH) and out.color.dtype == torch.float32
    assert not calls


def test_cameras_grouped_by_scene_and_channels_reordered(fake_gsplat, cpu_tensors_allowed):
    """Three scenes, the middle one without Gaussians, cameras interleaved: every camera gets its own
    scene's image, in its own place, with gsplat's channel order (colour, features, z) undone."""
    calls = fake_gsplat()
    g = _gaussians(n=60, num_scenes=2, feature_dim=4)
    g = Gaussians(**{**vars(g), "batch": torch.where(g.batch == 1, 2, 0)})  # scenes 0 and 2; scene 1 empty
    cams = _cameras([2, 0, 1, 2, 0])
    out = render(g, cams, WIDTH, HEIGHT, backend="gsplat", num_scenes=3)
    ref = render(g, cams, WIDTH, HEIGHT, backend="reference", num_scenes=3)
    for name in ("color", "depth", "features", "alpha"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), rtol=1e-5, atol=1e-6)
    assert float(ref.alpha[2].abs().max()) == 0.0 and float(ref.alpha[0].max()) > 0.5
    assert sorted(c["cameras"] for c in calls) == [2, 2]  # one call per scene with Gaussians
    assert all(c["render_mode"] == "RGB+D" and c["packed"] is False for c in calls)


def test_auto_sends_float64_cuda_to_the_reference_and_logs_once(caplog):
    render_api._announce_backend.cache_clear()
    cuda = torch.device("cuda", 0)
    with caplog.at_level(logging.INFO, logger="gcross_core.render.api"):
        picks = [render_api.choose_backend(cuda, torch.float64) for _ in range(3)]
    assert picks == ["reference"] * 3
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1 and "float32 only" in infos[0].getMessage()
    assert render_api.choose_backend(cuda, torch.float32) == "gsplat"
    assert render_api.choose_backend(cuda, torch.float16) == "reference"
    assert render_api.choose_backend(torch.device("cpu"), torch.float32) == "reference"


def _executable(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_cuda_home_found_through_an_nvcc_wrapper(tmp_path, monkeypatch):
    """nvcc on PATH is a wrapper script in another folder: CUDA_HOME is where the real nvcc lives."""
    real = tmp_path / "cuda-13.0"
    _executable(real / "bin" / "nvcc", f'#!/bin/sh\necho "#$ _HERE_={real}/bin" >&2\n')
    _executable(tmp_path / "wrappers" / "bin" / "nvcc", f'#!/bin/sh\nexec {real}/bin/nvcc "$@"\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'wrappers' / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    assert gsplat_backend.find_cuda_home() == str(real)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "wrappers"))
    assert gsplat_backend.find_cuda_home() == str(tmp_path / "wrappers")  # an explicit CUDA_HOME wins
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "nowhere"))  # without bin/nvcc it is ignored
    assert gsplat_backend.find_cuda_home() == str(real)
    import torch.utils.cpp_extension as cpp_extension

    monkeypatch.setattr(cpp_extension, "CUDA_HOME", cpp_extension.CUDA_HOME)  # restored after the test
    assert gsplat_backend.prepare_build_environment() == str(real)
    assert os.environ["CUDA_HOME"] == cpp_extension.CUDA_HOME == str(real)


def test_cuda_home_from_a_symlinked_nvcc_that_prints_nothing(tmp_path, monkeypatch):
    real = _executable(tmp_path / "toolkit" / "bin" / "nvcc", "#!/bin/sh\nexit 0\n")
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "nvcc").symlink_to(real)
    monkeypatch.setenv("PATH", f"{tmp_path / 'links'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    assert gsplat_backend.find_cuda_home() == str(tmp_path / "toolkit")
