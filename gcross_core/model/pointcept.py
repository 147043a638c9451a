"""Pointcept SpUNet-v1m1 checkpoints (.pth) -> gcross encoder checkpoints (.safetensors).

Pointcept (and the released GaussianCross / PonderV2 / MSC weights built on it) saves
``{"state_dict": {...}, "epoch": ..., ...}`` with keys such as ``module.backbone.conv_input.0.weight``.
:func:`import_pointcept_checkpoint` reads it without unpickling arbitrary objects
(``torch.load(weights_only=True)`` with an allow-list of numpy constructors), strips the ``module.`` /
``backbone.`` prefixes, infers the SpUNet configuration from the tensor shapes (or checks the one given),
and refuses to write anything if a key is missing, unexpected or of the wrong shape.
``training/import_pointcept.py`` is its command line.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from gcross_core.checkpoint import prefixed, save_checkpoint
from gcross_core.errors import PointceptImportError
from gcross_core.model.encoder import SpUNet, SpUNetConfig


# Input convention of encoders trained in Pointcept: colour in [-1, 1] (NormalizeColor), then unit normal
POINTCEPT_INPUT_FEATURES = "rgb_minus1_1_normal"


@dataclass
class ImportReport:
    config: SpUNetConfig
    converted: List[str] = field(default_factory=list)  # encoder keys written
    missing: List[str] = field(default_factory=list)  # encoder keys absent from the checkpoint
    unexpected: List[str] = field(default_factory=list)  # backbone keys the encoder does not have
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)  # key, got, want
    outside_backbone: List[str] = field(default_factory=list)  # keys beside `backbone.` (heads), not converted


def _numpy_safe_globals() -> list:
    """Constructors of numpy scalars/arrays: Pointcept stores e.g. best_metric_value as a numpy float.

    They rebuild plain data, so allowing them keeps weights_only loading free of arbitrary code.
    """
    try:
        from numpy._core import multiarray as ma
    except ImportError:  # numpy < 2
        from numpy.core import multiarray as ma

    allowed = [ma.scalar, ma._reconstruct, np.ndarray, np.dtype]
    allowed += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    # files written under numpy < 2 name the same constructors numpy.core.multiarray.*
    allowed += [(ma.scalar, "numpy.core.multiarray.scalar"), (ma._reconstruct, "numpy.core.multiarray._reconstruct")]
    return allowed


def load_pointcept_checkpoint(path) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Read a Pointcept .pth: (state dict with its original key names, other top-level entries)."""
    path = Path(path)
    if not path.is_file():
        raise PointceptImportError(f"{path} does not exist")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unpickling failure with the file name
        raise PointceptImportError(f"{path}: cannot be read with torch.load(weights_only=True): {e}") from e
    if not isinstance(obj, dict):
        raise PointceptImportError(f"{path}: expected a dict, got {type(obj).__name__}")
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            state, extra = obj[key], {k: v for k, v in obj.items() if k != key}
            break
    else:
        state, extra = obj, {}
    non_tensor = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not state or non_tensor:
        raise PointceptImportError(
            f"{path}: no state dict of tensors found (top-level keys {sorted(obj)[:10]}; "
            f"non-tensor entries {non_tensor[:5]})")
    return state, extra


def split_backbone(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Strip ``module.`` (DataParallel/DDP) and ``backbone.`` (Pointcept segmentor/pretrainer) prefixes.

    If any key lives under ``backbone.``, only those keys are the encoder and the others (decoders,
    segmentation heads, projection heads) are returned by name; otherwise every key is the encoder.
    """
    stripped = {}
    for k, v in state.items():
        name = k
        while name.startswith("module."):
            name = name[len("module."):]
        stripped[name] = v
    if any(k.startswith("backbone.") for k in stripped):
        backbone = {k[len("backbone."):]: v for k, v in stripped.items() if k.startswith("backbone.")}
        others = sorted(k for k in stripped if not k.startswith("backbone."))
        return backbone, others
    return stripped, []


def infer_spunet_config(state: Dict[str, torch.Tensor]) -> SpUNetConfig:
    """Read channels and block counts off the tensor shapes (spconv 2.2+ weights: [out, k, k, k, in])."""
    def weight(key: str) -> torch.Tensor:
        if key not in state:
            raise PointceptImportError(f"cannot infer the SpUNet layout: key {key!r} is missing")
        w = state[key]
        if w.ndim != 5:
            raise PointceptImportError(f"{key} has shape {tuple(w.shape)}, expected a 5-d spconv weight "
                                       "[out, k, k, k, in]")
        return w

    stem = weight("conv_input.0.weight")
    stages = sorted({int(m.group(1)) for k in state for m in [re.match(r"down\.(\d+)\.", k)] if m})
    if not stages or stages != list(range(len(stages))):
        raise PointceptImportError(f"cannot infer the SpUNet layout: down stages found {stages}")
    n = len(stages)

    def blocks(prefix: str) -> int:
        return len({m.group(1) for k in state for m in [re.match(rf"{prefix}\.block(\d+)\.", k)] if m})

    enc_ch = [int(weight(f"down.{s}.0.weight").shape[0]) for s in range(n)]
    dec_ch = [int(weight(f"up.{s}.0.weight").shape[0]) for s in range(n)]  # width of decoder stage s
    enc_layers = [blocks(f"enc.{s}") for s in range(n)]
    dec_layers = [blocks(f"dec.{s}") for s in range(n)]
    # config order: encoder stages 0..n-1, then decoder stages from the coarsest (n-1) back to 0
    channels = tuple(enc_ch + dec_ch[::-1])
    layers = tuple(enc_layers + dec_layers[::-1])
    num_classes = int(state["final.weight"].shape[0]) if "final.weight" in state else 0
    return SpUNetConfig(in_channels=int(stem.shape[-1]), base_channels=int(stem.shape[0]),
                        channels=channels, layers=layers, num_classes=num_classes)


def _layout_hint(got: Tuple[int, ...], want: Tuple[int, ...]) -> str:
    if len(got) == 5 and sorted(got) == sorted(want) and got != want:
        return " (same sizes in another order: written by spconv < 2.2? re-save it with spconv >= 2.2)"
    return ""


def convert_state_dict(state: Dict[str, torch.Tensor], config: Optional[SpUNetConfig] = None,
                       allow_partial: bool = False) -> Tuple[Dict[str, torch.Tensor], ImportReport]:
    """Map a Pointcept state dict onto SpUNet(config); raises PointceptImportError listing every problem."""
    backbone, others = split_backbone(state)
    cfg = config or infer_spunet_config(backbone)
    model = SpUNet(cfg)
    expected = model.state_dict()
    report = ImportReport(config=cfg, outside_backbone=others)
    report.missing = [k for k in expected if k not in backbone]
    report.unexpected = sorted(k for k in backbone if k not in expected)
    report.mismatched = [(k, tuple(backbone[k].shape), tuple(v.shape)) for k, v in expected.items()
                         if k in backbone and tuple(backbone[k].shape) != tuple(v.shape)]
    problems = []
    if report.unexpected:
        problems.append(f"{len(report.unexpected)} unexpected key(s): {report.unexpected}")
    if report.mismatched:
        problems.append(f"{len(report.mismatched)} shape mismatch(es): " + "; ".join(
            f"{k} has {g}, expected {w}{_layout_hint(g, w)}" for k, g, w in report.mismatched))
    if report.missing and not allow_partial:
        problems.append(f"{len(report.missing)} missing key(s): {report.missing}")
    if problems:
        raise PointceptImportError(f"checkpoint does not match SpUNet({cfg}): " + " | ".join(problems))
    tensors = {}
    for k, v in expected.items():
        if k in backbone:
            t = backbone[k]
            tensors[k] = t.float() if t.is_floating_point() else t
            report.converted.append(k)
    # final check: the converted tensors load into the module the metadata describes
    model.load_state_dict(tensors, strict=not allow_partial)
    return tensors, report


def import_pointcept_checkpoint(src, dst, config: Optional[SpUNetConfig] = None, allow_partial: bool = False,
                                prefix: str = "encoder") -> ImportReport:
    """Convert ``src`` (.pth) into ``dst`` (.safetensors) with tensors under ``prefix.`` (none if empty)."""
    state, extra = load_pointcept_checkpoint(src)
    tensors, report = convert_state_dict(state, config, allow_partial)
    metadata = {
        "model": "spunet",
        "encoder_config": report.config.to_dict(),
        "encoder_prefix": prefix,
        # Pointcept's NormalizeColor feeds colour / 127.5 - 1 (then the normal); gcross feeds RGB in 0..1
        "input_features": POINTCEPT_INPUT_FEATURES,
        "source": {"format": "pointcept", "file": Path(src).name,
                   "epoch": int(extra["epoch"]) if isinstance(extra.get("epoch"), (int, np.integer)) else None},
        "missing_keys": report.missing,
        "not_converted_keys": report.outside_backbone,
    }
    save_checkpoint(dst, prefixed(tensors, prefix) if prefix else tensors, metadata)
    return report


__all__ = ["POINTCEPT_INPUT_FEATURES", "ImportReport", "load_pointcept_checkpoint", "split_backbone",
           "infer_spunet_config", "convert_state_dict", "import_pointcept_checkpoint"]
