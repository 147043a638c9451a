"""Bounded segmentation by priority (segment_scope: priority): new voxels in view before anything else,
changed voxels before the background refresh, a re-observed unchanged voxel never due again, the budget
never exceeded, and every label of a static map refreshed in turn."""
import numpy as np
import pytest

from gcross_core.mapping.pipeline import PipelineConfig, SegmentationPipeline
from gcross_core.mapping.schedule import LabelLedger, plan_segmentation

K = np.array([[40.0, 0, 31.5], [0, 40.0, 23.5], [0, 0, 1]])
H, W = 48, 64


class CountingSegmenter:
    """Labels by height; remembers how many points each call was given."""

    class_names = ["low", "high"]
    grid_size_m = 0.1
    has_instance_head = False

    def __init__(self):
        self.calls = []

    def predict(self, coord, color, normal, return_probs=False):
        self.calls.append(len(coord))
        labels = (coord[:, 1] < 0).astype(np.int64)
        probs = np.eye(2, dtype=np.float32)[labels]
        return labels, probs.max(1), probs


def wall_frame(x_m, color=(200, 40, 40)):
    """A flat wall 2 m ahead of a camera at x = x_m (a 3.2 m wide strip of the wall in view)."""
    depth = np.full((H, W), 2.0, np.float32)
    rgb = np.empty((H, W, 3), np.uint8)
    rgb[:] = color
    T = np.eye(4)
    T[0, 3] = x_m
    return rgb, depth, K, T


def pipeline(budget, context_m=0.3):
    seg = CountingSegmenter()
    cfg = PipelineConfig(voxel_size_m=0.05, segment_scope="priority", segment_max_voxels=budget,
                         segment_context_m=context_m)
    return SegmentationPipeline(seg, cfg), seg


def fuse(pipe, x_m, color=(200, 40, 40), times=1):
    for _ in range(times):
        pipe.process_frame(*wall_frame(x_m, color), stamp_s=0.0)


def x_of_rows(pipe, rows):
    return pipe.map.snapshot().coords[rows, 0]


def test_a_new_region_comes_before_reobserved_labelled_voxels():
    pipe, seg = pipeline(budget=100_000)
    fuse(pipe, 0.0)  # region A: x in about [-1.6, 1.6]
    first = pipe.segment()
    assert first.tiers["new_in_view"] == len(pipe) and pipe.map.snapshot().labels.min() >= 0
    a_voxels = len(pipe)
    fuse(pipe, 0.0)  # A again, unchanged
    fuse(pipe, 3.0)  # region B: x in about [1.4, 4.6], mostly new
    snap = pipe.map.snapshot()
    new = snap.labels < 0
    assert new.sum() > 0.5 * a_voxels
    budget = int(new.sum() * 0.8)  # less than the new voxels: none of A can be a target
    plan = plan_segmentation(snap, pipe.ledger, pipe._segmented_upto, budget, 0.3)
    targets = plan.targets
    assert plan.due["new_in_view"] == new.sum() and plan.due["changed"] == 0
    assert len(plan.rows) <= budget and len(targets) > 0
    assert (snap.labels[targets] < 0).all(), "an already labelled voxel was chosen before new ones"
    assert plan.tiers["refresh"] == 0
    # the context is the map next to the targets (A's edge among it), not A's far side
    context = np.setdiff1d(plan.rows, targets)
    assert len(context) > 0 and (snap.labels[context] >= 0).any()
    assert snap.coords[context, 0].min() >= snap.coords[targets, 0].min() - 0.3 - 1e-4


def test_a_reobserved_unchanged_voxel_is_not_due_again_and_a_changed_one_is():
    pipe, seg = pipeline(budget=100_000)
    fuse(pipe, 0.0)
    pipe.segment()
    fuse(pipe, 0.0, times=5)  # the same wall seen five more times: counts grow, content does not
    snap = pipe.map.snapshot()
    plan = plan_segmentation(snap, pipe.ledger, pipe._segmented_upto, 100_000, 0.3, refresh_before=pipe._grew_in)
    assert sum(plan.due.values()) == 0 and len(plan.rows) == 0  # nothing is due: no work
    assert pipe.segment().updated == 0
    # had the map grown since, the background refresh would visit it (with what the budget leaves)
    small = plan_segmentation(snap, pipe.ledger, pipe._segmented_upto, 50, 0.3, refresh_before=pipe._grew_in + 1)
    assert small.due["changed"] == 0 and small.due["refresh"] == len(snap)
    assert small.tiers["refresh"] == len(small.targets) <= 50
    # the wall repainted: its mean colour moves, so it is due again, ahead of the refresh
    fuse(pipe, 0.0, color=(40, 40, 200), times=6)
    snap = pipe.map.snapshot()
    plan = plan_segmentation(snap, pipe.ledger, pipe._segmented_upto, 200, 0.3)
    assert plan.due["changed"] == len(snap) and plan.tiers["changed"] == len(plan.targets) > 0
    assert plan.tiers["refresh"] == 0


def test_the_budget_bounds_every_segmentation_and_every_label_converges():
    budget = 300
    pipe, seg = pipeline(budget=budget)
    fuse(pipe, 0.0)
    fuse(pipe, 3.0)
    n = len(pipe)
    assert n > 4 * budget
    rounds = 0
    while (pipe.map.snapshot().labels < 0).any():
        stats = pipe.segment()
        rounds += 1
        assert stats.voxels <= budget and seg.calls[-1] <= budget
        assert rounds <= n // int(budget * 0.75) + 2, "never-labelled voxels are not being worked off"
    # the camera stops: the labels made before the map was complete are refreshed once, oldest first,
    # one region at a time, and then nothing is due
    refreshes = 0
    while True:
        stats = pipe.segment()
        assert stats.voxels <= budget
        if stats.updated == 0:
            break
        assert stats.tiers["refresh"] == stats.updated
        refreshes += 1
        assert refreshes <= n // int(budget * 0.75) + 1, "the refresh does not end"
    rounds = pipe.ledger.rounds(pipe.ledger.lookup(pipe.map.snapshot().keys))
    assert (rounds >= pipe._grew_in).all(), "a label made before the map was complete was never refreshed"
    assert refreshes > 0


def test_the_ledger_follows_keys_and_forgets_evicted_voxels():
    ledger = LabelLedger()
    ledger.record(np.array([5, 1, 9]), 1, np.zeros((3, 3), np.float32), np.zeros((3, 3), np.float32))
    ledger.record(np.array([9, 3]), 2, np.ones((2, 3), np.float32), np.ones((2, 3), np.float32))
    rows = ledger.lookup(np.array([1, 3, 5, 9, 7]))
    assert (rows[:4] >= 0).all() and rows[4] == -1
    assert ledger.rounds(rows[:4]).tolist() == [1, 2, 1, 2]
    ledger.forget_missing(np.array([3, 9]))
    assert len(ledger) == 2 and ledger.lookup(np.array([1]))[0] == -1


def test_priority_is_the_default_and_the_budget_is_checked():
    assert PipelineConfig().segment_scope == "priority"
    with pytest.raises(ValueError, match="segment_max_voxels must be >= 1"):
        PipelineConfig(segment_max_voxels=0)
