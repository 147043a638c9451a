"""gcross-bag eval --render-panel: the node's rendered views of the final map at recorded poses (no ROS needed)."""
import dataclasses
import json

import numpy as np
import pytest
import yaml

pytest.importorskip("rosbags")
pytest.importorskip("spconv")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from gcross_core.config import from_dict  # noqa: E402
from gcross_core.data.classes import SYNTHETIC_CLASSES  # noqa: E402
from gcross_core.data.synthetic import make_room  # noqa: E402
from gcross_core.model.api import save_model  # noqa: E402
from gcross_core.model.encoder import SpUNetConfig  # noqa: E402
from gcross_core.model.gaussiancross import GaussianCross, GaussianCrossConfig  # noqa: E402
from gcross_core.segmentation.model import build_segmenter_checkpoint  # noqa: E402
from gcross_ros.bag.cli import main  # noqa: E402
from gcross_ros.bag.format import RecordConfig  # noqa: E402
from gcross_ros.bag.render_panel import panel_frame_indices  # noqa: E402
from gcross_ros.bag.writer import record_scene  # noqa: E402

W, H = 48, 36
MODEL = {"encoder": {"base_channels": 8, "channels": [8, 8, 8, 8], "layers": [1, 1, 1, 1]},
         "head": {"grid": [16, 16, 8], "dense_channels": 8, "dense_blocks": 1, "head_hidden": 8, "feature_dim": 4},
         "grid_size_m": 0.1}


def test_panel_poses_spread_over_the_bag():
    assert panel_frame_indices(30, 3) == [5, 15, 25]
    assert panel_frame_indices(2, 3) == [0, 1]
    assert panel_frame_indices(1, 3) == [0]
    with pytest.raises(ValueError):
        panel_frame_indices(0, 3)


@pytest.fixture(scope="module")
def room_bag(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("panel")
    room = make_room(2, num_points=4000, num_views=4, width=W, height=H)
    record_scene(room, tmp / "bag", RecordConfig())
    unlabelled = dataclasses.replace(room, segment=None, instance=None, extra={})
    record_scene(unlabelled, tmp / "bag_no_gt", RecordConfig())
    seg = build_segmenter_checkpoint(tmp / "seg.safetensors", list(SYNTHETIC_CLASSES),
                                     SpUNetConfig(base_channels=8, channels=(8, 8, 8, 8), layers=(1, 1, 1, 1)),
                                     grid_size_m=0.1)
    torch.manual_seed(0)
    model = save_model(tmp / "model.safetensors", GaussianCross(from_dict(GaussianCrossConfig, MODEL)))
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "render_width": W, "render_height": H, "voxel_size_m": 0.05, "torch_threads": 1}}}))
    return tmp, seg, model, params


def test_eval_writes_the_render_panel(room_bag, tmp_path, one_torch_thread, capsys):
    tmp, seg, model, params = room_bag
    out = tmp_path / "report"
    rc = main(["-q", "eval", str(tmp / "bag"), "--checkpoint", str(seg), "--out", str(out), "--params-file",
               str(params), "--render-panel", "--model-checkpoint", str(model)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["render_panel"] == str(out / "render_panel.png")
    png = Image.open(out / "render_panel.png")
    assert png.size[0] > png.size[1]  # six columns, three rows
    saved = json.loads((out / "results.json").read_text())["render_panel"]
    assert saved["render_source"] == "gaussians" and [v["frame"] for v in saved["views"]] == [0, 2, 3]
    for v in saved["views"]:
        assert v["coverage"] > 0.3  # the map seen from poses it was fused from
        assert np.isfinite(v["psnr_db"]) and v["depth_l1_m"] is not None and v["voxels_depth_l1_m"] < 0.5
    assert "## Rendered views" in (out / "report.md").read_text()


def test_bag_without_ground_truth_gets_the_panel_only(room_bag, tmp_path, one_torch_thread):
    tmp, seg, model, params = room_bag
    out = tmp_path / "report"
    assert main(["-q", "eval", str(tmp / "bag_no_gt"), "--checkpoint", str(seg), "--out", str(out),
                 "--params-file", str(params)]) == 2  # nothing to score
    rc = main(["-q", "eval", str(tmp / "bag_no_gt"), "--checkpoint", str(seg), "--out", str(out), "--params-file",
               str(params), "--render-panel", "--render-source", "voxels"])
    assert rc == 0
    assert (out / "render_panel.png").stat().st_size > 0
    saved = json.loads((out / "results.json").read_text())["render_panel"]
    assert saved["render_source"] == "voxels" and len(saved["views"]) == 3
