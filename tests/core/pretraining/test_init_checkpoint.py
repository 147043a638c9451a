"""Pretraining from a checkpoint (adaptation): weights loaded, architecture taken from the checkpoint,
one-scene datasets repeat to fill the batch, and a frames-only scene is fused with its up direction."""
import copy

import numpy as np
import pytest
import torch

from gcross_core.checkpoint import CheckpointHeader, prefixed, save_checkpoint
from gcross_core.config import from_dict
from gcross_core.data.frames import write_frames
from gcross_core.data.synthetic import make_room
from gcross_core.errors import CheckpointError
from gcross_core.model.api import pretrain_header, save_model
from gcross_core.model.gaussiancross import GaussianCross
from gcross_core.model.features import POINTCEPT_CONVENTION
from gcross_core.pretraining.config import PretrainConfig
from gcross_core.pretraining.dataset import PretrainDataConfig, PretrainDataset, align_up
from gcross_core.pretraining.init import config_for_init, load_init_weights
from gcross_core.pretraining.module import build_pretrain_module
from gcross_core.pretraining.run import repeats_per_epoch
from conftest import MICRO_MODEL, MICRO_PIPELINE, MICRO_TEACHERS

MICRO = {
    "name": "micro_adapt",
    "model": MICRO_MODEL,
    "data": {"pipeline": MICRO_PIPELINE},
    "teachers": MICRO_TEACHERS,
    "train": {"batch_size": 2, "max_steps": 2, "device": "cpu", "num_threads": 1},
}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A pretraining checkpoint of the micro architecture (random weights, saved as training would)."""
    torch.manual_seed(1)
    cfg = from_dict(PretrainConfig, MICRO)
    path = tmp_path_factory.mktemp("ckpt") / "pretrained.safetensors"
    save_model(path, GaussianCross(cfg.model), cfg)
    return path


def test_pretrain_checkpoint_sets_architecture_and_weights(pretrained):
    # the adapting config asks for another head grid and another grid size: the checkpoint's win
    other = copy.deepcopy(MICRO)
    other["model"]["head"]["grid"] = [8, 8, 8]
    other["model"]["grid_size_m"] = other["data"]["pipeline"]["grid_size_m"] = 0.05
    cfg = config_for_init(from_dict(PretrainConfig, {**other, "init_checkpoint": str(pretrained)}))
    assert cfg.model.head.grid == (16, 16, 8) and cfg.data.pipeline.grid_size_m == 0.1
    torch.manual_seed(2)
    module = build_pretrain_module(cfg)
    report = load_init_weights(module, pretrained)
    assert "model" in report["loaded"]
    from gcross_core.checkpoint import load_checkpoint

    tensors, _ = load_checkpoint(pretrained)
    for k, v in module.model.state_dict().items():
        torch.testing.assert_close(v, tensors[f"model.{k}"])
    assert report["fresh"] == ["projection.efficientnet_lite0"]  # the checkpoint holds no projection heads


def test_encoder_only_checkpoint_loads_the_encoder_and_keeps_a_fresh_head(pretrained, tmp_path):
    cfg = from_dict(PretrainConfig, MICRO)
    enc = GaussianCross(cfg.model).encoder
    path = save_checkpoint(tmp_path / "enc.safetensors", prefixed(enc.state_dict(), "encoder"),
                           CheckpointHeader(kind="encoder", encoder_config=cfg.model.encoder.to_dict(),
                                            encoder_prefix="encoder", **POINTCEPT_CONVENTION.header_fields()))
    cfg = config_for_init(from_dict(PretrainConfig, {**MICRO, "init_checkpoint": str(path)}))
    # an imported backbone keeps being fed its own input convention, and the run's checkpoints record it
    assert cfg.data.pipeline.convention == POINTCEPT_CONVENTION
    assert pretrain_header(cfg.model, cfg).input_features == POINTCEPT_CONVENTION.input_features
    module = build_pretrain_module(cfg)
    report = load_init_weights(module, path)
    assert report["loaded"] == ["model.encoder"] and "model.head" in report["fresh"]
    for k, v in module.model.encoder.state_dict().items():
        torch.testing.assert_close(v, enc.state_dict()[k])


def test_checkpoint_of_another_architecture_is_refused(pretrained, tmp_path):
    cfg = from_dict(PretrainConfig, MICRO)
    big = copy.deepcopy(MICRO)
    big["model"]["encoder"]["base_channels"] = 16
    module = build_pretrain_module(from_dict(PretrainConfig, big))
    with pytest.raises(CheckpointError, match="do not match"):
        load_init_weights(module, pretrained)
    assert cfg.init_checkpoint is None


@pytest.mark.parametrize("scenes,loop,batch,expected", [(1, 1, 2, 2), (1, 1, 1, 1), (3, 1, 2, 1), (1, 4, 2, 4),
                                                        (2, 1, 5, 3)])
def test_few_scenes_repeat_to_fill_the_batch(scenes, loop, batch, expected):
    assert repeats_per_epoch(scenes, loop, batch) == expected


def test_align_up_rotates_points_and_poses_together(tmp_path, caplog):
    room = make_room(2, num_points=1500, num_views=4, width=32, height=24)
    write_frames(tmp_path / "frames", (room.frames.frame(i) for i in range(len(room.frames))), color_format="png")
    # the same room in a camera-like world frame: y down (z-up world rotated by -90 deg about x)
    tilt = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], np.float64)
    frames = room.frames.transformed(tilt)
    tilted = type(room)(room.name, room.coord @ tilt[:3, :3].T.astype(np.float32), room.color,
                        room.normal @ tilt[:3, :3].T.astype(np.float32), frames=frames)
    with caplog.at_level("WARNING"):
        assert align_up(tilted, None) is tilted
    assert "deg from +z" in caplog.text
    fixed = align_up(tilted, "0,-1,0")
    np.testing.assert_allclose(fixed.coord, room.coord, atol=1e-5)
    np.testing.assert_allclose(fixed.frames.cam_to_world(1), room.frames.cam_to_world(1), atol=1e-9)
    est = align_up(tilted, "cameras")  # estimated: close to the room's own z-up frame
    assert np.mean(np.abs(est.coord[:, 2] - room.coord[:, 2])) < 0.3


def test_frames_only_scene_with_up_option(tmp_path):
    room = make_room(2, num_points=1500, num_views=4, width=32, height=24)
    write_frames(tmp_path / "s" / "frames", (room.frames.frame(i) for i in range(4)), color_format="png")
    cfg = PretrainDataConfig(grid_size_m=0.1, views_per_scene=2, image_size=(12, 16), fuse_voxel_size_m=0.05,
                             up="0,0,1")
    sample = PretrainDataset([tmp_path / "s"], cfg)[0]
    assert sample.images.shape == (2, 12, 16, 3) and len(sample.coord) > 10
