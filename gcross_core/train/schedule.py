"""Learning-rate schedules as plain functions of the optimizer step.

A schedule never holds state: the trainer asks for ``lr_at(step, ...)`` before every optimizer step, so
resuming from a checkpoint only needs the step number.

Two shapes are provided:

- ``cosine``: linear warmup from ``warmup_start_factor * lr`` to ``lr``, then cosine decay to
  ``final_lr_factor * lr`` (paper Table S.1: cosine with 60 of 1200 epochs of warmup).
- ``onecycle``: the one-cycle policy of ``torch.optim.lr_scheduler.OneCycleLR`` (cosine annealing both
  ways): from ``lr / div_factor`` up to ``lr`` over the first ``pct_start`` of training, then down to
  ``lr / (div_factor * final_div_factor)`` (the policy the paper's Sec. 4.1 names).
- ``constant``: ``lr`` at every step (debugging, tests).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from gcross_core.errors import ConfigError

SCHEDULE_KINDS = ("cosine", "onecycle", "constant")


@dataclass(frozen=True)
class ScheduleConfig:
    kind: str = "cosine"
    # warmup length as a fraction of all steps; Table S.1 warms up for 60 of 1200 epochs = 0.05
    warmup_fraction: float = 0.05
    warmup_start_factor: float = 0.0  # cosine: lr at step 0 is lr * this
    final_lr_factor: float = 0.0  # cosine: lr at the last step is lr * this
    # onecycle: Pointcept's OneCycleLR settings for sparse-conv pretraining (peak at 5%, 1/10 start,
    # 1/10000 end); pct_start reuses warmup_fraction so both shapes peak at the same step
    div_factor: float = 10.0
    final_div_factor: float = 1000.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ConfigError(f"schedule kind {self.kind!r} is not one of {SCHEDULE_KINDS}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.div_factor <= 0 or self.final_div_factor <= 0:
            raise ConfigError("div_factor and final_div_factor must be > 0")


def _cos_interp(start: float, end: float, t: float) -> float:
    """Cosine from ``start`` (t=0) to ``end`` (t=1)."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


def cosine_lr(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0,
              warmup_start_factor: float = 0.0, final_lr_factor: float = 0.0) -> float:
    """Linear warmup over ``warmup_steps`` then cosine decay until ``total_steps - 1``."""
    _check_steps(step, total_steps)
    if warmup_steps > 0 and step < warmup_steps:
        t = step / warmup_steps
        return base_lr * (warmup_start_factor + (1.0 - warmup_start_factor) * t)
    decay_steps = max(total_steps - 1 - warmup_steps, 1)
    return _cos_interp(base_lr, base_lr * final_lr_factor, (step - warmup_steps) / decay_steps)


def onecycle_lr(step: int, total_steps: int, max_lr: float, pct_start: float = 0.05,
                div_factor: float = 10.0, final_div_factor: float = 1000.0) -> float:
    """The value ``torch.optim.lr_scheduler.OneCycleLR`` (anneal_strategy='cos', three_phase=False)
    gives after ``step`` scheduler steps."""
    _check_steps(step, total_steps)
    initial = max_lr / div_factor
    final = initial / final_div_factor
    # same phase boundaries as torch: the peak is at float(pct_start * total) - 1, the end at total - 1
    peak = float(pct_start * total_steps) - 1.0
    end = float(total_steps - 1)
    if step <= peak:
        return _cos_interp(initial, max_lr, step / peak if peak > 0 else 1.0)
    return _cos_interp(max_lr, final, (step - peak) / (end - peak) if end > peak else 1.0)


def lr_at(step: int, total_steps: int, base_lr: float, cfg: ScheduleConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of a run of ``total_steps`` steps."""
    if cfg.kind == "constant":
        _check_steps(step, total_steps)
        return base_lr
    if cfg.kind == "onecycle":
        return onecycle_lr(step, total_steps, base_lr, cfg.warmup_fraction, cfg.div_factor,
                           cfg.final_div_factor)
    warmup = int(round(cfg.warmup_fraction * total_steps))
    return cosine_lr(step, total_steps, base_lr, warmup, cfg.warmup_start_factor, cfg.final_lr_factor)


def _check_steps(step: int, total_steps: int) -> None:
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
