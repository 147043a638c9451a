"""Checkpoints: one ``.safetensors`` file, written atomically, loaded without unpickling.

Tensors are stored flat under their state-dict names. Everything else rides in the safetensors metadata,
one JSON string per key, and is read and written here only, as a :class:`CheckpointHeader`: the kind of
checkpoint, how to rebuild its model (encoder config, where its weights lie, classes, instance settings),
how its input was built (grid size, colour range, voxel lattice), the run that wrote it and, in a
trainer's ``last.safetensors``, the state to resume from. Tools read the header's attributes; a field
that is missing where a tool needs it, or that is malformed, is a :class:`CheckpointError` naming the file
and the field.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from gcross_core.errors import CheckpointError
from gcross_core.files import atomic_path

FORMAT_KEY = "gcross_format"
FORMAT_VERSION = "1"

T = TypeVar("T")

# ----------------------------------------------------------------------------------------------------
# checkpoint kinds (header ``kind``) and where each keeps its tensors

PRETRAIN_KIND = "pretrain"  # training/pretrain.py: final.safetensors of a pretraining run
SEGMENTER_KIND = "segmenter"  # what Segmenter.from_checkpoint loads
FINETUNE_KIND = "finetune"  # the trainer's checkpoints of a fine-tuning / linear-probe run
ENCODER_KIND = "encoder"  # an encoder alone: an imported Pointcept backbone (gcross_core.interop.pointcept)
PRETRAIN_ENCODER_PREFIX = "model.encoder"  # PretrainModule.model.encoder
SEGMENTER_ENCODER_PREFIX = "encoder"  # SegmentationModel.encoder (also gcross_core.interop.pointcept's default)
HEAD_PREFIX = "seg_head"  # SegmentationModel.seg_head
INSTANCE_HEAD_PREFIX = "offset_head"  # SegmentationModel.offset_head (instance segmentation)
# Where checkpoints of a known kind keep their encoder when their metadata has no ``encoder_prefix``
# (files written before the key existed); the format's only default, applied when a header is read.
DEFAULT_ENCODER_PREFIXES = {PRETRAIN_KIND: PRETRAIN_ENCODER_PREFIX, SEGMENTER_KIND: SEGMENTER_ENCODER_PREFIX,
                            ENCODER_KIND: SEGMENTER_ENCODER_PREFIX}


# ----------------------------------------------------------------------------------------------------
# the header


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and all(isinstance(s, str) for s in v)


# field -> (check of a present value, what the check expects); the metadata key is the field's name
_CHECKS: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "kind": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "encoder_config": (lambda v: isinstance(v, dict), "a JSON object (SpUNetConfig)"),
    "encoder_prefix": (lambda v: isinstance(v, str), "a string"),
    "grid_size_m": (lambda v: _is_number(v) and v > 0, "a number > 0 (metres)"),
    "input_features": (lambda v: isinstance(v, str), "a string"),
    "grid_lattice": (lambda v: isinstance(v, str), "a string"),
    "class_names": (lambda v: _is_str_list(v) and len(v) >= 1 and len(set(v)) == len(v),
                    "a non-empty list of unique strings"),
    "instance": (lambda v: isinstance(v, dict), "a JSON object (InstanceConfig)"),
    "model_config": (lambda v: isinstance(v, dict), "a JSON object (GaussianCrossConfig)"),
    "config": (lambda v: isinstance(v, dict), "a JSON object"),
    "trainer": (lambda v: isinstance(v, dict), "a JSON object"),
    "optimizer": (lambda v: isinstance(v, dict), "a JSON object"),
    "rng": (lambda v: isinstance(v, list), "a list"),
    "grad_scaler": (lambda v: isinstance(v, dict), "a JSON object"),
}


@dataclass(frozen=True)
class CheckpointHeader:
    """What a checkpoint says about itself: its safetensors metadata, typed.

    Every field but ``kind`` is optional in the format; the tool that needs one asks for it with
    :meth:`require` or :meth:`parse`, which name the file and the field when it is missing or unusable.
    There are no silent defaults: the one default of the format is ``encoder_prefix`` for the kinds of
    ``DEFAULT_ENCODER_PREFIXES``, filled in when a header is read.
    """

    kind: str  # PRETRAIN_KIND, SEGMENTER_KIND, FINETUNE_KIND, ENCODER_KIND (or a trainer user's own)
    encoder_config: Optional[Dict[str, Any]] = None  # SpUNetConfig.to_dict() of the encoder
    encoder_prefix: Optional[str] = None  # state-dict namespace of the encoder's tensors ("": none)
    grid_size_m: Optional[float] = None  # grid the encoder's input was sampled at (metres)
    input_features: Optional[str] = None  # colour range of the encoder input (model.features.InputConvention)
    grid_lattice: Optional[str] = None  # voxel lattice anchoring (model.features.InputConvention)
    class_names: Optional[Tuple[str, ...]] = None  # one per classifier output
    instance: Optional[Dict[str, Any]] = None  # InstanceConfig.to_dict() of a model with an instance head
    model_config: Optional[Dict[str, Any]] = None  # GaussianCrossConfig.to_dict() (pretraining checkpoints)
    config: Optional[Dict[str, Any]] = None  # the resolved config of the run that wrote the file
    trainer: Optional[Dict[str, Any]] = None  # the trainer's position: step, epoch, schedule, world size
    optimizer: Optional[Dict[str, Any]] = None  # optimizer param groups and scalar state (tensors ride apart)
    rng: Optional[List[Any]] = None  # per-rank numpy / python RNG states (torch's ride as tensors)
    grad_scaler: Optional[Dict[str, Any]] = None  # torch.amp.GradScaler state
    extra: Dict[str, Any] = field(default_factory=dict)  # provenance that no tool acts on (source, pretrained, ...)
    source: str = field(default="<new checkpoint>", compare=False)  # the file read, for messages; never written

    def __post_init__(self) -> None:
        for name, (check, expected) in _CHECKS.items():
            value = getattr(self, name)
            if value is None and name != "kind":
                continue
            if not check(value):
                raise CheckpointError(f"checkpoint {self.source}: metadata {name!r} is {value!r:.200}, "
                                      f"expected {expected}")
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.grid_size_m is not None:
            object.__setattr__(self, "grid_size_m", float(self.grid_size_m))
        clash = sorted(set(self.extra) & (set(_CHECKS) | {FORMAT_KEY}))
        if clash:
            raise CheckpointError(f"checkpoint {self.source}: extra metadata {clash} would shadow header fields")

    # -- reading and writing: the one place that knows the metadata layout ---------------------------
    def to_metadata(self) -> Dict[str, str]:
        """The safetensors metadata of this header: one JSON string per field that is set."""
        meta = {k: json.dumps(v) for k, v in self.extra.items()}
        for name in _CHECKS:
            value = getattr(self, name)
            if value is not None:
                meta[name] = json.dumps(list(value) if isinstance(value, tuple) else value)
        meta[FORMAT_KEY] = FORMAT_VERSION
        return meta

    @classmethod
    def from_metadata(cls, raw: Dict[str, str], source) -> "CheckpointHeader":
        """Parse safetensors metadata; CheckpointError naming ``source`` and the key when it is not a gcross
        header or a field is malformed."""
        if raw.get(FORMAT_KEY) != FORMAT_VERSION:
            raise CheckpointError(f"checkpoint {source} has no gcross metadata (expected {FORMAT_KEY}="
                                  f"{FORMAT_VERSION})")
        fields, extra = {}, {}
        for k, v in raw.items():
            if k == FORMAT_KEY:
                continue
            try:
                value = json.loads(v)
            except json.JSONDecodeError as e:
                raise CheckpointError(f"checkpoint {source}: metadata {k!r} is not JSON") from e
            if k in _CHECKS:
                if value is not None:
                    fields[k] = value
            else:
                extra[k] = value
        if "kind" not in fields:
            raise CheckpointError(f"checkpoint {source} has no 'kind' in its metadata (expected one of "
                                  f"{[PRETRAIN_KIND, SEGMENTER_KIND, FINETUNE_KIND, ENCODER_KIND]})")
        if "encoder_prefix" not in fields and fields["kind"] in DEFAULT_ENCODER_PREFIXES:
            fields["encoder_prefix"] = DEFAULT_ENCODER_PREFIXES[fields["kind"]]
        return cls(**fields, extra=extra, source=str(source))

    # -- asking for fields ----------------------------------------------------------------------------
    def require(self, name: str) -> Any:
        """The value of field ``name``; CheckpointError naming the file and the field when it is not set."""
        if name not in _CHECKS:
            raise KeyError(f"CheckpointHeader has no field {name!r}")
        value = getattr(self, name)
        if value is None:
            raise CheckpointError(f"checkpoint {self.source} (kind {self.kind!r}) has no {name!r} in its metadata")
        return value

    def parse(self, name: str, build: Callable[[Any], T]) -> T:
        """``build(value of name)`` (e.g. ``SpUNetConfig.from_dict``), its errors turned into a
        CheckpointError naming the file and the field."""
        value = self.require(name)
        try:
            return build(value)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"checkpoint {self.source}: unusable {name} in its metadata: {e}") from e

    def expect_kind(self, kinds: Sequence[str], what: str) -> None:
        """CheckpointError unless ``kind`` is one of ``kinds``; ``what`` says what the caller needs and how
        to get one."""
        if self.kind not in kinds:
            raise CheckpointError(f"checkpoint {self.source} is a {self.kind!r} checkpoint, expected {what}")

    def replace(self, **changes: Any) -> "CheckpointHeader":
        """A copy with ``changes`` applied (fields, or ``extra`` as a whole)."""
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------------------------------
# files


def save_checkpoint(path, tensors: Dict[str, torch.Tensor], header: CheckpointHeader) -> Path:
    """Write ``tensors`` and ``header`` to ``path`` atomically.

    The file is written next to its destination and renamed into place, so a crash mid-write leaves the
    previous checkpoint intact.
    """
    path = Path(path)
    if not isinstance(header, CheckpointHeader):
        raise TypeError(f"save_checkpoint takes a CheckpointHeader, got {type(header).__name__}")
    meta = header.to_metadata()
    # safetensors refuses shared or non-contiguous storage; clone into plain contiguous tensors
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path, durable=True) as tmp:
        save_file(flat, str(tmp), metadata=meta)
    return path


def read_header(path) -> CheckpointHeader:
    """The header of a checkpoint written by :func:`save_checkpoint`, without reading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {e}") from e
    return CheckpointHeader.from_metadata(raw, path)


def load_checkpoint(path, device: str = "cpu") -> Tuple[Dict[str, torch.Tensor], CheckpointHeader]:
    """Read a checkpoint written by :func:`save_checkpoint`: (tensors, header)."""
    header = read_header(path)
    try:
        tensors = load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {e}") from e
    return tensors, header


def stamp_header(path, **changes: Any) -> Path:
    """Rewrite ``path`` atomically with the same tensors and its header fields changed by ``changes``."""
    tensors, header = load_checkpoint(path)
    return save_checkpoint(path, tensors, header.replace(**changes))


# ----------------------------------------------------------------------------------------------------
# weights


def prefixed(state: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """Namespace a state dict: {'w': t} -> {'prefix.w': t}."""
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(tensors: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """Inverse of :func:`prefixed`: the entries under ``prefix.``, with the prefix removed ('' : all)."""
    if not prefix:
        return dict(tensors)
    p = prefix + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


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


def load_parts(tensors: Dict[str, torch.Tensor], header: CheckpointHeader,
               parts: Sequence[Tuple[str, torch.nn.Module]]) -> None:
    """Load every (prefix, module) of ``parts`` strictly from ``tensors`` (the second half of every
    ``from_checkpoint``: read the header, build the modules it describes, load them)."""
    for prefix, module in parts:
        load_strict(module, unprefixed(tensors, prefix), f"checkpoint {header.source}: {prefix or 'unprefixed'} weights")
