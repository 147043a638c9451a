"""gsplat backend vs the pure-PyTorch reference: forward outputs and gradients (needs CUDA).

The oracle is the reference in float64 on CPU; gsplat runs in float32 on CUDA. Tolerances:
- forward: |gsplat - reference| <= 1e-4 * max(1, |reference|.max()) on all but 0.1 % of the values of each
  output; the rest may differ more where float32 rounding moves an alpha across the 1/255 skip threshold
  or a pixel across the T <= 1e-4 termination, and are bounded by 0.05 * max(1, |reference|.max());
- gradients against a random cotangent: ||g_gsplat - g_reference|| <= 2e-3 ||g_reference|| per input.
"""
import logging

import pytest
import torch

from gcross_core.render import render
from gcross_core.render import api as render_api
from gcross_core.render import gsplat_backend, reference
from gcross_core.types import Cameras, Gaussians

pytestmark = pytest.mark.gpu

WIDTH, HEIGHT = 160, 120
K = torch.tensor([[130.0, 0.0, 79.5], [0.0, 130.0, 59.5], [0.0, 0.0, 1.0]])
FIELDS = ("means", "quats", "scales", "colors", "opacities", "features")


def _scene(n=1000, seed=0, feature_dim=16):
    """Two scenes of random Gaussians in front of three cameras (two look at scene 0).

    Every fourth Gaussian is large, nearly opaque and near the image centre, so that many pixels
    terminate early.
    """
    g = torch.Generator().manual_seed(seed)
    z = 1.5 + 2.5 * torch.rand(n, generator=g)
    size = torch.tensor([WIDTH, HEIGHT], dtype=torch.float32)
    uv = (1.2 * torch.rand(n, 2, generator=g) - 0.1) * size  # a margin beyond the image edges
    scales = 0.02 + 0.1 * torch.rand(n, 3, generator=g)
    opacities = 0.05 + 0.9 * torch.rand(n, generator=g)
    opaque = torch.arange(n) % 4 == 0
    uv[opaque] = K[:2, 2] + (uv[opaque] - K[:2, 2]) * 0.3
    scales[opaque] *= 2.0
    opacities[opaque] = 0.97 + 0.02 * torch.rand(int(opaque.sum()), generator=g)
    xy = (uv - K[:2, 2]) / K[[0, 1], [0, 1]] * z[:, None]
    gaussians = Gaussians(
        means=torch.cat([xy, z[:, None]], 1).double(),
        quats=torch.randn(n, 4, generator=g).double(),
        scales=scales.double(),
        colors=torch.rand(n, 3, generator=g).double(),
        opacities=opacities.double(),
        features=torch.randn(n, feature_dim, generator=g).double(),
        batch=(torch.arange(n) % 2),
    )
    world_to_cam = torch.eye(4).repeat(3, 1, 1).double()
    angle = torch.tensor(0.1, dtype=torch.float64)
    world_to_cam[2, 0, 0], world_to_cam[2, 0, 2] = torch.cos(angle), torch.sin(angle)
    world_to_cam[2, 2, 0], world_to_cam[2, 2, 2] = -torch.sin(angle), torch.cos(angle)
    world_to_cam[2, :3, 3] = torch.tensor([0.1, -0.05, 0.2])
    cameras = Cameras(world_to_cam, K.double().repeat(3, 1, 1), torch.tensor([0, 1, 0]))
    return gaussians, cameras


def _leaves(g: Gaussians, dtype, device) -> Gaussians:
    return Gaussians(**{k: (v.detach().to(device=device, dtype=dtype).requires_grad_() if v.is_floating_point()
                            else v.to(device)) for k, v in vars(g).items()})


def _outputs(out):
    return {"color": out.color, "depth": out.depth, "features": out.features, "alpha": out.alpha}


def _render_with_grads(g, cams, backend, dtype, device, cotangents):
    leaves = _leaves(g, dtype, device)
    out = _outputs(render(leaves, cams.to(device), WIDTH, HEIGHT, backend=backend))
    loss = sum((out[k] * cotangents[k].to(device=device, dtype=dtype)).sum() for k in out)
    grads = torch.autograd.grad(loss, [getattr(leaves, f) for f in FIELDS])
    return ({k: v.detach().double().cpu() for k, v in out.items()},
            {f: gr.double().cpu() for f, gr in zip(FIELDS, grads)})


def test_gsplat_matches_reference_forward_and_gradients():
    g, cams = _scene()
    gen = torch.Generator().manual_seed(1)
    shapes = {"color": (3, HEIGHT, WIDTH, 3), "depth": (3, HEIGHT, WIDTH), "features": (3, HEIGHT, WIDTH, 16),
              "alpha": (3, HEIGHT, WIDTH)}
    cotangents = {k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}
    ref_out, ref_grad = _render_with_grads(g, cams, "reference", torch.float64, "cpu", cotangents)
    gs_out, gs_grad = _render_with_grads(g, cams, "gsplat", torch.float32, "cuda", cotangents)

    assert (ref_out["alpha"] > 0.5).float().mean() > 0.3, "scene too sparse for a meaningful comparison"
    for k, ref in ref_out.items():
        scale = max(1.0, float(ref.abs().max()))
        err = (gs_out[k] - ref).abs()
        outliers = float((err > 1e-4 * scale).double().mean())
        assert outliers <= 1e-3, f"{k}: {outliers:.2%} of values differ by more than {1e-4 * scale:.1e}"
        assert float(err.max()) <= 0.05 * scale, f"{k}: max difference {float(err.max()):.3g}"
    for f in FIELDS:
        rel = float((gs_grad[f] - ref_grad[f]).norm() / ref_grad[f].norm())
        assert rel <= 2e-3, f"gradient of {f}: relative difference {rel:.2e}"


def test_reference_runs_on_cuda_like_on_cpu():
    g, cams = _scene(n=300, seed=2, feature_dim=3)
    cpu = _outputs(render(_leaves(g, torch.float32, "cpu"), cams, WIDTH, HEIGHT, backend="reference"))
    gpu = _outputs(render(_leaves(g, torch.float32, "cuda"), cams.to("cuda"), WIDTH, HEIGHT, backend="reference"))
    for k in cpu:
        torch.testing.assert_close(gpu[k].detach().cpu(), cpu[k].detach(), rtol=1e-4, atol=1e-4)


def _spy_on_backends(monkeypatch) -> list:
    """The names of the backends that actually render, in call order (render() looks each backend's
    function up on its module at call time)."""
    ran = []
    for module, name, label in ((gsplat_backend, "render_gsplat", "gsplat"),
                                (reference, "render_reference", "reference")):
        real = getattr(module, name)

        def spy(*args, _real=real, _label=label, **kwargs):
            ran.append(_label)
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    return ran


def test_auto_picks_gsplat_on_cuda(caplog, monkeypatch):
    g, cams = _scene(n=50, seed=3, feature_dim=0)
    ran = _spy_on_backends(monkeypatch)
    render_api._announce_backend.cache_clear()
    with caplog.at_level(logging.INFO, logger="gcross_core.render.api"):
        out = render(_leaves(g, torch.float32, "cuda"), cams.to("cuda"), WIDTH, HEIGHT)
    # The reference's own announcement mentions gsplat too ("gsplat renders CUDA tensors only"): assert on
    # the backend that ran and on the name the announcement gives as picked.
    assert ran == ["gsplat"]
    assert "picked 'gsplat'" in caplog.text and "picked 'reference'" not in caplog.text
    assert out.color.is_cuda and out.features.shape == (3, HEIGHT, WIDTH, 0)


@pytest.mark.parametrize("tile_size", [8, 32])
def test_gsplat_tile_sizes_give_the_same_image(tile_size):
    g, cams = _scene(n=400, seed=4, feature_dim=2)
    leaves = _leaves(g, torch.float32, "cuda")
    default = _outputs(render(leaves, cams.to("cuda"), WIDTH, HEIGHT, backend="gsplat"))
    other = _outputs(render(leaves, cams.to("cuda"), WIDTH, HEIGHT, backend="gsplat", tile_size=tile_size))
    for k in default:
        torch.testing.assert_close(other[k], default[k], rtol=1e-5, atol=1e-5)


def test_gsplat_with_zero_cameras_and_float64_auto(caplog, monkeypatch):
    g, cams = _scene(n=50, seed=5, feature_dim=3)
    none = Cameras(cams.world_to_cam[:0], cams.K[:0], cams.batch[:0]).to("cuda")
    out = render(_leaves(g, torch.float32, "cuda"), none, WIDTH, HEIGHT, backend="gsplat")
    assert out.color.shape == (0, HEIGHT, WIDTH, 3) and out.color.is_cuda
    ran = _spy_on_backends(monkeypatch)
    render_api._announce_backend.cache_clear()
    with caplog.at_level(logging.INFO, logger="gcross_core.render.api"):
        out64 = render(_leaves(g, torch.float64, "cuda"), cams.to("cuda"), WIDTH, HEIGHT)  # auto -> reference
    assert ran == ["reference"]
    assert out64.color.dtype == torch.float64 and "picked 'reference'" in caplog.text and "float32 only" in caplog.text
