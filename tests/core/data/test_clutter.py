"""Cluttered tabletop composites (gcross_core/data/clutter.py) on tiny synthetic tabletops: a plane of table
points with a few boxes on it, each box one instance."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from gcross_core.data.classes import TABLETOP_CLASSES
from gcross_core.data.clutter import ClutterConfig, compose_clutter
from gcross_core.data.scene import Scene, load_scene, write_scene
from gcross_core.errors import ConfigError
from gcross_core.segmentation.dataset import SegDataConfig, SegmentationDataset

REPO = Path(__file__).resolve().parents[3]
TABLE_Z = 0.7
SPACING = 0.004  # metres between the boxes' surface points: under the 5 mm footprint grid


def _box(size) -> np.ndarray:  # [M, 3], bottom centre at the origin; top and four sides
    sx, sy, sz = size
    xs, ys = (np.arange(-s / 2, s / 2 + 1e-9, SPACING) for s in (sx, sy))
    zs = np.arange(0, sz + 1e-9, SPACING)
    faces = [np.stack(np.meshgrid(xs, ys, [sz]), -1)]
    faces += [np.stack(np.meshgrid([x], ys, zs), -1) for x in (-sx / 2, sx / 2)]
    faces += [np.stack(np.meshgrid(xs, [y], zs), -1) for y in (-sy / 2, sy / 2)]
    return np.concatenate([f.reshape(-1, 3) for f in faces])


def _tabletop(seed: int, boxes: int = 3) -> Scene:
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.arange(-0.4, 0.4, 0.005), np.arange(-0.3, 0.3, 0.005))
    table = np.c_[gx.ravel(), gy.ravel(), np.full(gx.size, TABLE_Z)]
    coord, segment, instance = [table], [np.zeros(len(table), int)], [np.full(len(table), -1)]
    for k in range(boxes):
        points = _box(rng.uniform([0.04, 0.04, 0.03], [0.12, 0.12, 0.10])) + [-0.3 + 0.25 * k, rng.uniform(-0.1, 0.1),
                                                                               TABLE_Z]
        coord.append(points)
        segment.append(np.ones(len(points), int))
        instance.append(np.full(len(points), 10 + k))  # ids need not start at 0
    coord = np.concatenate(coord)
    normal = np.tile([0.0, 0.0, 1.0], (len(coord), 1))
    return Scene(f"tabletop_{seed}", coord, rng.uniform(0, 255, coord.shape), normal, np.concatenate(segment),
                 np.concatenate(instance), class_names=TABLETOP_CLASSES)


@pytest.fixture(scope="module")
def scenes():
    return [_tabletop(seed) for seed in range(4)]


@pytest.fixture(scope="module")
def composite(scenes):
    return compose_clutter(scenes[0], scenes[1:], np.random.default_rng(3), (10, 14), stacked_fraction=0.4)


def _objects(c):
    return {int(i): c.instance == i for i in np.unique(c.instance[c.instance >= 0])}


def _cells(c, mask) -> set:
    cells = np.floor((c.coord[mask, :2] - np.array(c.summary.grid_origin_xy)) / c.summary.cell_m).astype(int)
    return set(map(tuple, cells))


def test_composite_has_the_scene_folder_dtypes_and_unique_fresh_instance_ids(composite, scenes):
    c = composite
    assert (c.coord.dtype, c.color.dtype, c.normal.dtype) == (np.float32, np.uint8, np.float32)
    assert c.segment.dtype == np.int32 and c.instance.dtype == np.int32
    assert len({len(c.coord), len(c.color), len(c.normal), len(c.segment), len(c.instance)}) == 1
    objects = _objects(c)
    assert sorted(objects) == list(range(len(objects)))  # renumbered 0..K-1, one id per object
    assert c.summary.objects == len(objects) and c.summary.base_objects == 3
    assert c.summary.placed == len(objects) - 3
    # the base's boxes are still there, point for point
    base_objects = scenes[0].coord[scenes[0].instance >= 0]
    assert np.allclose(c.coord[(c.instance >= 0) & (c.instance < 3)], base_objects, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_object_count_lies_in_the_range(scenes, seed):
    c = compose_clutter(scenes[seed], [s for s in scenes if s is not scenes[seed]], np.random.default_rng(seed),
                        (8, 12))
    assert 8 <= c.summary.objects <= 12  # the 80 x 60 cm table holds 12 boxes easily
    assert len(_objects(c)) == c.summary.objects


def test_every_object_rests_on_the_table_or_on_the_object_below(composite):
    c = composite
    voxel = c.summary.cell_m
    assert c.summary.table_z_m == pytest.approx(TABLE_Z, abs=1e-6)
    below = {upper: lower for lower, upper in c.summary.stacked_pairs}
    objects = _objects(c)
    for i, mask in objects.items():
        z_min = c.coord[mask, 2].min()
        if i not in below:
            assert abs(z_min - TABLE_Z) < voxel, (i, z_min)
            continue
        lower = objects[below[i]]
        assert _cells(c, mask) <= _cells(c, lower)  # smaller on larger, wholly inside its footprint
        assert abs(z_min - c.coord[lower, 2].max()) < voxel, (i, z_min)  # a box rests on the lower box's top


def test_footprints_do_not_interpenetrate_except_stacked_pairs_which_are_apart_in_z(composite):
    c = composite
    objects = _objects(c)
    stacked = set(c.summary.stacked_pairs)
    assert stacked, "the composite should hold a stacked pair"
    cells = {i: _cells(c, m) for i, m in objects.items()}
    ids = sorted(objects)
    for a in ids:
        for b in ids[ids.index(a) + 1:]:
            if (a, b) in stacked or (b, a) in stacked:
                lower, upper = (a, b) if (a, b) in stacked else (b, a)
                assert cells[lower] & cells[upper]
                assert c.coord[objects[upper], 2].min() >= c.coord[objects[lower], 2].max() - 1e-4
            elif not any(a in p and b in p for p in _towers(stacked)):
                assert not cells[a] & cells[b], (a, b)


def _towers(stacked):
    """Sets of ids stacked on each other (an object two levels up overlaps the bottom one too)."""
    parent = {u: lo for lo, u in stacked}
    towers = []
    for u in parent:
        t = {u}
        while u in parent:
            u = parent[u]
            t.add(u)
        towers.append(t)
    return towers


def test_touching_pairs_lie_within_a_centimetre_and_most_objects_touch(composite):
    c = composite
    objects = _objects(c)
    assert len(c.summary.touching_pairs) >= 3
    in_contact = {i for pair in c.summary.touching_pairs + c.summary.stacked_pairs for i in pair}
    assert len(in_contact) > len(objects) / 2
    for a, b in c.summary.touching_pairs:
        xa, xb = c.coord[objects[a], :2], c.coord[objects[b], :2]
        gap = cKDTree(xa).query(xb, k=1)[0].min()
        assert gap <= 0.01 + 1e-6, (a, b, gap)  # the default touch_gap_m


def test_leaning_objects_tilt_towards_the_object_they_touch(scenes):
    c = compose_clutter(scenes[0], scenes[1:], np.random.default_rng(5), (10, 14), stacked_fraction=0.0,
                        lean_fraction=1.0)
    assert c.summary.leaning_pairs, "no object leaned"
    coord, inst = c.coord.astype(np.float64), c.instance
    for leaner, anchor in c.summary.leaning_pairs:
        pts, other = coord[inst == leaner], coord[inst == anchor]
        assert pts[:, 2].min() == pytest.approx(c.summary.table_z_m, abs=1e-4)  # rests on the table
        assert cKDTree(other[:, :2]).query(pts[:, :2])[0].min() <= 0.0101  # touches its anchor
        # the box's top face (normals turned away from +z) tilts between 10 and 25 degrees
        up = c.normal[inst == leaner]
        top = up[up[:, 2] > 0.8]
        tilt = np.degrees(np.arccos(np.clip(top[:, 2], -1, 1)))
        assert len(top) and 9.9 < np.median(tilt) < 25.1
        # ... towards the anchor: the top face's normal leans to the anchor's side
        to_anchor = other[:, :2].mean(0) - pts[:, :2].mean(0)
        assert top[:, :2].mean(0) @ to_anchor > 0
    # no leaning asked: the same draws as before leaning existed
    a = compose_clutter(scenes[0], scenes[1:], np.random.default_rng(3), (10, 14), stacked_fraction=0.4)
    b = compose_clutter(scenes[0], scenes[1:], np.random.default_rng(3), (10, 14), stacked_fraction=0.4,
                        lean_fraction=0.0)
    assert np.array_equal(a.coord, b.coord) and not b.summary.leaning_pairs


def test_flattened_objects_are_squashed_onto_the_table(scenes):
    c = compose_clutter(scenes[0], scenes[1:], np.random.default_rng(7), (10, 14), stacked_fraction=0.0,
                        flat_fraction=1.0, flat_height_m=(0.015, 0.03))
    assert c.summary.flattened, "no object flattened"
    assert c.summary.to_dict()["flattened"] == c.summary.flattened
    coord, inst = c.coord.astype(np.float64), c.instance
    for i in c.summary.flattened:
        z = coord[inst == i, 2]
        assert z.min() == pytest.approx(c.summary.table_z_m, abs=1e-4)  # rests on the table
        assert z.max() - z.min() <= 0.03 + 1e-4  # no taller than the largest height drawn
        n = c.normal[inst == i].astype(np.float64)
        length = np.linalg.norm(n, axis=1)
        assert np.allclose(length[length > 0], 1.0, atol=1e-4)  # unit normals still
    # an object squashed to a tenth of its height: a tilted face's normal turns towards +z
    local = np.array([[0.0, 0, 0], [0, 0, 0.2], [0.1, 0, 0.1]])
    normal = np.array([[0.0, 0, 1], [1.0, 0, 0], [np.sqrt(0.5), 0, np.sqrt(0.5)]])
    from gcross_core.data.clutter import _flatten
    flat, turned = _flatten(local, normal, 0.02)
    assert flat[:, 2].max() == pytest.approx(0.02) and np.allclose(turned[:2], normal[:2])
    assert turned[2, 2] > 0.99
    assert _flatten(local, normal, 0.5)[0] is local  # not taller: unchanged
    # no flattening asked: the same draws as before flattening existed
    a = compose_clutter(scenes[0], scenes[1:], np.random.default_rng(3), (10, 14), stacked_fraction=0.4)
    b = compose_clutter(scenes[0], scenes[1:], np.random.default_rng(3), (10, 14), stacked_fraction=0.4,
                        flat_fraction=0.0)
    assert np.array_equal(a.coord, b.coord) and not b.summary.flattened


def test_table_points_under_placed_objects_are_removed(composite, scenes):
    c = composite
    table = c.segment == 0
    assert table.sum() < (scenes[0].segment == 0).sum()
    on_table = [i for i in _objects(c) if i >= 3 and i not in {u for _, u in c.summary.stacked_pairs}]
    for i in on_table:
        assert not _cells(c, c.instance == i) & _cells(c, table), i


def test_same_seed_same_composite_other_seed_another(scenes):
    a = compose_clutter(scenes[1], scenes, np.random.default_rng(7))
    b = compose_clutter(scenes[1], scenes, np.random.default_rng(7))
    other = compose_clutter(scenes[1], scenes, np.random.default_rng(8))
    for key in ("coord", "color", "normal", "segment", "instance"):
        assert np.array_equal(getattr(a, key), getattr(b, key)), key
    assert a.summary.to_dict() == b.summary.to_dict()
    assert len(a.coord) != len(other.coord) or not np.array_equal(a.coord, other.coord)


def test_clutter_config_rejects_bad_ranges():
    with pytest.raises(ConfigError, match="objects"):
        ClutterConfig(objects=(9, 3))
    with pytest.raises(ConfigError, match="probability"):
        ClutterConfig(probability=1.5)
    with pytest.raises(ConfigError, match="limited_points"):  # its indices name points of the original scenes
        SegDataConfig(root="unused", class_set="tabletop", limited_points=20, clutter=ClutterConfig(enabled=True))


def test_dataset_composes_samples_when_enabled_and_keeps_the_scenes_when_not(scenes, tmp_path):
    dirs = [write_scene(s, tmp_path / s.name) for s in scenes]
    base = dict(root=str(tmp_path), train_split="", label_file="segment", class_set="tabletop", augment=False,
                max_points=10 ** 6, grid_size_m=0.01)
    off = SegmentationDataset(dirs, SegDataConfig(**base))
    on = SegmentationDataset(dirs, SegDataConfig(**base, clutter=ClutterConfig(enabled=True, objects=(8, 10))))
    scene = off.training_scene(1, np.random.default_rng(0))
    assert scene is off.scene(1)
    composite = on.training_scene(1, np.random.default_rng(0))
    assert 8 <= len(np.unique(composite.instance[composite.instance >= 0])) <= 10
    assert composite.name == f"{scenes[1].name}+clutter"
    again = on.training_scene(1, np.random.default_rng(0))
    assert np.array_equal(composite.coord, again.coord)  # the sample's generator decides everything
    sample = on.sample(1, np.random.default_rng(0))
    assert len(np.unique(sample["instance"][sample["instance"] >= 0])) >= 8
    plain = off.sample(1, np.random.default_rng(0))
    assert len(np.unique(plain["instance"][plain["instance"] >= 0])) == 3
    never = SegmentationDataset(dirs, SegDataConfig(**base, clutter=ClutterConfig(enabled=True, probability=0.0)))
    assert never.training_scene(1, np.random.default_rng(0)) is never.scene(1)


def test_make_clutter_writes_composites_of_the_given_scenes_only(scenes, tmp_path, capsys):
    for s in scenes[:3]:
        write_scene(s, tmp_path / "test" / s.name)
    write_scene(scenes[3], tmp_path / "elsewhere" / scenes[3].name)
    spec = importlib.util.spec_from_file_location("_make_clutter", REPO / "training" / "make_clutter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = ["--scenes", str(tmp_path / "test"), "--out", str(tmp_path / "out"), "--num-scenes", "4",
            "--objects", "8", "10", "--seed", "1"]
    assert module.main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["written"] == 4 and summary["from_scenes"] == 3
    assert summary["touching_pairs"] > 0 and summary["stacked_pairs"] > 0
    used = {s.name for s in scenes[:3]}
    for entry in summary["scenes"]:
        assert entry["base"] in used and set(entry["donors"]) <= used - {entry["base"]}
        folder = tmp_path / "out" / entry["name"]
        scene = load_scene(folder, segment="segment")
        assert not (folder / "frames").exists() and scene.class_names == TABLETOP_CLASSES
        assert 8 <= len(np.unique(scene.instance[scene.instance >= 0])) == entry["objects"] <= 10
    first = load_scene(tmp_path / "out" / "clutter_000", segment="segment")
    assert module.main(args[:3] + [str(tmp_path / "again")] + args[4:]) == 0
    assert np.array_equal(load_scene(tmp_path / "again" / "clutter_000", segment="segment").coord, first.coord)
