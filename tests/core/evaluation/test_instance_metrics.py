"""ScanNet-style instance AP on hand-built scenes: every expected value is worked out in the comments."""
import math
from dataclasses import replace

import numpy as np
import pytest

from gcross_core.evaluation.instance_metrics import InstanceAccumulator, average_precision

CLASSES = ("wall", "chair", "table")
THING = np.array([False, True, True])


def scene(sizes_and_classes, wall_points=10):
    """Points laid out object after object: (size, class) per object, then unannotated wall points."""
    labels, inst = [], []
    for k, (size, c) in enumerate(sizes_and_classes):
        labels += [c] * size
        inst += [k] * size
    labels += [0] * wall_points
    inst += [-1] * wall_points
    return np.array(labels), np.array(inst)


def span(a, b):
    return np.arange(a, b)


def evaluate(preds, labels, inst, min_gt_points=1):
    acc = InstanceAccumulator(CLASSES, THING, min_gt_points=min_gt_points)
    acc.add([p[0] for p in preds], np.array([p[1] for p in preds]), np.array([p[2] for p in preds]), labels, inst)
    return acc.metrics()


def test_perfect_prediction_scores_one():
    labels, inst = scene([(10, 1), (8, 1), (12, 2)])
    preds = [(span(0, 10), 1, 0.9), (span(10, 18), 1, 0.8), (span(18, 30), 2, 0.7)]
    m = evaluate(preds, labels, inst)
    assert m.ap25 == m.ap50 == m.map == 1.0
    assert m.per_class["chair"]["num_gt"] == 2 and "wall" not in m.per_class  # stuff is not scored


def test_split_object():
    # one chair of 10 points predicted as two pieces: A = 6 points (IoU 0.6), B = 4 points (IoU 0.4)
    labels, inst = scene([(10, 1)])
    # A scores higher: A is a TP at IoU thresholds below 0.6 (strict >), B is a FP (duplicate / too small)
    # after recall reached 1, which does not lower the monotone precision: AP25 = AP50 = 1.
    # mAP: thresholds 0.50, 0.55 give 1, 0.60 ... 0.95 give 0 -> 2 / 10 = 0.2
    m = evaluate([(span(0, 6), 1, 0.9), (span(6, 10), 1, 0.8)], labels, inst)
    assert m.ap50 == 1.0 and m.ap25 == 1.0
    assert m.map == pytest.approx(0.2)
    # B scores higher: at 0.5 B is a FP before the TP A -> precision 1/2 at recall 1 -> AP50 = 0.5;
    # at 0.25 B (IoU 0.4) is the TP and A the duplicate -> AP25 = 1; mAP = (0.5 + 0.5) / 10 = 0.1
    m = evaluate([(span(0, 6), 1, 0.8), (span(6, 10), 1, 0.9)], labels, inst)
    assert m.ap50 == pytest.approx(0.5) and m.ap25 == 1.0
    assert m.map == pytest.approx(0.1)


def test_merged_pair():
    # two chairs of 5 points, one prediction covering both: IoU 0.5 with each. 0.5 is not > 0.5, so at
    # AP50 it is a FP and AP50 = 0; at AP25 it matches one chair: recall 1/2, precision 1 -> AP25 = 0.5
    labels, inst = scene([(5, 1), (5, 1)])
    m = evaluate([(span(0, 10), 1, 0.9)], labels, inst)
    assert m.ap50 == 0.0 and m.map == 0.0
    assert m.ap25 == pytest.approx(0.5)


def test_false_positive():
    # a perfect chair (score 0.5) and a chair predicted on the table's points (score 0.9):
    # chair AP = precision 1/2 at recall 1 = 0.5; the table has no prediction: AP 0 -> mean 0.25
    labels, inst = scene([(10, 1), (10, 2)])
    m = evaluate([(span(0, 10), 1, 0.5), (span(10, 20), 1, 0.9)], labels, inst)
    assert m.per_class["chair"]["ap50"] == pytest.approx(0.5)
    assert m.per_class["table"]["ap50"] == 0.0
    assert m.ap50 == pytest.approx(0.25)
    # the same false positive with a lower score than the true one: chair AP 1
    m = evaluate([(span(0, 10), 1, 0.9), (span(10, 20), 1, 0.5)], labels, inst)
    assert m.per_class["chair"]["ap50"] == 1.0


def test_prediction_on_unannotated_points_is_not_a_false_positive():
    # the extra prediction lies on the 10 unannotated points (instance -1): ignored, chair AP stays 1;
    # the same prediction on annotated table points would have cost half the AP
    labels, inst = scene([(10, 1)], wall_points=10)
    m = evaluate([(span(0, 10), 1, 0.5), (span(10, 20), 1, 0.9)], labels, inst)
    assert m.ap50 == 1.0


def test_small_ground_truth_objects_are_not_scored():
    labels, inst = scene([(10, 1), (3, 1)])
    m = evaluate([(span(0, 10), 1, 0.9)], labels, inst, min_gt_points=5)
    assert m.per_class["chair"]["num_gt"] == 1 and m.ap50 == 1.0


def test_scenes_accumulate():
    acc = InstanceAccumulator(CLASSES, THING, min_gt_points=1)
    labels, inst = scene([(10, 1)])
    acc.add([span(0, 10)], np.array([1]), np.array([0.9]), labels, inst)  # found
    acc.add([], np.array([], int), np.array([]), labels, inst)  # missed in the second scene
    m = acc.metrics()
    assert m.scenes == 2 and m.per_class["chair"]["num_gt"] == 2
    assert m.ap50 == pytest.approx(0.5)  # recall 1/2 at precision 1


def test_average_precision_edges():
    assert math.isnan(average_precision(np.array([0.5]), np.array([True]), 0))
    assert average_precision(np.array([]), np.array([], bool), 3) == 0.0
    # TP, FP, TP of 2 objects: precision 1 at recall 0.5, 2/3 at recall 1 -> 0.5 * 1 + 0.5 * 2/3
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 2) == pytest.approx(5 / 6)


def test_bad_input_is_named():
    acc = InstanceAccumulator(CLASSES, THING)
    with pytest.raises(ValueError, match="predictions"):
        acc.add([span(0, 2)], np.array([1, 1]), np.array([0.5]), np.zeros(3, int), np.zeros(3, int))
    with pytest.raises(ValueError, match="thing mask"):
        InstanceAccumulator(CLASSES, np.array([True]))


def test_metrics_are_fields_and_to_dict_is_the_results_file_layout():
    labels, inst = scene([(10, 1)])
    m = evaluate([(span(0, 10), 1, 0.9)], labels, inst)
    assert set(m.to_dict()) == {"ap25", "ap50", "map", "per_class", "scenes"}  # no map_objects outside maps
    assert replace(m, map_objects=3).to_dict()["map_objects"] == 3
