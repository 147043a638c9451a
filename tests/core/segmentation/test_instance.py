"""Instance segmentation: grouping on synthetic shapes, offset targets and losses, and the Segmenter's
instance output (checkpoints with and without an instance head)."""
import numpy as np
import pytest
import torch

from gcross_core.errors import CheckpointError, ConfigError
from gcross_core.model.encoder import SpUNetConfig
from gcross_core.segmentation.instance import (InstanceConfig, InstanceSet, contact_rows, group_instances,
                                               instance_centres, offset_losses, thing_mask)
from gcross_core.segmentation.model import build_segmenter_checkpoint
from gcross_core.segmentation.segmenter import Segmenter

CLASSES = ("wall", "floor", "chair", "table")
THING = thing_mask(CLASSES, ("wall", "floor"))
CFG = InstanceConfig(stuff_classes=("wall", "floor"), cluster_radius_m=0.03, min_points=20)
TINY = SpUNetConfig(in_channels=6, base_channels=8, channels=(8, 8, 8, 8, 8, 8, 8, 8), layers=(1,) * 8)


def box_surface(lo, hi, step=0.02):
    """Points on a 2 cm lattice filling the box [lo, hi] (a solid block of points)."""
    axes = [np.arange(a, b + 1e-9, step) for a, b in zip(lo, hi)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)


def one_hot(labels, k=len(CLASSES), p=0.9):
    probs = np.full((len(labels), k), (1 - p) / (k - 1), np.float32)
    probs[np.arange(len(labels)), labels] = p
    return probs


def two_touching_chairs():
    a = box_surface((0.0, 0.0, 0.0), (0.3, 0.3, 0.3))
    b = box_surface((0.32, 0.0, 0.0), (0.62, 0.3, 0.3))  # one lattice step apart: touching
    coord = np.concatenate([a, b])
    inst = np.repeat([0, 1], [len(a), len(b)])
    return coord, inst


def test_touching_objects_are_split_by_offsets_not_by_coordinates():
    coord, inst = two_touching_chairs()
    probs = one_hot(np.full(len(coord), 2))
    perfect = instance_centres(coord, inst) - coord
    # coordinates alone see one connected blob
    only_coords = group_instances(coord, perfect, probs, THING, InstanceConfig(**{**CFG.to_dict(), "use_shifted": False}))
    assert len(only_coords) == 1 and len(only_coords.indices[0]) == len(coord)
    # its shifted points stay in two piles: the offset-agreement factor lowers its score (about 0.63 x 0.9)
    assert 0.5 < only_coords.scores[0] < 0.7
    # the shifted points pile up at two centres: two instances, each exactly one chair; NMS removes the
    # merged blob from the original coordinates (IoU 0.5 with each chair > 0.3)
    found = group_instances(coord, perfect, probs, THING, CFG)
    assert len(found) == 2
    got = sorted(tuple(np.unique(inst[i])) + (len(i),) for i in found.indices)
    assert got == sorted([(0, int((inst == 0).sum())), (1, int((inst == 1).sum()))])
    assert (found.classes == 2).all() and np.all(found.scores == pytest.approx(0.9, abs=1e-3))


def test_stuff_small_and_low_score_clusters_are_dropped():
    coord, inst = two_touching_chairs()
    offsets = instance_centres(coord, inst) - coord
    assert len(group_instances(coord, offsets, one_hot(np.zeros(len(coord), int)), THING, CFG)) == 0  # wall
    big = InstanceConfig(**{**CFG.to_dict(), "min_points": len(coord) + 1})
    assert len(group_instances(coord, offsets, one_hot(np.full(len(coord), 2)), THING, big)) == 0
    strict = InstanceConfig(**{**CFG.to_dict(), "score_threshold": 0.95})
    assert len(group_instances(coord, offsets, one_hot(np.full(len(coord), 2)), THING, strict)) == 0


def test_classes_are_grouped_apart():
    coord, inst = two_touching_chairs()
    labels = np.where(inst == 0, 2, 3)  # a chair touching a table
    found = group_instances(coord, np.zeros_like(coord), one_hot(labels), THING, CFG)  # no offsets needed
    assert sorted(found.classes.tolist()) == [2, 3]


def crease():
    """A flat object (normals +z) with a box standing on it, its side (normals -x) one lattice step from
    the flat object's edge: one connected blob of points, two surfaces meeting at a right angle."""
    xs = np.arange(0.0, 0.3 + 1e-9, 0.02)
    flat = np.stack(np.meshgrid(xs, xs, [0.0], indexing="ij"), -1).reshape(-1, 3)
    zs = np.arange(0.02, 0.3 + 1e-9, 0.02)
    side = np.stack(np.meshgrid([0.32], xs, zs, indexing="ij"), -1).reshape(-1, 3)
    coord = np.concatenate([flat, side]).astype(np.float32)
    normal = np.concatenate([np.tile([0.0, 0.0, 1.0], (len(flat), 1)), np.tile([-1.0, 0.0, 0.0], (len(side), 1))])
    return coord, normal.astype(np.float32), np.repeat([0, 1], [len(flat), len(side)])


def test_normal_gate_cuts_the_original_graph_at_a_crease():
    coord, normal, inst = crease()
    probs = one_hot(np.full(len(coord), 2))
    no_offsets = np.zeros_like(coord)
    plain = InstanceConfig(**{**CFG.to_dict(), "use_shifted": False})
    assert len(group_instances(coord, no_offsets, probs, THING, plain)) == 1  # the points touch
    gated = InstanceConfig(**{**plain.to_dict(), "normal_min_cos": 0.3})
    found = group_instances(coord, no_offsets, probs, THING, gated, normal=normal)
    got = sorted(tuple(np.unique(inst[i])) + (len(i),) for i in found.indices)
    assert got == sorted([(0, int((inst == 0).sum())), (1, int((inst == 1).sum()))])
    # a gently curved surface stays one: neighbours 2 cm apart on a 1 m radius differ by ~1 degree
    angle = np.linspace(0.0, 0.6, 31)
    arc = np.stack([np.sin(angle), np.zeros_like(angle), np.cos(angle)], 1)
    cyl = np.concatenate([arc + [0.0, y, 0.0] for y in np.arange(0.0, 0.2, 0.02)]).astype(np.float32)
    cyl_normal = np.concatenate([arc] * 10).astype(np.float32)
    one = group_instances(cyl, np.zeros_like(cyl), one_hot(np.full(len(cyl), 2)), THING, gated, normal=cyl_normal)
    assert len(one) == 1 and len(one.indices[0]) == len(cyl)
    with pytest.raises(ValueError, match="normals"):
        group_instances(coord, no_offsets, probs, THING, gated)


def test_shifted_radius_separates_close_centres():
    rng = np.random.default_rng(0)
    coord, inst = (a[::16] for a in two_touching_chairs())  # 512 points
    # offsets that land each chair's points in a 8 mm cube around centres 3.5 cm apart: piles 2.7 cm apart
    centres = np.array([[0.0, 0.0, 0.0], [0.035, 0.0, 0.0]], np.float32)
    shifted = centres[inst] + rng.uniform(-0.004, 0.004, coord.shape).astype(np.float32)
    probs = one_hot(np.full(len(coord), 2))
    shifted_min = {"min_points": 10}
    # every neighbour counts (with the default 32 nearest, a dense pile links only to itself)
    shifted_only = {**CFG.to_dict(), **shifted_min, "use_original": False, "max_neighbors": len(coord)}
    assert len(group_instances(coord, shifted - coord, probs, THING, InstanceConfig(**shifted_only))) == 1
    found = group_instances(coord, shifted - coord, probs, THING,
                            InstanceConfig(**{**shifted_only, "shifted_radius_m": 0.02}))
    assert sorted(len(i) for i in found.indices) == sorted(np.bincount(inst).tolist())
    for bad in ({"shifted_radius_m": 0.0}, {"normal_min_cos": 1.0}, {"normal_min_cos": -1.5}):
        with pytest.raises(ConfigError):
            InstanceConfig(**{**CFG.to_dict(), **bad})


def test_merging_joins_the_pieces_of_an_occluded_object_but_not_two_objects():
    rng = np.random.default_rng(1)
    coord, inst = (a[::16] for a in two_touching_chairs())  # 256 points each
    # chair 0 seen in two pieces (its x < 0.15 half and the rest) whose offsets land 3 cm apart; chair 1 whole
    piece = np.where(inst == 1, 2, (coord[:, 0] >= 0.15).astype(int))
    centres = np.array([[0.15, 0.15, 0.15], [0.18, 0.15, 0.15], [0.47, 0.15, 0.15]], np.float32)
    shifted = centres[piece] + rng.uniform(-0.004, 0.004, coord.shape).astype(np.float32)
    probs = one_hot(np.full(len(coord), 2))
    cfg = {**CFG.to_dict(), "min_points": 10, "use_original": False, "shifted_radius_m": 0.02}
    apart = group_instances(coord, shifted - coord, probs, THING, InstanceConfig(**cfg))
    assert sorted(len(i) for i in apart.indices) == sorted(np.bincount(piece).tolist())
    joined = group_instances(coord, shifted - coord, probs, THING, InstanceConfig(**{**cfg, "merge_centre_m": 0.05}))
    assert sorted(len(i) for i in joined.indices) == sorted(np.bincount(inst).tolist())
    assert {tuple(np.unique(inst[i])) for i in joined.indices} == {(0,), (1,)}
    assert np.all(np.diff(joined.scores) <= 0) and (joined.classes == 2).all()
    with pytest.raises(ConfigError):
        InstanceConfig(**{**cfg, "merge_centre_m": 0.0})


def test_instance_set_point_ids_and_expand():
    s = InstanceSet([np.array([0, 1]), np.array([1, 2])], np.array([2, 3]), np.array([0.9, 0.5], np.float32), 4)
    assert s.point_ids().tolist() == [0, 0, 1, -1]  # point 1 keeps the higher-scoring instance
    inverse = np.array([0, 0, 1, 2, 3, 2])  # six original points on four rows
    e = s.expand(inverse)
    assert e.num_points == 6 and [i.tolist() for i in e.indices] == [[0, 1, 2], [2, 3, 5]]


def test_offset_targets_and_losses():
    coord = np.array([[0, 0, 0], [2, 0, 0], [5, 5, 5]], np.float32)
    inst = np.array([3, 3, -1])
    assert instance_centres(coord, inst).tolist() == [[1, 0, 0], [1, 0, 0], [0, 0, 0]]
    target = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 0, 0]])
    valid = torch.tensor([True, True, False])
    l1, direction = offset_losses(target.clone(), target, valid)
    assert l1.item() == 0.0 and direction.item() == pytest.approx(0.0, abs=1e-6)
    l1, direction = offset_losses(-target, target, valid)  # opposite: |2| per row, cos -1 -> 1 - cos = 2
    assert l1.item() == pytest.approx(2.0) and direction.item() == pytest.approx(2.0)
    zero, _ = offset_losses(target, target, torch.zeros(3, dtype=torch.bool))
    assert zero.item() == 0.0


def test_weighted_offset_losses_favour_the_weighted_rows():
    target = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 0]])
    pred = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 0, 0]])  # row 1 wrong: L1 2, 1 - cos 2
    valid = torch.tensor([True, True, False])
    l1, direction = offset_losses(pred, target, valid)
    assert l1.item() == pytest.approx(1.0) and direction.item() == pytest.approx(1.0)
    l1, direction = offset_losses(pred, target, valid, torch.tensor([1.0, 3.0, 100.0]))  # row 2 not valid
    assert l1.item() == pytest.approx(6.0 / 4.0) and direction.item() == pytest.approx(6.0 / 4.0)
    with pytest.raises(ValueError, match="weight"):
        offset_losses(pred, target, valid, torch.ones(2))


def test_contact_rows_are_the_cells_next_to_another_instance():
    # sample 0: two 3-cell bars side by side along x (instances 0 and 1), a lone cell of instance 2 far
    # away, a table cell (-1) next to instance 0; sample 1: instance 5 in the same cells as sample 0's
    # instance 1 must not touch sample 0's instance 0
    cells0 = [(0, 0, 0), (1, 0, 0), (2, 0, 0), (0, 1, 0), (1, 1, 0), (2, 1, 0), (9, 9, 9), (0, 0, 1)]
    inst0 = [0, 0, 0, 1, 1, 1, 2, -1]
    cells1 = [(0, 1, 0), (5, 5, 5)]
    inst1 = [5, 6]
    grid = torch.tensor(cells0 + cells1, dtype=torch.int32)
    offset = torch.tensor([len(cells0), len(cells0) + len(cells1)])
    contact = contact_rows(grid, offset, torch.tensor(inst0 + inst1))
    assert contact.tolist() == [True] * 6 + [False, False] + [False, False]
    # diagonal neighbours count; a shuffled batch gives the same rows
    grid = torch.tensor([(0, 0, 0), (1, 1, 1), (3, 3, 3)], dtype=torch.int32)
    assert contact_rows(grid, torch.tensor([3]), torch.tensor([0, 1, 2])).tolist() == [True, True, False]
    perm = torch.tensor([2, 0, 1])
    assert contact_rows(grid[perm], torch.tensor([3]), torch.tensor([0, 1, 2])[perm]).tolist() == [False, True, True]
    with pytest.raises(ConfigError, match="contact_weight"):
        InstanceConfig(contact_weight=-1.0)


def test_config_resolution():
    cfg = InstanceConfig().resolved("synthetic", ("wall", "floor", "chair"))
    assert cfg.stuff_classes == ("wall", "floor")
    assert InstanceConfig().resolved("tabletop", ("table", "object")).stuff_classes == ("table",)
    with pytest.raises(ConfigError, match="lamp"):
        InstanceConfig(stuff_classes=("lamp",)).resolved("synthetic", ("wall", "chair"))
    assert InstanceConfig.from_dict(cfg.to_dict()) == cfg


def test_segmenter_instance_output_and_semantic_checkpoints(tmp_path, one_torch_thread):
    coord, _ = two_touching_chairs()
    color = np.full_like(coord, 128.0)
    normal = np.tile(np.float32([0, 0, 1]), (len(coord), 1))
    plain = Segmenter.from_checkpoint(build_segmenter_checkpoint(tmp_path / "plain.safetensors", CLASSES, TINY))
    assert not plain.has_instance_head
    labels, conf, _ = plain.predict(coord, color, normal)  # semantic-only checkpoints behave as before
    assert labels.shape == (len(coord),)
    with pytest.raises(CheckpointError, match="no instance head"):
        plain.predict_instances(coord, color, normal)
    cfg = InstanceConfig(stuff_classes=("wall", "floor"), min_points=1, score_threshold=0.0)
    inst = Segmenter.from_checkpoint(build_segmenter_checkpoint(tmp_path / "ins.safetensors", CLASSES, TINY,
                                                                instance=cfg))
    assert inst.has_instance_head and inst.instance_config == cfg
    out = inst.predict_instances(coord, color, normal)
    assert out.labels.shape == (len(coord),) and out.probs.shape == (len(coord), len(CLASSES))
    assert out.instances.num_points == len(coord)
    ids = out.instance
    for k, idx in enumerate(out.instances.indices):
        assert THING[out.instances.classes[k]]  # never a wall or floor
        assert (out.labels[idx] == out.instances.classes[k]).all()  # an instance is one predicted class
    assert ids.min() >= -1 and ids.max() < len(out.instances)


def test_checkpoint_with_unknown_stuff_class_is_rejected(tmp_path):
    from gcross_core.checkpoint import load_checkpoint, save_checkpoint

    path = build_segmenter_checkpoint(tmp_path / "ins.safetensors", CLASSES, TINY,
                                      instance=InstanceConfig(stuff_classes=("wall",)))
    tensors, header = load_checkpoint(path)
    save_checkpoint(tmp_path / "bad.safetensors", tensors,
                    header.replace(instance={**header.instance, "stuff_classes": ["ceiling"]}))
    with pytest.raises(CheckpointError, match="bad.safetensors: unusable instance.*ceiling"):
        Segmenter.from_checkpoint(tmp_path / "bad.safetensors")
