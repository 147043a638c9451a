"""Seeding and RNG state: what makes a resumed run draw the same random numbers as an uninterrupted one.

Every sample's randomness comes from generators seeded by (seed, epoch, index) (:class:`SeededDataset`),
and the process RNG states (torch, CUDA, numpy, python) are saved with each checkpoint and restored on
resume (:func:`rng_state`, :func:`set_rng_state`).
"""
from __future__ import annotations

import logging
import random
from contextlib import contextmanager
from typing import Any, Dict, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from gcross_core.train.distributed import derive_seed

log = logging.getLogger(__name__)


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
