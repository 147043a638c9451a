"""Evaluation of a :class:`~gcross_core.segmentation.segmenter.Segmenter` on labelled scene folders.

Evaluation never crops or augments: every ORIGINAL point gets the label of its grid cell (optionally
averaged over rotations, see :meth:`~gcross_core.segmentation.segmenter.Segmenter.predict_proba`), and the
confusion matrix counts every labelled original point.

With a segmenter that has an instance head and scenes that carry ``instance.npy``, the instances
found on the original points (:meth:`~gcross_core.segmentation.segmenter.Segmenter.predict_instances`)
are also scored: ScanNet-style AP25 / AP50 / mAP (:mod:`gcross_core.evaluation.instance_metrics`).
Instance evaluation uses one pass (no rotations).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from gcross_core.evaluation.instance_metrics import InstanceAccumulator, InstanceMetrics
from gcross_core.evaluation.metrics import SegmentationMetrics, confusion_matrix, segmentation_metrics
from gcross_core.segmentation.instance import thing_mask
from gcross_core.segmentation.dataset import load_labelled_scene
from gcross_core.segmentation.segmenter import Segmenter


@dataclass
class EvalResult:
    conf: np.ndarray  # [K, K] int64 over the original points of every scene
    metrics: SegmentationMetrics  # of conf
    per_scene: List[Dict[str, Any]]  # name, points, miou, allacc (and instances with an instance head): JSON rows
    instance: Optional[InstanceMetrics] = None  # with an instance head


def evaluate_scenes(segmenter: Segmenter, scene_dirs: Sequence[Path], label_file: str, rotations: int = 1,
                    progress=None, min_gt_points: int = 100) -> EvalResult:
    """Confusion matrix of ``segmenter`` on the ORIGINAL points of labelled scene folders, and instance AP
    when the segmenter has an instance head (scenes without ``instance.npy`` are then left out of AP).

    ``progress``: optional callable wrapping the scene iterable (e.g. tqdm). ``min_gt_points``: smaller
    ground-truth objects are not scored (ScanNet: 100 points).
    """
    k = segmenter.num_classes
    conf = np.zeros((k, k), dtype=np.int64)
    per_scene = []
    acc = None
    if getattr(segmenter, "has_instance_head", False):  # duck-typed segmenters without one: semantic only
        thing = thing_mask(segmenter.class_names, segmenter.instance_config.stuff_classes)
        acc = InstanceAccumulator(segmenter.class_names, thing, min_gt_points)
    it = progress(scene_dirs) if progress is not None else scene_dirs
    for path in it:
        scene = load_labelled_scene(path, label_file, segmenter.class_names)
        row: Dict[str, Any] = {"name": scene.name, "points": int(scene.num_points)}
        if acc is not None and scene.instance is not None:
            out = segmenter.predict_instances(scene.coord, scene.color, scene.normal)
            pred = out.labels
            acc.add(out.instances.indices, out.instances.classes, out.instances.scores, scene.segment, scene.instance)
            row["instances"] = len(out.instances)
        else:
            pred, _, _ = segmenter.predict(scene.coord, scene.color, scene.normal, rotations=rotations)
        c = confusion_matrix(pred, scene.segment, k)
        conf += c
        m = segmentation_metrics(c)
        row.update({"miou": m.miou, "allacc": m.allacc})
        per_scene.append(row)
    instance = acc.metrics() if acc is not None and acc.scenes else None
    return EvalResult(conf=conf, metrics=segmentation_metrics(conf), per_scene=per_scene, instance=instance)
