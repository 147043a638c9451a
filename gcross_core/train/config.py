"""The generic trainer's configuration: optimizer, loop settings, and the two with the lr schedule.

A value out of range raises :class:`~gcross_core.errors.InputError`; read from a file or an override
through :func:`gcross_core.config.from_dict`, it becomes a ConfigError naming the key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Tuple

from gcross_core.errors import InputError
from gcross_core.train.schedule import ScheduleConfig


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 2e-3  # Table S.1 (pretraining); fine-tuning uses 5e-3 (Table S.2)
    betas: Tuple[float, float] = (0.9, 0.95)  # Tables S.1-S.3
    weight_decay: float = 0.05  # Tables S.1-S.3
    # global gradient-norm clip; the paper gives none, 3.0 is a common value for sparse-conv U-Nets and
    # only bites on outlier batches. 0 disables clipping.
    grad_clip_norm: float = 3.0

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise InputError(f"lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise InputError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.weight_decay < 0 or self.grad_clip_norm < 0:
            raise InputError("weight_decay and grad_clip_norm must be >= 0")


AMP_MODES = ("off", "bf16", "fp16")


@dataclass(frozen=True)
class TrainerConfig:
    epochs: int = 1
    batch_size: int = 1  # GLOBAL batch (all ranks together); each rank loads batch_size / world_size
    max_steps: int = 0  # stop after this many optimizer steps; 0 = epochs * steps_per_epoch
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda; under torchrun "cuda" means cuda:LOCAL_RANK
    amp: str = "bf16"  # autocast dtype on CUDA (off | bf16 | fp16); always off on CPU
    num_workers: int = 0  # DataLoader worker processes per rank
    # CPU threads for torch ops in this process; 0 keeps torch's default (one per core). On a shared,
    # oversubscribed machine 1 thread is often several times faster: OpenMP threads spin-wait for each other
    num_threads: int = 0
    checkpoint_every_steps: int = 500  # 0 = only at the end
    log_every_steps: int = 1  # scalars to TensorBoard and metrics.jsonl
    image_every_steps: int = 500  # rendered-vs-ground-truth panels; 0 = never
    sync_batchnorm: bool = True  # convert BatchNorm to SyncBatchNorm under multi-GPU DDP (CUDA only)
    # DDP must be told when some parameters get no gradient in a step (e.g. an unused teacher head)
    find_unused_parameters: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.max_steps < 0:
            raise InputError(f"epochs and batch_size must be >= 1 and max_steps >= 0, got "
                             f"{self.epochs}, {self.batch_size}, {self.max_steps}")
        if self.amp not in AMP_MODES:
            raise InputError(f"amp {self.amp!r} is not one of {AMP_MODES}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise InputError(f"device {self.device!r} is not one of auto, cpu, cuda")
        for name in ("num_workers", "num_threads", "checkpoint_every_steps", "log_every_steps", "image_every_steps"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class RunConfig:
    """What the generic trainer needs: optimizer, schedule and loop settings."""

    train: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
