"""Segmentation metrics against a hand-computed confusion matrix, and the report files built on them."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from gcross_core.evaluation.report import class_palette, colorize_labels, save_topdown_png, write_metrics_report
from gcross_core.evaluation.metrics import confusion_matrix, segmentation_metrics

# 5 classes: 0-2 occur in the ground truth, 3 only in a prediction, 4 nowhere; two points ignored.
GT = np.array([0, 0, 0, 1, 1, 2, 2, 2, -1, -1, 0])
PRED = np.array([0, 0, 1, 1, 3, 2, 2, 0, 2, 1, 0])


def test_confusion_matrix_by_hand():
    conf = confusion_matrix(PRED, GT, num_classes=5)
    expected = np.array([
        [3, 1, 0, 0, 0],  # gt 0: three right, one called 1
        [0, 1, 0, 1, 0],  # gt 1: one right, one called 3
        [1, 0, 2, 0, 0],  # gt 2: two right, one called 0
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ])
    np.testing.assert_array_equal(conf, expected)
    assert conf.sum() == 9  # the two ignored points are gone


def test_metrics_by_hand_exclude_classes_without_ground_truth():
    m = segmentation_metrics(confusion_matrix(PRED, GT, num_classes=5))
    # IoU = TP / (GT + pred - TP): class 0: 3/(4+4-3), class 1: 1/(2+2-1), class 2: 2/(3+2-2)
    iou = [3 / 5, 1 / 3, 2 / 3]
    acc = [3 / 4, 1 / 2, 2 / 3]
    np.testing.assert_allclose(m.iou[:3], iou)
    np.testing.assert_allclose(m.acc[:3], acc)
    np.testing.assert_array_equal(m.present, [True, True, True, False, False])
    assert np.isnan(m.iou[3]) and np.isnan(m.iou[4])  # predicted-only and absent: not a measured 0
    assert m.miou == pytest.approx(np.mean(iou))
    assert m.macc == pytest.approx(np.mean(acc))
    assert m.allacc == pytest.approx(6 / 9)
    np.testing.assert_array_equal(m.pred_count, [4, 2, 2, 1, 0])


def test_metrics_match_per_class_loops_on_random_labels():
    rng = np.random.default_rng(3)
    k = 7
    gt = rng.integers(-1, k - 1, 500)  # class k-1 never in the ground truth
    pred = np.where(rng.random(500) < 0.6, gt, rng.integers(0, k, 500))
    pred = np.where(pred < 0, 0, pred)
    m = segmentation_metrics(confusion_matrix(pred, gt, k))
    ious, accs = [], []
    for c in range(k):
        valid = gt != -1
        g, p = gt[valid] == c, pred[valid] == c
        if g.sum() == 0:
            continue
        ious.append((g & p).sum() / (g | p).sum())
        accs.append((g & p).sum() / g.sum())
    assert m.miou == pytest.approx(np.mean(ious))
    assert m.macc == pytest.approx(np.mean(accs))
    assert m.allacc == pytest.approx(np.mean(gt[gt != -1] == pred[gt != -1]))


def test_perfect_prediction_scores_one():
    gt = np.array([0, 1, 1, 2, -1, 2])
    pred = np.where(gt < 0, 1, gt)
    m = segmentation_metrics(confusion_matrix(pred, gt, 4))
    assert m.miou == 1.0 and m.macc == 1.0 and m.allacc == 1.0


def test_unpredicted_points_count_as_misses_only_when_asked():
    gt = np.array([0, 0, 1, 1])
    pred = np.array([0, -1, 1, 1])
    with pytest.raises(ValueError, match="outside 0..1"):
        confusion_matrix(pred, gt, 2)
    conf = confusion_matrix(pred, gt, 2, count_unpredicted=True)
    np.testing.assert_array_equal(conf, [[1, 0, 1], [0, 2, 0]])
    m = segmentation_metrics(conf)
    np.testing.assert_allclose(m.iou, [1 / 2, 1.0])  # the miss is a false negative of 0, no one's FP
    assert m.allacc == pytest.approx(3 / 4)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="same N"):
        confusion_matrix(np.zeros(3, int), np.zeros(4, int), 2)
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(np.zeros(3), np.zeros(3, int), 2)
    with pytest.raises(ValueError, match="shape"):
        segmentation_metrics(np.zeros((3, 5)))


def test_report_files(tmp_path):
    names = ["floor", "wall", "chair, office", "table", "lamp"]
    conf = confusion_matrix(PRED, GT, 5)
    m = segmentation_metrics(conf)
    paths = write_metrics_report(tmp_path, conf, m, names, extra_json={"frames": 3})
    res = json.loads(paths["json"].read_text())  # strict JSON: NaN became null
    assert res["metrics"]["miou"] == pytest.approx(m.miou)
    assert res["metrics"]["per_class"]["table"]["iou"] is None
    assert res["frames"] == 3
    rows = list(csv.reader(open(paths["csv"])))
    assert rows[0][1:] == names and rows[3][0] == "chair, office"
    np.testing.assert_array_equal(np.array([r[1:] for r in rows[1:]], int), conf)
    assert "| wall | 33.3 |" in paths["markdown"].read_text()
    with Image.open(paths["confusion_png"]) as im:
        assert im.size[0] > 100 and im.size[1] > 100


def test_palette_and_topdown(tmp_path):
    pal = class_palette(30)
    assert pal.shape == (30, 3) and len({tuple(c) for c in pal}) == 30
    np.testing.assert_array_equal(colorize_labels(np.array([-1, 2]), 3), [[0, 0, 0], pal[2]])
    rng = np.random.default_rng(0)
    coord = rng.random((200, 3)).astype(np.float32)
    labels = rng.integers(-1, 3, 200)
    p = save_topdown_png(tmp_path / "top.png", [("map", coord, labels), ("gt", coord, labels)], ["a", "b", "c"])
    with Image.open(p) as im:
        assert im.size[0] > im.size[1]  # two panels side by side
