"""The inference API: :class:`Segmenter` loads a segmenter checkpoint and labels raw point clouds.

``Segmenter`` is what the ROS node and the bag evaluator call: it takes raw points, builds the encoder input
(:class:`gcross_core.model.features.EncoderInput`: checked, grid-sampled, featurised), runs the model and
returns one label per input point. Loading reads the checkpoint's header, builds what it describes and loads
every tensor strictly (``gcross_core.checkpoint.load_parts``), so a checkpoint of another architecture or
class set fails with a message instead of predicting garbage; the grid size, colour range and voxel lattice
the checkpoint records are the ones the Segmenter feeds (a checkpoint without them is refused).

A checkpoint with an instance head (header ``instance``) also gives objects:
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

from gcross_core.checkpoint import HEAD_PREFIX, INSTANCE_HEAD_PREFIX, SEGMENTER_KIND, load_checkpoint, load_parts
from gcross_core.errors import CheckpointError, InputError
from gcross_core.geometry import rotation_z
from gcross_core.model.encoder import SpUNetConfig
from gcross_core.model.features import GCROSS_CONVENTION, EncoderBatch, EncoderInput, InputConvention, check_points
from gcross_core.segmentation.instance import InstanceConfig, InstanceSet, group_instances, thing_mask
from gcross_core.segmentation.model import SegmentationModel

# A small segmenter of the synthetic rooms (SYNTHETIC_CLASSES) shipped with the package for demos and smoke
# tests; training/make_demo_checkpoint.sh rebuilds it.
DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "segmenter_synthetic.safetensors"


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
            raise InputError(f"{len(class_names)} class names for a {model.num_classes}-class model")
        if model.has_instance_head and (instance is None or instance.stuff_classes is None):
            raise InputError("a model with an instance head needs its InstanceConfig (stuff classes resolved)")
        self.instance_config = instance if model.has_instance_head else None
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.class_names = list(class_names)
        # grid, colour range and voxel lattice the model was trained with
        self.encoder_input = EncoderInput(float(grid_size_m), convention)

    @property
    def grid_size_m(self) -> float:
        return self.encoder_input.grid_size_m

    @property
    def convention(self) -> InputConvention:
        return self.encoder_input.convention

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_instance_head(self) -> bool:
        return self.instance_config is not None

    @classmethod
    def from_checkpoint(cls, path, device: str = "cpu",
                        expected_classes: Optional[Sequence[str]] = None) -> "Segmenter":
        """Build from a checkpoint written by :func:`save_segmenter`: read the header, build the model it
        describes, load every tensor strictly.

        Raises CheckpointError naming the file (and the field) when the file is missing or corrupt, is not a
        segmenter checkpoint, lacks its classes, encoder config, grid size or input convention, its weights
        do not fit the architecture its header describes, or (with ``expected_classes``) its class set
        differs from the one the caller needs.
        """
        tensors, header = load_checkpoint(path)
        header.expect_kind([SEGMENTER_KIND], "a segmenter (train one with training/finetune.py, or import a "
                                             "Pointcept segmentor with training/import_pointcept.py --classes ...)")
        names = list(header.require("class_names"))
        if len(names) < 2:
            raise CheckpointError(f"checkpoint {path}: class_names {names!r} in its metadata: a segmenter needs "
                                  f"at least 2 classes")
        if expected_classes is not None and list(expected_classes) != names:
            raise CheckpointError(
                f"checkpoint {path} predicts {len(names)} classes {names[:5]}..., expected "
                f"{len(expected_classes)} classes {list(expected_classes)[:5]}...")
        instance = None
        if header.instance is not None:
            instance = header.parse("instance", lambda d: _resolved_instance_config(d, names))
        enc_cfg = header.parse("encoder_config", SpUNetConfig.from_dict)
        encoder_input = EncoderInput.from_header(header, enc_cfg.in_channels)
        model = header.parse("encoder_config", lambda _: SegmentationModel(enc_cfg, len(names),
                                                                           instance_head=instance is not None))
        parts = [(header.require("encoder_prefix"), model.encoder), (HEAD_PREFIX, model.seg_head)]
        if model.offset_head is not None:
            parts.append((INSTANCE_HEAD_PREFIX, model.offset_head))
        load_parts(tensors, header, parts)
        return cls(model, names, encoder_input.grid_size_m, device, convention=encoder_input.convention,
                   instance=instance)

    def _encoder_input(self, coord: np.ndarray, color: np.ndarray, normal: np.ndarray) -> EncoderBatch:
        return self.encoder_input.batch(coord, color, normal, self.device)

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
        coord, color, normal = check_points(coord, color, normal)
        if rotations < 1:
            raise InputError(f"rotations must be >= 1, got {rotations}")
        probs = None
        for r in range(rotations):
            rot = rotation_z(2.0 * math.pi * r / rotations)
            c, n = (coord, normal) if r == 0 else (coord @ rot.T, normal @ rot.T)
            batch = self._encoder_input(c, color, n).points
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
        encoded = self._encoder_input(coord, color, normal)
        keep, inverse = encoded.keep, encoded.inverse
        logits, offsets = self.model(encoded.points, with_offsets=True)
        row_probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
        thing = thing_mask(self.class_names, self.instance_config.stuff_classes)
        rows = group_instances(np.asarray(coord, np.float32)[keep], offsets.float().cpu().numpy(), row_probs, thing,
                               self.instance_config, normal=np.asarray(normal, np.float32)[keep])
        probs = row_probs[inverse]
        labels, conf = _labels_and_confidence(probs)
        return InstancePrediction(labels, conf, probs, rows.expand(inverse))


def _labels_and_confidence(probs: np.ndarray):  # [N, K] -> (labels [N] int64, confidence [N] float32)
    labels = probs.argmax(axis=1).astype(np.int64)
    return labels, np.take_along_axis(probs, labels[:, None], axis=1)[:, 0].astype(np.float32)


def _resolved_instance_config(settings: dict, class_names: Sequence[str]) -> InstanceConfig:
    """A checkpoint's instance settings with their stuff classes checked against its class names."""
    instance = InstanceConfig.from_dict(settings)
    if instance.stuff_classes is None:
        raise InputError("no stuff_classes")
    return instance.resolved("", class_names)
