"""Object ids across segmentations of the fused map (gcross_core.mapping.instances)."""
import numpy as np
import pytest

from gcross_core.mapping.instances import InstanceTracker

KEYS = np.arange(100, 200, dtype=np.int64)  # 100 voxels


def update(tracker, groups, classes=None, scores=None, fused=None):
    classes = np.zeros(len(groups), int) if classes is None else np.asarray(classes)
    scores = np.linspace(0.9, 0.5, len(groups)) if scores is None else np.asarray(scores)
    fused = np.arange(len(KEYS)) if fused is None else fused
    return tracker.update(KEYS, [np.asarray(g) for g in groups], classes, scores, fused)


def test_an_object_keeps_its_id_and_new_objects_get_new_ids():
    t = InstanceTracker()
    a, b = update(t, [np.arange(0, 20), np.arange(40, 60)])
    assert (a, b) == (1, 2) and len(t) == 2
    # the same objects, slightly different, listed in the other order; plus a new one
    ids = update(t, [np.arange(42, 61), np.arange(1, 20), np.arange(80, 90)], scores=[0.8, 0.9, 0.7])
    assert ids.tolist() == [2, 1, 3]
    assert t.ids_of(KEYS[[5, 50, 85, 70]]).tolist() == [1, 2, 3, 0]


def test_a_part_of_an_object_finds_its_whole():
    t = InstanceTracker()
    (whole,) = update(t, [np.arange(0, 40)])
    # a later segmentation sees only 10 voxels of it (overlap 10 of min(10, 40)): same id, and voxels it
    # did not fuse keep theirs
    (part,) = update(t, [np.arange(30, 40)], fused=np.arange(30, 40))
    assert part == whole
    assert (t.ids_of(KEYS[:40]) == whole).all()


def test_objects_that_vanish_and_merged_objects():
    t = InstanceTracker()
    a, b = update(t, [np.arange(0, 20), np.arange(20, 40)])
    # one instance now covers both: it takes the id of the larger overlap (a tie: the first), the other
    # object loses all its voxels and no longer exists
    (m,) = update(t, [np.arange(0, 40)])
    assert m in (a, b) and len(t) == 1
    objs = t.objects(KEYS, np.stack([np.arange(100.0)] * 3, 1))
    assert [o.object_id for o in objs] == [m] and objs[0].voxels == 40
    assert objs[0].box_min.tolist() == [0, 0, 0] and objs[0].box_max.tolist() == [39, 39, 39]
    update(t, [])  # nothing found where everything was fused: the map has no objects left
    assert len(t) == 0 and t.objects(KEYS, np.zeros((100, 3))) == []


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="match_overlap"):
        InstanceTracker(match_overlap=0.0)
    with pytest.raises(ValueError, match="instances"):
        InstanceTracker().update(KEYS, [np.arange(3)], np.array([0, 1]), np.array([0.5]), np.arange(3))


def test_restored_objects_keep_their_ids_and_new_ones_count_on():
    t = InstanceTracker()
    ids = np.zeros(len(KEYS), np.int64)
    ids[10:30], ids[50:60] = 4, 9  # a saved map's instance ids; 0 = none
    probs = np.zeros((len(KEYS), 3), np.float32)
    probs[:, 0] = 1.0
    probs[50:60] = [0.1, 0.2, 0.7]
    t.restore(KEYS, ids, probs)
    assert len(t) == 2 and t.ids_of(KEYS[[15, 55, 70]]).tolist() == [4, 9, 0]
    objs = {o.object_id: o for o in t.objects(KEYS, np.zeros((len(KEYS), 3)))}
    assert (objs[4].class_index, objs[9].class_index) == (0, 2)
    assert objs[4].score == pytest.approx(1.0) and objs[9].score == pytest.approx(0.7)
    # a later segmentation finds object 9 again and a new object: 9 persists, the new one gets 10
    found = update(t, [np.arange(50, 60), np.arange(80, 90)], fused=np.arange(40, 100))
    assert found.tolist() == [9, 10]
    with pytest.raises(ValueError, match="probabilities"):
        t.restore(KEYS, ids, probs[:5])
