"""The node started on a checkpoint imported from a Pointcept DefaultSegmentorV2 file publishes labels."""
import numpy as np
import pytest

pytest.importorskip("rclpy")
from gcross_core.model.encoder import SpUNetConfig  # noqa: E402
from gcross_core.interop.pointcept import import_pointcept_checkpoint  # noqa: E402
from gcross_ros.msgs import codec  # noqa: E402
from gcross_ros.node.process import stop_node_process  # noqa: E402
from test_node import (CLASSES, NODE_PARAMS, WAIT_S, Fixture, _params_file, _start_node, ros_context,  # noqa: E402
                       wait_for, wait_ready)

pytestmark = pytest.mark.ros
__all__ = ["ros_context"]  # the module-scoped fixture, shared with test_node.py


def test_node_segments_with_an_imported_pointcept_segmentor(tmp_path, ros_context, pointcept_pth):
    cfg = SpUNetConfig(base_channels=8, channels=(8, 8, 8, 8), layers=(1, 1, 1, 1))
    src, _ = pointcept_pth(tmp_path / "model_best.pth", "DefaultSegmentorV2", cfg, num_classes=len(CLASSES))
    ckpt = tmp_path / "imported.safetensors"
    # grid_size_m = the tests' voxel_size_m, as for the node tests' own checkpoint
    import_pointcept_checkpoint(src, ckpt, class_names=CLASSES, grid_size_m=NODE_PARAMS["voxel_size_m"])
    params_file = _params_file(tmp_path, checkpoint=str(ckpt), **{**NODE_PARAMS, "publish_rendered": False})
    log_path = tmp_path / "node.log"
    proc, log = _start_node(params_file, log_path)
    fx = Fixture(ros_context)
    try:
        wait_ready(fx, proc, log_path)

        def labelled():
            fx.send(0.0)
            msg = fx.latest(fx.clouds)
            return msg if msg is not None and msg.width * msg.height > 100 else None

        msg = wait_for(labelled, WAIT_S, "a labelled_cloud from the imported segmenter", proc, log_path)
        pts = codec.decode_cloud(msg)
        assert pts["label"].max() < len(CLASSES)
        assert np.all(np.isfinite(pts["confidence"])) and pts["confidence"].min() >= 1.0 / len(CLASSES) - 1e-6
        assert proc.poll() is None, "the node exited"
    finally:
        fx.close()
        stop_node_process(proc, log)
