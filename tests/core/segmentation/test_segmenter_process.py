"""The segmenter in a child process gives what the segmenter in this process gives, reports a bad
checkpoint as the same error, runs at the niceness asked for, and ends when closed."""
import os

import numpy as np
import pytest

pytest.importorskip("spconv")
from gcross_core.errors import CheckpointError, InputError  # noqa: E402
from gcross_core.model.encoder import SpUNetConfig  # noqa: E402
from gcross_core.segmentation.instance import InstanceConfig  # noqa: E402
from gcross_core.segmentation.model import build_segmenter_checkpoint  # noqa: E402
from gcross_core.segmentation.process import SegmenterProcess  # noqa: E402
from gcross_core.segmentation.segmenter import Segmenter  # noqa: E402

TINY = SpUNetConfig(base_channels=8, channels=(8, 8, 8, 8), layers=(1, 1, 1, 1))
CLASSES = ["floor", "wall", "chair"]


def _cloud(n=600, seed=0):
    rng = np.random.default_rng(seed)
    coord = rng.uniform(0, 2, (n, 3)).astype(np.float32)
    color = rng.uniform(0, 255, (n, 3)).astype(np.float32)
    normal = rng.normal(size=(n, 3)).astype(np.float32)
    return coord, color, normal / np.linalg.norm(normal, axis=1, keepdims=True)


def test_the_child_process_predicts_what_this_process_predicts(tmp_path, one_torch_thread):
    ins = InstanceConfig(stuff_classes=("floor",), cluster_radius_m=0.3, min_points=1, score_threshold=0.0)
    ckpt = build_segmenter_checkpoint(tmp_path / "s.safetensors", CLASSES, TINY, grid_size_m=0.1, instance=ins)
    here = Segmenter.from_checkpoint(ckpt)
    there = SegmenterProcess(ckpt, threads=1, nice=3)
    try:
        assert there.class_names == CLASSES and there.grid_size_m == 0.1 and there.has_instance_head
        assert there.pid is not None
        # at a lower priority than this process (set before it reported ready)
        assert os.getpriority(os.PRIO_PROCESS, there.pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 3)
        cloud = _cloud()
        labels, conf, probs = there.predict(*cloud, return_probs=True)
        ref = here.predict(*cloud, return_probs=True)
        np.testing.assert_array_equal(labels, ref[0])
        np.testing.assert_allclose(probs, ref[2], atol=1e-5)
        assert there.predict(*cloud)[2] is None
        out, ref_out = there.predict_instances(*cloud), here.predict_instances(*cloud)
        np.testing.assert_array_equal(out.instance, ref_out.instance)
        with pytest.raises(ValueError):  # the child's error, raised here with its type
            there.predict(cloud[0][:, :2], cloud[1], cloud[2])
        np.testing.assert_array_equal(there.predict(*cloud)[0], labels)  # and it goes on serving
    finally:
        there.close()
    assert not there._proc.is_alive()


def test_a_negative_niceness_is_refused_before_a_process_starts(tmp_path):
    with pytest.raises(InputError, match="nice must be an integer >= 0"):
        SegmenterProcess(tmp_path / "never_read.safetensors", nice=-5)


def test_a_bad_checkpoint_fails_in_the_parent_with_its_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        SegmenterProcess(bad)
