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
    np.testing.assert_allclose(s.metrics.iou, [2 / 3, 3 / 4, 1 / 2])  # TP / (GT + pred - TP)
    assert s.metrics.miou == pytest.approx((2 / 3 + 3 / 4 + 1 / 2) / 3)
    assert s.uncovered_points == 1 and s.coverage == pytest.approx(7 / 8)

    perfect = score_labelled_map(gt_coord + 0.01, gt_label, gt_coord, gt_label, 3, radius_m=0.3)
    assert perfect.metrics.miou == 1.0 and perfect.uncovered_points == 0


def test_latency_summary_in_milliseconds():
    s = latency_summary([0.001, 0.002, 0.003, 0.010])
    assert s["count"] == 4 and s["max_ms"] == pytest.approx(10.0) and s["p50_ms"] == pytest.approx(2.5)
    assert s["mean_ms"] == pytest.approx(4.0)
    assert latency_summary([]) == {"count": 0}


def test_objects_are_ranked_by_the_trackers_score_where_given():
    from gcross_core.evaluation.map_score import map_objects, score_map_instances

    # ground truth: two objects of class 1 on a line; the map finds the first whole and a fragment of the
    # second (a false positive at AP50), and is more confident of the fragment
    coord = np.array([[x, 0.0, 0.0] for x in np.arange(0, 2.0, 0.01)], np.float32)
    label = np.ones(len(coord), np.int64)
    instance = np.where(coord[:, 0] < 1.0, 1, np.where(coord[:, 0] < 1.2, 2, 0))
    confidence = np.where(instance == 1, 0.4, 0.9).astype(np.float32)
    gt_instance = np.where(coord[:, 0] < 1.0, 0, 1)
    gt_label = np.ones(len(coord), np.int64)
    thing = np.array([False, True])
    _, _, _, by_confidence = map_objects(label, confidence, instance)
    np.testing.assert_allclose(by_confidence, [0.4, 0.9], rtol=1e-6)
    _, _, _, by_tracker = map_objects(label, confidence, instance, object_scores={1: 0.8, 2: 0.1})
    np.testing.assert_allclose(by_tracker, [0.8, 0.1])
    args = (coord, label, confidence, instance, coord, gt_label, gt_instance, ["table", "object"], thing, 0.02)
    worse = score_map_instances(*args, min_gt_points=10)
    better = score_map_instances(*args, min_gt_points=10, object_scores={1: 0.8, 2: 0.1})
    assert better.ap50 > worse.ap50  # the right object first: precision 1 at recall 1/2
