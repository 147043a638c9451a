"""A generic trainer for pretraining and fine-tuning alike.

The trainer knows nothing about Gaussians or segmentation. It takes

- a model (``nn.Module``) and a ``step_fn(model, batch) -> dict`` returning scalar loss terms, one of
  them named ``'loss'`` (the one that is back-propagated); entries whose name starts with ``_`` are
  passed to ``visualize_fn`` but not logged;
- a map-style dataset and its ``collate_fn`` (the trainer builds the DataLoader, because the sampler
  must be distributed and resumable);
- an optimizer factory (default: AdamW with betas (0.9, 0.95), weight decay 0.05, Table S.1);
- a :class:`RunConfig` (defined here with its :class:`TrainerConfig` and :class:`OptimConfig`).

and runs the loop: lr from a plain function of the step, autocast on CUDA, gradient clipping, DDP when
launched by torchrun, a NaN/inf guard, scalars / images / progress, and atomic safetensors checkpoints
that let ``fit(resume=True)`` continue exactly where a killed run stopped.

Exact resume rests on three things: the data order is a function of (seed, epoch) and the position in
the epoch is a function of the step; every sample's random augmentation is drawn from RNGs seeded by
(seed, epoch, index) (see :class:`SeededDataset`); and the process RNG states (torch, CUDA, numpy,
python) of every rank are saved with the weights and optimizer state.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from gcross_core.checkpoint import load_checkpoint, save_checkpoint
from gcross_core.errors import CheckpointError
from gcross_core.config import save_resolved, to_dict
from gcross_core.train.distributed import (DistInfo, ResumableDistributedSampler, any_true, barrier, derive_seed,
                                           gather_objects, mean_over_ranks, resolve_device)
from gcross_core.train.logging import RunLogger, format_metrics
from gcross_core.train.schedule import ScheduleConfig, lr_at

log = logging.getLogger(__name__)

StepFn = Callable[[nn.Module, Any], Dict[str, Any]]
OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]
VisualizeFn = Callable[[Dict[str, Any], Any], Dict[str, np.ndarray]]

# tensor-name prefixes of the training state inside a checkpoint; model weights use their own names
OPTIMIZER_PREFIX = "optimizer.state."
RNG_PREFIX = "rng."
RESERVED_PREFIXES = (OPTIMIZER_PREFIX, RNG_PREFIX)
LAST_CHECKPOINT = "checkpoints/last.safetensors"
FINAL_CHECKPOINT = "final.safetensors"


# ----------------------------------------------------------------------------------------------------
# configuration


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
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.weight_decay < 0 or self.grad_clip_norm < 0:
            raise ValueError("weight_decay and grad_clip_norm must be >= 0")


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
            raise ValueError(f"epochs and batch_size must be >= 1 and max_steps >= 0, got "
                             f"{self.epochs}, {self.batch_size}, {self.max_steps}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp {self.amp!r} is not one of {AMP_MODES}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device {self.device!r} is not one of auto, cpu, cuda")
        for name in ("num_workers", "num_threads", "checkpoint_every_steps", "log_every_steps", "image_every_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class RunConfig:
    """What the generic trainer needs: optimizer, schedule and loop settings."""

    train: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


# ----------------------------------------------------------------------------------------------------
# seeding and RNG state


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) global RNGs."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


@contextmanager
def rng_scope(seed: int):
    """Run a block with python / numpy / torch-CPU RNGs seeded by ``seed`` and restore them afterwards,
    so the block neither depends on nor disturbs the caller's random streams."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed would reseed CUDA as well
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


def rng_state() -> Dict[str, Any]:
    """This process's RNG states: torch CPU (uint8 tensor), CUDA (list of uint8 tensors), numpy, python."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        cuda = list(state["cuda"])
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning("checkpoint holds %d CUDA RNG states for %d devices; CUDA RNG not restored",
                        len(cuda), torch.cuda.device_count())
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


class SeededDataset(Dataset):
    """Wraps a dataset so that sample ``i`` of epoch ``e`` draws its randomness from generators seeded
    by (seed, e, i), whichever process or worker loads it.

    That makes augmentations independent of the number of workers, of how samples are spread over
    ranks, and of where a resumed run starts, and leaves the training process's RNG streams untouched.
    A dataset with a ``sample(index, rng)`` method gets an explicit ``numpy.random.Generator`` seeded
    with [seed, e, i]; any other is indexed with the python / numpy / torch global RNGs seeded from
    (seed, e, i) for the duration of the call.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        sample = getattr(self.dataset, "sample", None)
        if callable(sample):
            return sample(index, np.random.default_rng([self.seed, self.epoch, int(index)]))
        with rng_scope(derive_seed(self.seed, self.epoch, index)):
            return self.dataset[index]


# ----------------------------------------------------------------------------------------------------
# optimizer state <-> flat tensors + JSON


def adamw_factory(cfg: OptimConfig) -> OptimizerFactory:
    """AdamW (Table S.1); biases and normalisation weights (1-D parameters) get no weight decay."""

    def make(model: nn.Module) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for _, p in model.named_parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
        if not groups:
            raise ValueError("model has no trainable parameters")
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)

    return make


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Optimizer state dict -> (tensors named ``optimizer.state.<param>.<key>``, JSON metadata)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{OPTIMIZER_PREFIX}{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Dict[str, Any]:
    state: Dict[int, Dict[str, Any]] = {}
    for name, v in tensors.items():
        if name.startswith(OPTIMIZER_PREFIX):
            pid, key = name[len(OPTIMIZER_PREFIX):].split(".", 1)
            state.setdefault(int(pid), {})[key] = v
    for name, v in meta.get("scalars", {}).items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = v
    groups = []
    for g in meta["param_groups"]:
        # JSON turned tuples (betas) into lists; optimizers compare and unpack them as tuples
        groups.append({k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()})
    return {"state": state, "param_groups": groups}


def move_to(obj: Any, device: torch.device) -> Any:
    """Move tensors inside (nested) batches to ``device``: tensors, objects with ``.to``, dataclasses,
    dicts, lists and tuples."""
    if torch.is_tensor(obj):
        return obj.to(device, non_blocking=True)
    if hasattr(obj, "to") and callable(obj.to) and not isinstance(obj, type):
        return obj.to(device)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: move_to(getattr(obj, f.name), device)
                                           for f in dataclasses.fields(obj) if f.init})
    if isinstance(obj, Mapping):
        return type(obj)({k: move_to(v, device) for k, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to(v, device) for v in obj)
    return obj


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


# ----------------------------------------------------------------------------------------------------
# trainer


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
    """Train ``model`` with ``step_fn`` on ``dataset``; see the module docstring.

    Only the main process (rank 0) writes into ``run_dir``: ``config.yaml``/``config.json`` (the
    resolved config), ``metrics.jsonl``, ``tb/`` (TensorBoard), ``images/``, ``checkpoints/last.safetensors``
    (full training state) and, at the end, ``final.safetensors`` (weights and metadata only).
    """

    def __init__(self, model: nn.Module, step_fn: StepFn, dataset: Dataset, collate_fn: Optional[Callable],
                 config: RunConfig, run_dir, optimizer_factory: Optional[OptimizerFactory] = None,
                 dist_info: Optional[DistInfo] = None, visualize_fn: Optional[VisualizeFn] = None,
                 checkpoint_metadata: Optional[Dict[str, Any]] = None, resolved_config: Any = None,
                 progress: bool = True, tensorboard: bool = True, shuffle: bool = True):
        self.cfg = config
        tc = config.train
        self.run_dir = Path(run_dir)
        self.dist = dist_info or DistInfo(device=resolve_device(tc.device))
        self.device = self.dist.device
        self.step_fn = step_fn
        self.visualize_fn = visualize_fn
        self.checkpoint_metadata = dict(checkpoint_metadata or {})
        self.resolved_config = resolved_config if resolved_config is not None else config
        self.progress = progress
        self.tensorboard = tensorboard

        if tc.num_threads > 0:
            torch.set_num_threads(tc.num_threads)
        clash = [k for k in model.state_dict() if k.startswith(RESERVED_PREFIXES)]
        if clash:
            raise ValueError(f"model state names {clash[:3]} collide with the checkpoint's reserved prefixes "
                             f"{RESERVED_PREFIXES}")
        self.module = model.to(self.device)
        self.model: nn.Module = self.module
        if self.dist.is_distributed:
            if tc.sync_batchnorm and self.device.type == "cuda":
                self.module = nn.SyncBatchNorm.convert_sync_batchnorm(self.module)
            self.model = nn.parallel.DistributedDataParallel(
                self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=tc.find_unused_parameters)
        self.optimizer = (optimizer_factory or adamw_factory(config.optim))(self.module)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]

        world = self.dist.world_size
        if tc.batch_size % world:
            raise ValueError(f"global batch_size {tc.batch_size} is not divisible by the world size {world}")
        self.batch_per_rank = tc.batch_size // world
        self.dataset = SeededDataset(dataset, tc.seed)
        self.sampler = ResumableDistributedSampler(self.dataset, num_replicas=world, rank=self.dist.rank,
                                                   shuffle=shuffle, seed=tc.seed, drop_last=True)
        self.steps_per_epoch = self.sampler.num_samples // self.batch_per_rank
        if self.steps_per_epoch == 0:
            raise ValueError(f"dataset of {len(dataset)} samples is smaller than the global batch "
                             f"{tc.batch_size}; lower train.batch_size or repeat the data (data.loop)")
        self.collate_fn = collate_fn
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

    # ------------------------------------------------------------------------------------------------
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

    # ------------------------------------------------------------------------------------------------
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

    # ------------------------------------------------------------------------------------------------
    def _metadata(self) -> Dict[str, Any]:
        return {**self.checkpoint_metadata,
                "trainer": {"step": self.state.step, "epoch": self.state.epoch,
                            "batch_in_epoch": self.state.batch_in_epoch,
                            "skipped_steps": self.state.skipped_steps, "total_steps": self.total_steps,
                            "steps_per_epoch": self.steps_per_epoch, "world_size": self.dist.world_size,
                            "scheduler": {**to_dict(self.cfg.schedule), "step": self.state.step,
                                          "base_lrs": self.base_lrs}},
                "config": self.checkpoint_metadata.get("config", to_dict(self.resolved_config))}

    def save_weights(self, path) -> Path:
        """Model weights and metadata only (no optimizer or RNG state): what downstream tools load."""
        return save_checkpoint(path, self.module.state_dict(), self._metadata())

    def save(self, path) -> Optional[Path]:
        """Full training state. Collective: every rank must call it (RNG states are gathered)."""
        states = gather_objects(rng_state(), self.dist)
        if not self.dist.is_main:
            return None
        tensors: Dict[str, torch.Tensor] = dict(self.module.state_dict())
        opt_tensors, opt_meta = optimizer_to_flat(self.optimizer)
        tensors.update(opt_tensors)
        meta = self._metadata()
        meta["optimizer"] = opt_meta
        meta["rng"] = []
        for r, st in enumerate(states):
            tensors[f"{RNG_PREFIX}torch_cpu.{r}"] = st["torch"]
            for i, c in enumerate(st["cuda"]):
                tensors[f"{RNG_PREFIX}cuda.{r}.{i}"] = c
            meta["rng"].append({"numpy": st["numpy"], "python": st["python"], "num_cuda": len(st["cuda"])})
        if self.scaler is not None:
            meta["grad_scaler"] = self.scaler.state_dict()
        return save_checkpoint(path, tensors, meta)

    def _resume(self) -> None:
        path = self.run_dir / LAST_CHECKPOINT
        if not path.is_file():
            if self.dist.is_main:
                log.warning("resume requested but %s does not exist; starting from step 0", path)
            return
        tensors, meta = load_checkpoint(path, device="cpu")
        tr = meta.get("trainer")
        if not tr or "optimizer" not in meta:
            raise CheckpointError(f"{path} holds no training state (trainer/optimizer metadata missing)")
        model_state = {k: v for k, v in tensors.items() if not k.startswith(RESERVED_PREFIXES)}
        missing, unexpected = self.module.load_state_dict(model_state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{path}: model weights do not fit (missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]})")
        try:
            self.optimizer.load_state_dict(optimizer_from_flat(tensors, meta["optimizer"]))
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: optimizer state does not fit this model: {e}") from e
        if self.scaler is not None and meta.get("grad_scaler"):
            self.scaler.load_state_dict(meta["grad_scaler"])
        if tr["total_steps"] != self.total_steps:
            log.warning("checkpoint was written for %d total steps, this run has %d: the lr schedule changes",
                        tr["total_steps"], self.total_steps)
        if tr.get("steps_per_epoch") != self.steps_per_epoch:
            log.warning("steps per epoch changed (%s -> %d): the data order after resume differs",
                        tr.get("steps_per_epoch"), self.steps_per_epoch)
        self.state.step = int(tr["step"])
        self.state.skipped_steps = int(tr.get("skipped_steps", 0))
        self.state.epoch, self.state.batch_in_epoch = divmod(self.state.step, self.steps_per_epoch)
        rngs = meta.get("rng", [])
        r = self.dist.rank
        if tr.get("world_size") == self.dist.world_size and r < len(rngs):
            ncuda = rngs[r].get("num_cuda", 0)
            set_rng_state({"torch": tensors[f"{RNG_PREFIX}torch_cpu.{r}"],
                           "cuda": [tensors[f"{RNG_PREFIX}cuda.{r}.{i}"] for i in range(ncuda)],
                           "numpy": rngs[r]["numpy"], "python": rngs[r]["python"]})
        else:
            # a different world size cannot continue every rank's streams; reseed deterministically
            log.warning("checkpoint from %s process(es), resuming with %d: RNG streams reseeded",
                        tr.get("world_size"), self.dist.world_size)
            seed_everything(derive_seed(self.cfg.train.seed, self.state.step, r))
        if self.dist.is_main:
            log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.state.step,
                     self.state.epoch, self.state.batch_in_epoch)
