"""The node with render_source gaussians over real DDS: rendered/color, depth and features come from a
GaussianCross model's Gaussians of the visible map (fixtures and helpers of test_node.py)."""
import numpy as np
import pytest

pytest.importorskip("rclpy")
import torch  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402

from gcross_core.config import from_dict  # noqa: E402
from gcross_core.model.api import save_model  # noqa: E402
from gcross_core.model.gaussiancross import GaussianCross, GaussianCrossConfig  # noqa: E402
from gcross_ros.msgs import codec  # noqa: E402
from gcross_ros.node.params import SegmentNodeParams  # noqa: E402
from test_node import (NODE_PARAMS, WAIT_S, Fixture, _params_file, _start_node, _tiny_checkpoint,  # noqa: E402
                       rendered_depths, ros_context, stop_node_process, wait_for, wait_ready)

pytestmark = pytest.mark.ros
__all__ = ["ros_context"]  # the module-scoped rclpy context fixture, shared with test_node.py

MODEL = {"encoder": {"base_channels": 8, "channels": [8, 8, 8, 8], "layers": [1, 1, 1, 1]},
         "head": {"grid": [16, 16, 8], "dense_channels": 8, "dense_blocks": 1, "head_hidden": 8, "feature_dim": 4},
         "grid_size_m": 0.1}


def test_gaussians_render_source_publishes_color_depth_and_features(tmp_path, ros_context):
    torch.manual_seed(0)
    model = save_model(tmp_path / "gaussiancross.safetensors", GaussianCross(from_dict(GaussianCrossConfig, MODEL)))
    params_file = _params_file(tmp_path, checkpoint=str(_tiny_checkpoint(tmp_path / "tiny.safetensors")),
                               render_source="gaussians", model_checkpoint=str(model), **NODE_PARAMS)
    log_path = tmp_path / "node.log"
    proc, log = _start_node(params_file, log_path)
    fx = Fixture(ros_context)
    fx.rendered["features"] = []
    fx._sub(Image, "rendered/features", fx.rendered["features"],
            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    try:
        wait_ready(fx, proc, log_path)

        def features_seen():
            fx.send(0.0)
            msg = fx.latest(fx.rendered["features"])
            return msg if msg is not None and codec.decode_image(msg).any() else None

        wait_for(features_seen, WAIT_S, "a non-empty rendered/features", proc, log_path)
        depth, seen = rendered_depths(fx, (("color", "rgb8"), ("depth", "32FC1"), ("semantic", "rgb8"),
                                           ("features", "rgb8")), proc, log_path)
        # the model's Gaussians of a wall 2 m away (a box at 1.5 m): an untrained model, so loosely
        assert 1.0 < np.median(seen) < 2.6
        features = codec.decode_image(fx.latest(fx.rendered["features"]))
        assert features[np.isfinite(depth)].any() and not features[~np.isfinite(depth)].any()
        wait_for(lambda: fx.diag().get("renders_published", 0) >= 1, WAIT_S, "renders counted in diagnostics",
                 proc, log_path)
        assert proc.poll() is None
    finally:
        fx.close()
        stop_node_process(proc, log)


def test_render_source_is_validated(tmp_path):
    with pytest.raises(ValueError, match="render_source 'splat'"):
        SegmentNodeParams(render_source="splat").validate()
    with pytest.raises(ValueError, match="model_checkpoint"):
        SegmentNodeParams(render_source="gaussians", model_checkpoint=str(tmp_path / "none.safetensors")).validate()
