"""torch.distributed plumbing for the trainer: process-group setup from torchrun's environment, a
resumable distributed sampler, and small collective helpers that also work in a single process.

Launch with ``torchrun`` (one process per GPU, or several CPU processes): it sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT. Multi-node runs use the same variables (``torchrun --nnodes N
--node_rank i --master_addr host``); every node must see the run folder (checkpoints are written by
global rank 0 and read by all ranks on resume). NCCL is used on GPUs, gloo on CPU.
"""
from __future__ import annotations

import datetime
import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from gcross_core.errors import InputError, UnavailableError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None  # None: no process group (single process)
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, logs and images."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.backend is not None and self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as e:
        raise InputError(f"environment variable {name}={raw!r} is not an integer") from e


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:local_rank when CUDA is available, else cpu."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise UnavailableError("device 'cuda' requested but torch.cuda.is_available() is false")
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    if device == "cpu":
        return torch.device("cpu")
    raise InputError(f"device {device!r} is not one of auto, cpu, cuda")


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group torchrun describes in the environment, or run as a single process.

    RANK / WORLD_SIZE / LOCAL_RANK are read from the environment (defaults 0 / 1 / 0). With
    WORLD_SIZE > 1 the process group is created with NCCL when the device is CUDA, else gloo.
    """
    rank = _env_int("RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise InputError(f"RANK={rank} WORLD_SIZE={world_size} is not a valid rank assignment")
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size == 1:
        return DistInfo(rank, 1, local_rank, None, dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise InputError(f"WORLD_SIZE={world_size} but {name} is not set; launch with torchrun")
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    log.info("rank %d/%d (local %d) joined the %s process group on %s", rank, world_size, local_rank,
             backend, dev)
    return DistInfo(rank, world_size, local_rank, backend, dev)


def shutdown_distributed(info: DistInfo) -> None:
    if info.is_distributed and dist.is_initialized():
        # every rank reaches the teardown before any tears down: a rank that destroys its gloo pairs while
        # another still talks to them aborts the process ("terminate called without an active exception")
        barrier(info)
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.is_distributed:
        if info.backend == "nccl":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def any_true(flag: bool, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is true on any rank (so all ranks take the same branch)."""
    if not info.is_distributed:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_ranks(values: Dict[str, float], info: DistInfo) -> Dict[str, float]:
    """Average scalar metrics over ranks (same keys in the same order on every rank)."""
    if not info.is_distributed or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= info.world_size
    return dict(zip(keys, t.tolist()))


def gather_objects(obj: Any, info: DistInfo) -> List[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not info.is_distributed:
        return [obj]
    out: List[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that is a fixed function of integer keys (e.g. seed, epoch, index).

    Hash-based so that nearby keys give unrelated streams (seed + epoch would make epoch 1 of seed 0
    equal epoch 0 of seed 1).
    """
    h = hashlib.blake2b(",".join(str(int(k)) for k in keys).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler whose order is a function of (seed, epoch) only, and which can start partway
    through an epoch.

    ``set_epoch(e)`` fixes the permutation; ``set_start(k)`` skips the first ``k`` samples of this rank's
    share, which is how a resumed run continues with exactly the batches an uninterrupted run would
    have seen. Works without an initialised process group (rank 0 of 1).
    """

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.start = 0

    def set_start(self, start: int) -> None:
        if start < 0 or start > self.num_samples:
            raise ValueError(f"start {start} is outside this rank's {self.num_samples} samples")
        self.start = start

    def _indices(self) -> List[int]:
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(derive_seed(self.seed, self.epoch))
            indices = torch.randperm(n, generator=g).tolist()
        else:
            indices = list(range(n))
        if self.drop_last:
            indices = indices[: self.total_size]
        else:
            pad = self.total_size - len(indices)
            indices += (indices * (pad // max(len(indices), 1) + 1))[:pad]
        return indices[self.rank: self.total_size: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start
