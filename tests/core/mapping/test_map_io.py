"""Saved maps: the PLY and scene folder written atomically, and a map restored from them fuses on."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from gcross_core.cli import EXIT_BAD_INPUT, exit_code_for
from gcross_core.data.ply import read_ply
from gcross_core.data.scene import load_scene
from gcross_core.errors import InputError
from gcross_core.mapping.fusion import VoxelMap
from gcross_core.mapping.map_io import SavedMap, load_map, restore_map, save_map
from conftest import failing_renames, tree_listing

CLASSES = ("floor", "wall", "chair")
H, W = 24, 32
K = np.array([[20.0, 0, 15.5], [0, 20.0, 11.5], [0, 0, 1]])


def _labelled_map(voxel=0.1):
    vmap = VoxelMap(voxel, 10_000, len(CLASSES))
    depth = np.full((H, W), 2.0, np.float32)
    depth[8:16, 10:20] = 1.5
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[..., 1] = np.arange(W, dtype=np.uint8)[None] * 5
    vmap.integrate(rgb, depth, K, np.eye(4))
    n = len(vmap)
    rng = np.random.default_rng(0)
    half = np.arange(n // 2)  # the other half stays unsegmented
    probs = rng.dirichlet(np.ones(len(CLASSES)), size=len(half)).astype(np.float32)
    vmap.fuse_probabilities(half, probs)
    return vmap


def _same_map(a: VoxelMap, b: VoxelMap):
    sa, sb = a.snapshot(), b.snapshot()
    oa, ob = np.argsort(sa.keys), np.argsort(sb.keys)
    np.testing.assert_array_equal(sa.keys[oa], sb.keys[ob])
    np.testing.assert_array_equal(sa.coords[oa], sb.coords[ob])
    np.testing.assert_array_equal(np.rint(sa.colors[oa]), sb.colors[ob])
    np.testing.assert_allclose(sa.normals[oa], sb.normals[ob], atol=1e-6)
    np.testing.assert_array_equal(sa.labels[oa], sb.labels[ob])
    np.testing.assert_allclose(sa.confidence[oa], sb.confidence[ob], atol=1e-6)
    np.testing.assert_array_equal(sa.counts[oa], sb.counts[ob])


def test_save_load_restore_gives_the_same_map(tmp_path):
    vmap = _labelled_map()
    out = save_map(tmp_path / "maps" / "room", SavedMap.from_voxel_map(vmap, CLASSES, "map"))
    assert sorted(p.name for p in out.iterdir()) == ["map.json", "map.ply", "scene"]
    meta = json.loads((out / "map.json").read_text())
    assert meta["voxel_size_m"] == 0.1 and meta["class_names"] == list(CLASSES) and meta["num_voxels"] == len(vmap)

    ply = read_ply(out / "map.ply")["vertex"]
    assert list(ply) == ["x", "y", "z", "red", "green", "blue", "label", "confidence"]  # no instance ids here
    snap = vmap.snapshot()
    np.testing.assert_array_equal(ply["label"], snap.labels)
    np.testing.assert_allclose(np.stack([ply["x"], ply["y"], ply["z"]], 1), snap.coords)
    assert (ply["label"] == -1).sum() == len(vmap) - len(vmap) // 2

    scene = load_scene(out / "scene", frames=False)
    assert scene.class_names == CLASSES and scene.num_points == len(vmap)
    np.testing.assert_array_equal(scene.segment, snap.labels)

    restored = VoxelMap(0.1, 10_000, len(CLASSES))
    restore_map(restored, load_map(out), CLASSES)
    _same_map(vmap, restored)
    # fusion goes on in the restored map: the same frame hits the same voxels
    depth = np.full((H, W), 2.0, np.float32)
    depth[8:16, 10:20] = 1.5
    stats = restored.integrate(np.zeros((H, W, 3), np.uint8), depth, K, np.eye(4))
    assert stats.new_voxels == 0 and len(restored) == len(vmap)


def test_instance_ids_are_written_when_present(tmp_path):
    vmap = _labelled_map()
    instance = np.arange(len(vmap)) % 4 - 1
    out = save_map(tmp_path / "m", SavedMap.from_voxel_map(vmap, CLASSES, instance=instance))
    ply = read_ply(out / "map.ply")["vertex"]
    assert list(ply)[6:] == ["label", "instance", "confidence"]
    np.testing.assert_array_equal(ply["instance"], instance)
    np.testing.assert_array_equal(load_scene(out / "scene", frames=False).instance, instance)
    np.testing.assert_array_equal(load_map(out).instance, instance)


def test_save_replaces_atomically_and_failures_leave_the_old_map(tmp_path):
    first = save_map(tmp_path / "m", SavedMap.from_voxel_map(_labelled_map(), CLASSES))
    empty = VoxelMap(0.1, 100, len(CLASSES))
    save_map(first, SavedMap.from_voxel_map(empty, CLASSES))
    assert load_map(first).coord.shape == (0, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary folders left
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    # root writes into read-only folders: below a regular file nothing can be created by anyone
    target = ro / "m" if os.geteuid() != 0 else tmp_path / "m" / "map.json" / "m"
    try:
        with pytest.raises((PermissionError, NotADirectoryError, FileExistsError)):
            save_map(target, SavedMap.from_voxel_map(_labelled_map(), CLASSES))
    finally:
        ro.chmod(0o755)
    assert list(ro.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["m", "ro"]
    assert load_map(first).coord.shape == (0, 3)


# which rename fails, for a map saved at tmp_path / "m"
def _aside(src, dst):
    return src.name == "m"


def _onto_m(src, dst):  # the new map into place, then (a second time) the previous map back
    return dst.name == "m"


def _scene_folder(src, dst):  # write_scene's own rename, inside the new map
    return dst.name == "scene"


@pytest.mark.parametrize("previous, fails", [
    pytest.param(True, _aside, id="over a map, moving it aside"),
    pytest.param(True, _onto_m, id="over a map, moving the new one into place"),
    pytest.param(True, _scene_folder, id="over a map, writing the scene folder"),
    pytest.param(False, _onto_m, id="first save, moving it into place"),
    pytest.param(False, _scene_folder, id="first save, writing the scene folder")])
def test_a_failed_rename_leaves_the_previous_map_and_nothing_else(tmp_path, monkeypatch, previous, fails):
    out = tmp_path / "m"
    if previous:
        save_map(out, SavedMap.from_voxel_map(_labelled_map(), CLASSES))
        before = load_map(out)
    listing = tree_listing(tmp_path)
    failing_renames(monkeypatch, fails)
    with pytest.raises(PermissionError, match="test"):
        save_map(out, SavedMap.from_voxel_map(VoxelMap(0.1, 100, len(CLASSES)), CLASSES))
    monkeypatch.undo()
    assert tree_listing(tmp_path) == listing
    if previous:
        np.testing.assert_array_equal(load_map(out).voxel_index, before.voxel_index)


def test_a_previous_map_that_cannot_be_put_back_is_kept_and_named(tmp_path, monkeypatch):
    out = save_map(tmp_path / "m", SavedMap.from_voxel_map(_labelled_map(), CLASSES))
    before = load_map(out)
    failing_renames(monkeypatch, _onto_m, times=2)
    with pytest.raises(OSError, match="could not be put back") as raised:
        save_map(out, SavedMap.from_voxel_map(VoxelMap(0.1, 100, len(CLASSES)), CLASSES))
    monkeypatch.undo()
    kept = Path(str(raised.value.strerror).rsplit("it is in ", 1)[1])
    np.testing.assert_array_equal(load_map(kept).voxel_index, before.voxel_index)
    assert list(tmp_path.iterdir()) == [kept.parent] and list(kept.parent.iterdir()) == [kept]  # no new map


def test_saving_onto_a_file_raises_and_keeps_the_file(tmp_path):
    (tmp_path / "m").write_text("not a map")
    with pytest.raises(NotADirectoryError) as raised:
        save_map(tmp_path / "m", SavedMap.from_voxel_map(_labelled_map(), CLASSES))
    assert raised.value.filename == str(tmp_path / "m")
    assert tree_listing(tmp_path) == ["m"] and (tmp_path / "m").read_text() == "not a map"


@pytest.mark.skipif(os.geteuid() == 0, reason="root renames and writes regardless of permissions")
@pytest.mark.parametrize("read_only", ["parent", "map"])
def test_a_read_only_folder_leaves_the_previous_map(tmp_path, read_only):
    parent = tmp_path / "maps"
    out = save_map(parent / "m", SavedMap.from_voxel_map(_labelled_map(), CLASSES))
    before, listing = load_map(out), tree_listing(tmp_path)
    locked = parent if read_only == "parent" else out  # a folder moves elsewhere only if it is writable (..)
    locked.chmod(0o555)
    try:
        with pytest.raises(PermissionError):
            save_map(out, SavedMap.from_voxel_map(VoxelMap(0.1, 100, len(CLASSES)), CLASSES))
    finally:
        locked.chmod(0o755)
    assert tree_listing(tmp_path) == listing
    np.testing.assert_array_equal(load_map(out).voxel_index, before.voxel_index)


# every file of a saved map (with instance ids): those load_map reads, and those it leaves to other readers
_READ = ["map.json"] + [f"scene/{n}.npy" for n in ("coord", "color", "normal", "confidence", "probability",
                                                   "count", "voxel_index", "instance")]
_NOT_READ = ["map.ply", "scene/segment.npy", "scene/class_names.json"]


@pytest.fixture(scope="module")
def saved_with_instances(tmp_path_factory):
    vmap = _labelled_map()
    return save_map(tmp_path_factory.mktemp("saved") / "m",
                    SavedMap.from_voxel_map(vmap, CLASSES, instance=np.arange(len(vmap)) % 3 - 1))


def test_the_damaged_file_lists_cover_a_saved_map(saved_with_instances):
    files = [p for p in tree_listing(saved_with_instances) if (saved_with_instances / p).is_file()]
    assert sorted(files) == sorted(_READ + _NOT_READ)


def _truncate(file: Path, keep: float):
    data = file.read_bytes()
    file.write_bytes(data[:int(len(data) * keep)] if keep < 1 else data[:-1])


@pytest.mark.parametrize("keep", [0, 0.5, 1], ids=["empty", "half", "last byte cut"])
@pytest.mark.parametrize("name", _READ)
def test_a_truncated_map_file_is_an_input_error_naming_it(saved_with_instances, tmp_path, name, keep):
    out = shutil.copytree(saved_with_instances, tmp_path / "m")
    _truncate(out / name, keep)
    with pytest.raises(InputError) as raised:
        load_map(out)
    assert str(out / name) in str(raised.value) and exit_code_for(raised.value) == EXIT_BAD_INPUT


def test_a_map_array_of_text_is_an_input_error_naming_it(saved_with_instances, tmp_path):
    out = shutil.copytree(saved_with_instances, tmp_path / "m")
    n = len(np.load(out / "scene/instance.npy"))
    np.save(out / "scene/instance.npy", np.full(n, "x"))
    with pytest.raises(InputError, match=r"instance\.npy .*expected numbers"):
        load_map(out)


@pytest.mark.parametrize("name", _NOT_READ)
def test_files_for_other_readers_do_not_stop_a_map_loading(saved_with_instances, tmp_path, name):
    out = shutil.copytree(saved_with_instances, tmp_path / "m")
    _truncate(out / name, 0.5)
    np.testing.assert_array_equal(load_map(out).instance, load_map(saved_with_instances).instance)


def test_restore_rejects_another_voxel_size_or_classes(tmp_path):
    out = save_map(tmp_path / "m", SavedMap.from_voxel_map(_labelled_map(0.1), CLASSES))
    with pytest.raises(InputError, match="voxel_size_m=0.1.*uses 0.05: set voxel_size_m to 0.1"):
        restore_map(VoxelMap(0.05, 10_000, len(CLASSES)), load_map(out), CLASSES)
    with pytest.raises(InputError, match="classes"):
        restore_map(VoxelMap(0.1, 10_000, 2), load_map(out), ("a", "b"))
    with pytest.raises(InputError, match="lacks map.json"):
        load_map(tmp_path)


class _BoxFinder:
    """Stands in for a Segmenter with an instance head: points nearer than 1.75 m are one chair."""

    class_names = CLASSES
    grid_size_m = 0.1
    has_instance_head = True

    def predict_instances(self, coord, color, normal):
        from gcross_core.segmentation.instance import InstanceSet
        from gcross_core.segmentation.segmenter import InstancePrediction

        labels = np.where(coord[:, 2] < 1.75, 2, 0)
        probs = np.eye(len(CLASSES), dtype=np.float32)[labels] * 0.8 + 0.2 / len(CLASSES)
        chair = np.flatnonzero(labels == 2)
        return InstancePrediction(labels, probs.max(1), probs,
                                  InstanceSet([chair], np.array([2]), np.array([0.9], np.float32), len(coord)))


def test_a_restored_map_keeps_its_object_ids(tmp_path):
    from gcross_core.mapping.pipeline import PipelineConfig, SegmentationPipeline

    depth = np.full((H, W), 2.0, np.float32)
    depth[8:16, 10:20] = 1.5
    rgb = np.full((H, W, 3), 90, np.uint8)
    first = SegmentationPipeline(_BoxFinder(), PipelineConfig(segment_scope="map"))
    first.process_frame(rgb, depth, K, np.eye(4), 0.0)
    first.segment(0.0)
    (chair,) = first.objects()
    snap, probs = first.map.export()
    first.tracker.restore(snap.keys, first.tracker.ids_of(snap.keys) * 6, probs)  # call it object 6: a fresh
    assert [o.object_id for o in first.objects()] == [6]                          # pipeline would say 1
    save_map(tmp_path / "m", first.saved_map())
    second = SegmentationPipeline(_BoxFinder(), PipelineConfig(segment_scope="map"))
    second.restore(load_map(tmp_path / "m"))
    (again,) = second.objects()
    assert (again.object_id, again.class_index, again.voxels) == (6, 2, chair.voxels)
    np.testing.assert_array_equal(second.labelled_points().instance, first.labelled_points().instance)
    second.process_frame(rgb, depth, K, np.eye(4), 1.0)
    second.segment(1.0)  # the chair is found again: it keeps id 6
    assert [o.object_id for o in second.objects()] == [6]
    # a map saved without object ids starts without objects
    second.restore(SavedMap.from_voxel_map(second.map, CLASSES))
    assert second.objects() == [] and len(second.map) == len(first.map)

