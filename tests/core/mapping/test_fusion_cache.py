"""Fused points of frames-only scenes are cached, reused, and fused again when settings or frames change."""
import dataclasses

import numpy as np
import pytest

from gcross_core.data.frames import FrameList, SensReaderFrames, write_frames
from gcross_core.data.synthetic import make_room
from gcross_core.errors import InputError
from gcross_core.mapping import frame_sets
from gcross_core.mapping.fusion_cache import FusionSettings, default_cache_dir, fused_points
from gcross_core.pretraining.dataset import PretrainDataConfig, PretrainDataset


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("scene")
    room = make_room(1, num_points=2000, num_views=4, width=32, height=24)
    write_frames(root / "frames", (room.frames.frame(i) for i in range(len(room.frames))), color_format="png")
    return root


@pytest.fixture
def fuse_calls(monkeypatch):
    calls = []
    real = frame_sets.fuse_frames_to_points

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(frame_sets, "fuse_frames_to_points", counting)
    return calls


def test_second_call_reads_the_cache(frames_dir, tmp_path, fuse_calls):
    frames = SensReaderFrames(frames_dir / "frames")
    s = FusionSettings(voxel_size_m=0.05)
    first = fused_points(frames, s, tmp_path / "c")
    second = fused_points(frames, s, tmp_path / "c")
    assert len(fuse_calls) == 1 and not first.from_cache and second.from_cache
    np.testing.assert_array_equal(first.coord, second.coord)
    np.testing.assert_array_equal(first.normal, second.normal)


@pytest.mark.parametrize("change", [dict(voxel_size_m=0.08), dict(every=2), dict(max_depth_m=1.0)])
def test_changed_settings_fuse_again(frames_dir, tmp_path, fuse_calls, change):
    frames = SensReaderFrames(frames_dir / "frames")
    base = FusionSettings(voxel_size_m=0.05)
    a = fused_points(frames, base, tmp_path / "c")
    b = fused_points(frames, FusionSettings(**{**dict(voxel_size_m=0.05), **change}), tmp_path / "c")
    assert len(fuse_calls) == 2 and not b.from_cache
    assert len(a.coord) != len(b.coord)
    assert fused_points(frames, base, tmp_path / "c").from_cache is False  # the cache now holds the new settings


def test_changed_poses_fuse_again(frames_dir, tmp_path, fuse_calls):
    frames = SensReaderFrames(frames_dir / "frames")
    s = FusionSettings(voxel_size_m=0.05)
    fused_points(frames, s, tmp_path / "c")
    moved = [frames.frame(i) for i in range(len(frames))]
    T = moved[1].cam_to_world.copy()
    T[0, 3] += 0.5  # one frame re-posed (e.g. after loop closure): same ids, other points
    moved[1] = dataclasses.replace(moved[1], cam_to_world=T)
    assert not fused_points(FrameList(moved), s, tmp_path / "c").from_cache
    assert len(fuse_calls) == 2


def test_max_depth_cuts_far_points(frames_dir):
    frames = SensReaderFrames(frames_dir / "frames")
    near = fused_points(frames, FusionSettings(voxel_size_m=0.05, max_depth_m=1.5))
    far = fused_points(frames, FusionSettings(voxel_size_m=0.05, max_depth_m=10.0))
    assert 0 < len(near.coord) < len(far.coord)


def test_bad_settings_are_named():
    with pytest.raises(InputError, match="max_depth_m"):
        FusionSettings(max_depth_m=0)
    with pytest.raises(InputError, match="every"):
        FusionSettings(every=0)


def test_pretrain_dataset_fuses_once_across_runs(frames_dir, fuse_calls, tmp_path):
    cfg = PretrainDataConfig(grid_size_m=0.05, views_per_scene=2, image_size=(12, 16), fuse_voxel_size_m=0.05,
                             fuse_cache_root=str(tmp_path / "cache"))
    a = PretrainDataset([frames_dir], cfg)
    b = PretrainDataset([frames_dir], cfg)
    assert len(fuse_calls) == 1
    np.testing.assert_array_equal(a.scene(0).coord, b.scene(0).coord)
    assert (default_cache_dir(frames_dir, tmp_path / "cache") / "fusion.json").is_file()
    PretrainDataset([frames_dir], PretrainDataConfig(grid_size_m=0.05, views_per_scene=2, image_size=(12, 16),
                                                     fuse_voxel_size_m=0.05, fuse_max_depth_m=2.0,
                                                     fuse_cache_root=str(tmp_path / "cache")))
    assert len(fuse_calls) == 2 and fuse_calls[-1]["max_depth_m"] == 2.0
