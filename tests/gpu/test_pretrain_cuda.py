"""Pretraining on CUDA (needs CUDA): the model's forward and backward under bf16/fp16 autocast against
float32, and a two-step run of the real training loop (gsplat renderer, spconv encoder, AMP, checkpoint).

The teacher is EfficientNet-Lite0 with random weights written by the test, so that these tests need no
weights package (the offline GPU check does not ship one); the cost and code path are the real ones.
"""
import copy
import math

import numpy as np
import pytest
import torch

from gcross_core.checkpoint import load_checkpoint
from gcross_core.config import from_dict
from gcross_core.pretraining.config import PretrainConfig
from gcross_core.pretraining.dataset import PretrainDataset, collate_pretrain
from gcross_core.pretraining.module import build_pretrain_module
from gcross_core.pretraining.run import run_pretraining, scene_dirs
from gcross_core.pretraining.teachers.efficientnet import EfficientNetLite0
from gcross_core.train.logging import read_metrics
from gcross_core.train.batch import move_to

pytestmark = pytest.mark.gpu


def _config(tmp_path, teacher_weights, **train):
    return from_dict(PretrainConfig, {
        "name": "gpu_micro",
        "model": {
            "encoder": {"base_channels": 8, "channels": [8, 16, 16, 8], "layers": [1, 1, 1, 1]},
            "head": {"grid": [16, 16, 8], "dense_channels": 8, "dense_blocks": 1, "head_hidden": 8,
                     "feature_dim": 4},
            "grid_size_m": 0.1,
        },
        "data": {
            "synthetic": {"rooms": 2, "views": 3, "width": 64, "height": 48, "points": 3000,
                          "cache_dir": str(tmp_path / "rooms")},
            "pipeline": {"grid_size_m": 0.1, "views_per_scene": 2, "image_size": [48, 64]},
        },
        "teachers": [{"name": "efficientnet_lite0",
                      "options": {"input_size": [64, 64], "layers": ["s16"], "weights_path": str(teacher_weights)}}],
        "render": {"backend": "auto"},
        "train": {"epochs": 2, "batch_size": 2, "device": "cuda", "num_workers": 0, "checkpoint_every_steps": 1,
                  "image_every_steps": 2, **train},
        "optim": {"lr": 0.003},
    })


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "efficientnet_lite0_random.pth"
    torch.manual_seed(0)
    torch.save(EfficientNetLite0().state_dict(), path)
    return path


def _amp_dtype():
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def test_amp_forward_backward_tracks_float32(tmp_path, teacher_weights):
    cfg = _config(tmp_path, teacher_weights)
    dataset = PretrainDataset(scene_dirs(cfg.data, tmp_path, create=True), cfg.data.pipeline)
    np.random.seed(0)
    batch = move_to(collate_pretrain([dataset[0], dataset[1]]), torch.device("cuda"))
    torch.manual_seed(0)
    fp32 = build_pretrain_module(cfg).cuda().train()
    amp = copy.deepcopy(fp32)

    def loss_and_grads(module, dtype):
        torch.manual_seed(1)  # the same random mask (eq. 4) in both runs
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            out = module(batch)
        out["loss"].backward()
        grads = torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])
        return out, grads

    out32, g32 = loss_and_grads(fp32, None)
    out16, g16 = loss_and_grads(amp, _amp_dtype())
    for k in ("loss", "loss_img", "loss_dep", "loss_sem"):
        a, b = float(out32[k]), float(out16[k])
        assert math.isfinite(b), (k, b)
        assert abs(a - b) <= 0.05 * abs(a) + 1e-4, f"{k}: float32 {a:.5f}, autocast {b:.5f}"
    assert bool(torch.isfinite(g16).all())
    cos = float(torch.nn.functional.cosine_similarity(g32, g16, dim=0))
    assert cos >= 0.95, f"autocast gradients point elsewhere: cosine {cos:.3f} to float32"
    assert out16["_vis"]["color"].is_cuda


def test_two_step_pretraining_run_on_cuda(tmp_path, teacher_weights):
    cfg = _config(tmp_path, teacher_weights)
    state, final = run_pretraining(cfg, tmp_path / "run", progress=False, tensorboard=False)
    assert state.step == 2 and state.skipped_steps == 0
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        for k in ("loss", "loss_img", "loss_dep", "loss_sem", "psnr"):
            assert np.isfinite(r[k]), (k, r)
    tensors, header = load_checkpoint(final)
    assert header.kind == "pretrain"
    assert all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())
