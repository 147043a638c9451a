"""A generic trainer for pretraining and fine-tuning alike.

The trainer knows nothing about Gaussians or segmentation. It takes

- a :class:`TrainingTask`: a model (``nn.Module``) and a ``step_fn(model, batch) -> dict`` returning scalar
  loss terms, one of them named ``'loss'`` (the one that is back-propagated; entries whose name starts
  with ``_`` are passed to ``visualize_fn`` but not logged), a map-style dataset and its ``collate_fn``
  (the trainer builds the DataLoader, because the sampler must be distributed and resumable) and
  optionally an optimizer factory (default: AdamW with betas (0.9, 0.95), weight decay 0.05, Table S.1);
- a :class:`~gcross_core.train.config.RunConfig` (loop, optimizer and schedule settings);
- a :class:`RunOutput`: the run folder and what is recorded there;

and runs the loop: lr from a plain function of the step, autocast on CUDA, gradient clipping, DDP when
launched by torchrun, a NaN/inf guard, scalars / images / progress, and atomic safetensors checkpoints
(:mod:`gcross_core.train.checkpointing`) that let ``fit(resume=True)`` continue exactly where a killed run
stopped.

Exact resume rests on three things: the data order is a function of (seed, epoch) and the position in
the epoch is a function of the step; every sample's random augmentation is drawn from RNGs seeded by
(seed, epoch, index) (see :class:`~gcross_core.train.seeding.SeededDataset`); and the process RNG states
(torch, CUDA, numpy, python) of every rank are saved with the weights and optimizer state.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from gcross_core.checkpoint import CheckpointHeader, save_checkpoint
from gcross_core.config import save_resolved, to_dict
from gcross_core.errors import ConfigError, InputError
from gcross_core.train.batch import move_to
from gcross_core.train.checkpointing import (FINAL_CHECKPOINT, LAST_CHECKPOINT, RESERVED_PREFIXES,
                                             load_training_state, save_training_state)
from gcross_core.train.config import RunConfig
from gcross_core.train.distributed import (DistInfo, ResumableDistributedSampler, any_true, barrier, derive_seed,
                                           mean_over_ranks, resolve_device)
from gcross_core.train.logging import RunLogger, format_metrics
from gcross_core.train.optimizer import OptimizerFactory, adamw_factory
from gcross_core.train.schedule import lr_at
from gcross_core.train.seeding import SeededDataset, rng_scope, seed_everything

log = logging.getLogger(__name__)

StepFn = Callable[[nn.Module, Any], Dict[str, Any]]
VisualizeFn = Callable[[Dict[str, Any], Any], Dict[str, np.ndarray]]


@dataclass(frozen=True)
class TrainingTask:
    """What is trained and how one step goes."""

    model: nn.Module
    step_fn: StepFn  # (model, batch) -> {"loss": scalar tensor, other terms}; see the module docstring
    dataset: Dataset  # map-style; the trainer builds the distributed, resumable sampler and the DataLoader
    collate_fn: Optional[Callable] = None  # None: the DataLoader's default collation
    optimizer_factory: Optional[OptimizerFactory] = None  # None: AdamW from RunConfig.optim
    visualize_fn: Optional[VisualizeFn] = None  # (step output, batch) -> named images, every image_every_steps
    shuffle: bool = True  # False: every epoch in dataset order


@dataclass(frozen=True)
class RunOutput:
    """The run folder and what the trainer records there (only the main process writes)."""

    run_dir: Union[str, Path]
    # the header of every checkpoint (kind, class names, input conventions...); the trainer adds its
    # position and, unless the header has one, the resolved config. None: kind "trainer" and nothing else
    checkpoint_header: Optional[CheckpointHeader] = None
    resolved_config: Any = None  # the config saved as config.yaml/json and in checkpoints; None: the RunConfig
    progress: bool = True  # a progress bar on the terminal
    tensorboard: bool = True  # scalars and images to tb/ besides metrics.jsonl and images/


def scalar_terms(out: Mapping[str, Any]) -> Dict[str, float]:
    """The loggable entries of a step output: scalar tensors and numbers, not those named ``_*``."""
    vals = {}
    for k, v in out.items():
        if k.startswith("_"):
            continue
        if torch.is_tensor(v):
            if v.numel() != 1:
                continue
            vals[k] = float(v.detach().float().item())
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            vals[k] = float(v)
    return vals


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken (skipped NaN steps included: their batch was consumed)
    epoch: int = 0  # epoch of the next batch
    batch_in_epoch: int = 0  # index of the next batch within its epoch
    skipped_steps: int = 0  # steps whose loss or gradient was not finite
    total_steps: int = 0
    last_metrics: Optional[Dict[str, float]] = None
    first_metrics: Optional[Dict[str, float]] = None


class Trainer:
    """Run a :class:`TrainingTask` under a :class:`~gcross_core.train.config.RunConfig`; see the module docstring.

    Only the main process (rank 0) writes into ``run_dir``: ``config.yaml``/``config.json`` (the
    resolved config), ``metrics.jsonl``, ``tb/`` (TensorBoard), ``images/``, ``checkpoints/last.safetensors``
    (full training state) and, at the end, ``final.safetensors`` (weights and metadata only).
    """

    def __init__(self, task: TrainingTask, config: RunConfig, output: RunOutput,
                 dist_info: Optional[DistInfo] = None):
        self.cfg = config
        tc = config.train
        model, dataset = task.model, task.dataset
        self.run_dir = Path(output.run_dir)
        self.dist = dist_info or DistInfo(device=resolve_device(tc.device))
        self.device = self.dist.device
        self.step_fn = task.step_fn
        self.visualize_fn = task.visualize_fn
        self.checkpoint_header = output.checkpoint_header or CheckpointHeader(kind="trainer")
        self.resolved_config = output.resolved_config if output.resolved_config is not None else config
        self.progress = output.progress
        self.tensorboard = output.tensorboard

        if tc.num_threads > 0:
            torch.set_num_threads(tc.num_threads)
        clash = [k for k in model.state_dict() if k.startswith(RESERVED_PREFIXES)]
        if clash:
            raise InputError(f"model state names {clash[:3]} collide with the checkpoint's reserved prefixes "
                             f"{RESERVED_PREFIXES}")
        self.module = model.to(self.device)
        self.model: nn.Module = self.module
        if self.dist.is_distributed:
            if tc.sync_batchnorm and self.device.type == "cuda":
                self.module = nn.SyncBatchNorm.convert_sync_batchnorm(self.module)
            self.model = nn.parallel.DistributedDataParallel(
                self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=tc.find_unused_parameters)
        self.optimizer = (task.optimizer_factory or adamw_factory(config.optim))(self.module)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]

        world = self.dist.world_size
        if tc.batch_size % world:
            raise ConfigError(f"train.batch_size: global batch {tc.batch_size} is not divisible by the world size "
                              f"{world}, expected a multiple of it")
        self.batch_per_rank = tc.batch_size // world
        self.dataset = SeededDataset(dataset, tc.seed)
        self.sampler = ResumableDistributedSampler(self.dataset, num_replicas=world, rank=self.dist.rank,
                                                   shuffle=task.shuffle, seed=tc.seed, drop_last=True)
        self.steps_per_epoch = self.sampler.num_samples // self.batch_per_rank
        if self.steps_per_epoch == 0:
            raise InputError(f"dataset of {len(dataset)} samples is smaller than the global batch "
                             f"{tc.batch_size}; lower train.batch_size or repeat the data (data.loop)")
        self.collate_fn = task.collate_fn
        self.total_steps = tc.max_steps or tc.epochs * self.steps_per_epoch

        self.amp_dtype = None
        if self.device.type == "cuda" and tc.amp != "off":
            self.amp_dtype = torch.bfloat16 if tc.amp == "bf16" else torch.float16
            if self.amp_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
                log.warning("bf16 autocast unsupported on this GPU; using fp16 with a gradient scaler")
                self.amp_dtype = torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.state = TrainState(total_steps=self.total_steps)
        self.logger: Optional[RunLogger] = None

    def _loader(self, epoch: int, start_batch: int) -> DataLoader:
        self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(start_batch * self.batch_per_rank)
        # the loader's own generator only seeds workers; fixing it keeps the process RNG untouched
        g = torch.Generator()
        g.manual_seed(derive_seed(self.cfg.train.seed, epoch, self.dist.rank, 1))
        return DataLoader(self.dataset, batch_size=self.batch_per_rank, sampler=self.sampler,
                          num_workers=self.cfg.train.num_workers, collate_fn=self.collate_fn, drop_last=True,
                          pin_memory=self.device.type == "cuda", generator=g,
                          persistent_workers=False)

    def _set_lr(self, step: int) -> float:
        lr = lr_at(step, self.total_steps, 1.0, self.cfg.schedule)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * lr
        return self.base_lrs[0] * lr

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def train_step(self, batch: Any) -> Tuple[Dict[str, float], Dict[str, Any], bool]:
        """One optimizer step: (this rank's scalar terms plus lr and grad_norm, raw step output, skipped?)."""
        step = self.state.step
        lr = self._set_lr(step)
        self.model.train()
        batch = move_to(batch, self.device)
        with self._autocast():
            out = self.step_fn(self.model, batch)
        if "loss" not in out:
            raise KeyError(f"step_fn must return a dict with a 'loss' entry; got keys {sorted(out)}")
        loss = out["loss"]
        if not torch.is_tensor(loss) or loss.numel() != 1:
            raise ValueError(f"step_fn's 'loss' must be a scalar tensor, got {type(loss).__name__} "
                             f"{tuple(getattr(loss, 'shape', ()))}")
        # all ranks must agree to skip, or DDP's gradient all-reduce would wait for the skipping rank
        skipped = any_true(not bool(torch.isfinite(loss.detach()).item()), self.dist)
        grad_norm = float("nan")
        if not skipped:
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                loss.backward()
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            clip = self.cfg.optim.grad_clip_norm
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf")))
            if self.scaler is not None:
                # the scaler skips steps with inf/NaN gradients itself and lowers its scale
                scale_before = self.scaler.get_scale()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                skipped = self.scaler.get_scale() < scale_before
            elif math.isfinite(grad_norm):
                self.optimizer.step()
            else:
                skipped = True  # gradients are identical on all ranks after DDP, so all ranks agree
        self.optimizer.zero_grad(set_to_none=True)
        terms = scalar_terms(out)
        terms.update(lr=lr, grad_norm=grad_norm)
        return terms, out, skipped

    def fit(self, resume: bool = False) -> TrainState:
        """Train until ``total_steps``; with ``resume`` continue from ``checkpoints/last.safetensors``."""
        tc = self.cfg.train
        if resume:
            self._resume()
        if self.dist.is_main:
            save_resolved(self.resolved_config, self.run_dir)
        self.logger = RunLogger(self.run_dir, enabled=self.dist.is_main, tensorboard=self.tensorboard,
                                progress=self.progress, total_steps=self.total_steps,
                                resume_step=self.state.step)
        self.logger.message(
            f"training {self.total_steps} steps ({self.steps_per_epoch} per epoch, global batch "
            f"{tc.batch_size} over {self.dist.world_size} process(es), device {self.device})"
            + (f", resumed at step {self.state.step}" if self.state.step else ""))
        t0 = time.perf_counter()
        try:
            while self.state.step < self.total_steps:
                epoch = self.state.step // self.steps_per_epoch
                start = self.state.step % self.steps_per_epoch
                for batch in self._loader(epoch, start):
                    self._after_step(batch, *self.train_step(batch))
                    if self.state.step >= self.total_steps:
                        break
            if self.state.step and (tc.checkpoint_every_steps == 0 or self.state.step % tc.checkpoint_every_steps):
                self.save(self.run_dir / LAST_CHECKPOINT)
            if self.dist.is_main:
                self.save_weights(self.run_dir / FINAL_CHECKPOINT)
            barrier(self.dist)
        finally:
            self.logger.message(f"finished at step {self.state.step} in {time.perf_counter() - t0:.1f} s "
                                f"({self.state.skipped_steps} skipped)")
            self.logger.close()
        return self.state

    def _after_step(self, batch: Any, terms: Dict[str, float], out: Dict[str, Any], skipped: bool) -> None:
        tc = self.cfg.train
        self.state.step += 1
        step = self.state.step
        self.state.epoch, self.state.batch_in_epoch = divmod(step, self.steps_per_epoch)
        if skipped:
            self.state.skipped_steps += 1
            self.logger.message(f"step {step}: non-finite loss or gradient, update skipped "
                                f"({self.state.skipped_steps} so far): {format_metrics(terms)}")
        if tc.log_every_steps and (step % tc.log_every_steps == 0 or step == 1 or step == self.total_steps):
            terms = mean_over_ranks(terms, self.dist)
            terms.update(skipped_steps=float(self.state.skipped_steps), epoch=float(self.state.epoch))
            self.logger.scalars(step, terms)
            if self.state.first_metrics is None:
                self.state.first_metrics = dict(terms)
            self.state.last_metrics = dict(terms)
        if (self.visualize_fn is not None and self.dist.is_main and tc.image_every_steps
                and (step % tc.image_every_steps == 0 or step == 1 or step == self.total_steps)):
            with torch.no_grad(), rng_scope(derive_seed(tc.seed, step, 2)):
                images = self.visualize_fn(out, batch)
            self.logger.images(step, images)
        self.logger.progress(1, {k: terms[k] for k in ("loss", "lr", "psnr") if k in terms})
        if tc.checkpoint_every_steps and step % tc.checkpoint_every_steps == 0:
            self.save(self.run_dir / LAST_CHECKPOINT)
            self.logger.flush()

    def _header(self) -> CheckpointHeader:
        header = self.checkpoint_header
        return header.replace(
            trainer={"step": self.state.step, "epoch": self.state.epoch, "batch_in_epoch": self.state.batch_in_epoch,
                     "skipped_steps": self.state.skipped_steps, "total_steps": self.total_steps,
                     "steps_per_epoch": self.steps_per_epoch, "world_size": self.dist.world_size,
                     "scheduler": {**to_dict(self.cfg.schedule), "step": self.state.step, "base_lrs": self.base_lrs}},
            config=header.config if header.config is not None else to_dict(self.resolved_config))

    def save_weights(self, path) -> Path:
        """Model weights and header only (no optimizer or RNG state): what downstream tools load."""
        return save_checkpoint(path, self.module.state_dict(), self._header())

    def save(self, path) -> Optional[Path]:
        """Full training state. Collective: every rank must call it (RNG states are gathered)."""
        return save_training_state(path, self.module, self.optimizer, self.scaler, self._header(), self.dist)

    def _resume(self) -> None:
        path = self.run_dir / LAST_CHECKPOINT
        if not path.is_file():
            if self.dist.is_main:
                log.warning("resume requested but %s does not exist; starting from step 0", path)
            return
        tr, rng_restored = load_training_state(path, self.module, self.optimizer, self.scaler, self.dist)
        if tr["total_steps"] != self.total_steps:
            log.warning("checkpoint was written for %d total steps, this run has %d: the lr schedule changes",
                        tr["total_steps"], self.total_steps)
        if tr.get("steps_per_epoch") != self.steps_per_epoch:
            log.warning("steps per epoch changed (%s -> %d): the data order after resume differs",
                        tr.get("steps_per_epoch"), self.steps_per_epoch)
        self.state.step = int(tr["step"])
        self.state.skipped_steps = int(tr.get("skipped_steps", 0))
        self.state.epoch, self.state.batch_in_epoch = divmod(self.state.step, self.steps_per_epoch)
        if not rng_restored:
            # a different world size cannot continue every rank's streams; reseed deterministically
            log.warning("checkpoint from %s process(es), resuming with %d: RNG streams reseeded",
                        tr.get("world_size"), self.dist.world_size)
            seed_everything(derive_seed(self.cfg.train.seed, self.state.step, self.dist.rank))
        if self.dist.is_main:
            log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.state.step,
                     self.state.epoch, self.state.batch_in_epoch)
