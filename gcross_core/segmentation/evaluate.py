"""Evaluation of a :class:`~gcross_core.segmentation.segmenter.Segmenter` on labelled scene folders.

Evaluation never crops or augments: every ORIGINAL point gets the label of its grid cell (optionally
averaged over rotations, see :meth:`~gcross_core.segmentation.segmenter.Segmenter.predict_proba`), and the
confusion matrix counts every labelled original point.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from gcross_core.evaluation.metrics import confusion_matrix, segmentation_metrics
from gcross_core.segmentation.dataset import load_labelled_scene
from gcross_core.segmentation.segmenter import Segmenter


@dataclass
class EvalResult:
    conf: np.ndarray  # [K, K] int64 over the original points of every scene
    metrics: Dict[str, Any]  # segmentation_metrics(conf)
    per_scene: List[Dict[str, Any]]  # name, points, miou, allacc


def evaluate_scenes(segmenter: Segmenter, scene_dirs: Sequence[Path], label_file: str, rotations: int = 1,
                    progress=None) -> EvalResult:
    """Confusion matrix of ``segmenter`` on the ORIGINAL points of labelled scene folders.

    ``progress``: optional callable wrapping the scene iterable (e.g. tqdm).
    """
    k = segmenter.num_classes
    conf = np.zeros((k, k), dtype=np.int64)
    per_scene = []
    it = progress(scene_dirs) if progress is not None else scene_dirs
    for path in it:
        scene = load_labelled_scene(path, label_file, segmenter.class_names)
        pred, _, _ = segmenter.predict(scene.coord, scene.color, scene.normal, rotations=rotations)
        c = confusion_matrix(pred, scene.segment, k)
        conf += c
        m = segmentation_metrics(c)
        per_scene.append({"name": scene.name, "points": int(scene.num_points), "miou": m["miou"],
                          "allacc": m["allacc"]})
    return EvalResult(conf=conf, metrics=segmentation_metrics(conf), per_scene=per_scene)
