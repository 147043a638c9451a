"""The per-frame segmentation pipeline shared by the ROS node and the offline bag evaluator.

``SegmentationPipeline`` holds a :class:`~gcross_core.mapping.fusion.VoxelMap` and a
:class:`~gcross_core.segmentation.segmenter.Segmenter`. Each RGB-D frame is fused into the map
(``process_frame``); every ``segment_period_s`` of *stream* time (image stamps, so a bag replays
identically at any speed) the whole map is segmented and the per-point probabilities are fused into the
voxels (``maybe_segment``). ``labelled_points`` returns the labelled map.

What is segmented (``segment_scope``): ``priority`` (the default) gives the encoder at most
``segment_max_voxels`` voxels per segmentation, chosen by :mod:`gcross_core.mapping.schedule`: never-labelled
voxels in view first, then other never-labelled ones, then voxels whose colour or normal changed since
they were labelled, then, in the background, labels made before the map last grew, plus context around
them; its cost is bounded whatever the map and the camera do. ``map`` runs the encoder on the whole map
every time, so its cost grows with the map; ``recent`` runs it on the voxels observed since the previous
segmentation (and
any never labelled), with ``segment_context_m`` of already segmented map around them as context for the
encoder, and fuses the probabilities of the observed voxels only. Its cost follows what the camera saw
in a period, not the size of the map; every observed voxel is still segmented at least once after each
observation, and the per-voxel probability fusion averages the overlapping updates.

With a segmenter that has an instance head, each segmentation also groups the segmented voxels into
instances (:meth:`~gcross_core.segmentation.segmenter.Segmenter.predict_instances`) and an
:class:`~gcross_core.mapping.instances.InstanceTracker` matches them with the map's objects, so an
object keeps one id across segmentations; ``labelled_points`` then carries an ``instance`` id per voxel
(0 = none) and ``objects`` lists the objects with their boxes.

Segmentation works on a snapshot of the map, so the node may call ``segment`` on a worker thread while
``process_frame`` keeps integrating; ``VoxelMap.fuse_probabilities`` maps the snapshot's rows back even if
eviction renumbered the voxels meanwhile.
"""
from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import numpy as np

from gcross_core.config import described
from gcross_core.errors import InputError
from gcross_core.mapping.assembly import MAX_DEPTH_M, MAX_DEPTH_M_DESCRIPTION
from gcross_core.mapping.fusion import FrameStats, MapSnapshot, VoxelMap
from gcross_core.mapping.instances import InstanceTracker, MapObject
from gcross_core.mapping.map_io import SavedMap, restore_map
from gcross_core.mapping.schedule import LabelLedger, plan_segmentation
from gcross_core.mapping.voxel_keys import pack_keys

if TYPE_CHECKING:  # the segmenter pulls in torch and spconv; the pipeline is handed one
    from gcross_core.segmentation.segmenter import Segmenter


SEGMENT_SCOPES = ("priority", "recent", "map")


def warm_up_kernels() -> None:
    """Compile, or load from numba's disk cache, every compiled kernel the map and the schedule use, on a
    tiny map. A process that must keep up with a camera (the node) calls this before its first frame:
    compiling on first use takes seconds on a fresh install, long enough for the first frames to be
    pushed out of the fusion queue."""
    h, w = 12, 16
    depth = np.full((h, w), 1.0, np.float32)
    depth[:, w // 2:] = 1.5
    color = np.zeros((h, w, 3), np.uint8)
    K = np.array([[10.0, 0.0, w / 2], [0.0, 10.0, h / 2], [0.0, 0.0, 1.0]])
    vmap = VoxelMap(0.05, 10_000, 2)
    shifted = np.eye(4)
    shifted[0, 3] = 0.2
    for cam_to_map in (np.eye(4), shifted):  # new voxels, then voxels seen again
        vmap.integrate(color, depth, K, cam_to_map)
    with vmap._lock:
        vmap._evict(len(vmap) // 2)
    snap = vmap.snapshot()
    ledger = LabelLedger()
    ledger.record(snap.keys, 1, snap.colors, snap.normals)
    ledger.changed(np.zeros(len(snap), np.int64), ledger.lookup(snap.keys), snap.colors, snap.normals, 12.0, 30.0)


@dataclass(frozen=True)
class PipelineConfig:
    """How the map is built and segmented; the node declares each field as a parameter of the same name."""

    voxel_size_m: float = described(0.0, "Edge of a map voxel; 0: half the segmenter's grid (read from the "
                                         "checkpoint), so that the segmenter, which grid-samples its input to its own "
                                         "grid, sees the cells it would see of the scene's own points. A voxel "
                                         "coarser than the grid is allowed and warned about: the encoder's first "
                                         "layers lose neighbours.")
    max_voxels: int = described(1_000_000, "Upper bound on map voxels; beyond it the map evicts the least seen (see "
                                           "fusion.py). A voxel holds 84 + 4 x classes bytes (164 MB for a million "
                                           "voxels of 20 classes); at 1 cm a million voxels cover about 100 m2 of "
                                           "surface.")
    max_depth_m: float = described(MAX_DEPTH_M, MAX_DEPTH_M_DESCRIPTION)  # one parameter with the assembly's
    segment_period_s: float = described(0.5, "Pause between the end of one map segmentation and the start of the next: "
                                             "the node's worker thread waits this long in wall time (a pause, not a "
                                             "rate, so that a segmentation slower than the period cannot starve "
                                             "fusion); gcross-bag eval counts it in image-stamp time, so a bag "
                                             "replays alike at any speed.")
    segment_scope: str = described("priority", "What each segmentation covers: 'priority', at most "
                                               "segment_max_voxels voxels chosen by priority (never-labelled voxels in "
                                               "view, other never-labelled ones, changed ones, then labels made before "
                                               "the map last grew) plus context: bounded cost; 'recent', every voxel "
                                               "observed since the previous segmentation plus segment_context_m of "
                                               "context (cost follows the camera); 'map', the whole map (cost grows "
                                               "with the map).")
    segment_max_voxels: int = described(15_000, "segment_scope 'priority': most voxels given to the encoder per "
                                                "segmentation, targets and context together; size it so that one "
                                                "segmentation fits the latency wanted on the machine "
                                                "(benchmarks/node.py).")
    segment_context_m: float = described(0.5, "With segment_scope 'priority' or 'recent': map within this "
                                              "distance of the voxels segmented is given to the encoder as "
                                              "context.")
    min_voxels_to_segment: int = described(1, "Below this many voxels the map is not worth a forward pass.")

    def __post_init__(self):
        if not self.voxel_size_m >= 0:
            raise InputError(f"voxel_size_m must be >= 0 (0: half the segmenter's grid), got {self.voxel_size_m}")
        if not self.segment_period_s >= 0:
            raise InputError(f"segment_period_s must be >= 0, got {self.segment_period_s}")
        if self.segment_scope not in SEGMENT_SCOPES:
            raise InputError(f"segment_scope {self.segment_scope!r} is not one of {SEGMENT_SCOPES}")
        if not self.segment_context_m >= 0:
            raise InputError(f"segment_context_m must be >= 0, got {self.segment_context_m}")
        if not self.max_depth_m > 0:
            raise InputError(f"max_depth_m must be > 0, got {self.max_depth_m}")
        if self.max_voxels < 1:
            raise InputError(f"max_voxels must be >= 1, got {self.max_voxels}")
        if self.segment_max_voxels < 1:
            raise InputError(f"segment_max_voxels must be >= 1, got {self.segment_max_voxels}")
        if self.min_voxels_to_segment < 1:
            raise InputError(f"min_voxels_to_segment must be >= 1, got {self.min_voxels_to_segment}")

    def with_segmenter_grid(self, segmenter) -> "PipelineConfig":
        """This config with voxel_size_m 0 replaced by half the segmenter's grid (``segmenter.grid_size_m``,
        recorded in its checkpoint).

        Why half: the segmenter grid-samples whatever it is given to its own grid, so a map at half the
        grid hands it the cells it would get from the scene's own points, as offline evaluation does. A
        map at the grid itself puts voxel centres on another lattice than the segmenter's, so about one
        cell in ten merges and small objects lose points: on the 43 mOSD test tabletops (2 cm segmenter)
        the map at 2 cm scored 0.5 to 1.4 mIoU below offline evaluation, at 1 cm exactly the same
        (``python -m experiments.bag_vs_offline``)."""
        if self.voxel_size_m:
            return self
        grid = getattr(segmenter, "grid_size_m", None)
        if not grid:
            raise InputError(f"voxel_size_m is 0 (half the segmenter's grid), but {type(segmenter).__name__} "
                             "records no grid_size_m: set voxel_size_m")
        return replace(self, voxel_size_m=float(grid) / 2)


@dataclass(frozen=True)
class SegmentStats:
    stamp_s: float  # stream time at which segmentation ran
    voxels: int  # voxels given to the encoder (with "recent": the observed ones plus their context)
    updated: int  # voxels whose probabilities were fused (fewer if eviction ran meanwhile)
    seconds: float  # wall time of predict + fuse
    tiers: Optional[Dict[str, int]] = None  # segment_scope priority: targets taken per tier (schedule.TIERS)
    due: Optional[Dict[str, int]] = None  # segment_scope priority: voxels due per tier before the budget cut


@dataclass(frozen=True)
class LabelledPoints:
    coord: np.ndarray  # [M, 3] float32 metres, map frame
    color: np.ndarray  # [M, 3] uint8 RGB
    label: np.ndarray  # [M] int64, -1 = never segmented
    confidence: np.ndarray  # [M] float32
    instance: Optional[np.ndarray] = None  # [M] int64 object id, 0 = none (segmenters with an instance head)

    def __len__(self) -> int:
        return len(self.coord)


class SegmentationPipeline:
    def __init__(self, segmenter: "Segmenter", config: PipelineConfig = PipelineConfig()):
        self.segmenter = segmenter
        self.config = config = config.with_segmenter_grid(segmenter)
        self.class_names = list(segmenter.class_names)
        self.map = VoxelMap(config.voxel_size_m, config.max_voxels, len(self.class_names),
                            max_depth_m=config.max_depth_m)
        self._last_segment_s: Optional[float] = None
        self._first_stamp_s: Optional[float] = None
        self._segment_lock = threading.Lock()  # one segmentation at a time
        self._segmented_upto = 0  # frames integrated when the last segmentation took its snapshot
        self.ledger = LabelLedger()  # segment_scope priority: when each voxel was labelled, and how it looked
        self._reset_schedule(grew_in=0)
        self.tracker = InstanceTracker() if getattr(segmenter, "has_instance_head", False) else None
        self._tracker_lock = threading.Lock()
        self.frames_processed = 0
        self.segmentations = 0
        self._versions = itertools.count(1)  # next() is atomic: fusion, segmentation and resets bump it
        self._version = 0

    @property
    def version(self) -> int:
        """Changes whenever what the map shows changes (a frame fused, labels fused, a reset or a restore):
        a renderer skips views it has already rendered of an unchanged map."""
        return self._version

    def _bump(self) -> None:
        self._version = next(self._versions)

    @property
    def voxel_size_m(self) -> float:
        return self.map.voxel_size_m

    def __len__(self) -> int:
        return len(self.map)

    def _reset_schedule(self, grew_in: int) -> None:
        """Forget when voxels were labelled (a new or restored map); labels of rounds before ``grew_in`` are
        due for the background refresh."""
        self.ledger.clear()
        self._grew_in = grew_in  # the latest segmentation that labelled new voxels
        self._idle_at: Optional[int] = None  # frames integrated when the last priority plan found nothing due

    def reconfigure(self, config: PipelineConfig) -> None:
        """Take ``config`` from the next frame and the next segmentation on (parameters set while the
        node runs). The map's voxel and capacity are fixed when it is built: a config that changes them
        is an InputError and nothing changes."""
        config = config.with_segmenter_grid(self.segmenter)
        fixed = [f"{name} ({getattr(self.config, name)} -> {getattr(config, name)})"
                 for name in ("voxel_size_m", "max_voxels") if getattr(config, name) != getattr(self.config, name)]
        if fixed:
            raise InputError(f"cannot change {', '.join(fixed)} of a built map; restart with the new value")
        self.map.max_depth_m = config.max_depth_m
        self.config = config

    def reset(self) -> int:
        """Empty the map and forget its objects; returns the voxels cleared."""
        voxels = len(self.map)
        self.map.clear()
        self._reset_schedule(grew_in=0)
        self.reset_instances()  # object ids start again with the new map
        self._bump()
        return voxels

    def process_frame(self,
                      color: np.ndarray,  # [H, W, 3] uint8 RGB, registered to depth
                      depth_m: np.ndarray,  # [H, W] float32 metres, 0 = no reading
                      K: np.ndarray,  # [3, 3] intrinsics of the registered camera
                      cam_to_map: np.ndarray,  # [4, 4]
                      stamp_s: float,  # image stamp, seconds
                      ) -> FrameStats:
        """Fuse one frame into the map (never segments; call :meth:`maybe_segment` for that)."""
        stats = self.map.integrate(color, depth_m, K, cam_to_map)
        self._bump()
        if self._first_stamp_s is None:
            self._first_stamp_s = float(stamp_s)
        self.frames_processed += 1
        return stats

    def segment_due(self, now_s: float) -> bool:
        """True when ``segment_period_s`` of stream time has passed since the last segmentation (or,
        before the first one, since the first frame) and the map has enough voxels."""
        if self._first_stamp_s is None or len(self.map) < self.config.min_voxels_to_segment:
            return False
        last = self._last_segment_s if self._last_segment_s is not None else self._first_stamp_s
        return float(now_s) - last >= self.config.segment_period_s

    def maybe_segment(self, now_s: float) -> Optional[SegmentStats]:
        """Segment the map if due at stream time ``now_s`` (see :meth:`segment_due`)."""
        if not self.segment_due(now_s):
            return None
        return self.segment(now_s)

    def segment(self, now_s: Optional[float] = None, force: bool = False,
                scope: Optional[str] = None) -> Optional[SegmentStats]:
        """Segment what ``segment_scope`` (or ``scope``, e.g. "map" for a last pass over everything) says is
        due now and fuse the probabilities; None when the map is empty or (priority, unless ``force``)
        nothing was due at the last call and no frame was fused since."""
        scope = scope or self.config.segment_scope
        if scope not in SEGMENT_SCOPES:
            raise InputError(f"segment scope {scope!r} is not one of {SEGMENT_SCOPES}")
        with self._segment_lock:
            if not force and scope == "priority" and self._idle_at == self.map.frames_integrated:
                return None  # nothing was due, and no frame came since: no snapshot, no work
            snap = self.map.snapshot()
            if len(snap) < self.config.min_voxels_to_segment:
                return None
            t0 = time.perf_counter()
            plan = None
            if scope == "priority":
                if len(self.ledger) > 1.5 * len(snap):  # evicted voxels linger harmlessly until then
                    self.ledger.forget_missing(snap.keys)
                plan = plan_segmentation(snap, self.ledger, self._segmented_upto, self.config.segment_max_voxels,
                                         self.config.segment_context_m, refresh_before=self._grew_in)
                rows, fuse = plan.rows, plan.fuse
                self._idle_at = snap.frame_index if not len(fuse) else None
            else:
                rows, fuse = self.segment_rows(snap, scope)
            if len(fuse) and self.tracker is not None:
                out = self.segmenter.predict_instances(snap.coords[rows], snap.colors[rows], snap.normals[rows])
                updated = self.map.fuse_probabilities(rows[fuse], out.probs[fuse], snapshot=snap)
                with self._tracker_lock:
                    self.tracker.update(snap.keys[rows], out.instances.indices, out.instances.classes,
                                        out.instances.scores, fuse)
            elif len(fuse):
                _, _, probs = self.segmenter.predict(snap.coords[rows], snap.colors[rows], snap.normals[rows],
                                                     return_probs=True)
                updated = self.map.fuse_probabilities(rows[fuse], probs[fuse], snapshot=snap)
            else:
                updated = 0  # nothing observed since the last segmentation
            seconds = time.perf_counter() - t0
            if updated:
                self._bump()
            self._segmented_upto = snap.frame_index
            if now_s is not None:
                self._last_segment_s = float(now_s)
            self.segmentations += 1
            if plan is not None and len(fuse):
                targets = rows[fuse]
                self.ledger.record(snap.keys[targets], self.segmentations, snap.colors[targets], snap.normals[targets])
                if plan.tiers["new_in_view"] or plan.tiers["new"]:
                    self._grew_in = self.segmentations
            return SegmentStats(float(now_s) if now_s is not None else float("nan"), len(rows), updated, seconds,
                                tiers=plan.tiers if plan is not None else None,
                                due=plan.due if plan is not None else None)

    def segment_rows(self, snap: MapSnapshot, scope: str = "recent") -> Tuple[np.ndarray, np.ndarray]:
        """(rows of ``snap`` to give the encoder [R], positions within them whose probabilities are fused)
        for scope "map" or "recent"."""
        n = len(snap)
        if scope == "map":
            return np.arange(n), np.arange(n)
        target = (snap.last_seen >= self._segmented_upto) | (snap.labels < 0)
        if not target.any():
            return np.empty(0, np.int64), np.empty(0, np.int64)
        context = np.zeros(n, bool)
        if self.config.segment_context_m > 0 and not target.all():
            from scipy.spatial import cKDTree

            others = np.flatnonzero(~target)
            dist, _ = cKDTree(snap.coords[target]).query(snap.coords[others], k=1,
                                                         distance_upper_bound=self.config.segment_context_m)
            context[others[np.isfinite(dist)]] = True
        rows = np.flatnonzero(target | context)
        return rows, np.flatnonzero(target[rows])

    def labelled_points(self) -> LabelledPoints:
        snap = self.map.snapshot()
        instance = None
        if self.tracker is not None:
            with self._tracker_lock:
                instance = self.tracker.ids_of(snap.keys)
        return LabelledPoints(coord=snap.coords, color=np.clip(np.rint(snap.colors), 0, 255).astype(np.uint8),
                              label=snap.labels, confidence=snap.confidence, instance=instance)

    def objects(self, min_voxels: int = 1) -> List[MapObject]:
        """The map's objects (id, class, score, axis-aligned box); empty without an instance head."""
        if self.tracker is None:
            return []
        snap = self.map.snapshot(with_labels=False)
        with self._tracker_lock:
            return self.tracker.objects(snap.keys, snap.coords, min_voxels)

    def saved_map(self, map_frame: str = "map") -> SavedMap:
        """The map now, with its object ids when this segmenter tracks objects (what ``save_map`` writes
        and :meth:`restore` takes back)."""
        def instance_of(keys: np.ndarray) -> np.ndarray:
            with self._tracker_lock:
                found = self.tracker.ids_of(keys)  # 0 = none here, -1 = none in a saved map
            return np.where(found > 0, found, -1)

        return SavedMap.from_voxel_map(self.map, self.class_names, map_frame,
                                       instance_of=instance_of if self.tracker is not None else None)

    def restore(self, saved: SavedMap, source: str = "the saved map") -> None:
        """Start from a saved map (``gcross_core.mapping.map_io``): its voxels and labels, and its object
        ids when it has them and this segmenter tracks objects (InputError when voxel size or classes
        differ)."""
        restore_map(self.map, saved, self.class_names, source)
        # restored labels count as the oldest: the background refresh visits them once
        self._reset_schedule(grew_in=self.segmentations + 1)
        self._bump()
        if self.tracker is not None:
            with self._tracker_lock:
                if saved.instance is None:
                    self.tracker.reset()
                else:
                    self.tracker.restore(pack_keys(saved.voxel_index), saved.instance, saved.probability)

    def reset_instances(self) -> None:
        """Forget every object (with the map, e.g. on a map reset)."""
        if self.tracker is not None:
            with self._tracker_lock:
                self.tracker.reset()
