"""Checkpoints: one ``.safetensors`` file, written atomically, loaded without unpickling.

Tensors are stored flat under their state-dict names; everything else (the resolved config, class
names, step, RNG state, ...) rides in the header metadata as JSON strings.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from gcross_core.errors import CheckpointError

FORMAT_KEY = "gcross_format"
FORMAT_VERSION = "1"


def save_checkpoint(path, tensors: Dict[str, torch.Tensor], metadata: Dict[str, Any]) -> Path:
    """Write ``tensors`` and JSON-serialisable ``metadata`` to ``path`` atomically.

    The file is written next to its destination and renamed into place, so a crash mid-write leaves the
    previous checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: json.dumps(v) for k, v in metadata.items()}
    meta[FORMAT_KEY] = FORMAT_VERSION
    # safetensors refuses shared or non-contiguous storage; clone into plain contiguous tensors
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(flat, tmp, metadata=meta)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_metadata(path) -> Dict[str, Any]:
    """The metadata of a checkpoint written by :func:`save_checkpoint`, without reading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {e}") from e
    if raw.get(FORMAT_KEY) != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has no gcross metadata (expected {FORMAT_KEY}={FORMAT_VERSION})")
    meta = {}
    for k, v in raw.items():
        if k == FORMAT_KEY:
            continue
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"checkpoint {path}: metadata {k!r} is not JSON") from e
    return meta


def load_checkpoint(path, device: str = "cpu") -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`: (tensors, metadata)."""
    meta = load_metadata(path)
    try:
        tensors = load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {e}") from e
    return tensors, meta


def stamp_metadata(path, updates: Dict[str, Any]) -> Path:
    """Rewrite ``path`` atomically with the same tensors and its metadata updated by ``updates``."""
    tensors, meta = load_checkpoint(path)
    return save_checkpoint(path, tensors, {**meta, **updates})


def prefixed(state: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """Namespace a state dict: {'w': t} -> {'prefix.w': t}."""
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(tensors: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """Inverse of :func:`prefixed`: the entries under ``prefix.``, with the prefix removed."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


# ----------------------------------------------------------------------------------------------------
# checkpoint kinds (metadata "kind") and where each keeps its tensors

PRETRAIN_KIND = "pretrain"  # training/pretrain.py: final.safetensors of a pretraining run
SEGMENTER_KIND = "segmenter"  # what Segmenter.from_checkpoint loads
FINETUNE_KIND = "finetune"  # the trainer's checkpoints of a fine-tuning / linear-probe run
ENCODER_KIND = "encoder"  # an encoder alone: an imported Pointcept backbone (gcross_core.model.pointcept)
PRETRAIN_ENCODER_PREFIX = "model.encoder"  # PretrainModule.model.encoder
SEGMENTER_ENCODER_PREFIX = "encoder"  # SegmentationModel.encoder (also gcross_core.model.pointcept's default)
HEAD_PREFIX = "seg_head"  # SegmentationModel.seg_head
INSTANCE_HEAD_PREFIX = "offset_head"  # SegmentationModel.offset_head (instance segmentation)
# Where checkpoints keep their encoder when their metadata has no ``encoder_prefix``.
DEFAULT_ENCODER_PREFIXES = {PRETRAIN_KIND: PRETRAIN_ENCODER_PREFIX, SEGMENTER_KIND: SEGMENTER_ENCODER_PREFIX,
                            ENCODER_KIND: SEGMENTER_ENCODER_PREFIX}


def load_strict(module: torch.nn.Module, state: Dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict with every name and shape checked first, so a mismatch names the keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                 for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or bad_shape:
        raise CheckpointError(
            f"{what} do not match the architecture ({len(missing)} missing {missing[:5]}, {len(unexpected)} "
            f"unexpected {unexpected[:5]}, {len(bad_shape)} of another shape {bad_shape[:5]})")
    module.load_state_dict(state, strict=True)
