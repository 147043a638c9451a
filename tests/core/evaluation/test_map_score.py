"""Scoring a labelled map against labelled ground-truth points (gcross_core/evaluation/map_score.py)."""
import numpy as np
import pytest

from gcross_core.evaluation.map_score import latency_summary, score_labelled_map


def test_score_by_hand_with_uncovered_points():
    x = np.arange(10, dtype=np.float32)
    gt_coord = np.stack([x, 0 * x, 0 * x], 1)
    gt_label = np.array([0, 0, 0, 1, 1, 1, 2, 2, -1, -1])
    # the map covers x = 0..6 only; it calls the third floor point class 1
    map_coord, map_label = gt_coord[:7], np.array([0, 0, 1, 1, 1, 1, 2])
    s = score_labelled_map(map_coord, map_label, gt_coord, gt_label, num_classes=3, radius_m=0.3)
    np.testing.assert_array_equal(s.conf, [[2, 1, 0, 0], [0, 3, 0, 0], [0, 0, 1, 1]])
    np.testing.assert_allclose(s.metrics["iou"], [2 / 3, 3 / 4, 1 / 2])  # TP / (GT + pred - TP)
    assert s.metrics["miou"] == pytest.approx((2 / 3 + 3 / 4 + 1 / 2) / 3)
    assert s.uncovered_points == 1 and s.coverage == pytest.approx(7 / 8)

    perfect = score_labelled_map(gt_coord + 0.01, gt_label, gt_coord, gt_label, 3, radius_m=0.3)
    assert perfect.metrics["miou"] == 1.0 and perfect.uncovered_points == 0


def test_latency_summary_in_milliseconds():
    s = latency_summary([0.001, 0.002, 0.003, 0.010])
    assert s["count"] == 4 and s["max_ms"] == pytest.approx(10.0) and s["p50_ms"] == pytest.approx(2.5)
    assert s["mean_ms"] == pytest.approx(4.0)
    assert latency_summary([]) == {"count": 0}
