"""The adaptation path end to end on a synthetic bag: bag -> gcross-bag export -> pretraining continued
from a checkpoint for 2 steps on the one exported room -> the adapted model renders the room."""
import numpy as np
import pytest
import torch

pytest.importorskip("rosbags")

from gcross_core.config import from_dict  # noqa: E402
from gcross_core.data.frames import SensReaderFrames  # noqa: E402
from gcross_core.data.synthetic import make_room  # noqa: E402
from gcross_core.mapping import frame_sets  # noqa: E402
from gcross_core.mapping.fusion_cache import default_cache_dir, fused_points, FusionSettings  # noqa: E402
from gcross_core.model.api import GaussianCrossModel, pinhole_cameras, save_model  # noqa: E402
from gcross_core.model.gaussiancross import GaussianCross  # noqa: E402
from gcross_core.pretraining.config import PretrainConfig  # noqa: E402
from gcross_core.pretraining.run import run_pretraining  # noqa: E402
from gcross_ros.bag.cli import main  # noqa: E402
from gcross_ros.bag.format import RecordConfig  # noqa: E402
from gcross_ros.bag.writer import record_scene  # noqa: E402
from conftest import MICRO_MODEL, MICRO_PIPELINE, MICRO_TEACHERS  # noqa: E402

MICRO = {
    "name": "micro_adapt",
    "model": MICRO_MODEL,
    "data": {"pipeline": {**MICRO_PIPELINE, "fuse_voxel_size_m": 0.05}},
    "teachers": MICRO_TEACHERS,
    "train": {"batch_size": 2, "max_steps": 2, "device": "cpu", "num_threads": 1, "checkpoint_every_steps": 0,
              "image_every_steps": 0},
}


def test_bag_export_adapt_render(tmp_path, monkeypatch):
    room = make_room(5, num_points=3000, num_views=4, width=32, height=24)
    record_scene(room, tmp_path / "bag", RecordConfig(), progress=False)
    scene = tmp_path / "scene"
    assert main(["-q", "export", str(tmp_path / "bag"), "--out", str(scene), "--fuse-voxel-size-m", "0.05"]) == 0

    torch.manual_seed(0)
    base = from_dict(PretrainConfig, MICRO)
    start = save_model(tmp_path / "start.safetensors", GaussianCross(base.model), base)
    def must_not_fuse(*args, **kwargs):
        raise AssertionError("fused again although export cached the points")

    monkeypatch.setattr(frame_sets, "fuse_frames_to_points", must_not_fuse)
    cfg = from_dict(PretrainConfig, {**MICRO, "init_checkpoint": str(start),
                                     "data": {**MICRO["data"], "scenes": [str(scene)]}})
    # one room, global batch 2: the room repeats instead of failing
    state, final = run_pretraining(cfg, tmp_path / "run", progress=False, tensorboard=False)
    assert state.step == 2 and state.skipped_steps == 0
    assert np.isfinite(state.last_metrics["loss"])

    model = GaussianCrossModel.from_checkpoint(final)
    before = GaussianCrossModel.from_checkpoint(start)
    changed = [k for k, v in model.model.state_dict().items()
               if v.dtype.is_floating_point and not torch.equal(v, before.model.state_dict()[k])]
    assert changed  # two optimizer steps moved the weights
    fused = fused_points(SensReaderFrames(scene / "frames"), FusionSettings(voxel_size_m=0.05),
                         default_cache_dir(scene))
    assert fused.from_cache
    frames = SensReaderFrames(scene / "frames")
    g = model.gaussians(coord=fused.coord, color=fused.color, normal=fused.normal)
    f = frames.frame(0)
    out = model.render(g, pinhole_cameras(f.cam_to_world, f.K_depth), 32, 24)
    assert out.color.shape == (1, 24, 32, 3) and torch.isfinite(out.color).all()
    assert out.features.shape[-1] == 4 and float(out.alpha.max()) > 0
