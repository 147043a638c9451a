"""The segmentation model: the point encoder followed by a per-point linear classifier, its loss, and
its checkpoints.

A segmentation model is the SpUNet encoder followed by ``seg_head``, the same 1x1 map as Pointcept's
``final`` layer. Linear probing (paper Table 1) freezes the encoder, BatchNorm statistics included, and
trains only the classifier; fine-tuning (Tables 2-3) trains both.

With an instance head (:mod:`gcross_core.segmentation.instance`, paper Sec. 4.2.4) the model also
predicts a per-point offset to the instance centre (``offset_head``, PointGroup's offset branch); a
checkpoint with one stores it under ``offset_head.*`` and its grouping settings in the metadata
(``instance``). Checkpoints without it load as semantic-only models.

A segmenter checkpoint carries the encoder configuration, the class names, the grid size and the
input convention (colour range and voxel lattice, :class:`~gcross_core.model.features.InputConvention`)
next to the weights; :func:`checkpoint_encoder` reads the encoder out of any
checkpoint kind (pretraining, segmenter, imported Pointcept).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from gcross_core.checkpoint import (HEAD_PREFIX, INSTANCE_HEAD_PREFIX, SEGMENTER_ENCODER_PREFIX, SEGMENTER_KIND,
                                    CheckpointHeader, load_checkpoint, load_strict, prefixed, save_checkpoint,
                                    unprefixed)
from gcross_core.errors import CheckpointError, ConfigError, InputError
from gcross_core.model.encoder import SpUNet, SpUNetConfig
from gcross_core.model.features import GCROSS_CONVENTION, EncoderInput, InputConvention
from gcross_core.segmentation.instance import InstanceConfig, OffsetHead
from gcross_core.types import PointBatch

IGNORE_INDEX = -1


class SegmentationModel(nn.Module):
    """Encoder + linear classifier: logits [N, K] for the rows of a PointBatch; with ``instance_head``
    also an offset [N, 3] to the instance centre."""

    def __init__(self, encoder_config: SpUNetConfig, num_classes: int, instance_head: bool = False):
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2 (a classifier needs two classes at least), got {num_classes}")
        if encoder_config.num_classes != 0:
            raise ValueError(f"the encoder of a SegmentationModel must be a backbone (num_classes=0), got "
                             f"num_classes={encoder_config.num_classes}; the classifier is seg_head")
        self.encoder_config = encoder_config
        self.encoder = SpUNet(encoder_config)
        self.seg_head = nn.Linear(self.encoder.out_channels, num_classes)
        self.offset_head = OffsetHead(self.encoder.out_channels) if instance_head else None

    @property
    def has_instance_head(self) -> bool:
        return self.offset_head is not None

    @property
    def num_classes(self) -> int:
        return self.seg_head.out_features

    @property
    def encoder_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.encoder.parameters())

    def forward(self, points: PointBatch, with_offsets: bool = False):
        """logits [N, K]; with ``with_offsets`` (instance head only) (logits [N, K], offsets [N, 3])."""
        if self.encoder_frozen:
            # no graph through a frozen encoder: linear probing costs one forward pass of it
            with torch.no_grad():
                feat = self.encoder(points)
        else:
            feat = self.encoder(points)
        if not with_offsets:
            return self.seg_head(feat)
        if self.offset_head is None:
            raise ValueError("offsets asked of a SegmentationModel without an instance head")
        return self.seg_head(feat), self.offset_head(feat)

    def freeze_encoder(self) -> None:
        """Linear probing: only the classifier trains; the encoder's BatchNorm statistics stay fixed."""
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.encoder_frozen:
            self.encoder.eval()
        return self


def segmentation_loss(logits: torch.Tensor,  # [N, K]
                      labels: torch.Tensor,  # [N] int64, -1 = ignore
                      ) -> torch.Tensor:
    """Cross-entropy over the labelled rows (ignore index -1)."""
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits {tuple(logits.shape)} must be [N, K] and labels {tuple(labels.shape)} [N]")
    if not (labels != IGNORE_INDEX).any():
        # cross_entropy would return NaN on an all-ignored batch; a zero loss keeps the graph intact
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


# ----------------------------------------------------------------------------------------------------
# checkpoints


def save_segmenter(path, model: SegmentationModel, class_names: Sequence[str], grid_size_m: float,
                   extra: Optional[dict] = None, convention: InputConvention = GCROSS_CONVENTION,
                   instance: Optional[InstanceConfig] = None) -> Path:
    """Write a checkpoint that :meth:`Segmenter.from_checkpoint` loads.

    ``extra`` (JSON-serialisable) is stored next to the required metadata, e.g. the training config.
    ``convention``: the colour range and voxel lattice the model was trained with (a fine-tuning run passes
    its own, e.g. the one of an imported Pointcept backbone).
    ``instance``: the grouping settings of a model with an instance head (required with one, its
    ``stuff_classes`` resolved).
    """
    if model.has_instance_head != (instance is not None):
        raise ValueError("an instance head needs its InstanceConfig and an InstanceConfig needs the head")
    if instance is not None and instance.stuff_classes is None:
        raise ValueError("save_segmenter: resolve the InstanceConfig's stuff_classes first (InstanceConfig.resolved)")
    if len(class_names) != model.num_classes:
        raise InputError(f"{len(class_names)} class names for a {model.num_classes}-class head, expected "
                         f"{model.num_classes}")
    if len(set(class_names)) != len(class_names):
        dup = sorted({n for n in class_names if list(class_names).count(n) > 1})
        raise InputError(f"class names must be unique, got {dup} more than once")
    encoder_input = EncoderInput(grid_size_m, convention)  # InputError unless grid_size_m > 0
    tensors = {**prefixed(model.encoder.state_dict(), SEGMENTER_ENCODER_PREFIX),
               **prefixed(model.seg_head.state_dict(), HEAD_PREFIX)}
    if model.offset_head is not None:
        tensors.update(prefixed(model.offset_head.state_dict(), INSTANCE_HEAD_PREFIX))
    extra = dict(extra or {})
    config = extra.pop("config", None)
    header = CheckpointHeader(kind=SEGMENTER_KIND, encoder_config=model.encoder_config.to_dict(),
                              encoder_prefix=SEGMENTER_ENCODER_PREFIX, class_names=tuple(class_names),
                              instance=None if instance is None else instance.to_dict(), config=config,
                              extra=extra, **encoder_input.header_fields())
    return save_checkpoint(path, tensors, header)


def build_segmenter_checkpoint(path, class_names: Sequence[str], encoder_config: Optional[SpUNetConfig] = None,
                               grid_size_m: float = 0.02, seed: int = 0,
                               convention: InputConvention = GCROSS_CONVENTION,
                               instance: Optional[InstanceConfig] = None) -> Path:
    """A randomly initialised segmenter checkpoint (for tests and smoke runs); with ``instance`` (stuff
    classes resolved) it has an instance head."""
    torch.manual_seed(seed)
    model = SegmentationModel(encoder_config or SpUNetConfig(), len(class_names), instance_head=instance is not None)
    return save_segmenter(path, model, class_names, grid_size_m, extra={"trained": False}, convention=convention,
                          instance=instance)


def checkpoint_encoder(path) -> Tuple[Dict[str, torch.Tensor], SpUNetConfig, CheckpointHeader]:
    """The encoder weights of a pretraining, segmenter or imported (Pointcept) checkpoint.

    Returns (encoder state dict without prefix, its SpUNetConfig, the checkpoint header). The prefix is the
    header's ``encoder_prefix`` (the format's default for a known ``kind``). Raises CheckpointError when
    there is no encoder config or no tensor under the prefix.
    """
    tensors, header = load_checkpoint(path)
    prefix = header.require("encoder_prefix")
    cfg = header.parse("encoder_config", SpUNetConfig.from_dict)
    state = unprefixed(tensors, prefix)
    if not state:
        raise CheckpointError(f"checkpoint {path} has no tensors under {prefix!r} (kind {header.kind!r}); "
                              f"it holds e.g. {sorted(tensors)[:3]}")
    return state, cfg, header


def load_pretrained_encoder(model: SegmentationModel, path) -> CheckpointHeader:
    """Initialise ``model.encoder`` from a checkpoint (strict: every key and shape must match).

    Returns the checkpoint header. Raises CheckpointError when the checkpoint's encoder configuration
    differs from the model's or any tensor is missing, unexpected or of another shape.
    """
    state, cfg, header = checkpoint_encoder(path)
    if cfg != model.encoder_config:
        raise CheckpointError(f"checkpoint {path} holds an encoder {cfg.to_dict()}, the model was built with "
                              f"{model.encoder_config.to_dict()}")
    load_strict(model.encoder, state, f"encoder weights of {path}")
    return header
