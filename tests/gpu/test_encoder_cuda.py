"""spconv on CUDA against spconv on CPU: the SpUNet encoder gives the same features and gradients (needs
CUDA). The CPU path (with the project's backward shim and safe scatter) is the one every CPU test checks
against dense convolutions, so it is the oracle here.

Tolerance: float32 on both sides with different summation orders (and TF32 off):
|cuda - cpu| <= 1e-3 * max|cpu| + 1e-5 for features, ||g_cuda - g_cpu|| <= 5e-3 ||g_cpu|| for gradients
(a wrong index table or kernel gives differences of order one).
"""
import copy

import numpy as np
import pytest
import torch

from gcross_core.data.grid import collate_points, grid_sample
from gcross_core.model.encoder import SpUNet, SpUNetConfig

pytestmark = pytest.mark.gpu

SMALL = SpUNetConfig(base_channels=16, channels=(16, 32, 48, 64, 48, 32, 32, 32), layers=(1,) * 8)


def _points(seed=0, scenes=2, n=6000):
    rng = np.random.default_rng(seed)
    coords, feats, grids = [], [], []
    for i in range(scenes):
        box = np.array([3.0 + i, 2.5, 2.0])
        pts = rng.uniform(0, 1, (n, 3)) * box
        face = rng.integers(0, 6, n)
        pts[np.arange(n), face // 2] = np.where(face % 2, box[face // 2], 0.0)
        keep, grid, _ = grid_sample(pts, 0.04)
        coords.append(pts[keep])
        feats.append(rng.uniform(0, 1, (len(keep), 6)))
        grids.append(grid)
    return collate_points(coords, feats, grids)


@pytest.fixture(autouse=True)
def _no_tf32():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_spunet_cuda_matches_cpu(train):
    torch.manual_seed(0)
    cpu_model = SpUNet(SMALL).train(train)
    cuda_model = copy.deepcopy(cpu_model).cuda().train(train)
    points = _points()
    out_cpu = cpu_model(points)
    out_cuda = cuda_model(points.to("cuda"))
    assert out_cuda.is_cuda and out_cuda.shape == out_cpu.shape == (len(points.coord), SMALL.channels[-1])
    scale = float(out_cpu.detach().abs().max())
    err = float((out_cuda.detach().cpu() - out_cpu.detach()).abs().max())
    assert err <= 1e-3 * scale + 1e-5, f"features differ by {err:.3g} (max |feature| {scale:.3g})"

    cot = torch.randn(out_cpu.shape, generator=torch.Generator().manual_seed(1))
    (out_cpu * cot).sum().backward()
    (out_cuda * cot.cuda()).sum().backward()
    for (name, p_cpu), p_cuda in zip(cpu_model.named_parameters(), cuda_model.parameters()):
        if p_cpu.grad is None:
            assert p_cuda.grad is None, name
            continue
        ref = p_cpu.grad.norm()
        rel = float((p_cuda.grad.cpu() - p_cpu.grad).norm() / ref.clamp_min(1e-12))
        assert rel <= 5e-3, f"gradient of {name}: relative difference {rel:.2e}"
