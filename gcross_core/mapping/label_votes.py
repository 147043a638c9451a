"""Per-voxel majority votes of 2D id images (semantic labels, instance ids) fused from RGB-D frames.

``VoxelMap.integrate_labelled`` adds one frame's votes; the votes are keyed by packed voxel key, outside
the map, so eviction and the map's own arrays are untouched.
"""
from __future__ import annotations

import numpy as np

from gcross_core.errors import InputError


class LabelVotes:
    """Per-voxel histograms of integer ids (2D semantic labels or instance ids) fused from frames.

    ``add`` takes one frame's voxel keys [U], the voxel row of every fused pixel [M] and the pixel ids [M];
    id 0 (unlabelled / no instance) casts no vote. Counts are kept as sorted (key, id) pairs with their
    totals, merged every frame, so memory follows the distinct (voxel, id) pairs, not the id range
    (ScanNet label ids reach the thousands). ``majority(keys)``: the id with most votes per voxel, ties
    to the smaller id; -1 where a voxel got no vote. Frames are buffered and merged once the buffer
    outgrows the merged pairs, so a long sequence costs O(P log P) merges a logarithmic number of times.
    """

    def __init__(self, name: str = "label"):
        self.name = name
        self._keys = np.empty(0, np.int64)  # [P] voxel key of each (key, id) pair, sorted by (key, id)
        self._ids = np.empty(0, np.int64)  # [P]
        self._counts = np.empty(0, np.int64)  # [P]
        self._pending = []  # [(keys, ids)] of frames not merged yet
        self._pending_n = 0

    def __len__(self) -> int:
        """Distinct (voxel, id) pairs voted for so far."""
        self._flush()
        return len(self._keys)

    def add(self, keys: np.ndarray, inverse: np.ndarray, ids: np.ndarray) -> None:
        ids = np.asarray(ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise InputError(f"{self.name} ids have dtype {ids.dtype}, expected integers")
        ids = ids.astype(np.int64)
        if (ids < 0).any():
            raise InputError(f"{self.name} ids hold negative values, expected 0 (none) or positive ids")
        voted = ids > 0
        if not voted.any():
            return
        k = np.asarray(keys, np.int64)[np.asarray(inverse)[voted]]
        self._pending.append((k, ids[voted]))
        self._pending_n += len(k)
        if self._pending_n > max(len(self._keys), 1 << 20):
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            k = np.concatenate([p[0] for p in self._pending])
            ids = np.concatenate([p[1] for p in self._pending])
            self._pending, self._pending_n = [], 0
            self._merge(k, ids, np.ones(len(k), np.int64))

    def _merge(self, k: np.ndarray, ids: np.ndarray, counts: np.ndarray) -> None:
        k = np.concatenate([self._keys, k])
        ids = np.concatenate([self._ids, ids])
        counts = np.concatenate([self._counts, counts])
        order = np.lexsort((ids, k))
        k, ids, counts = k[order], ids[order], counts[order]
        first = np.ones(len(k), bool)
        first[1:] = (k[1:] != k[:-1]) | (ids[1:] != ids[:-1])
        starts = np.flatnonzero(first)
        self._keys, self._ids = k[starts], ids[starts]
        self._counts = np.add.reduceat(counts, starts) if len(starts) else counts[:0]

    def majority(self, keys: np.ndarray) -> np.ndarray:
        """[N] int64 id with the most votes for each voxel key (ties: smaller id), -1 without votes."""
        keys = np.asarray(keys, np.int64)
        out = np.full(len(keys), -1, np.int64)
        self._flush()
        if len(self._keys) == 0 or len(keys) == 0:
            return out
        # Pairs are sorted by (key, id): within a key, the best is the max count, first (smallest id) on ties.
        order = np.lexsort((self._ids, -self._counts, self._keys))
        k_sorted = self._keys[order]
        first = np.ones(len(k_sorted), bool)
        first[1:] = k_sorted[1:] != k_sorted[:-1]
        best_keys, best_ids = k_sorted[first], self._ids[order][first]
        pos = np.minimum(np.searchsorted(best_keys, keys), len(best_keys) - 1)
        found = best_keys[pos] == keys
        out[found] = best_ids[pos[found]]
        return out
