"""The full training state in a checkpoint, and the names of a run's checkpoint files.

:func:`save_training_state` writes, through :func:`gcross_core.checkpoint.save_checkpoint` (atomic: a
killed run leaves the previous checkpoint whole), the model weights under their own names, the optimizer
state as tensors named ``optimizer.state.<param>.<key>`` plus JSON, the RNG states of every rank
(``rng.torch_cpu.<rank>``, ``rng.cuda.<rank>.<device>`` and JSON for numpy and python) and the grad
scaler's state; :func:`load_training_state` puts them back.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from gcross_core.checkpoint import CheckpointHeader, load_checkpoint, save_checkpoint
from gcross_core.errors import CheckpointError
from gcross_core.train.distributed import DistInfo, gather_objects
from gcross_core.train.seeding import rng_state, set_rng_state

# tensor-name prefixes of the training state inside a checkpoint; model weights use their own names
OPTIMIZER_PREFIX = "optimizer.state."
RNG_PREFIX = "rng."
RESERVED_PREFIXES = (OPTIMIZER_PREFIX, RNG_PREFIX)
LAST_CHECKPOINT = "checkpoints/last.safetensors"  # full training state, under the run folder
FINAL_CHECKPOINT = "final.safetensors"  # weights and metadata only, under the run folder


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


def optimizer_from_flat(tensors: Mapping[str, torch.Tensor], record: Mapping[str, Any]) -> Dict[str, Any]:
    state: Dict[int, Dict[str, Any]] = {}
    for name, v in tensors.items():
        if name.startswith(OPTIMIZER_PREFIX):
            pid, key = name[len(OPTIMIZER_PREFIX):].split(".", 1)
            state.setdefault(int(pid), {})[key] = v
    for name, v in record.get("scalars", {}).items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = v
    groups = []
    for g in record["param_groups"]:
        # JSON turned tuples (betas) into lists; optimizers compare and unpack them as tuples
        groups.append({k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()})
    return {"state": state, "param_groups": groups}


def save_training_state(path, module: nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: Optional[torch.amp.GradScaler], header: CheckpointHeader,
                        dist: DistInfo) -> Optional[Path]:
    """Weights, optimizer, RNG and grad-scaler state plus ``header``; rank 0 writes, the others return None.

    Collective: every rank must call it (RNG states are gathered).
    """
    states = gather_objects(rng_state(), dist)
    if not dist.is_main:
        return None
    tensors: Dict[str, torch.Tensor] = dict(module.state_dict())
    opt_tensors, opt_meta = optimizer_to_flat(optimizer)
    tensors.update(opt_tensors)
    rngs = []
    for r, st in enumerate(states):
        tensors[f"{RNG_PREFIX}torch_cpu.{r}"] = st["torch"]
        for i, c in enumerate(st["cuda"]):
            tensors[f"{RNG_PREFIX}cuda.{r}.{i}"] = c
        rngs.append({"numpy": st["numpy"], "python": st["python"], "num_cuda": len(st["cuda"])})
    header = header.replace(optimizer=opt_meta, rng=rngs,
                            grad_scaler=scaler.state_dict() if scaler is not None else None)
    return save_checkpoint(path, tensors, header)


def load_training_state(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: Optional[torch.amp.GradScaler], dist: DistInfo) -> Tuple[Dict[str, Any], bool]:
    """Load what :func:`save_training_state` wrote into ``module``, ``optimizer`` and ``scaler``, and
    restore this rank's RNG streams when the checkpoint was written by as many processes.

    Returns (the checkpoint's ``trainer`` metadata, whether the RNG streams were restored). Raises
    CheckpointError when the file holds no training state or its state does not fit the model.
    """
    tensors, header = load_checkpoint(path, device="cpu")
    tr = header.trainer
    if not tr or header.optimizer is None:
        raise CheckpointError(f"{path} holds no training state (trainer/optimizer metadata missing)")
    model_state = {k: v for k, v in tensors.items() if not k.startswith(RESERVED_PREFIXES)}
    missing, unexpected = module.load_state_dict(model_state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: model weights do not fit (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    try:
        optimizer.load_state_dict(optimizer_from_flat(tensors, header.optimizer))
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: optimizer state does not fit this model: {e}") from e
    if scaler is not None and header.grad_scaler:
        scaler.load_state_dict(header.grad_scaler)
    rngs = header.rng or []
    r = dist.rank
    if tr.get("world_size") != dist.world_size or r >= len(rngs):
        return tr, False
    ncuda = rngs[r].get("num_cuda", 0)
    set_rng_state({"torch": tensors[f"{RNG_PREFIX}torch_cpu.{r}"],
                   "cuda": [tensors[f"{RNG_PREFIX}cuda.{r}.{i}"] for i in range(ncuda)],
                   "numpy": rngs[r]["numpy"], "python": rngs[r]["python"]})
    return tr, True
