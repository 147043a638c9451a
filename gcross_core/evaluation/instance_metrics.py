"""ScanNet-style instance-segmentation metrics: AP25, AP50 and mAP (AP averaged over IoU 0.50:0.95 in
steps of 0.05), per class and overall (paper Table 4).

Matching, on the ORIGINAL points of each scene (:class:`InstanceAccumulator` adds scenes one by one):

- Ground-truth instances are the point sets sharing an instance id (>= 0) whose majority semantic label
  is a thing class; their class is that majority label. Instances with fewer than ``min_gt_points``
  points (ScanNet: 100) are not scored, and their points count as void (below).
- Void points: points without an instance id, with an ignored semantic label (-1), or in a ground-truth
  instance too small to score.
- For an IoU threshold t, the predictions of class c in a scene are visited in decreasing score. A
  prediction is a true positive when its best-overlapping, not yet matched ground-truth instance of
  class c has IoU > t (strictly, as in ScanNet's script); that instance is then matched. Otherwise it is
  a false positive, unless more than a share t of its points are void (ScanNet does not count a
  prediction that lies mostly on unannotated points). A second prediction of an already matched object
  is a false positive (a duplicate).
- Per class and threshold, the true/false positives of all scenes are sorted by score; AP is the area
  under the precision-recall curve with the precision made monotone (VOC 2010 "all points"): the sum
  over recall steps of the best precision at that recall or beyond. ScanNet's script integrates the
  same curve with a slightly different step rule, so values may differ from it in the last digit.
- A class without ground truth anywhere has AP NaN and is left out of the means; a class with ground
  truth but no prediction has AP 0. AP25 / AP50 / mAP are the means over the classes that have AP.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from gcross_core.errors import InputError

IOU_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2).tolist())  # mAP: 0.50:0.95
AP25, AP50 = 0.25, 0.5


def average_precision(scores: np.ndarray,  # [P] float
                      is_tp: np.ndarray,  # [P] bool, false = false positive
                      num_gt: int) -> float:
    """Area under the monotone precision-recall curve of predictions (module docstring)."""
    if num_gt <= 0:
        return float("nan")
    scores = np.asarray(scores, np.float64)
    is_tp = np.asarray(is_tp, bool)
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(is_tp[order])
    fp = np.cumsum(~is_tp[order])
    recall = tp / num_gt
    precision = tp / np.maximum(tp + fp, 1)
    # monotone envelope: best precision at this recall or beyond
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * envelope))


@dataclass
class _ClassRecord:
    scores: List[float] = field(default_factory=list)
    tp: Dict[float, List[bool]] = field(default_factory=dict)  # threshold -> per prediction (counted ones)
    kept: Dict[float, List[bool]] = field(default_factory=dict)  # threshold -> prediction counted at all
    num_gt: int = 0


@dataclass(frozen=True)
class InstanceMetrics:
    """ScanNet-style instance AP (:meth:`InstanceAccumulator.metrics`); NaN where no object was scored."""

    ap25: float  # AP at IoU 0.25, mean over the classes with ground-truth objects
    ap50: float  # AP at IoU 0.5, likewise
    map: float  # AP averaged over IoU 0.5:0.95, likewise
    per_class: Dict[str, Dict[str, float]]  # class name -> {ap25, ap50, map, num_gt}
    scenes: int  # scenes that were scored
    map_objects: Optional[int] = None  # objects in a scored map (score_map_instances); None elsewhere

    def to_dict(self) -> Dict[str, object]:
        """The JSON layout of results files (``map_objects`` only where a map was scored)."""
        out = {"ap25": self.ap25, "ap50": self.ap50, "map": self.map, "per_class": self.per_class,
               "scenes": self.scenes}
        if self.map_objects is not None:
            out["map_objects"] = self.map_objects
        return out


def _thresholds() -> tuple:
    return (AP25,) + IOU_THRESHOLDS


class InstanceAccumulator:
    """Collects predictions and ground truth scene by scene; :meth:`metrics` gives AP per class and overall."""

    def __init__(self, class_names: Sequence[str], thing: np.ndarray, min_gt_points: int = 100):
        self.class_names = list(class_names)
        self.thing = np.asarray(thing, bool)
        if self.thing.shape != (len(self.class_names),):
            raise ValueError(f"thing mask has shape {self.thing.shape}, expected [{len(self.class_names)}]")
        if min_gt_points < 1:
            raise InputError(f"min_gt_points must be >= 1, got {min_gt_points}")
        self.min_gt_points = int(min_gt_points)
        self._records = {c: _ClassRecord() for c in np.flatnonzero(self.thing)}
        self.scenes = 0

    def ground_truth(self, gt_label: np.ndarray, gt_instance: np.ndarray):
        """(list of point-index arrays, their classes [G], void mask [N]) of one scene."""
        gt_label = np.asarray(gt_label).astype(np.int64)
        gt_instance = np.asarray(gt_instance).astype(np.int64)
        if gt_label.shape != gt_instance.shape or gt_label.ndim != 1:
            raise ValueError(f"gt labels {gt_label.shape} and instances {gt_instance.shape} must be [N]")
        void = (gt_instance < 0) | (gt_label < 0)
        objects, classes = [], []
        has = np.flatnonzero(gt_instance >= 0)
        if len(has):
            ids, inv = np.unique(gt_instance[has], return_inverse=True)
            order = np.argsort(inv, kind="stable")
            groups = np.split(has[order], np.flatnonzero(np.diff(inv[order])) + 1)
            for pts in groups:
                lab = gt_label[pts]
                lab = lab[(lab >= 0) & (lab < len(self.thing))]
                if len(lab) == 0:
                    continue
                c = int(np.bincount(lab).argmax())
                if not self.thing[c]:
                    continue  # stuff (wall, floor): neither scored nor void
                if len(pts) < self.min_gt_points:
                    void[pts] = True
                    continue
                objects.append(pts)
                classes.append(c)
        return objects, np.asarray(classes, np.int64), void

    def add(self, pred_indices: Sequence[np.ndarray],  # per prediction: point indices into the scene
            pred_classes: np.ndarray,  # [P] int
            pred_scores: np.ndarray,  # [P] float
            gt_label: np.ndarray,  # [N] int semantic label, -1 = ignore
            gt_instance: np.ndarray,  # [N] int instance id, -1 = none
            ) -> None:
        """Match one scene's predictions with its ground truth at every threshold (module docstring)."""
        n = len(gt_label)
        objects, obj_cls, void = self.ground_truth(gt_label, gt_instance)
        pred_classes = np.asarray(pred_classes, np.int64)
        pred_scores = np.asarray(pred_scores, np.float64)
        if len(pred_indices) != len(pred_classes) or len(pred_classes) != len(pred_scores):
            raise ValueError(f"{len(pred_indices)} predictions, {len(pred_classes)} classes, {len(pred_scores)} scores")
        for c, rec in self._records.items():
            gts = [objects[i] for i in np.flatnonzero(obj_cls == c)]
            rec.num_gt += len(gts)
            mine = np.flatnonzero(pred_classes == c)
            if len(mine) == 0:
                continue
            mine = mine[np.argsort(-pred_scores[mine], kind="stable")]
            # IoU of every prediction of this class with every ground-truth object of this class
            gt_id = np.full(n, -1, np.int64)
            for j, pts in enumerate(gts):
                gt_id[pts] = j
            gt_size = np.array([len(p) for p in gts], np.int64)
            ious, void_share = [], []
            for i in mine:
                idx = np.asarray(pred_indices[i], np.int64)
                hit = gt_id[idx]
                inter = np.bincount(hit[hit >= 0], minlength=len(gts))
                union = len(idx) + gt_size - inter
                ious.append(inter / np.maximum(union, 1))
                void_share.append(float(void[idx].mean()) if len(idx) else 0.0)
            for t in _thresholds():
                matched = np.zeros(len(gts), bool)
                tps, kept = rec.tp.setdefault(t, []), rec.kept.setdefault(t, [])
                for iou, vs in zip(ious, void_share):
                    cand = np.where(matched, -1.0, iou) if len(gts) else np.empty(0)
                    j = int(cand.argmax()) if len(cand) else -1
                    if j >= 0 and cand[j] > t:
                        matched[j] = True
                        tps.append(True)
                        kept.append(True)
                    else:
                        tps.append(False)
                        kept.append(vs <= t)  # mostly on void points: not a false positive
            rec.scores.extend(pred_scores[mine].tolist())
        self.scenes += 1

    def class_ap(self, c: int, t: float) -> float:
        rec = self._records[c]
        if rec.num_gt == 0:
            return float("nan")
        if not rec.scores:
            return 0.0
        kept = np.asarray(rec.kept[t], bool)
        return average_precision(np.asarray(rec.scores)[kept], np.asarray(rec.tp[t], bool)[kept], rec.num_gt)

    def metrics(self) -> InstanceMetrics:
        """AP25, AP50 and mAP overall and per class."""
        per_class: Dict[str, Dict[str, float]] = {}
        ap25, ap50, maps = [], [], []
        for c, rec in self._records.items():
            a25, a50 = self.class_ap(c, AP25), self.class_ap(c, AP50)
            m = float(np.mean([self.class_ap(c, t) for t in IOU_THRESHOLDS])) if rec.num_gt else float("nan")
            per_class[self.class_names[c]] = {"ap25": a25, "ap50": a50, "map": m, "num_gt": rec.num_gt}
            if rec.num_gt:
                ap25.append(a25)
                ap50.append(a50)
                maps.append(m)

        def mean(v):
            return float(np.mean(v)) if v else float("nan")

        return InstanceMetrics(ap25=mean(ap25), ap50=mean(ap50), map=mean(maps), per_class=per_class,
                               scenes=self.scenes)


def instance_metrics_markdown(metrics: InstanceMetrics, title: Optional[str] = None) -> str:
    """A markdown table of AP25 / AP50 / mAP, overall and per class."""
    def pct(x):
        return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"

    lines = [f"## {title}" if title else "## Instance segmentation", "",
             f"AP25 {pct(metrics.ap25)} / AP50 {pct(metrics.ap50)} / mAP {pct(metrics.map)} "
             f"(ScanNet-style, {metrics.scenes} scenes)", "",
             "| class | objects | AP25 | AP50 | mAP |", "|---|---:|---:|---:|---:|"]
    for name, m in metrics.per_class.items():
        lines.append(f"| {name} | {m['num_gt']} | {pct(m['ap25'])} | {pct(m['ap50'])} | {pct(m['map'])} |")
    return "\n".join(lines) + "\n"
