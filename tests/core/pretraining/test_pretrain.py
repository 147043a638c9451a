"""The pretraining step end to end on tiny procedural rooms: finite losses, gradients that reach the
encoder, and a final checkpoint that the downstream tools read."""
from pathlib import Path

import numpy as np
import pytest
import torch

from gcross_core.pretraining.dataset import PretrainDataset, collate_pretrain
from gcross_core.checkpoint import PRETRAIN_ENCODER_PREFIX
from gcross_core.checkpoint import load_checkpoint
from gcross_core.pretraining.config import PretrainConfig
from gcross_core.pretraining.module import build_pretrain_module, visualize
from gcross_core.pretraining.run import run_pretraining, scene_dirs
from gcross_core.segmentation.model import checkpoint_encoder
from gcross_core.config import from_dict, load_config
from gcross_core.errors import ConfigError
from gcross_core.train.logging import read_metrics
from conftest import MICRO_MODEL, MICRO_PIPELINE, MICRO_TEACHERS

REPO = Path(__file__).resolve().parents[3]

MICRO = {
    "name": "micro",
    "model": MICRO_MODEL,
    "data": {
        "synthetic": {"rooms": 2, "views": 3, "width": 32, "height": 24, "points": 3000},
        "pipeline": MICRO_PIPELINE,
    },
    "teachers": MICRO_TEACHERS,
    "train": {"epochs": 3, "batch_size": 2, "device": "cpu", "num_threads": 1, "checkpoint_every_steps": 2,
              "image_every_steps": 2},
    "optim": {"lr": 0.003},
}


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    before = torch.get_num_threads()
    run = tmp_path_factory.mktemp("pretrain")
    cfg = from_dict(PretrainConfig, MICRO)
    state, final = run_pretraining(cfg, run, progress=False, tensorboard=False)
    yield cfg, run, state, final
    torch.set_num_threads(before)


def test_micro_run_trains_and_writes_a_downstream_checkpoint(micro_run):
    cfg, run, state, final = micro_run
    assert state.step == 3 and state.skipped_steps == 0
    recs = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3]
    for r in recs:
        for k in ("loss", "loss_img", "loss_dep", "loss_sem", "psnr"):
            assert np.isfinite(r[k]), (k, r)
        assert r["loss"] == pytest.approx(r["loss_img"] + r["loss_dep"] + r["loss_sem"], rel=1e-5)
    tensors, header = load_checkpoint(final)
    assert header.kind == "pretrain"
    assert header.model_config["head"]["grid"] == [16, 16, 8]
    assert header.config["name"] == "micro"
    assert any(k.startswith(PRETRAIN_ENCODER_PREFIX + ".") for k in tensors)
    assert not any(k.startswith(("optimizer.", "rng.")) for k in tensors)  # weights only
    # what fine-tuning loads: the encoder and its configuration
    state_dict, enc_cfg, _ = checkpoint_encoder(final)
    assert enc_cfg == cfg.model.encoder
    assert set(state_dict) == {k[len(PRETRAIN_ENCODER_PREFIX) + 1:] for k in tensors if k.startswith(PRETRAIN_ENCODER_PREFIX + ".")}
    # the teacher is not part of the checkpoint
    assert not any("teacher" in k or k.startswith("net.") for k in tensors)
    assert sorted(p.name for p in (run / "images").glob("*.png"))  # rendered-vs-real panels
    assert (run / "config.yaml").is_file()


def test_colour_and_depth_only_ignores_the_configured_teachers(micro_run):
    cfg, run, _, _ = micro_run
    plain = from_dict(PretrainConfig, {**MICRO, "loss": {"use_sem": False}})  # MICRO names a teacher
    module = build_pretrain_module(plain).train()
    assert module.teachers == {} and module.projection is None
    ds = PretrainDataset(scene_dirs(cfg.data, run, create=False), cfg.data.pipeline)
    np.random.seed(0)
    out = module(collate_pretrain([ds[0], ds[1]]))
    assert "loss_sem" not in out
    assert out["loss"].item() == pytest.approx((out["loss_img"] + out["loss_dep"]).item(), rel=1e-5)

def test_gradients_reach_the_encoder(micro_run, tmp_path):
    cfg, run, _, _ = micro_run
    ds = PretrainDataset(scene_dirs(cfg.data, run, create=False), cfg.data.pipeline)
    np.random.seed(0)
    batch = collate_pretrain([ds[0], ds[1]])
    torch.manual_seed(0)
    module = build_pretrain_module(cfg).train()
    out = module(batch)
    out["loss"].backward()
    enc = [p.grad for p in module.model.encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in enc)
    assert sum(float(g.abs().sum()) for g in enc) > 0
    proj = [p.grad for p in module.projection.parameters()]
    assert all(g is not None and float(g.abs().sum()) > 0 for g in proj)
    # the frozen teacher gets nothing and is no parameter of the trained module
    teacher = module.teachers["efficientnet_lite0"]
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not any(n.startswith("_teachers") for n, _ in module.named_parameters())
    panel = visualize(out, batch)["render"]
    assert panel.dtype == np.uint8 and panel.ndim == 3 and panel.shape[2] == 3


def test_resume_of_a_finished_run_changes_nothing(micro_run):
    cfg, run, state, _ = micro_run
    again, _ = run_pretraining(cfg, run, resume=True, progress=False, tensorboard=False)
    assert again.step == state.step
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.parametrize("name", ["scannet", "synthetic_tiny"])
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "training" / "configs" / f"{name}.yaml", PretrainConfig)
    assert cfg.name == name
    assert cfg.model.grid_size_m == cfg.data.pipeline.grid_size_m
    if name == "scannet":  # the paper recipe: Sec. 4.1, Tables S.1, 6, 7
        assert (cfg.train.epochs, cfg.train.batch_size, cfg.optim.lr) == (1200, 32, 0.002)
        assert cfg.optim.betas == (0.9, 0.95) and cfg.optim.weight_decay == 0.05
        assert cfg.data.pipeline.views_per_scene == 5 and cfg.data.pipeline.image_size == (480, 640)
        assert cfg.model.head.opacity_threshold == 0.3 and cfg.model.mask_ratio == 0.5
        assert cfg.model.head.grid == (128, 128, 32) and cfg.teachers[0].name == "radio"
        assert cfg.schedule.warmup_fraction == pytest.approx(60 / 1200)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="opacity_treshold"):
        from_dict(PretrainConfig, {"model": {"head": {"opacity_treshold": 0.3}}})
    with pytest.raises(ConfigError, match="grid_size_m"):
        from_dict(PretrainConfig, {"model": {"grid_size_m": 0.05}})  # differs from the data pipeline's


def test_interrupted_pretraining_resumes_exactly(micro_run, tmp_path, monkeypatch):
    cfg, run, _, final = micro_run
    from gcross_core.train.trainer import Trainer

    original = Trainer._after_step

    def crash_after_step_3(self, *args):
        original(self, *args)
        if self.state.step == 3:  # checkpointed at step 2, step 3 done but not saved
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_after_step", crash_after_step_3)
    other = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        run_pretraining(cfg, other, progress=False, tensorboard=False)
    monkeypatch.setattr(Trainer, "_after_step", original)
    assert load_checkpoint(other / "checkpoints" / "last.safetensors")[1].trainer["step"] == 2
    state, resumed_final = run_pretraining(cfg, other, resume=True, progress=False, tensorboard=False)
    assert state.step == 3
    want = read_metrics(run / "metrics.jsonl")
    got = read_metrics(other / "metrics.jsonl")
    assert [r["step"] for r in got] == [1, 2, 3]
    for a, b in zip(got, want):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6), (a, b)
    ta, _ = load_checkpoint(resumed_final)
    tb, _ = load_checkpoint(final)
    for k in tb:
        torch.testing.assert_close(ta[k], tb[k], rtol=1e-4, atol=1e-5, msg=k)
