"""Scoring a labelled map against a labelled ground-truth cloud, and latency summaries.

``score_labelled_map`` compares a labelled map with a labelled ground-truth cloud: every ground-truth
point takes the label of the nearest map point within ``radius_m``; ground-truth points with no map
point that close are *uncovered* and score as misses of their class (they are also reported apart).

``score_map_instances`` does the same for objects: every ground-truth point takes the object id of the
nearest map point within ``radius_m``; each object of the map becomes a predicted instance made of the
ground-truth points that took its id, with the majority label of its map points as class and their
mean confidence as score, and is scored with ScanNet-style AP
(:mod:`gcross_core.evaluation.instance_metrics`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from gcross_core.errors import InputError
from gcross_core.evaluation.instance_metrics import InstanceAccumulator, InstanceMetrics
from gcross_core.evaluation.metrics import SegmentationMetrics, confusion_matrix, segmentation_metrics


@dataclass(frozen=True)
class MapScore:
    conf: np.ndarray  # [K, K + 1] int64; last column = no label (uncovered, or the map point never segmented)
    metrics: SegmentationMetrics  # segmentation_metrics(conf)
    transferred: np.ndarray  # [N] int64 label each ground-truth point received, -1 = none
    covered: np.ndarray  # [N] bool: a map point lies within radius_m
    scored: np.ndarray  # [N] bool: ground-truth label is a class (not ignored)
    radius_m: float

    @property
    def coverage(self) -> float:
        """Share of the scored ground-truth points that have a map point within ``radius_m``."""
        n = int(self.scored.sum())
        return float((self.covered & self.scored).sum() / n) if n else float("nan")

    @property
    def uncovered_points(self) -> int:
        return int((~self.covered & self.scored).sum())

    @property
    def unlabelled_points(self) -> int:
        """Covered scored points whose nearest map point was never segmented."""
        return int((self.covered & self.scored & (self.transferred < 0)).sum())


def transfer_labels(map_coord: np.ndarray,  # [M, 3] metres
                    map_label: np.ndarray,  # [M] int, -1 = unlabelled
                    query_coord: np.ndarray,  # [N, 3] metres
                    radius_m: float,
                    ) -> tuple:  # (labels [N] int64, -1 where no map point within radius; covered [N] bool)
    """Label of the nearest map point within ``radius_m`` for each query point (cKDTree)."""
    from scipy.spatial import cKDTree

    map_coord = np.asarray(map_coord, np.float64)
    query_coord = np.asarray(query_coord, np.float64)
    map_label = np.asarray(map_label)
    if map_coord.ndim != 2 or map_coord.shape[1] != 3 or map_label.shape != (len(map_coord),):
        raise ValueError(f"map coord {map_coord.shape} / label {map_label.shape}: expected [M, 3] and [M]")
    if query_coord.ndim != 2 or query_coord.shape[1] != 3:
        raise ValueError(f"query coord has shape {query_coord.shape}, expected [N, 3]")
    if not radius_m > 0:
        raise InputError(f"radius_m must be > 0, got {radius_m}")
    out = np.full(len(query_coord), -1, np.int64)
    if len(map_coord) == 0 or len(query_coord) == 0:
        return out, np.zeros(len(query_coord), bool)
    dist, idx = cKDTree(map_coord).query(query_coord, k=1, distance_upper_bound=radius_m)
    covered = np.isfinite(dist)
    out[covered] = map_label[idx[covered]]
    return out, covered


def score_labelled_map(map_coord: np.ndarray,  # [M, 3] metres, map frame
                       map_label: np.ndarray,  # [M] int, -1 = unlabelled
                       gt_coord: np.ndarray,  # [N, 3] metres, same frame
                       gt_label: np.ndarray,  # [N] int, -1 = ignore
                       num_classes: int,
                       radius_m: float,
                       ) -> MapScore:
    """Score a labelled map on the ground-truth points (rule in the module docstring).

    A covered ground-truth point whose nearest map point was never segmented (label -1) is a miss too.
    """
    gt_label = np.asarray(gt_label).astype(np.int64)
    if gt_label.shape != (len(gt_coord),):
        raise ValueError(f"gt label has shape {gt_label.shape}, expected [{len(gt_coord)}]")
    transferred, covered = transfer_labels(map_coord, map_label, gt_coord, radius_m)
    conf = confusion_matrix(transferred, gt_label, num_classes, ignore_index=-1, count_unpredicted=True)
    scored = (gt_label >= 0) & (gt_label < num_classes)
    return MapScore(conf=conf, metrics=segmentation_metrics(conf), transferred=transferred, covered=covered,
                    scored=scored, radius_m=float(radius_m))


def map_objects(map_label: np.ndarray,  # [M] int, -1 = unlabelled
                map_confidence: Optional[np.ndarray],  # [M] float, or None (score 1)
                map_instance: np.ndarray,  # [M] int object id, ``none`` = no object
                none: int = 0,  # the id meaning no object: 0 in a map, -1 in ground truth
                object_scores: Optional[Mapping[int, float]] = None,  # object id -> score
                ) -> Tuple[np.ndarray, List[np.ndarray], np.ndarray, np.ndarray]:
    """(object ids [P], map point indices per object, class per object [P] (majority label of its
    points, -1 if none is labelled), score per object [P]: ``object_scores`` where it names the object
    (the tracker's score, the grouping score of its latest instance, as offline evaluation ranks objects),
    else the mean confidence of its points)."""
    map_instance = np.asarray(map_instance).astype(np.int64)
    map_label = np.asarray(map_label).astype(np.int64)
    ids = np.unique(map_instance[map_instance != none])
    indices, classes, scores = [], [], []
    for oid in ids:
        idx = np.flatnonzero(map_instance == oid)
        lab = map_label[idx]
        lab = lab[lab >= 0]
        indices.append(idx)
        classes.append(int(np.bincount(lab).argmax()) if len(lab) else -1)
        if object_scores is not None and int(oid) in object_scores:
            scores.append(float(object_scores[int(oid)]))
        else:
            scores.append(float(np.mean(map_confidence[idx])) if map_confidence is not None else 1.0)
    return ids, indices, np.asarray(classes, np.int64), np.asarray(scores, np.float64)


def score_map_instances(map_coord: np.ndarray,  # [M, 3] metres
                        map_label: np.ndarray,  # [M] int, -1 = unlabelled
                        map_confidence: Optional[np.ndarray],  # [M] float
                        map_instance: np.ndarray,  # [M] int object id, 0 = none
                        gt_coord: np.ndarray,  # [N, 3] metres, same frame
                        gt_label: np.ndarray,  # [N] int, -1 = ignore
                        gt_instance: np.ndarray,  # [N] int, -1 = none
                        class_names: Sequence[str],
                        thing: np.ndarray,  # [K] bool: instanced classes
                        radius_m: float,
                        min_gt_points: int = 100,
                        object_scores: Optional[Mapping[int, float]] = None,  # object id -> score (map_objects)
                        ) -> InstanceMetrics:
    """Instance AP of a map's objects on the ground-truth points (rule in the module docstring)."""
    transferred, _ = transfer_labels(map_coord, np.asarray(map_instance).astype(np.int64), gt_coord, radius_m)
    ids, _, classes, scores = map_objects(map_label, map_confidence, map_instance, object_scores=object_scores)
    keep = classes >= 0
    preds = [np.flatnonzero(transferred == oid) for oid in ids[keep]]
    acc = InstanceAccumulator(class_names, thing, min_gt_points)
    acc.add(preds, classes[keep], scores[keep], gt_label, gt_instance)
    return replace(acc.metrics(), map_objects=int(len(ids)))


def latency_summary(seconds: Sequence[float]) -> Dict[str, float]:
    """p50/p90/p99/max/mean in milliseconds of a list of durations in seconds."""
    s = np.asarray(seconds, np.float64) * 1000.0
    if s.size == 0:
        return {"count": 0}
    p50, p90, p99 = np.percentile(s, [50, 90, 99])
    return {"count": int(s.size), "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "max_ms": float(s.max()), "mean_ms": float(s.mean())}
