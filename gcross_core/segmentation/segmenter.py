"""The inference API: :class:`Segmenter` loads a segmenter checkpoint and labels raw point clouds.

``Segmenter`` is what the ROS node and the bag evaluator call: it takes raw points, grid-samples them,
builds the encoder input (:func:`gcross_core.model.features.encoder_features`), runs the model and
returns one label per input point. Loading checks every tensor name and shape against the checkpoint's
metadata (``gcross_core.segmentation.model``), so a checkpoint of another architecture or class set fails
with a message instead of predicting garbage; the colour range and voxel lattice the checkpoint records
(:class:`~gcross_core.model.features.InputConvention`) are the ones the Segmenter feeds.

A checkpoint with an instance head (metadata ``instance``) also gives objects:
:meth:`Segmenter.predict_instances` returns per-point labels plus the instances found by
:func:`gcross_core.segmentation.instance.group_instances` (ids, classes, scores, point indices).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from gcross_core.checkpoint import (HEAD_PREFIX, INSTANCE_HEAD_PREFIX, SEGMENTER_ENCODER_PREFIX, SEGMENTER_KIND, load_checkpoint,
                                    unprefixed)
from gcross_core.data.grid import collate_points, grid_sample
from gcross_core.errors import CheckpointError
from gcross_core.model.encoder import SpUNetConfig
from gcross_core.model.features import GCROSS_CONVENTION, IN_CHANNELS, InputConvention, encoder_features
from gcross_core.segmentation.instance import InstanceConfig, InstanceSet, group_instances, thing_mask
from gcross_core.checkpoint import load_strict
from gcross_core.segmentation.model import SegmentationModel

# A small segmenter of the synthetic rooms (SYNTHETIC_CLASSES) shipped with the package for demos and smoke
# tests; training/make_demo_checkpoint.sh rebuilds it.
DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "segmenter_synthetic.safetensors"


def rotation_z(angle_rad: float) -> np.ndarray:  # -> [3, 3] float32
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)


@dataclass
class InstancePrediction:
    """Semantic labels and instances of one cloud, on its original points."""

    labels: np.ndarray  # [N] int64 class per point
    confidence: np.ndarray  # [N] float32 probability of that class
    probs: np.ndarray  # [N, K] float32
    instances: InstanceSet  # point indices into the N points, classes, scores (decreasing)

    @property
    def instance(self) -> np.ndarray:  # [N] int64 instance index per point, -1 = none
        return self.instances.point_ids()


class Segmenter:
    """Load a segmentation checkpoint and label raw point clouds."""

    def __init__(self, model: SegmentationModel, class_names: Sequence[str], grid_size_m: float,
                 device: str = "cpu", convention: InputConvention = GCROSS_CONVENTION,
                 instance: Optional[InstanceConfig] = None):
        if len(class_names) != model.num_classes:
            raise ValueError(f"{len(class_names)} class names for a {model.num_classes}-class model")
        if model.has_instance_head and (instance is None or instance.stuff_classes is None):
            raise ValueError("a model with an instance head needs its InstanceConfig (stuff classes resolved)")
        self.instance_config = instance if model.has_instance_head else None
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.class_names = list(class_names)
        self.grid_size_m = float(grid_size_m)
        self.convention = convention  # colour range and voxel lattice the model was trained with

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_instance_head(self) -> bool:
        return self.instance_config is not None

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
                f"(train one with training/finetune.py, or import a Pointcept segmentor with "
                f"training/import_pointcept.py --classes ...)")
        names = meta.get("class_names")
        if not names or not isinstance(names, list) or len(names) < 2:
            raise CheckpointError(f"checkpoint {path} has no usable class_names in its metadata (got {names!r})")
        if expected_classes is not None and list(expected_classes) != list(names):
            raise CheckpointError(
                f"checkpoint {path} predicts {len(names)} classes {names[:5]}..., expected "
                f"{len(expected_classes)} classes {list(expected_classes)[:5]}...")
        convention = InputConvention.from_metadata(meta, path)
        instance = None
        if meta.get("instance") is not None:
            try:
                instance = InstanceConfig.from_dict(meta["instance"])
                if instance.stuff_classes is None:
                    raise ValueError("no stuff_classes")
                instance = instance.resolved("", names)  # checks the stuff classes against the class names
            except (TypeError, ValueError, AttributeError) as e:
                raise CheckpointError(f"checkpoint {path}: unusable instance settings in metadata: {e}") from e
        try:
            enc_cfg = SpUNetConfig.from_dict(meta["encoder_config"])
            model = SegmentationModel(enc_cfg, len(names), instance_head=instance is not None)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {path}: unusable encoder_config in metadata: {e}") from e
        if enc_cfg.in_channels != IN_CHANNELS:
            raise CheckpointError(f"checkpoint {path}: encoder takes {enc_cfg.in_channels} input channels, the "
                                  f"Segmenter feeds {IN_CHANNELS} (RGB + normal)")
        parts = [(meta.get("encoder_prefix", SEGMENTER_ENCODER_PREFIX), model.encoder), (HEAD_PREFIX, model.seg_head)]
        if model.offset_head is not None:
            parts.append((INSTANCE_HEAD_PREFIX, model.offset_head))
        for prefix, module in parts:
            load_strict(module, unprefixed(tensors, prefix), f"checkpoint {path}: {prefix} weights")
        grid = float(meta.get("grid_size_m", 0.02))
        if not grid > 0:
            raise CheckpointError(f"checkpoint {path}: grid_size_m must be > 0, got {grid}")
        return cls(model, names, grid, device, convention=convention, instance=instance)

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

    def _encoder_input(self, coord: np.ndarray, color: np.ndarray, normal: np.ndarray):
        """(PointBatch on the device, kept rows [n], row of every input point [N]) of one cloud: grid-sampled
        and featurised in the checkpoint's input convention."""
        keep, grid, inverse = grid_sample(coord, self.grid_size_m, lattice=self.convention.grid_lattice)
        feat = encoder_features(color[keep], normal[keep], self.convention.input_features)
        return collate_points([coord[keep]], [feat], [grid], [inverse]).to(self.device), keep, inverse

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
        probs = None
        for r in range(rotations):
            rot = rotation_z(2.0 * math.pi * r / rotations)
            c, n = (coord, normal) if r == 0 else (coord @ rot.T, normal @ rot.T)
            batch, _, _ = self._encoder_input(c, color, n)
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
        labels, conf = _labels_and_confidence(probs)
        return labels, conf, (probs if return_probs else None)

    @torch.no_grad()
    def predict_instances(self, coord: np.ndarray,  # [N, 3] metres
                          color: np.ndarray,  # [N, 3] 0..255
                          normal: np.ndarray,  # [N, 3] unit
                          ) -> InstancePrediction:
        """Labels and instances of a cloud (checkpoints with an instance head only).

        The model runs once on the grid-sampled rows; grouping
        (:func:`~gcross_core.segmentation.instance.group_instances`) works on the rows, and every
        original point joins the instances of its row.
        """
        if self.instance_config is None:
            raise CheckpointError("this segmenter's checkpoint has no instance head (train one with "
                                  "training/finetune.py and task: instance)")
        coord, color, normal = self._validate(coord, color, normal)
        batch, keep, inverse = self._encoder_input(coord, color, normal)
        logits, offsets = self.model(batch, with_offsets=True)
        row_probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
        thing = thing_mask(self.class_names, self.instance_config.stuff_classes)
        rows = group_instances(coord[keep], offsets.float().cpu().numpy(), row_probs, thing, self.instance_config)
        probs = row_probs[inverse]
        labels, conf = _labels_and_confidence(probs)
        return InstancePrediction(labels, conf, probs, rows.expand(inverse))


def _labels_and_confidence(probs: np.ndarray):  # [N, K] -> (labels [N] int64, confidence [N] float32)
    labels = probs.argmax(axis=1).astype(np.int64)
    return labels, np.take_along_axis(probs, labels[:, None], axis=1)[:, 0].astype(np.float32)
