"""The encoder's input: the one place that turns a point's colour and normal into what the encoder sees,
and the record of the conventions a model was trained with.

Pretraining samples, segmentation samples and :class:`~gcross_core.segmentation.segmenter.Segmenter` all call
:func:`encoder_features`, and all grid-sample with :func:`gcross_core.data.grid.grid_sample`. Two things vary
between sources of weights and change a model's predictions when they differ from training:

- the colour range (metadata ``input_features``): ``rgb01_normal`` feeds colour / 255 (gcross, Pointcept
  >= 1.6), ``rgb_minus1_1_normal`` feeds colour / 127.5 - 1 (Pointcept < 1.6 and the released GaussianCross
  weights; its ``NormalizeColor``);
- the voxel lattice (metadata ``grid_lattice``): ``min_corner`` floors from the cloud's minimum corner
  (gcross), ``center_shift`` floors from Pointcept's ``CenterShift(apply_z=True)`` origin (x, y at the
  bounding-box centre, z at its minimum), see :mod:`gcross_core.data.grid`.

:class:`InputConvention` carries both. Every checkpoint with an encoder records it; readers take it from
the metadata with :meth:`InputConvention.from_metadata`, which refuses a missing or unknown value instead
of guessing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from gcross_core.data.grid import CENTER_SHIFT, GRID_LATTICES, MIN_CORNER
from gcross_core.errors import CheckpointError

RGB01_NORMAL = "rgb01_normal"  # RGB / 255 in 0..1, then the unit normal
RGB_MINUS1_1_NORMAL = "rgb_minus1_1_normal"  # RGB / 127.5 - 1 in -1..1, then the unit normal
# input_features name -> (divisor, offset): encoder colour = colour (0..255) / divisor + offset
COLOR_RANGES = {RGB01_NORMAL: (255.0, 0.0), RGB_MINUS1_1_NORMAL: (127.5, -1.0)}
INPUT_FEATURES = RGB01_NORMAL  # what models trained here are fed unless their run says otherwise
IN_CHANNELS = 6

INPUT_FEATURES_KEY = "input_features"  # checkpoint metadata keys
GRID_LATTICE_KEY = "grid_lattice"


@dataclass(frozen=True)
class InputConvention:
    input_features: str  # a key of COLOR_RANGES
    grid_lattice: str  # one of gcross_core.data.grid.GRID_LATTICES

    def __post_init__(self) -> None:
        if self.input_features not in COLOR_RANGES:
            raise ValueError(f"input_features {self.input_features!r} is unknown: expected one of "
                             f"{sorted(COLOR_RANGES)}")
        if self.grid_lattice not in GRID_LATTICES:
            raise ValueError(f"grid_lattice {self.grid_lattice!r} is unknown: expected one of {list(GRID_LATTICES)}")

    def to_metadata(self) -> dict:
        return {INPUT_FEATURES_KEY: self.input_features, GRID_LATTICE_KEY: self.grid_lattice}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], source) -> "InputConvention":
        """The convention a checkpoint ``source`` records; CheckpointError naming the key when one is missing
        or unknown (never a default: feeding the wrong convention changes the predictions silently)."""
        allowed = {INPUT_FEATURES_KEY: sorted(COLOR_RANGES), GRID_LATTICE_KEY: list(GRID_LATTICES)}
        for key, values in allowed.items():
            if key not in meta:
                raise CheckpointError(f"checkpoint {source} has no {key!r} in its metadata (expected one of "
                                      f"{values}); it cannot say how its encoder input was built (a gcross "
                                      f"checkpoint written before the key existed: training/stamp_convention.py)")
            if meta[key] not in values:
                raise CheckpointError(f"checkpoint {source}: metadata {key!r} is {meta[key]!r}, expected one of "
                                      f"{values}")
        return cls(meta[INPUT_FEATURES_KEY], meta[GRID_LATTICE_KEY])


GCROSS_CONVENTION = InputConvention(RGB01_NORMAL, MIN_CORNER)  # pretraining and fine-tuning here by default
# Pointcept < 1.6 and the released GaussianCross weights: NormalizeColor = colour / 127.5 - 1, CenterShift
POINTCEPT_CONVENTION = InputConvention(RGB_MINUS1_1_NORMAL, CENTER_SHIFT)


def encoder_features(color: np.ndarray,  # [N, 3] 0..255
                     normal: np.ndarray,  # [N, 3] unit
                     input_features: str,  # a key of COLOR_RANGES (InputConvention.input_features)
                     ) -> np.ndarray:  # [N, 6] float32
    """Encoder input per point: the colour in the range ``input_features`` names, then the unit normal."""
    if input_features not in COLOR_RANGES:
        raise ValueError(f"input_features {input_features!r} is unknown: expected one of {sorted(COLOR_RANGES)}")
    color = np.asarray(color, np.float32)
    normal = np.asarray(normal, np.float32)
    assert color.ndim == 2 and color.shape[1] == 3, f"color has shape {color.shape}, expected [N, 3]"
    assert normal.shape == color.shape, f"normal has shape {normal.shape}, expected {color.shape}"
    divisor, offset = COLOR_RANGES[input_features]
    return np.concatenate([color / np.float32(divisor) + np.float32(offset), normal], axis=1)
