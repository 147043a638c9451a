"""3D semantic segmentation on the point encoder, and the ``Segmenter`` inference API.

A segmentation model is the SpUNet encoder followed by a per-point linear classifier (``seg_head``, the
same 1x1 map as Pointcept's ``final`` layer). Linear probing (paper Table 1) freezes the encoder, BatchNorm
statistics included, and trains only the classifier; fine-tuning (Tables 2-3) trains both.

``Segmenter`` is what the ROS node and the bag evaluator call: it takes raw points, grid-samples them,
runs the model and returns one label per input point. Its checkpoint carries the encoder configuration,
the class names, the grid size and the input-feature convention, and loading checks every tensor name
and shape against them, so a checkpoint of another architecture or class set fails with a message
instead of predicting garbage.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gcross_core.data.grid import collate_points, grid_sample
from gcross_core.model.encoder import SpUNet, SpUNetConfig
from gcross_core.checkpoint import CheckpointError, load_checkpoint, prefixed, save_checkpoint, unprefixed
from gcross_core.types import PointBatch

log = logging.getLogger(__name__)

IGNORE_INDEX = -1
SEGMENTER_KIND = "segmenter"
ENCODER_PREFIX = "encoder"  # where a segmenter checkpoint keeps its encoder weights
HEAD_PREFIX = "seg_head"
# The encoder input per point; recorded in checkpoints so a model trained on another convention is refused.
INPUT_FEATURES = "rgb01_normal"
# Where checkpoints of other kinds keep their encoder when their metadata does not say
# (pretraining: ``PretrainModule.model.encoder``; training/import_pointcept.py writes ``encoder``).
DEFAULT_ENCODER_PREFIXES = {"pretrain": "model.encoder", SEGMENTER_KIND: ENCODER_PREFIX}
# A small segmenter of the synthetic rooms (SYNTHETIC_CLASSES) shipped with the package for demos and smoke
# tests; training/make_demo_checkpoint.sh rebuilds it.
DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "segmenter_synthetic.safetensors"


class SegmentationModel(nn.Module):
    """Encoder + linear classifier: logits [N, K] for the rows of a PointBatch."""

    def __init__(self, encoder_config: SpUNetConfig, num_classes: int):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if encoder_config.num_classes != 0:
            raise ValueError(f"the encoder of a SegmentationModel must be a backbone (num_classes=0), got "
                             f"num_classes={encoder_config.num_classes}; the classifier is seg_head")
        self.encoder_config = encoder_config
        self.encoder = SpUNet(encoder_config)
        self.seg_head = nn.Linear(self.encoder.out_channels, num_classes)

    @property
    def num_classes(self) -> int:
        return self.seg_head.out_features

    @property
    def encoder_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.encoder.parameters())

    def forward(self, points: PointBatch) -> torch.Tensor:  # -> [N, K]
        if self.encoder_frozen:
            # no graph through a frozen encoder: linear probing costs one forward pass of it
            with torch.no_grad():
                feat = self.encoder(points)
        else:
            feat = self.encoder(points)
        return self.seg_head(feat)

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


def point_features(color: np.ndarray,  # [N, 3] 0..255
                   normal: np.ndarray,  # [N, 3] unit
                   ) -> np.ndarray:  # [N, 6] float32
    """Encoder input per point (``INPUT_FEATURES``): RGB scaled to 0..1 followed by the unit normal."""
    return np.concatenate([np.asarray(color, np.float32) / 255.0, np.asarray(normal, np.float32)], axis=1)


# ----------------------------------------------------------------------------------------------------
# checkpoints


def save_segmenter(path, model: SegmentationModel, class_names: Sequence[str], grid_size_m: float,
                   extra: Optional[dict] = None) -> Path:
    """Write a checkpoint that :meth:`Segmenter.from_checkpoint` loads.

    ``extra`` (JSON-serialisable) is stored next to the required metadata, e.g. the training config.
    """
    if len(class_names) != model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a {model.num_classes}-class head")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class names must be unique, got {list(class_names)}")
    if grid_size_m <= 0:
        raise ValueError(f"grid_size_m must be > 0, got {grid_size_m}")
    tensors = {**prefixed(model.encoder.state_dict(), ENCODER_PREFIX),
               **prefixed(model.seg_head.state_dict(), HEAD_PREFIX)}
    meta = {**(extra or {}), "kind": SEGMENTER_KIND, "encoder_config": model.encoder_config.to_dict(),
            "encoder_prefix": ENCODER_PREFIX, "class_names": list(class_names), "grid_size_m": float(grid_size_m),
            "input_features": INPUT_FEATURES}
    return save_checkpoint(path, tensors, meta)


def build_segmenter_checkpoint(path, class_names: Sequence[str], encoder_config: Optional[SpUNetConfig] = None,
                               grid_size_m: float = 0.02, seed: int = 0) -> Path:
    """A randomly initialised segmenter checkpoint (for tests and smoke runs)."""
    torch.manual_seed(seed)
    model = SegmentationModel(encoder_config or SpUNetConfig(), len(class_names))
    return save_segmenter(path, model, class_names, grid_size_m, extra={"trained": False})


def _load_strict(module: nn.Module, state: Dict[str, torch.Tensor], what: str) -> None:
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


def checkpoint_encoder(path) -> Tuple[Dict[str, torch.Tensor], SpUNetConfig, Dict[str, Any]]:
    """The encoder weights of a pretraining, segmenter or imported (Pointcept) checkpoint.

    Returns (encoder state dict without prefix, its SpUNetConfig, the checkpoint metadata). The prefix is
    read from the metadata (``encoder_prefix``) or, for a known ``kind``, its default. Raises
    CheckpointError when there is no encoder config or no tensor under the prefix.
    """
    tensors, meta = load_checkpoint(path)
    kind = meta.get("kind")
    prefix = meta.get("encoder_prefix", DEFAULT_ENCODER_PREFIXES.get(kind))
    if prefix is None:
        raise CheckpointError(f"checkpoint {path} (kind {kind!r}) says nowhere where its encoder weights are "
                              f"(no 'encoder_prefix' in its metadata)")
    if "encoder_config" not in meta:
        raise CheckpointError(f"checkpoint {path} has no encoder_config in its metadata")
    try:
        cfg = SpUNetConfig.from_dict(meta["encoder_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: unusable encoder_config in metadata: {e}") from e
    state = unprefixed(tensors, prefix) if prefix else dict(tensors)
    if not state:
        raise CheckpointError(f"checkpoint {path} has no tensors under {prefix!r} (kind {kind!r}); "
                              f"it holds e.g. {sorted(tensors)[:3]}")
    return state, cfg, meta


def load_pretrained_encoder(model: SegmentationModel, path) -> Dict[str, Any]:
    """Initialise ``model.encoder`` from a checkpoint (strict: every key and shape must match).

    Returns the checkpoint metadata. Raises CheckpointError when the checkpoint's encoder configuration
    differs from the model's or any tensor is missing, unexpected or of another shape.
    """
    state, cfg, meta = checkpoint_encoder(path)
    if cfg != model.encoder_config:
        raise CheckpointError(f"checkpoint {path} holds an encoder {cfg.to_dict()}, the model was built with "
                              f"{model.encoder_config.to_dict()}")
    _load_strict(model.encoder, state, f"encoder weights of {path}")
    return meta


# ----------------------------------------------------------------------------------------------------
# inference


def rotation_z(angle_rad: float) -> np.ndarray:  # -> [3, 3] float32
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)


class Segmenter:
    """Load a segmentation checkpoint and label raw point clouds."""

    def __init__(self, model: SegmentationModel, class_names: Sequence[str], grid_size_m: float,
                 device: str = "cpu"):
        if len(class_names) != model.num_classes:
            raise ValueError(f"{len(class_names)} class names for a {model.num_classes}-class model")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.class_names = list(class_names)
        self.grid_size_m = float(grid_size_m)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_checkpoint(cls, path, device: str = "cpu",
                        expected_classes: Optional[Sequence[str]] = None) -> "Segmenter":
        """Build from a checkpoint written by :func:`save_segmenter`.

        Raises CheckpointError when the file is missing or corrupt, is not a segmenter checkpoint, its
        weights do not fit the architecture its metadata describes, it was trained on another input
        convention, or (with ``expected_classes``) its class set differs from the one the caller needs.
        """
        tensors, meta = load_checkpoint(path)
        if meta.get("kind") != SEGMENTER_KIND:
            raise CheckpointError(
                f"checkpoint {path} is a {meta.get('kind', 'unknown')!r} checkpoint, expected a segmenter "
                f"(train one with training/finetune.py)")
        names = meta.get("class_names")
        if not names or not isinstance(names, list) or len(names) < 2:
            raise CheckpointError(f"checkpoint {path} has no usable class_names in its metadata (got {names!r})")
        if expected_classes is not None and list(expected_classes) != list(names):
            raise CheckpointError(
                f"checkpoint {path} predicts {len(names)} classes {names[:5]}..., expected "
                f"{len(expected_classes)} classes {list(expected_classes)[:5]}...")
        features = meta.get("input_features", INPUT_FEATURES)
        if features != INPUT_FEATURES:
            raise CheckpointError(f"checkpoint {path} was trained on input features {features!r}, this "
                                  f"Segmenter builds {INPUT_FEATURES!r}")
        try:
            enc_cfg = SpUNetConfig.from_dict(meta["encoder_config"])
            model = SegmentationModel(enc_cfg, len(names))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {path}: unusable encoder_config in metadata: {e}") from e
        if enc_cfg.in_channels != 6:
            raise CheckpointError(f"checkpoint {path}: encoder takes {enc_cfg.in_channels} input channels, the "
                                  "Segmenter feeds 6 (RGB + normal)")
        for prefix, module in ((meta.get("encoder_prefix", ENCODER_PREFIX), model.encoder),
                               (HEAD_PREFIX, model.seg_head)):
            _load_strict(module, unprefixed(tensors, prefix), f"checkpoint {path}: {prefix} weights")
        grid = float(meta.get("grid_size_m", 0.02))
        if not grid > 0:
            raise CheckpointError(f"checkpoint {path}: grid_size_m must be > 0, got {grid}")
        return cls(model, names, grid, device)

    def _validate(self, coord, color, normal) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        coord = np.asarray(coord)
        if coord.ndim != 2 or coord.shape[1] != 3 or len(coord) == 0:
            raise ValueError(f"coord has shape {coord.shape}, expected non-empty [N, 3]")
        n = len(coord)
        out = [coord.astype(np.float32, copy=False)]
        for name, arr in (("color", color), ("normal", normal)):
            arr = np.asarray(arr)
            if arr.shape != (n, 3):
                raise ValueError(f"{name} has shape {arr.shape}, expected ({n}, 3) to match coord")
            if not (np.issubdtype(arr.dtype, np.number) and not np.issubdtype(arr.dtype, np.complexfloating)):
                raise ValueError(f"{name} has dtype {arr.dtype}, expected a real number type")
            out.append(arr.astype(np.float32, copy=False))
        for name, arr in zip(("coord", "color", "normal"), out):
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} contains NaN or inf")
        return out[0], out[1], out[2]

    @torch.no_grad()
    def predict_proba(self, coord: np.ndarray,  # [N, 3] metres
                      color: np.ndarray,  # [N, 3] 0..255
                      normal: np.ndarray,  # [N, 3] unit
                      rotations: int = 1,
                      ) -> np.ndarray:  # [N, K] float32
        """Class probabilities per input point.

        With ``rotations`` > 1 the cloud (and its normals) is also turned about z by multiples of
        2 pi / rotations and the probabilities are averaged (test-time augmentation): the encoder is not
        rotation invariant, and the grid cells fall differently for every angle.
        """
        coord, color, normal = self._validate(coord, color, normal)
        if rotations < 1:
            raise ValueError(f"rotations must be >= 1, got {rotations}")
        rgb = color / 255.0
        probs = None
        for r in range(rotations):
            rot = rotation_z(2.0 * math.pi * r / rotations)
            c, n = (coord, normal) if r == 0 else (coord @ rot.T, normal @ rot.T)
            keep, grid, inverse = grid_sample(c, self.grid_size_m)
            feat = np.concatenate([rgb[keep], n[keep]], axis=1)
            batch = collate_points([c[keep]], [feat], [grid], [inverse]).to(self.device)
            p = torch.softmax(self.model(batch).float(), dim=1)[batch.inverse]
            probs = p if probs is None else probs + p
        if rotations > 1:
            probs /= rotations
        return probs.cpu().numpy()

    def predict(self, coord: np.ndarray,  # [N, 3] metres
                color: np.ndarray,  # [N, 3] 0..255
                normal: np.ndarray,  # [N, 3] unit
                return_probs: bool = False,
                rotations: int = 1,
                ) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        """(labels [N] int64, confidence [N] float32, probabilities [N, K] float32 or None), one per input point."""
        probs = self.predict_proba(coord, color, normal, rotations=rotations)
        labels = probs.argmax(axis=1).astype(np.int64)
        conf = np.take_along_axis(probs, labels[:, None], axis=1)[:, 0].astype(np.float32)
        return labels, conf, (probs if return_probs else None)
