"""Teacher feature cache: float16 frames, manifest checks, staleness, and filling it on a tiny scene (library
and the training/cache_features.py command, run as a separate process)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gcross_core.pretraining.teachers import FeatureCache, StaleCacheError, build_teacher
from gcross_core.pretraining.teachers.cache_run import cache_scene, cache_scenes, color_frames, load_rgb

SCRIPT = Path(__file__).resolve().parents[3] / "training" / "cache_features.py"


def _cache(scene, fingerprint="abc", dim=3, size=(2, 4), **kw):
    cache = FeatureCache(scene, "toy", 32, 48, **kw)
    cache.initialize(dim, size, fingerprint)
    return cache


def test_put_get_roundtrip_in_float16_with_manifest(tmp_path):
    cache = _cache(tmp_path / "scene")
    feats = np.random.default_rng(0).normal(size=(3, 2, 4)).astype(np.float32)
    path = cache.put(7, torch.from_numpy(feats))
    assert path == tmp_path / "scene" / "features" / "toy_32x48" / "7.npy"
    got = cache.get(7)
    assert got.dtype == np.float16 and got.shape == (3, 2, 4)
    np.testing.assert_allclose(got, feats, atol=2e-3)
    assert cache.get(8) is None and cache.has(7) and not cache.has(8)
    manifest = json.loads(cache.manifest_path.read_text())
    assert manifest["teacher"] == "toy" and (manifest["input_height"], manifest["input_width"]) == (32, 48)
    assert (manifest["feature_dim"], manifest["feature_height"], manifest["feature_width"]) == (3, 2, 4)
    assert manifest["fingerprint"] == "abc"
    # a fresh reader sees the same frames
    assert FeatureCache(tmp_path / "scene", "toy", 32, 48).frame_ids() == ["7"]


def test_cache_without_manifest_is_invalid_and_says_how_to_rebuild(tmp_path):
    cache = FeatureCache(tmp_path / "scene", "toy", 32, 48)
    assert not cache.valid and cache.get(0) is None
    with pytest.raises(StaleCacheError, match="cache_features.py --scenes .* --teacher toy --height 32 --width 48"):
        cache.require()
    with pytest.raises(StaleCacheError):
        cache.put(0, np.zeros((3, 2, 4)))


def test_other_fingerprint_or_width_reads_as_stale(tmp_path):
    _cache(tmp_path / "scene").put(0, np.ones((3, 2, 4)))
    assert FeatureCache(tmp_path / "scene", "toy", 32, 48, fingerprint="abc").valid
    stale = FeatureCache(tmp_path / "scene", "toy", 32, 48, fingerprint="xyz")
    assert not stale.valid and "fingerprint" in stale.stale_reason and stale.get(0) is None
    assert not FeatureCache(tmp_path / "scene", "toy", 32, 48, feature_dim=5).valid
    # another resolution is another key: nothing there
    assert not FeatureCache(tmp_path / "scene", "toy", 64, 96).valid


def test_initialize_keeps_matching_frames_and_drops_stale_ones(tmp_path):
    _cache(tmp_path / "scene").put(0, np.ones((3, 2, 4)))
    again = FeatureCache(tmp_path / "scene", "toy", 32, 48)
    assert again.initialize(3, (2, 4), "abc") is True and again.get(0) is not None
    other = FeatureCache(tmp_path / "scene", "toy", 32, 48)
    assert other.initialize(3, (2, 4), "new-weights") is False
    assert other.valid and other.get(0) is None and other.frame_ids() == []


def test_put_checks_shape_range_and_frame_id(tmp_path):
    cache = _cache(tmp_path / "scene")
    with pytest.raises(ValueError, match=r"\(3, 2, 4\)"):
        cache.put(0, np.zeros((3, 4, 2)))
    with pytest.raises(ValueError, match="float16"):
        cache.put(0, np.full((3, 2, 4), 1e6))
    with pytest.raises(ValueError, match="frame id"):
        cache.put("../escape", np.zeros((3, 2, 4)))
    assert cache.frame_ids() == []


def test_root_keeps_the_scene_folder_untouched(tmp_path):
    scene = tmp_path / "data" / "scene0000_00"
    scene.mkdir(parents=True)
    cache = _cache(scene, root=tmp_path / "cache")
    cache.put(1, np.zeros((3, 2, 4)))
    assert (tmp_path / "cache" / "scene0000_00" / "toy_32x48" / "1.npy").is_file()
    assert list(scene.iterdir()) == []


def _make_scene(path, n=3, size=(40, 56)):
    color = path / "frames" / "color"
    color.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(color / f"{i}.png")
    return path


def test_cache_features_command_fills_resumes_and_matches_the_teacher(tmp_path):
    scene = _make_scene(tmp_path / "scene")
    run = subprocess.run([sys.executable, str(SCRIPT), "--scenes", str(scene), "--teacher", "efficientnet_lite0",
                          "--height", "32", "--width", "48", "--batch-size", "2"],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    assert "3 frames computed, 0 already cached" in run.stderr
    teacher = build_teacher("efficientnet_lite0", input_size=(32, 48))
    cache = FeatureCache(scene, "efficientnet_lite0", 32, 48, fingerprint=teacher.fingerprint(),
                         feature_dim=teacher.feature_dim)
    assert cache.valid and cache.frame_ids() == ["0", "1", "2"]
    assert cache.feature_size == teacher.output_size
    expected = teacher(load_rgb(scene / "frames" / "color" / "2.png")[None])[0]
    np.testing.assert_allclose(cache.get(2).astype(np.float32), expected.numpy(), atol=3e-3)
    # a second run computes nothing new
    assert cache_scene(teacher, scene, None, batch_size=2, overwrite=False) == (0, 3)
    assert cache_scenes(teacher, [scene], batch_size=2) == (0, 3)


def test_cache_scenes_fills_the_cache_under_a_separate_root_and_recomputes_on_overwrite(tmp_path):
    scene = _make_scene(tmp_path / "scene", n=2)
    teacher = build_teacher("efficientnet_lite0", input_size=(32, 48))
    assert cache_scenes(teacher, [scene], out_root=tmp_path / "cache", batch_size=4, limit=1) == (1, 0)
    cache = FeatureCache(scene, "efficientnet_lite0", 32, 48, root=tmp_path / "cache",
                         fingerprint=teacher.fingerprint())
    assert cache.valid and cache.frame_ids() == ["0"] and not (scene / "features").exists()
    assert cache_scenes(teacher, [scene], out_root=tmp_path / "cache", overwrite=True) == (2, 0)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        cache_scene(teacher, scene, None, batch_size=0, overwrite=False)


def test_color_frames_are_in_numeric_order_and_missing_frames_are_explained(tmp_path):
    color = tmp_path / "s" / "frames" / "color"
    color.mkdir(parents=True)
    for i in (10, 2, 1):
        (color / f"{i}.jpg").touch()
    assert [fid for fid, _ in color_frames(tmp_path / "s")] == ["1", "2", "10"]
    with pytest.raises(FileNotFoundError, match="frames/color"):
        color_frames(tmp_path / "empty")
