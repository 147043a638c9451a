"""Pretraining batches: offsets and inverse maps round-trip, views match their scene, seeds fix batches."""
import numpy as np
import pytest
import torch

from gcross_core.data import AugmentConfig, Scene, make_room, split_by_offset, write_scene
from gcross_core.pretraining.dataset import (PretrainBatch, PretrainDataConfig, PretrainDataset, TeacherCacheSpec,
                                             collate_pretrain, pretrain_loader)

GRID = 0.05


@pytest.fixture(scope="module")
def rooms():
    return [make_room(s, num_points=6000, num_views=4, width=48, height=36) for s in (0, 1, 2)]


def test_collate_round_trips_offsets_inverse_features_and_views(rooms):
    cfg = PretrainDataConfig(grid_size_m=GRID, views_per_scene=3, image_size=(18, 24), augment=AugmentConfig.none())
    ds = PretrainDataset(rooms[:2], cfg)
    samples = [ds.sample(i, np.random.default_rng(i)) for i in range(2)]
    b = collate_pretrain(samples)
    assert isinstance(b, PretrainBatch)
    rows = [len(s.coord) for s in samples]
    assert b.points.offset.tolist() == np.cumsum(rows).tolist()
    assert b.points.inverse_offset.tolist() == np.cumsum([r.num_points for r in rooms[:2]]).tolist()
    for s, coord in zip(samples, split_by_offset(b.points.coord, b.points.offset)):
        np.testing.assert_array_equal(coord.numpy(), s.coord)
    start = 0
    for i, room in enumerate(rooms[:2]):
        inv = b.points.inverse[b.points.inverse_offset[i] - room.num_points:b.points.inverse_offset[i]]
        lo, hi = (0 if i == 0 else int(b.points.offset[i - 1])), int(b.points.offset[i])
        assert lo <= int(inv.min()) and int(inv.max()) < hi  # originals map into their own scene's rows
        assert len(torch.unique(inv)) == hi - lo  # every row is some original point's cell
        # no augmentation, no shuffle: the row of each original point is its grid cell's representative
        cell = np.floor((room.coord - room.coord.min(0)) / GRID).astype(np.int64)
        np.testing.assert_array_equal(b.points.grid_coord[inv].numpy(), cell)
        rep = b.points.coord[inv].numpy()
        feat = b.points.feat[inv].numpy()
        same = np.all(np.isclose(rep, room.coord, atol=1e-6), axis=1)  # the representatives themselves
        np.testing.assert_allclose(feat[same, :3], room.color[same] / 255, atol=1e-6)
        np.testing.assert_allclose(feat[same, 3:], room.normal[same], atol=1e-6)
        np.testing.assert_array_equal(b.segment[start:start + room.num_points].numpy(), room.segment)
        start += room.num_points
    assert b.images.shape == (6, 18, 24, 3) and b.images.dtype == torch.float32 and b.images.max() <= 1
    assert b.depths_m.shape == (6, 18, 24) and b.view_scene.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(b.cameras.batch, b.view_scene)
    # intrinsics scaled from 48x36 frames to 24x18 views
    K0 = rooms[0].frames.frame(int(b.frame_ids[0])).K_depth
    assert float(b.cameras.K[0, 0, 0]) == pytest.approx(K0[0, 0] / 2, rel=1e-6)
    assert b.to("cpu").points.coord.shape == b.points.coord.shape


def test_point_budget_crops_cells_and_their_original_points(rooms):
    cfg = PretrainDataConfig(grid_size_m=GRID, views_per_scene=2, image_size=(18, 24), max_points=500)
    s = PretrainDataset(rooms[:1], cfg).sample(0, np.random.default_rng(0))
    assert len(s.coord) == 500 and s.feat.shape == (500, 6)
    assert len(s.inverse) == len(s.segment) < rooms[0].num_points
    assert set(np.unique(s.inverse)) == set(range(500))
    assert s.grid_coord.min() == 0
    # kept rows are a compact region: the cap keeps the cells nearest one centre
    full = PretrainDataset(rooms[:1], PretrainDataConfig(grid_size_m=GRID, views_per_scene=2, image_size=(18, 24)))
    assert len(full.sample(0, np.random.default_rng(0)).coord) > 500


def batches_equal(a, b):
    return (torch.equal(a.points.coord, b.points.coord) and torch.equal(a.points.inverse, b.points.inverse)
            and torch.equal(a.images, b.images) and torch.equal(a.cameras.world_to_cam, b.cameras.world_to_cam)
            and a.frame_ids == b.frame_ids)


def test_same_seed_gives_the_same_batches_with_any_number_of_workers(rooms):
    ds = PretrainDataset(rooms, PretrainDataConfig(grid_size_m=GRID, views_per_scene=2, image_size=(18, 24)))
    ref = list(pretrain_loader(ds, batch_size=2, seed=3, num_workers=0))
    assert [len(b.scene_names) for b in ref] == [2, 1]
    again = list(pretrain_loader(ds, batch_size=2, seed=3, num_workers=2))
    assert all(batches_equal(x, y) for x, y in zip(ref, again))
    other = list(pretrain_loader(ds, batch_size=2, seed=4, num_workers=0))
    assert not all(batches_equal(x, y) for x, y in zip(ref, other))
    next_epoch = list(pretrain_loader(ds, batch_size=2, seed=3, epoch=1, num_workers=0))
    assert not all(batches_equal(x, y) for x, y in zip(ref, next_epoch))
    # plain indexing draws from the dataset's own seeded stream and leaves the global numpy RNG alone
    np.random.seed(11)
    before = np.random.get_state()[1].copy()
    first = ds[1]
    assert np.array_equal(np.random.get_state()[1], before)
    cfg = PretrainDataConfig(grid_size_m=GRID, views_per_scene=2, image_size=(18, 24))
    assert np.array_equal(PretrainDataset(rooms, cfg)[1].coord, first.coord)
    assert not np.array_equal(PretrainDataset(rooms, cfg, seed=1)[1].coord, first.coord)


def test_scene_folders_with_cached_teacher_features(tmp_path, rooms):
    from gcross_core.pretraining.teachers.cache import FeatureCache

    path = write_scene(rooms[0], tmp_path / "room", color_format="png")
    cache = FeatureCache(path, "toy", 18, 24)
    cache.initialize(feature_dim=4, feature_size=(3, 4), fingerprint="x")
    for fid in ("0", "1", "2", "3"):
        cache.put(fid, np.full((4, 3, 4), int(fid), np.float32))
    cfg = PretrainDataConfig(grid_size_m=GRID, views_per_scene=3, image_size=(18, 24),
                             teacher_caches=(TeacherCacheSpec("toy", 18, 24), TeacherCacheSpec("absent", 18, 24)))
    ds = PretrainDataset([path], cfg)
    b = collate_pretrain([ds.sample(0, np.random.default_rng(1))])
    assert set(b.teacher_features) == {"toy"}
    assert b.teacher_features["toy"].shape == (3, 4, 3, 4)
    assert b.teacher_features["toy"][:, 0, 0, 0].tolist() == [float(f) for f in b.frame_ids]


def test_points_and_frames_in_separate_trees(tmp_path, rooms):
    """Pointcept-preprocessed points in one tree, SensReader exports in another (frames_root)."""
    from gcross_core.data import write_frames

    r = rooms[1]
    write_scene(Scene("scene0000_00", r.coord, r.color, r.normal, segment=r.segment), tmp_path / "pts" / "scene0000_00")
    write_frames(tmp_path / "sens" / "scene0000_00", r.frames, color_format="png")
    cfg = PretrainDataConfig(grid_size_m=GRID, views_per_scene=2, image_size=(18, 24),
                             frames_root=str(tmp_path / "sens"))
    s = PretrainDataset([tmp_path / "pts" / "scene0000_00"], cfg).sample(0, np.random.default_rng(0))
    assert s.images.shape == (2, 18, 24, 3) and len(s.segment) == r.num_points
    with pytest.raises(ValueError, match="does not exist"):
        PretrainDataset([tmp_path / "pts" / "scene0000_00"],
                        PretrainDataConfig(frames_root=str(tmp_path / "elsewhere")))


def test_bad_inputs_are_rejected(tmp_path, rooms):
    with pytest.raises(ValueError, match="no scenes"):
        PretrainDataset([])
    r = rooms[0]
    with pytest.raises(ValueError, match="has no frames"):
        PretrainDataset([Scene("bare", r.coord, r.color, r.normal)])
    path = write_scene(Scene("bare", r.coord, r.color, r.normal), tmp_path / "bare")
    with pytest.raises(ValueError, match="has no frames/"):
        PretrainDataset([path])
    with pytest.raises(ValueError, match="views_per_scene"):
        PretrainDataConfig(views_per_scene=0)
    with pytest.raises(ValueError, match="no samples"):
        collate_pretrain([])
