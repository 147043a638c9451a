"""Which voxels a segmentation covers when its work is bounded (``segment_scope: priority``).

Each segmentation gives the encoder at most ``budget`` voxels: targets, whose class probabilities are
fused, plus the map around them as context. Targets are taken in tiers, each in full before the next:

1. ``new_in_view``: never-labelled voxels observed since the previous segmentation, the most recently
   seen first (what the camera looks at now);
2. ``new``: other never-labelled voxels (seen earlier, left over by an earlier budget), most recent first;
3. ``changed``: labelled voxels whose content moved since they were labelled: mean colour by more than
   ``color_tolerance`` (0..255 per channel, largest channel), or normal by more than
   ``normal_tolerance_deg``;
4. ``refresh``: labels made before the map last grew (before the latest segmentation that labelled new
   voxels), in the background: they were computed with less of the map around them. Oldest label first,
   nearest the oldest one first, so that each refresh is a compact region.

Re-observing a labelled voxel whose colour and normal stay within the tolerances does not make it due:
only tier 4 visits it again, and only after the map grew: once the camera stops finding new surface,
every label is refreshed once, within ``map voxels / (0.75 x budget)`` segmentations, and then the
segmentations stop (nothing is due: an idle node does no work). Context for the targets is the map within
``context_m`` of them, nearest first among an even sample of at most 8 candidates per context voxel
wanted (planning stays cheap on a map of a million voxels), as much as the budget leaves; at least
``min_context_share`` of the budget is kept for it when the tiers would fill it all.

:class:`LabelLedger` remembers, per voxel key, when it was labelled and what it looked like then, so it
survives the map's eviction renumbering its rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import numpy as np

from gcross_core.mapping.voxel_keys import KEY_BITS, pack_keys

TIERS = ("new_in_view", "new", "changed", "refresh")


class LabelLedger:
    """Per voxel key: the segmentation round that last labelled it, and its colour and normal then.

    Rows in the order keys were first recorded, found through a hash index of the keys
    (``fusion_kernels.VoxelIndex``, as the map finds its own rows): looking up a million keys per
    segmentation costs a few milliseconds.
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        from gcross_core.mapping.fusion_kernels import VoxelIndex  # numba: imported with the first ledger

        self._n = 0
        self._keys = np.empty(0, np.int64)
        self._round = np.empty(0, np.int64)
        self._color = np.empty((0, 3), np.float32)
        self._normal = np.empty((0, 3), np.float32)
        self._index = VoxelIndex(0)

    def __len__(self) -> int:
        return self._n

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key in the ledger, -1 where it was never recorded."""
        return self._index.lookup(self._keys, np.asarray(keys, np.int64))

    def record(self, keys: np.ndarray, round_: int, colors: np.ndarray, normals: np.ndarray) -> None:
        """``keys`` (distinct) were labelled in round ``round_`` with these colours and normals."""
        keys = np.asarray(keys, np.int64)
        rows = self.lookup(keys)
        known = rows >= 0
        self._round[rows[known]] = round_
        self._color[rows[known]] = colors[known]
        self._normal[rows[known]] = normals[known]
        m = int((~known).sum())
        if m:
            n = self._n
            if n + m > len(self._keys):
                self._resize(max(2 * (n + m), 1024))
            s = slice(n, n + m)
            self._keys[s] = keys[~known]
            self._round[s] = round_
            self._color[s] = np.asarray(colors, np.float32)[~known]
            self._normal[s] = np.asarray(normals, np.float32)[~known]
            self._index.insert(self._keys, n, n + m)
            self._n = n + m

    def forget_missing(self, keys_in_map: np.ndarray) -> None:
        """Drop the keys the map no longer has (evicted or reset), keeping the ledger the map's size."""
        rows = self.lookup(keys_in_map)
        keep = np.zeros(self._n, bool)
        keep[rows[rows >= 0]] = True
        if not keep.all():
            n = int(keep.sum())
            for name in ("_keys", "_round", "_color", "_normal"):
                buf = getattr(self, name)
                buf[:n] = buf[: self._n][keep]
            self._n = n
            self._index.rebuild(self._keys, n, len(self._keys))

    def _resize(self, capacity: int) -> None:
        n = self._n
        for name, shape, dtype in (("_keys", (), np.int64), ("_round", (), np.int64), ("_color", (3,), np.float32),
                                   ("_normal", (3,), np.float32)):
            buf = np.zeros((capacity,) + shape, dtype)
            buf[:n] = getattr(self, name)[:n]
            setattr(self, name, buf)
        self._index.rebuild(self._keys, n, capacity)

    def rounds(self, rows: np.ndarray) -> np.ndarray:
        return self._round[rows]

    def changed(self, labels: np.ndarray, rows: np.ndarray, colors: np.ndarray, normals: np.ndarray,
                color_tolerance: float, normal_tolerance_deg: float) -> np.ndarray:
        """[N] bool: labelled voxels (``labels`` >= 0) with a ledger row (``rows``, from :meth:`lookup`)
        whose colour moved by more than ``color_tolerance`` (0..255, largest channel) or whose normal turned
        by more than ``normal_tolerance_deg`` (where both normals are known) since it was recorded; one
        compiled pass over the map."""
        from gcross_core.mapping.fusion_kernels import changed_since_recorded

        out = np.empty(len(labels), np.bool_)
        changed_since_recorded(np.asarray(labels), np.asarray(rows, np.int64), np.ascontiguousarray(colors, np.float32),
                               np.ascontiguousarray(normals, np.float32), self._color, self._normal,
                               np.float32(color_tolerance), np.float32(np.cos(np.deg2rad(normal_tolerance_deg))), out)
        return out


@dataclass(frozen=True)
class Plan:
    rows: np.ndarray  # [R] rows of the snapshot given to the encoder (targets and context)
    fuse: np.ndarray  # [T] positions within ``rows`` whose probabilities are fused (the targets)
    tiers: Dict[str, int]  # targets taken from each tier (TIERS)
    due: Dict[str, int]  # voxels in each tier before the budget cut

    @property
    def targets(self) -> np.ndarray:
        return self.rows[self.fuse]


_CONTEXT_SAMPLE = 8  # context candidates measured per context voxel wanted, at most

# what adding a neighbour's offset to a packed key (fusion.pack_keys) gives: the 27 cells around a cell
_NEIGHBOURS = np.array([(dx << 2 * KEY_BITS) + (dy << KEY_BITS) + dz
                        for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)], np.int64)


def _cells(coords: np.ndarray, size: float) -> np.ndarray:
    """Packed key (fusion.pack_keys) of each point's cell on a grid of ``size``."""
    return pack_keys(np.floor(coords / size))


def _newest(rows: np.ndarray, last_seen: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` most recently seen of ``rows``, newest first."""
    if len(rows) > k:
        rows = rows[np.argpartition(-last_seen[rows], k - 1)[:k]]
    return rows[np.argsort(-last_seen[rows], kind="stable")]


def plan_segmentation(snap, ledger: LabelLedger, seen_since: int, budget: int, context_m: float,
                      refresh_before: int = 0, color_tolerance: float = 12.0, normal_tolerance_deg: float = 30.0,
                      min_context_share: float = 0.25) -> Plan:
    """The rows of ``snap`` (a MapSnapshot with labels) to segment now (see the module docstring).

    ``seen_since``: frame index of the previous segmentation's snapshot (voxels seen at or after it are in
    view). ``budget``: most voxels given to the encoder, targets and context together. ``refresh_before``:
    labels of an earlier round (the ledger's rounds; voxels the ledger never saw count as round -1) are
    due for the background refresh."""
    n = len(snap)
    empty = np.empty(0, np.int64)
    if n == 0 or budget < 1:
        return Plan(empty, empty, {t: 0 for t in TIERS}, {t: 0 for t in TIERS})
    labelled = snap.labels >= 0
    in_view = snap.last_seen >= seen_since
    ledger_rows = ledger.lookup(snap.keys)
    changed = ledger.changed(snap.labels, ledger_rows, snap.colors, snap.normals, color_tolerance,
                             normal_tolerance_deg)
    masks = {"new_in_view": ~labelled & in_view, "new": ~labelled & ~in_view, "changed": changed}
    due = {name: int(mask.sum()) for name, mask in masks.items()}
    target_cap = budget if n <= budget else max(1, int(budget * (1.0 - min_context_share)))
    taken, chosen = {}, []
    left = target_cap
    for name in ("new_in_view", "new", "changed"):
        pick = _newest(np.flatnonzero(masks[name]), snap.last_seen, left) if left > 0 else np.empty(0, np.int64)
        taken[name] = len(pick)
        chosen.append(pick)
        left -= len(pick)
    target = np.zeros(n, bool)
    target[np.concatenate(chosen)] = True
    # tier 4: labels older than the map's last growth, oldest first, while the budget has room
    rest = np.flatnonzero(labelled & ~target & ~changed)
    age = np.where(ledger_rows[rest] >= 0, ledger.rounds(np.maximum(ledger_rows[rest], 0)), -1)
    rest, age = rest[age < refresh_before], age[age < refresh_before]  # -1: never recorded (a restored map)
    due["refresh"] = len(rest)
    taken["refresh"] = 0
    if left > 0 and len(rest):
        if len(rest) <= left:
            region = rest
        else:
            seed = rest[int(np.argmin(age))]
            dist = np.linalg.norm(snap.coords[rest] - snap.coords[seed], axis=1)
            # the oldest labels, nearest the seed first: age dominates, distance breaks ties
            order_key = (age - age.min()).astype(np.float64) * (float(dist.max()) + 1.0) + dist
            region = rest[np.argpartition(order_key, left - 1)[:left]]
        target[region] = True
        taken["refresh"] = len(region)
    targets = np.flatnonzero(target)
    context = np.empty(0, np.int64)
    room = budget - len(targets)
    if room > 0 and context_m > 0 and 0 < len(targets) < n:
        from scipy.spatial import cKDTree

        # only voxels in the context_m cells next to a target's cell can be near one: query those
        cells = _cells(snap.coords, context_m)
        near_cells = np.unique((np.unique(_cells(snap.coords[targets], context_m))[:, None]
                                + _NEIGHBOURS[None, :]).ravel())
        # membership by binary search in the few near cells (np.isin would sort the whole map's cells)
        pos = np.minimum(np.searchsorted(near_cells, cells), len(near_cells) - 1)
        others = np.flatnonzero(~target & (near_cells[pos] == cells))
        if len(others) > _CONTEXT_SAMPLE * room:  # bounded work: an even sample of the candidates, in map order
            others = others[np.linspace(0, len(others) - 1, _CONTEXT_SAMPLE * room).astype(np.int64)]
        if len(others):
            dist, _ = cKDTree(snap.coords[targets]).query(snap.coords[others], k=1, distance_upper_bound=context_m)
            near = np.isfinite(dist)
            if near.sum() > room:
                keep = np.argpartition(dist[near], room - 1)[:room]
                context = others[near][keep]
            else:
                context = others[near]
    rows = np.sort(np.concatenate([targets, context]))
    fuse = np.flatnonzero(target[rows])
    return Plan(rows, fuse, taken, due)

