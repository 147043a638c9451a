"""The encoder's input: the one place that turns raw points into what the encoder sees, and the record of
the conventions a model was trained with.

:class:`EncoderInput` (a grid size and an :class:`InputConvention`) builds it: :meth:`EncoderInput.batch`
validates a cloud (:func:`check_points`), grid-samples it (:func:`gcross_core.data.grid.grid_sample`),
computes :func:`encoder_features` and collates one :class:`~gcross_core.types.PointBatch`. The inference
APIs (:class:`~gcross_core.segmentation.segmenter.Segmenter`, :class:`~gcross_core.model.api.GaussianCrossModel`)
call it as a whole; training datasets, which crop and shuffle between sampling and features, call its
:meth:`~EncoderInput.grid_sample` and :meth:`~EncoderInput.features`. Two things vary between sources of
weights and change a model's predictions when they differ from training:

- the colour range (header ``input_features``): ``rgb01_normal`` feeds colour / 255 (gcross, Pointcept
  >= 1.6), ``rgb_minus1_1_normal`` feeds colour / 127.5 - 1 (Pointcept < 1.6 and the released GaussianCross
  weights; its ``NormalizeColor``);
- the voxel lattice (header ``grid_lattice``): ``min_corner`` floors from the cloud's minimum corner
  (gcross), ``center_shift`` floors from Pointcept's ``CenterShift(apply_z=True)`` origin (x, y at the
  bounding-box centre, z at its minimum), see :mod:`gcross_core.data.grid`.

:class:`InputConvention` carries both. Every checkpoint with an encoder records it; readers take it from
the checkpoint header with :meth:`EncoderInput.from_header` / :meth:`InputConvention.from_header`, which
refuse a missing or unknown value instead of guessing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
import torch

from gcross_core.checkpoint import CheckpointHeader
from gcross_core.data.grid import CENTER_SHIFT, GRID_LATTICES, MIN_CORNER, collate_points, grid_sample
from gcross_core.errors import CheckpointError, InputError
from gcross_core.types import PointBatch

RGB01_NORMAL = "rgb01_normal"  # RGB / 255 in 0..1, then the unit normal
RGB_MINUS1_1_NORMAL = "rgb_minus1_1_normal"  # RGB / 127.5 - 1 in -1..1, then the unit normal
# input_features name -> (divisor, offset): encoder colour = colour (0..255) / divisor + offset
COLOR_RANGES = {RGB01_NORMAL: (255.0, 0.0), RGB_MINUS1_1_NORMAL: (127.5, -1.0)}
INPUT_FEATURES = RGB01_NORMAL  # what models trained here are fed unless their run says otherwise
IN_CHANNELS = 6


@dataclass(frozen=True)
class InputConvention:
    input_features: str  # a key of COLOR_RANGES
    grid_lattice: str  # one of gcross_core.data.grid.GRID_LATTICES

    def __post_init__(self) -> None:
        if self.input_features not in COLOR_RANGES:
            raise InputError(f"input_features {self.input_features!r} is unknown: expected one of "
                             f"{sorted(COLOR_RANGES)}")
        if self.grid_lattice not in GRID_LATTICES:
            raise InputError(f"grid_lattice {self.grid_lattice!r} is unknown: expected one of {list(GRID_LATTICES)}")

    def header_fields(self) -> dict:
        """The header fields that record this convention (``CheckpointHeader(kind, **header_fields())``)."""
        return {"input_features": self.input_features, "grid_lattice": self.grid_lattice}

    @classmethod
    def from_header(cls, header: CheckpointHeader) -> "InputConvention":
        """The convention a checkpoint records; CheckpointError naming the file and the field when one is
        missing or unknown (never a default: feeding the wrong convention changes the predictions silently)."""
        allowed = {"input_features": sorted(COLOR_RANGES), "grid_lattice": list(GRID_LATTICES)}
        for name, values in allowed.items():
            value = getattr(header, name)
            if value is None:
                raise CheckpointError(f"checkpoint {header.source} has no {name!r} in its metadata (expected one "
                                      f"of {values}); it cannot say how its encoder input was built (a gcross "
                                      f"checkpoint written before the key existed: training/stamp_convention.py)")
            if value not in values:
                raise CheckpointError(f"checkpoint {header.source}: metadata {name!r} is {value!r}, expected one "
                                      f"of {values}")
        return cls(header.input_features, header.grid_lattice)


GCROSS_CONVENTION = InputConvention(RGB01_NORMAL, MIN_CORNER)  # pretraining and fine-tuning here by default
# Pointcept < 1.6 and the released GaussianCross weights: NormalizeColor = colour / 127.5 - 1, CenterShift
POINTCEPT_CONVENTION = InputConvention(RGB_MINUS1_1_NORMAL, CENTER_SHIFT)


def encoder_features(color: np.ndarray,  # [N, 3] 0..255
                     normal: np.ndarray,  # [N, 3] unit
                     input_features: str,  # a key of COLOR_RANGES (InputConvention.input_features)
                     ) -> np.ndarray:  # [N, 6] float32
    """Encoder input per point: the colour in the range ``input_features`` names, then the unit normal."""
    if input_features not in COLOR_RANGES:
        raise InputError(f"input_features {input_features!r} is unknown: expected one of {sorted(COLOR_RANGES)}")
    color = np.asarray(color, np.float32)
    normal = np.asarray(normal, np.float32)
    assert color.ndim == 2 and color.shape[1] == 3, f"color has shape {color.shape}, expected [N, 3]"
    assert normal.shape == color.shape, f"normal has shape {normal.shape}, expected {color.shape}"
    divisor, offset = COLOR_RANGES[input_features]
    return np.concatenate([color / np.float32(divisor) + np.float32(offset), normal], axis=1)


def check_points(coord: np.ndarray,  # [N, 3] metres
                 color: np.ndarray,  # [N, 3] 0..255
                 normal: np.ndarray,  # [N, 3] unit
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:  # the three as float32
    """A raw cloud as float32 arrays; InputError naming the array and what is wrong (shape, type, NaN/inf)."""
    arrays = []
    n = None
    for name, arr in (("coord", coord), ("color", color), ("normal", normal)):
        if arr is None:
            raise InputError(f"{name} is missing: an encoder input needs coord, color and normal [N, 3]")
        arr = np.asarray(arr)
        if n is None:
            if arr.ndim != 2 or arr.shape[1:] != (3,) or len(arr) == 0:
                raise InputError(f"coord has shape {arr.shape}, expected non-empty [N, 3]")
            n = len(arr)
        elif arr.shape != (n, 3):
            raise InputError(f"{name} has shape {arr.shape}, expected ({n}, 3) to match coord")
        if not (np.issubdtype(arr.dtype, np.number) and not np.issubdtype(arr.dtype, np.complexfloating)):
            raise InputError(f"{name} has dtype {arr.dtype}, expected a real number type")
        arr = arr.astype(np.float32, copy=False)
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{name} contains NaN or inf")
        arrays.append(arr)
    return arrays[0], arrays[1], arrays[2]


@dataclass(frozen=True)
class EncoderBatch:
    """One cloud as the encoder sees it, with the maps back to the cloud's points."""

    points: PointBatch  # the kept rows (inverse: row of every input point)
    keep: np.ndarray  # [M] int64 index of each row's point in the input cloud
    inverse: np.ndarray  # [N] int64 row of every input point


@dataclass(frozen=True)
class EncoderInput:
    """How a model's input is built from raw points: grid sampling at ``grid_size_m`` on the convention's
    lattice, then :func:`encoder_features` in the convention's colour range."""

    grid_size_m: float  # metres, what the model was trained at (the checkpoint's grid_size_m)
    convention: InputConvention = GCROSS_CONVENTION

    def __post_init__(self) -> None:
        if not (isinstance(self.grid_size_m, (int, float)) and np.isfinite(self.grid_size_m) and self.grid_size_m > 0):
            raise InputError(f"grid_size_m must be a number > 0, got {self.grid_size_m!r}")

    @classmethod
    def from_header(cls, header: CheckpointHeader, in_channels: int) -> "EncoderInput":
        """What a checkpoint's encoder is fed: its grid size and input convention (CheckpointError naming the
        file and the field when either is missing or malformed, or when the encoder, ``in_channels`` wide,
        does not take the features built here)."""
        if in_channels != IN_CHANNELS:
            raise CheckpointError(f"checkpoint {header.source}: encoder takes {in_channels} input channels, the "
                                  f"encoder input has {IN_CHANNELS} (RGB + normal)")
        return cls(header.require("grid_size_m"), InputConvention.from_header(header))

    def header_fields(self) -> dict:
        """The header fields that record this input (``CheckpointHeader(kind, **header_fields())``)."""
        return {"grid_size_m": float(self.grid_size_m), **self.convention.header_fields()}

    def grid_sample(self, coord: np.ndarray,  # [N, 3] metres
                    rng: Optional[np.random.Generator] = None):
        """(keep [M], grid_coord [M, 3] int32, inverse [N]) of :func:`gcross_core.data.grid.grid_sample` on
        this input's grid and lattice (``rng``: random kept point per cell, for training)."""
        return grid_sample(coord, self.grid_size_m, rng=rng, lattice=self.convention.grid_lattice)

    def features(self, color: np.ndarray,  # [M, 3] 0..255
                 normal: np.ndarray,  # [M, 3] unit
                 ) -> np.ndarray:  # [M, 6] float32
        return encoder_features(color, normal, self.convention.input_features)

    def batch(self, coord: np.ndarray,  # [N, 3] metres
              color: np.ndarray,  # [N, 3] 0..255
              normal: np.ndarray,  # [N, 3] unit
              device: Union[str, torch.device] = "cpu") -> EncoderBatch:
        """One raw cloud -> the encoder's batch: checked (:func:`check_points`), grid-sampled (the first
        point of each cell: deterministic), featurised and collated."""
        coord, color, normal = check_points(coord, color, normal)
        keep, grid_coord, inverse = self.grid_sample(coord)
        batch = collate_points([coord[keep]], [self.features(color[keep], normal[keep])], [grid_coord], [inverse])
        return EncoderBatch(batch.to(device), keep, inverse)
