"""Grid sampling and batching of point clouds (Pointcept convention: concatenate + offsets).

Where the voxel lattice lies is a convention of the model (checkpoint metadata ``grid_lattice``, carried by
:class:`gcross_core.model.features.InputConvention`): the cells are ``floor((coord - origin) / grid)`` with

- ``min_corner``: origin at the cloud's minimum corner (models trained here);
- ``center_shift``: origin at Pointcept's ``CenterShift(apply_z=True)`` point, x and y at the centre of the
  bounding box and z at its minimum, as Pointcept (and the released GaussianCross weights) shift every cloud
  before ``GridSample``. The cells differ from ``min_corner`` in x and y by the fractional part of
  half the extent over the grid size.

Both then index the occupied cells from 0 (the grid coordinates' minimum is subtracted), as Pointcept does.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch

from gcross_core.errors import InputError
from gcross_core.types import PointBatch

MIN_CORNER = "min_corner"
CENTER_SHIFT = "center_shift"
GRID_LATTICES = (MIN_CORNER, CENTER_SHIFT)


def lattice_origin(coord: np.ndarray,  # [N, 3]
                   lattice: str) -> np.ndarray:  # [3], coord's dtype
    """The point the lattice ``lattice`` floors from (see the module docstring)."""
    lo, hi = coord.min(0), coord.max(0)
    if lattice == MIN_CORNER:
        return lo
    if lattice == CENTER_SHIFT:
        return np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]], dtype=coord.dtype)
    raise InputError(f"grid lattice {lattice!r} is unknown: expected one of {list(GRID_LATTICES)}")


def grid_sample(coord: np.ndarray, grid_size_m: float, rng: Optional[np.random.Generator] = None,
                lattice: str = MIN_CORNER):
    """Keep one point per occupied grid cell.

    coord: [N, 3] metres. With ``rng`` the kept point of each cell is random (training), otherwise the
    first one in input order (deterministic inference). ``lattice``: where the cells lie (module docstring);
    models pass their checkpoint's ``InputConvention.grid_lattice``.
    Returns (keep [M] indices into coord, grid_coord [M, 3] int32 with min 0, inverse [N] int64 mapping
    every input point to its kept row).
    """
    coord = np.asarray(coord)
    if coord.ndim != 2 or coord.shape[1] != 3 or len(coord) == 0:
        raise InputError(f"grid_sample: coord has shape {coord.shape}, expected non-empty [N, 3]")
    if not np.all(np.isfinite(coord)):
        raise InputError("grid_sample: coord contains NaN or inf")
    if grid_size_m <= 0:
        raise InputError(f"grid_sample: grid_size_m must be > 0, got {grid_size_m}")
    cell = np.floor((coord - lattice_origin(coord, lattice)) / grid_size_m).astype(np.int64)
    cell -= cell.min(0)
    dims = cell.max(0) + 1
    key = (cell[:, 0] * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]
    order = np.argsort(key, kind="stable") if rng is None else np.lexsort((rng.random(len(key)), key))
    sorted_key = key[order]
    first = np.ones(len(key), dtype=bool)
    first[1:] = sorted_key[1:] != sorted_key[:-1]
    keep = order[first]
    row_of_sorted = np.cumsum(first) - 1
    inverse = np.empty(len(key), dtype=np.int64)
    inverse[order] = row_of_sorted
    return keep, cell[keep].astype(np.int32), inverse


def collate_points(coords: Sequence[np.ndarray], feats: Sequence[np.ndarray],
                   grid_coords: Sequence[np.ndarray], inverses: Optional[Sequence[np.ndarray]] = None
                   ) -> PointBatch:
    """Concatenate per-scene arrays into one PointBatch; inverse maps are shifted to global rows."""
    if not coords:
        raise ValueError("collate_points: no scenes given")
    counts = [len(c) for c in coords]
    offset = torch.tensor(np.cumsum(counts), dtype=torch.int64)
    inverse = inverse_offset = None
    if inverses is not None:
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        inverse = torch.from_numpy(np.concatenate([inv + s for inv, s in zip(inverses, starts)]).astype(np.int64))
        inverse_offset = torch.tensor(np.cumsum([len(i) for i in inverses]), dtype=torch.int64)
    return PointBatch(
        coord=torch.from_numpy(np.concatenate(coords).astype(np.float32)),
        feat=torch.from_numpy(np.concatenate(feats).astype(np.float32)),
        offset=offset,
        grid_coord=torch.from_numpy(np.concatenate(grid_coords).astype(np.int32)),
        inverse=inverse,
        inverse_offset=inverse_offset,
    )


def split_by_offset(x: torch.Tensor, offset: torch.Tensor) -> List[torch.Tensor]:
    """Split a concatenated tensor back into per-scene pieces."""
    counts = torch.diff(offset, prepend=offset.new_zeros(1)).tolist()
    return list(torch.split(x, counts))
