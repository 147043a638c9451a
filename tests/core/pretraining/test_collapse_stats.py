"""The collapse signals of pretraining: a constant student reads as collapsed, a faithful one does not, the
effective rank counts the directions the features vary in, and one pretraining step logs them all."""
import math

import numpy as np
import pytest
import torch

from gcross_core.config import from_dict
from gcross_core.pretraining.config import PretrainConfig
from gcross_core.pretraining.dataset import PretrainDataset, collate_pretrain
from gcross_core.pretraining.diagnostics import STATS, effective_rank, feature_collapse_stats
from gcross_core.pretraining.module import build_pretrain_module
from gcross_core.pretraining.run import scene_dirs
from gcross_core.train.logging import RunLogger, read_metrics
from gcross_core.train.trainer import scalar_terms
from conftest import MICRO_MODEL, MICRO_PIPELINE, MICRO_TEACHERS


def _teacher(v=2, c=16, h=12, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    # a common offset like real teacher features, so the mean feature is a fair baseline (cosine ~0.5)
    return torch.randn(v, c, h, w, generator=g) + 1.0


def test_a_constant_student_reads_as_collapsed():
    teacher = _teacher()
    for seed in range(3):  # any constant: the mean teacher feature is the best one under the cosine
        direction = torch.randn(16, generator=torch.Generator().manual_seed(seed + 10))
        student = direction.view(1, 16, 1, 1).expand_as(teacher).contiguous()
        st = feature_collapse_stats(student, teacher)
        assert st["student_effective_rank"].item() == pytest.approx(1.0, abs=1e-6)
        assert st["student_spread"].item() == pytest.approx(0.0, abs=1e-6)
        assert st["cos_gain"].item() <= 1e-6
        assert st["teacher_spread"].item() > 0.1 and st["teacher_effective_rank"].item() > 10
    # the mean teacher feature itself is exactly the baseline
    mean = torch.nn.functional.normalize(teacher, dim=1).mean(dim=(0, 2, 3))
    st = feature_collapse_stats(mean.view(1, 16, 1, 1).expand_as(teacher), teacher)
    assert st["cos_gain"].item() == pytest.approx(0.0, abs=1e-5)
    assert 0.2 < st["cos_mean_teacher"].item() < 0.8


def test_a_student_equal_to_the_teacher_gains_over_the_mean():
    teacher = _teacher()
    st = feature_collapse_stats(3.0 * teacher, teacher)  # norms do not matter to the cosine
    assert st["cos_teacher"].item() == pytest.approx(1.0, abs=1e-5)
    assert st["cos_gain"].item() > 0.2
    assert st["cos_gain"].item() == pytest.approx(1.0 - st["cos_mean_teacher"].item(), abs=1e-5)
    assert st["student_spread"].item() == pytest.approx(st["teacher_spread"].item(), rel=1e-5)
    assert st["student_effective_rank"].item() == pytest.approx(st["teacher_effective_rank"].item(), rel=1e-4)
    assert set(st) == set(STATS) and all(v.dtype == torch.float32 and v.numel() == 1 for v in st.values())


def test_effective_rank_counts_the_directions_of_variation():
    g = torch.Generator().manual_seed(1)
    c = 16
    full = torch.randn(4096, c, generator=g)
    assert c - 1.0 < effective_rank(full).item() <= c
    three = torch.randn(4096, 3, generator=g) @ torch.randn(3, c, generator=g)
    assert 2.0 < effective_rank(three).item() <= 3.0 + 1e-4
    # the mean is removed first: a shared offset adds no direction
    assert effective_rank(three + 5.0 * torch.randn(1, c, generator=g)).item() <= 3.0 + 1e-4
    # fewer pixels than channels: the rank is bounded by the pixels (centring removes one)
    assert effective_rank(torch.randn(6, c, generator=g)).item() <= 5.0 + 1e-4
    # random full-rank [V, C, h, w] features through feature_collapse_stats
    st = feature_collapse_stats(torch.randn(2, c, 24, 32, generator=g), _teacher(c=c, h=24, w=32))
    assert st["student_effective_rank"].item() > 0.9 * c
    assert st["student_spread"].item() == pytest.approx(1.0 / math.sqrt(c), rel=0.05)  # isotropic unit vectors


def test_the_mask_selects_the_scored_pixels():
    teacher = _teacher()
    student = teacher.clone()
    mask = torch.zeros(2, 12, 16, dtype=torch.bool)
    mask[:, :6] = True
    student[:, :, 6:] = -teacher[:, :, 6:]  # wrong wherever the mask is off
    assert feature_collapse_stats(student, teacher, mask)["cos_teacher"].item() == pytest.approx(1.0, abs=1e-5)
    assert feature_collapse_stats(student, teacher)["cos_teacher"].item() == pytest.approx(0.0, abs=1e-5)
    empty = feature_collapse_stats(student, teacher, torch.zeros_like(mask))
    assert set(empty) == set(STATS) and all(math.isnan(v.item()) for v in empty.values())
    with pytest.raises(AssertionError, match="mask has shape"):
        feature_collapse_stats(student, teacher, mask[0])


def test_subsampling_is_deterministic_and_bounded():
    teacher = _teacher(c=8, h=96, w=128)  # 24576 pixels
    student = teacher + torch.randn(teacher.shape, generator=torch.Generator().manual_seed(3))
    a = feature_collapse_stats(student, teacher, max_pixels=1000)
    b = feature_collapse_stats(student, teacher, max_pixels=1000)
    full = feature_collapse_stats(student, teacher, max_pixels=10 ** 6)
    for k in STATS:
        assert a[k].item() == b[k].item(), k
        assert a[k].item() == pytest.approx(full[k].item(), rel=0.05), k  # a sample of the same statistics


def test_autocast_does_not_lower_the_precision():
    teacher = _teacher()
    student = teacher + 0.01 * torch.randn(teacher.shape, generator=torch.Generator().manual_seed(4))
    want = feature_collapse_stats(student, teacher)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = feature_collapse_stats(student, teacher)
    for k in STATS:
        assert got[k].dtype == torch.float32 and got[k].item() == pytest.approx(want[k].item(), rel=1e-6, abs=1e-7), k


def test_a_pretraining_step_logs_the_signals_per_teacher(tmp_path, one_torch_thread):
    cfg = from_dict(PretrainConfig, {
        "model": MICRO_MODEL, "teachers": MICRO_TEACHERS,
        "data": {"synthetic": {"rooms": 2, "views": 3, "width": 32, "height": 24, "points": 3000},
                 "pipeline": MICRO_PIPELINE}})
    ds = PretrainDataset(scene_dirs(cfg.data, tmp_path), cfg.data.pipeline)
    np.random.seed(0)
    torch.manual_seed(0)
    out = build_pretrain_module(cfg).train()(collate_pretrain([ds[0], ds[1]]))
    terms = scalar_terms(out)
    teacher = MICRO_TEACHERS[0]["name"]
    keys = [f"collapse/{teacher}/{stat}" for stat in STATS]
    for k in keys:
        assert k in terms and math.isfinite(terms[k]), (k, sorted(terms))
    # the same pixels as the distillation loss, before any subsampling
    assert terms[f"collapse/{teacher}/cos_teacher"] == pytest.approx(1.0 - terms["loss_sem"], abs=1e-5)
    # '/' in a name reaches metrics.jsonl and TensorBoard unchanged
    logger = RunLogger(tmp_path / "run", progress=False)
    logger.scalars(1, terms)
    logger.close()
    rec = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    assert all(rec[k] == pytest.approx(terms[k]) for k in keys)
    if (tmp_path / "run" / "tb").is_dir():
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(tmp_path / "run" / "tb"))
        acc.Reload()
        assert {f"train/{k}" for k in keys} <= set(acc.Tags()["scalars"])


def test_the_end_of_a_run_is_summarised_and_a_gain_at_or_below_zero_warned(tmp_path, caplog):
    import json
    import logging

    from gcross_core.pretraining.diagnostics import collapse_at_end
    from gcross_core.pretraining.run import report_collapse

    logger = RunLogger(tmp_path, progress=False)
    for step in range(1, 21):  # teacher a learns (its gain ends at +0.1), teacher b does not (ends at -0.05)
        logger.scalars(step, {"loss": 1.0 / step, "collapse/a/cos_gain": 0.01 * (step - 10),
                              "collapse/b/cos_gain": -0.05, "collapse/b/student_spread": 0.0})
    logger.close()
    summary = collapse_at_end(read_metrics(tmp_path / "metrics.jsonl"), last=5)
    assert summary["a"]["cos_gain"] == pytest.approx(0.01 * (np.mean(range(16, 21)) - 10))
    assert summary["b"] == {"cos_gain": pytest.approx(-0.05), "student_spread": 0.0}
    with caplog.at_level(logging.WARNING, logger="gcross_core.pretraining.run"):
        assert report_collapse(tmp_path, last=5) == summary
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and warned[0].startswith("teacher b: cos_gain -0.050")
    assert json.loads((tmp_path / "collapse.json").read_text())["teachers"]["a"]["cos_gain"] > 0
    assert report_collapse(tmp_path / "no_run") == {} and not (tmp_path / "no_run" / "collapse.json").exists()
