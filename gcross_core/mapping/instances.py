"""Object ids in the fused map: instances of successive segmentations matched by overlap, so an object
keeps one id while it persists (what the node publishes as ``instance`` and as ``instances`` markers).

:class:`InstanceTracker` keeps one object id per voxel (packed voxel keys of
:class:`~gcross_core.mapping.fusion.VoxelMap`, stable across eviction and re-layout). Each segmentation
hands it the instances found on the segmented voxels (:meth:`InstanceTracker.update`):

1. in decreasing score, every new instance is compared with the objects already in the map: the
   object holding most of its voxels is its match when the overlap covers at least ``match_overlap``
   of the smaller of the two (an overlap coefficient, not IoU: with ``segment_scope: recent`` a
   segmentation sees a part of an object, and a part must still find its whole); each object matches
   at most one new instance;
2. a matched instance takes the object's id, an unmatched one a new id (ids count up from 1 and are
   never reused; 0 = no object);
3. the voxels of the instance get its id; the voxels whose probabilities this segmentation fused but
   that belong to no instance lose theirs. An object whose voxels are all gone no longer exists.

Class and score of an object are those of its latest instance. ROS-free (numpy only).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np


@dataclass(frozen=True)
class MapObject:
    """One object of the map."""

    object_id: int  # >= 1, stable while the object persists
    class_index: int
    score: float
    box_min: np.ndarray  # [3] metres, map frame (axis-aligned box of its voxels)
    box_max: np.ndarray  # [3]
    voxels: int


class InstanceTracker:
    def __init__(self, match_overlap: float = 0.5):
        if not 0.0 < match_overlap <= 1.0:
            raise ValueError(f"match_overlap must lie in (0, 1], got {match_overlap}")
        self.match_overlap = float(match_overlap)
        self._keys = np.empty(0, np.int64)  # sorted voxel keys that belong to an object
        self._ids = np.empty(0, np.int64)  # [len(_keys)] object id of each
        self._class: Dict[int, int] = {}
        self._score: Dict[int, float] = {}
        self._next_id = 1

    def __len__(self) -> int:
        """Number of objects with at least one voxel."""
        return len(np.unique(self._ids))

    def ids_of(self, keys: np.ndarray) -> np.ndarray:  # [M] int64 voxel keys -> [M] int64 ids, 0 = none
        keys = np.asarray(keys, np.int64)
        out = np.zeros(len(keys), np.int64)
        if len(self._keys) == 0 or len(keys) == 0:
            return out
        pos = np.clip(np.searchsorted(self._keys, keys), 0, len(self._keys) - 1)
        hit = self._keys[pos] == keys
        out[hit] = self._ids[pos[hit]]
        return out

    def update(self, keys: np.ndarray,  # [R] int64 voxel keys of the segmented voxels
               indices: Sequence[np.ndarray],  # per new instance: indices into keys
               classes: np.ndarray,  # [P] int class per instance
               scores: np.ndarray,  # [P] float
               fused: np.ndarray,  # indices into keys whose labels this segmentation fused
               ) -> np.ndarray:  # -> [P] int64 object id given to each instance
        """Match the instances of one segmentation with the map's objects (module docstring)."""
        keys = np.asarray(keys, np.int64)
        classes = np.asarray(classes, np.int64)
        scores = np.asarray(scores, np.float64)
        if len(indices) != len(classes) or len(classes) != len(scores):
            raise ValueError(f"{len(indices)} instances, {len(classes)} classes and {len(scores)} scores")
        old = self.ids_of(keys)
        sizes = np.bincount(self._ids, minlength=self._next_id) if len(self._ids) else np.zeros(self._next_id, int)
        assigned = np.zeros(len(indices), np.int64)
        taken = set()
        for p in np.argsort(-scores, kind="stable"):
            idx = np.asarray(indices[p], np.int64)
            if len(idx) == 0:
                continue
            prev = old[idx]
            prev = prev[prev > 0]
            if len(prev):
                counts = np.bincount(prev)
                for j in np.argsort(-counts, kind="stable"):
                    if counts[j] == 0:
                        break
                    if j in taken:
                        continue
                    if counts[j] >= self.match_overlap * min(len(idx), sizes[j]):
                        assigned[p] = j
                    break
            if assigned[p] == 0:
                assigned[p] = self._next_id
                self._next_id += 1
            taken.add(int(assigned[p]))
            self._class[int(assigned[p])] = int(classes[p])
            self._score[int(assigned[p])] = float(scores[p])
        # new per-voxel ids: fused voxels are cleared, instance voxels set (higher scores written last win)
        new_ids = np.full(len(keys), -1, np.int64)  # -1 = leave as it was
        new_ids[np.asarray(fused, np.int64)] = 0
        for p in np.argsort(scores, kind="stable"):
            new_ids[np.asarray(indices[p], np.int64)] = assigned[p]
        touched = new_ids >= 0
        t_keys, t_ids = keys[touched], new_ids[touched]
        t_keys, first = np.unique(t_keys, return_index=True)
        t_ids = t_ids[first]
        keep_old = ~np.isin(self._keys, t_keys, assume_unique=False)
        all_keys = np.concatenate([self._keys[keep_old], t_keys[t_ids > 0]])
        all_ids = np.concatenate([self._ids[keep_old], t_ids[t_ids > 0]])
        order = np.argsort(all_keys, kind="stable")
        self._keys, self._ids = all_keys[order], all_ids[order]
        alive = set(np.unique(self._ids).tolist())
        for d in (self._class, self._score):
            for k in [k for k in d if k not in alive]:
                del d[k]
        return assigned

    def objects(self, keys: np.ndarray,  # [M] int64 voxel keys of the map
                coords: np.ndarray,  # [M, 3] their positions
                min_voxels: int = 1) -> List[MapObject]:
        """The objects present among ``keys`` with their boxes, by id."""
        ids = self.ids_of(keys)
        coords = np.asarray(coords, np.float32)
        out = []
        for oid in np.unique(ids[ids > 0]):
            sel = ids == oid
            if sel.sum() < min_voxels:
                continue
            pts = coords[sel]
            out.append(MapObject(int(oid), self._class.get(int(oid), -1), self._score.get(int(oid), 0.0),
                                 pts.min(0), pts.max(0), int(sel.sum())))
        return out

    def restore(self, keys: np.ndarray,  # [N] int64 voxel keys
                ids: np.ndarray,  # [N] int object id per voxel, <= 0 = none (a saved map's instance ids)
                probabilities: np.ndarray,  # [N, C] fused class probabilities of the same voxels
                ) -> None:
        """Replace the objects with those of a saved map: each id keeps its voxels; its class is the
        argmax of its voxels' summed probabilities and its score their mean top probability. New objects
        get ids above every restored one, so ids stay unique."""
        keys = np.asarray(keys, np.int64)
        ids = np.asarray(ids, np.int64)
        probabilities = np.asarray(probabilities, np.float32)
        if ids.shape != keys.shape or probabilities.ndim != 2 or len(probabilities) != len(keys):
            raise ValueError(f"keys {keys.shape}, ids {ids.shape} and probabilities {probabilities.shape} must be "
                             f"[N], [N] and [N, C]")
        has = ids > 0
        order = np.argsort(keys[has], kind="stable")
        self.reset()
        self._keys, self._ids = keys[has][order], ids[has][order]
        if len(self._keys) != len(np.unique(self._keys)):
            raise ValueError("keys hold the same voxel more than once")
        prob = probabilities[has][order]
        for oid in np.unique(self._ids):
            mine = prob[self._ids == oid]
            self._class[int(oid)] = int(mine.sum(0).argmax())
            self._score[int(oid)] = float(mine.max(1).mean())
        self._next_id = int(self._ids.max()) + 1 if len(self._ids) else 1

    def reset(self) -> None:
        self.__init__(self.match_overlap)
