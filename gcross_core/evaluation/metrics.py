"""Semantic segmentation metrics from a confusion matrix.

Convention (the same for training-time validation, ``training/evaluate.py`` and ``gcross-bag eval``):

- ``conf[g, p]`` counts points whose ground truth is class ``g`` and whose prediction is class ``p``.
  Points whose ground truth equals ``ignore_index`` (or is otherwise outside ``0..K-1``) are dropped
  before counting. With ``count_unpredicted=True`` a prediction outside ``0..K-1`` (for example -1 for
  "no prediction") is kept in an extra last column: a miss of its ground-truth class that is a false
  positive of no class.
- Per class: ``IoU_k = TP_k / (TP_k + FP_k + FN_k)`` and ``Acc_k = TP_k / (TP_k + FN_k)``.
- **mIoU and mAcc average over the classes that have ground-truth points** (``present``). A class that
  is absent from the ground truth but predicted somewhere gets IoU 0 and is *not* averaged in: its
  wrongly predicted points already count as misses of their true classes, and averaging it in as well
  would let a single stray point move mIoU by a whole class. Classes absent from both ground truth and
  prediction are likewise left out. Per-class ``iou``/``acc`` of non-present classes are NaN so that
  nobody mistakes them for a measured zero.
- ``allacc`` is the fraction of non-ignored points labelled correctly (overall accuracy).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict

import numpy as np


@dataclass(frozen=True)
class SegmentationMetrics:
    """Scores of one confusion matrix (:func:`segmentation_metrics`); NaN where nothing is labelled."""

    miou: float  # mean IoU over the classes present in the ground truth
    macc: float  # mean per-class accuracy over the same classes
    allacc: float  # share of labelled points predicted right
    iou: np.ndarray  # [K] float64, NaN for classes absent from the ground truth
    acc: np.ndarray  # [K] float64, NaN likewise
    present: np.ndarray  # [K] bool, the class has ground-truth points
    gt_count: np.ndarray  # [K] int64 ground-truth points (misses without a prediction included)
    pred_count: np.ndarray  # [K] int64 points predicted as the class

    def to_dict(self) -> Dict[str, Any]:
        """Field name -> value (arrays as they are; gcross_core.evaluation.report makes them JSON)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def confusion_matrix(pred: np.ndarray,  # [N] int, predicted class per point
                     gt: np.ndarray,  # [N] int, ground-truth class per point (ignore_index = ignored)
                     num_classes: int,
                     ignore_index: int = -1,
                     count_unpredicted: bool = False,
                     ) -> np.ndarray:  # [K, K] int64 (rows = ground truth, columns = prediction)
    """Count (ground truth, prediction) pairs with one ``np.bincount``.

    Ground-truth labels equal to ``ignore_index`` or outside ``0..K-1`` are dropped. A prediction
    outside ``0..K-1`` on a counted point is an error unless ``count_unpredicted`` is set; then the
    matrix gets one more column ``[K, K + 1]`` whose last entry counts such points per ground-truth
    class (for example map points that no prediction covers), and they score as misses.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.ndim != 1 or gt.ndim != 1 or pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must both be [N] with the same N")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not (np.issubdtype(pred.dtype, np.integer) and np.issubdtype(gt.dtype, np.integer)):
        raise ValueError(f"pred ({pred.dtype}) and gt ({gt.dtype}) must be integer labels")
    k = int(num_classes)
    keep = (gt != ignore_index) & (gt >= 0) & (gt < k)
    g = gt[keep].astype(np.int64)
    p = pred[keep].astype(np.int64)
    out_of_range = (p < 0) | (p >= k)
    if out_of_range.any() and not count_unpredicted:
        bad = np.unique(p[out_of_range])[:5].tolist()
        raise ValueError(f"pred has labels {bad} outside 0..{k - 1} on non-ignored points; pass "
                         f"count_unpredicted=True to score them as misses")
    width = k + 1 if count_unpredicted else k
    p = np.where(out_of_range, k, p)
    return np.bincount(g * width + p, minlength=k * width).reshape(k, width)


def segmentation_metrics(conf: np.ndarray,  # [K, K] or [K, K + 1] (last column = no prediction)
                         ) -> SegmentationMetrics:
    """mIoU, mAcc, allAcc and per-class IoU/accuracy from a confusion matrix (rule in the module doc).

    Returns a dict with ``miou``, ``macc``, ``allacc`` (floats; NaN when no class is present),
    ``iou`` [K], ``acc`` [K] (float64, NaN for classes without ground truth), ``present`` [K] bool,
    ``gt_count`` [K] and ``pred_count`` [K] int64.
    """
    conf = np.asarray(conf)
    if conf.ndim != 2 or conf.shape[1] not in (conf.shape[0], conf.shape[0] + 1):
        raise ValueError(f"confusion matrix has shape {conf.shape}, expected [K, K] or [K, K + 1]")
    if np.any(conf < 0):
        raise ValueError("confusion matrix has negative counts")
    k = conf.shape[0]
    conf = conf.astype(np.int64)
    square = conf[:, :k]
    tp = np.diag(square).astype(np.float64)
    gt_count = conf.sum(axis=1)  # includes the no-prediction column when present
    pred_count = square.sum(axis=0)
    union = gt_count + pred_count - tp
    present = gt_count > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(present, tp / np.maximum(union, 1), np.nan)
        acc = np.where(present, tp / np.maximum(gt_count, 1), np.nan)
    total = gt_count.sum()
    return SegmentationMetrics(
        miou=float(np.mean(iou[present])) if present.any() else float("nan"),
        macc=float(np.mean(acc[present])) if present.any() else float("nan"),
        allacc=float(tp.sum() / total) if total > 0 else float("nan"),
        iou=iou, acc=acc, present=present, gt_count=gt_count, pred_count=pred_count.astype(np.int64))
