"""The node with an instance-head checkpoint over real DDS: labelled_cloud gains the instance field,
``instances`` carries one box and one label per object, and an object keeps its id when the same map is
segmented again (segment_scope: map, no new frames in between) and when the saved map starts a new node
(initial_map)."""
import json

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from gcross_core.mapping.voxel_keys import pack_keys  # noqa: E402
from gcross_core.mapping.map_io import load_map  # noqa: E402
from gcross_core.model.encoder import SpUNetConfig  # noqa: E402
from gcross_core.segmentation.instance import InstanceConfig  # noqa: E402
from gcross_core.segmentation.model import build_segmenter_checkpoint  # noqa: E402
from gcross_ros.msgs import codec  # noqa: E402
from test_node import (CLASSES, NODE_PARAMS, WAIT_S, Fixture, _params_file, _start_node,  # noqa: E402
                       ros_context, wait_for, wait_ready)
from gcross_ros.node.process import stop_node_process  # noqa: E402
from gcross_ros.node.segment_node import SegmentNode  # noqa: E402

pytestmark = pytest.mark.ros
__all__ = ["ros_context"]  # the module-scoped rclpy context fixture, shared with test_node.py

# every class is instanced and every cluster kept, so the untrained tiny model surely yields objects
INSTANCE = InstanceConfig(stuff_classes=(), cluster_radius_m=0.25, min_points=1, score_threshold=0.0)


def test_instances_and_stable_ids(tmp_path, ros_context):
    ckpt = build_segmenter_checkpoint(tmp_path / "ins.safetensors", CLASSES,
                                      SpUNetConfig(base_channels=8, channels=(8, 8, 8, 8), layers=(1, 1, 1, 1)),
                                      grid_size_m=0.1, instance=INSTANCE)
    params = {**NODE_PARAMS, "segment_scope": "map", "publish_rendered": False}
    log_path = tmp_path / "node.log"
    maps = tmp_path / "maps" / "room"
    proc, log = _start_node(_params_file(tmp_path, checkpoint=str(ckpt), save_map_path=str(maps), **params),
                            log_path)
    fx = Fixture(ros_context)
    arrays = []
    fx._sub(MarkerArray, "instances", arrays, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    try:
        wait_ready(fx, proc, log_path)
        for _ in range(3):
            fx.send(0.0)
        first = wait_for(lambda: fx.latest(fx.clouds), WAIT_S, "a labelled_cloud", proc, log_path)
        assert [f.name for f in first.fields] == ["x", "y", "z", "rgb", "label", "confidence", "instance"]

        def later_cloud():
            msg = fx.latest(fx.clouds)
            return msg if msg is not None and msg is not first else None

        # no new frames: the next cloud comes from segmenting the same map once more
        second = wait_for(later_cloud, WAIT_S, "a second labelled_cloud", proc, log_path)
        a, b = codec.decode_cloud(first), codec.decode_cloud(second)
        assert (a["instance"] > 0).any()
        key_a = {tuple(p): i for p, i in zip(np.stack([a["x"], a["y"], a["z"]], 1).tolist(), a["instance"])}
        same = [(key_a[tuple(p)], i) for p, i in zip(np.stack([b["x"], b["y"], b["z"]], 1).tolist(), b["instance"])
                if tuple(p) in key_a]
        assert len(same) > 100
        assert all(x == y for x, y in same), "an object changed its id between two segmentations of the same map"

        markers = wait_for(lambda: fx.latest(arrays), WAIT_S, "an instances MarkerArray", proc, log_path)
        assert markers.markers[0].action == Marker.DELETEALL
        boxes = [m for m in markers.markers[1:] if m.ns == "boxes"]
        labels = [m for m in markers.markers[1:] if m.ns == "labels"]
        assert boxes and {m.id for m in boxes} == {m.id for m in labels}
        assert {m.id for m in boxes} <= set(int(i) for i in np.unique(b["instance"]) if i > 0)
        assert all(m.header.frame_id == "map" and m.type == Marker.CUBE and m.scale.x > 0 for m in boxes)
        assert all(m.text.split(" #")[0] in CLASSES for m in labels)
        legend = json.loads(wait_for(lambda: fx.latest(fx.legends), WAIT_S, "class_legend", proc, log_path).data)
        assert legend["instance_field"] == "instance" and legend["stuff_classes"] == []

        # the saved map's objects keep their ids in a node that starts from it
        assert fx.call("save_map").success
        saved = load_map(maps)
        assert saved.instance is not None and (saved.instance > 0).any()
        loaded = SegmentNode(context=ros_context, parameter_overrides=[
            Parameter(k, value=v) for k, v in {"checkpoint": str(ckpt), "voxel_size_m": 0.1,
                                               "publish_rendered": False, "initial_map": str(maps)}.items()])
        try:
            ids = loaded.pipeline.tracker.ids_of(pack_keys(saved.voxel_index))
            np.testing.assert_array_equal(np.where(ids > 0, ids, -1), saved.instance)
            assert {o.object_id for o in loaded.pipeline.objects()} == set(saved.instance[saved.instance > 0].tolist())
        finally:
            loaded.destroy_node()
    finally:
        fx.close()
        stop_node_process(proc, log)
