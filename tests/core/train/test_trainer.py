"""The generic trainer on a toy regression problem: exact resume after SIGKILL, the NaN guard, a
2-process gloo run against a 1-process run, checkpoint contents and config loading.

This file is also the toy training script the subprocess tests launch
(``python tests/core/train/test_trainer.py --out DIR ...``, optionally under torchrun).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from gcross_core.checkpoint import CheckpointHeader, load_checkpoint
from gcross_core.config import from_dict, load_config, save_resolved
from gcross_core.errors import ConfigError
from gcross_core.train.distributed import ResumableDistributedSampler, init_distributed, shutdown_distributed
from gcross_core.train.logging import read_metrics
from gcross_core.train.schedule import ScheduleConfig
from gcross_core.train.checkpointing import FINAL_CHECKPOINT, LAST_CHECKPOINT
from gcross_core.train.config import OptimConfig, RunConfig, TrainerConfig
from gcross_core.train.seeding import seed_everything
from gcross_core.train.trainer import RunOutput, Trainer, TrainingTask

IN_DIM = 6


class ToyData(Dataset):
    """y = <w, x> + noise, with a random augmentation drawn from the global numpy and torch RNGs (the
    trainer must make it reproducible per sample). Indices in ``poison`` carry a flag that makes the toy
    step return a NaN loss."""

    def __init__(self, n: int = 64, poison=()):
        rng = np.random.default_rng(123)
        self.x = rng.normal(size=(n, IN_DIM)).astype(np.float32)
        self.y = (self.x @ rng.normal(size=IN_DIM)).astype(np.float32)
        self.poison = set(poison)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        jitter = np.random.normal(scale=0.05, size=IN_DIM).astype(np.float32)
        scale = 1.0 + 0.1 * torch.rand(()).item()
        x = torch.from_numpy(self.x[i] + jitter) * scale
        return x, torch.tensor(self.y[i] * scale), torch.tensor(i in self.poison)


def toy_model(dropout: float) -> nn.Module:
    return nn.Sequential(nn.Linear(IN_DIM, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 1))


def toy_step(model, batch, sleep_s: float = 0.0):
    x, y, poison = batch
    pred = model(x).squeeze(1)
    loss = ((pred - y) ** 2).mean()
    if bool(poison.any()):
        loss = loss * float("nan")
    if sleep_s:
        time.sleep(sleep_s)
    return {"loss": loss, "mae": (pred - y).abs().mean().detach()}


def toy_config(steps: int, batch: int, ckpt_every: int, schedule: str = "cosine") -> RunConfig:
    return RunConfig(
        train=TrainerConfig(epochs=1, batch_size=batch, max_steps=steps, seed=7, device="cpu",
                            checkpoint_every_steps=ckpt_every, log_every_steps=1, image_every_steps=0),
        optim=OptimConfig(lr=1e-2, grad_clip_norm=1.0),
        schedule=ScheduleConfig(kind=schedule, warmup_fraction=0.1))


def run_toy(out, steps=24, batch=8, ckpt_every=5, resume=False, sleep_s=0.0, dropout=0.1, poison=(),
            n=64, tensorboard=False):
    info = init_distributed("cpu")
    seed_everything(0)
    model = toy_model(dropout)
    trainer = Trainer(TrainingTask(model, lambda m, b: toy_step(m, b, sleep_s), ToyData(n, poison)),
                      toy_config(steps, batch, ckpt_every),
                      RunOutput(out, checkpoint_header=CheckpointHeader(kind="toy"), progress=False, tensorboard=tensorboard),
                      dist_info=info)
    state = trainer.fit(resume=resume)
    shutdown_distributed(info)
    return trainer, state


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--ckpt-every", type=int, default=5)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--poison", type=int, nargs="*", default=[])
    p.add_argument("--resume", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    run_toy(a.out, a.steps, a.batch, a.ckpt_every, a.resume, a.sleep, a.dropout, poison=set(a.poison))


# ----------------------------------------------------------------------------------------------------


# The subprocess runs use one thread; the in-process runs they are compared with must too (the
# summation order of multi-threaded reductions differs).
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


REPO = Path(__file__).resolve().parents[3]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(Path(run_dir) / "metrics.jsonl")]


def test_resume_after_sigkill_continues_the_uninterrupted_curve(tmp_path):
    steps = 24
    ref_trainer, ref = run_toy(tmp_path / "ref", steps=steps)
    assert ref.step == steps

    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, __file__, "--out", str(run), "--steps", str(steps),
                             "--sleep", "0.25"], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    ckpt = run / LAST_CHECKPOINT
    killed_at = None
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if ckpt.exists():
                try:
                    killed_at = load_checkpoint(ckpt)[1].trainer["step"]
                except Exception:  # caught between rename and read; try again
                    killed_at = None
                if killed_at is not None and killed_at >= 10:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.05)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert killed_at is not None and killed_at < steps
    assert not (run / FINAL_CHECKPOINT).exists()

    trainer, state = run_toy(run, steps=steps, resume=True)
    assert state.step == steps
    got, want = _losses(run), _losses(tmp_path / "ref")
    assert [s for s, _ in got] == list(range(1, steps + 1))
    np.testing.assert_allclose([l for _, l in got], [l for _, l in want], rtol=1e-6, atol=1e-7)
    for (k, a), b in zip(trainer.module.state_dict().items(), ref_trainer.module.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=k)


def test_nan_guard_skips_the_update_and_counts_it(tmp_path):
    # 4 steps per epoch, 3 epochs; sample 5 is poisoned, so exactly one step per epoch returns NaN
    n, batch, steps = 32, 8, 12
    trainer, state = run_toy(tmp_path / "nan", steps=steps, batch=batch, n=n, poison={5}, ckpt_every=0)
    assert state.step == steps
    assert state.skipped_steps == 3
    recs = read_metrics(tmp_path / "nan" / "metrics.jsonl")
    bad = [r for r in recs if r["loss"] == "nan"]
    assert len(bad) == 3
    assert [r["skipped_steps"] for r in recs][-1] == 3
    assert all(np.isfinite(p.detach().numpy()).all() for p in trainer.module.parameters())
    finite = [r["loss"] for r in recs if r["loss"] != "nan"]
    assert finite[-1] < finite[0]  # training went on after the skipped steps

    # the skipped step leaves the weights untouched
    seed_everything(0)
    model = toy_model(0.0)
    before = [p.detach().clone() for p in model.parameters()]
    t = Trainer(TrainingTask(model, toy_step, ToyData(8, poison=range(8))), toy_config(1, 8, 0),
                RunOutput(tmp_path / "nan1", progress=False, tensorboard=False))
    st = t.fit()
    assert st.skipped_steps == 1
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)


def test_two_process_gloo_matches_one_process(tmp_path):
    steps, batch = 6, 8
    # poison the sample at position 20 of epoch 0: it lands in step 3 and, with 2 ranks, on rank 0 only,
    # so the ranks must agree to skip that step together (a lone skip would hang DDP's all-reduce)
    order = ResumableDistributedSampler(range(64), 1, 0, seed=7)._indices()
    poison = {order[20]}
    single_trainer, st1 = run_toy(tmp_path / "one", steps=steps, batch=batch, dropout=0.0, ckpt_every=3,
                                  poison=poison)
    assert st1.skipped_steps == 1
    port = _free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(port), __file__, "--out", str(tmp_path / "two"),
           "--steps", str(steps), "--batch", str(batch), "--dropout", "0", "--ckpt-every", "3",
           "--poison", *map(str, poison)]
    res = subprocess.run(cmd, env=_env(), capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [s for s, _ in two] == list(range(1, steps + 1))
    assert one[2][1] == "nan" and two[2][1] == "nan"
    # same global batch, gradients averaged by DDP: equal up to float32 summation order
    finite = [i for i, (_, l) in enumerate(one) if l != "nan"]
    np.testing.assert_allclose([two[i][1] for i in finite], [one[i][1] for i in finite], rtol=1e-5, atol=1e-6)
    tensors, header = load_checkpoint(tmp_path / "two" / FINAL_CHECKPOINT)
    assert header.trainer["world_size"] == 2
    for k, v in single_trainer.module.state_dict().items():
        torch.testing.assert_close(tensors[k], v, rtol=1e-4, atol=1e-5, msg=k)
    _, last = load_checkpoint(tmp_path / "two" / LAST_CHECKPOINT)
    assert len(last.rng) == 2  # both ranks' RNG streams are saved


def test_checkpoint_holds_training_state_and_run_folder_is_complete(tmp_path):
    out = tmp_path / "run"
    trainer, state = run_toy(out, steps=5, ckpt_every=2, tensorboard=True)
    tensors, header = load_checkpoint(out / LAST_CHECKPOINT)
    assert header.trainer["step"] == 5 and header.kind == "toy"
    assert header.trainer["epoch"] == 0 and header.trainer["batch_in_epoch"] == 5
    assert tensors["rng.torch_cpu.0"].dtype == torch.uint8
    assert any(k.startswith("optimizer.state.") and k.endswith(".exp_avg") for k in tensors)
    assert header.optimizer["param_groups"][0]["betas"] == [0.9, 0.95]
    weights, fmeta = load_checkpoint(out / FINAL_CHECKPOINT)
    assert set(weights) == set(trainer.module.state_dict())
    assert json.loads((out / "config.json").read_text())["train"]["max_steps"] == 5
    assert any((out / "tb").iterdir())
    assert len(read_metrics(out / "metrics.jsonl")) == 5


def test_config_rejects_unknown_keys_and_applies_overrides(tmp_path):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("train:\n  epochs: 3\n  batch_size: 4\noptim:\n  lr: 0.01\n  betas: [0.8, 0.9]\n")
    cfg = load_config(cfg_path, RunConfig, ["train.epochs=5", "schedule.kind=onecycle"])
    assert cfg.train.epochs == 5 and cfg.train.batch_size == 4
    assert cfg.optim.betas == (0.8, 0.9) and cfg.schedule.kind == "onecycle"
    with pytest.raises(ConfigError, match="epoch"):
        load_config(cfg_path, RunConfig, ["train.epoch=5"])
    with pytest.raises(ConfigError, match="lr"):
        from_dict(RunConfig, {"optim": {"lr": "fast"}})
    with pytest.raises(ConfigError, match="schedule kind"):
        from_dict(RunConfig, {"schedule": {"kind": "linear"}})
    save_resolved(cfg, tmp_path / "run")
    again = load_config(tmp_path / "run" / "config.yaml", RunConfig)
    assert again == cfg


if __name__ == "__main__":
    main()


def test_image_helpers():
    from gcross_core.train.logging import depth_to_rgb, image_grid, pca_rgb, psnr

    a = torch.full((2, 4, 5, 3), 0.5)
    assert float(psnr(a + 0.1, a)) == pytest.approx(20.0, abs=1e-3)  # MSE 0.01 -> 20 dB
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[0, 0, 0] = True
    b = a.clone()
    b[1] += 0.3  # outside the mask: ignored
    assert float(psnr(a + 0.1, a, mask)) == pytest.approx(20.0, abs=1e-3)
    with pytest.raises(ValueError, match="target"):
        psnr(a, a[:1])
    depth = np.array([[0.0, 1.0], [2.0, 4.0]], np.float32)
    rgb = depth_to_rgb(depth, 4.0)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8 and not rgb[0, 0].any() and rgb[1, 1].any()
    feats = np.random.default_rng(0).normal(size=(6, 7, 10)).astype(np.float32)
    pca = pca_rgb(feats)
    assert pca.shape == (6, 7, 3) and pca.dtype == np.uint8 and pca.std() > 0
    panel = image_grid([[rgb, rgb], [pca]])
    assert panel.shape == (2 * 2 + 2, 2 * 2 + 2, 3)
