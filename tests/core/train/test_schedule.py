"""Learning-rate schedules are plain functions of the step."""
import math

import numpy as np
import pytest
import torch

from gcross_core.train.schedule import ScheduleConfig, cosine_lr, lr_at, onecycle_lr


@pytest.mark.parametrize("total,pct", [(100, 0.05), (37, 0.3), (10, 0.05)])
def test_onecycle_matches_torch_onecycle(total, pct):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=total, pct_start=pct,
                                                div_factor=10.0, final_div_factor=1000.0,
                                                anneal_strategy="cos", cycle_momentum=False)
    want = []
    for s in range(total):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        if s < total - 1:  # torch raises when stepped past total_steps
            sched.step()
    got = [onecycle_lr(s, total, 2e-3, pct, 10.0, 1000.0) for s in range(total)]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15)


def test_cosine_warmup_then_decay():
    total, base = 1200, 2e-3
    cfg = ScheduleConfig(kind="cosine", warmup_fraction=0.05, warmup_start_factor=0.0, final_lr_factor=0.01)
    lrs = np.array([lr_at(s, total, base, cfg) for s in range(total)])
    warm = int(round(0.05 * total))
    assert lrs[0] == 0.0
    assert np.all(np.diff(lrs[: warm + 1]) > 0)  # rises linearly during warmup
    assert lrs[warm] == pytest.approx(base)
    assert lrs.max() == pytest.approx(base)
    assert np.all(np.diff(lrs[warm:]) <= 1e-15)  # then never rises again
    assert lrs[-1] == pytest.approx(0.01 * base)
    mid = warm + (total - 1 - warm) // 2
    assert lrs[mid] == pytest.approx(base * (0.01 + 0.99 * 0.5), rel=1e-2)


def test_schedule_is_a_pure_function_of_the_step():
    cfg = ScheduleConfig(kind="onecycle", warmup_fraction=0.1)
    a = [lr_at(s, 50, 1e-3, cfg) for s in (3, 40, 3)]
    assert a[0] == a[2]
    assert lr_at(7, 50, 1e-3, ScheduleConfig(kind="constant")) == 1e-3


def test_schedule_rejects_bad_input():
    with pytest.raises(ValueError, match="kind"):
        ScheduleConfig(kind="step")
    with pytest.raises(ValueError, match="total_steps"):
        cosine_lr(0, 0, 1e-3)
    with pytest.raises(ValueError, match="step"):
        onecycle_lr(-1, 10, 1e-3)
    assert math.isfinite(cosine_lr(0, 1, 1e-3))  # a one-step run is legal
