"""The segmentation node over real DDS: a subprocess started with a params file, fed by a fixture publisher.

One node process serves the module's tests (starting one takes seconds); every bad-input test checks
that the node counts the drop under the right reason and then goes on fusing good frames. Parameters,
the YAML config, the launch file and the RViz config are checked here too.
"""
import ast
import json
import math
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rcl_interfaces.srv import GetParameters, SetParameters  # noqa: E402
from rclpy.parameter import Parameter, parameter_value_to_python  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402

from gcross_core.model.encoder import SpUNetConfig  # noqa: E402
from gcross_core.evaluation.report import class_palette  # noqa: E402
from gcross_core.mapping.map_io import load_map  # noqa: E402
from gcross_core.segmentation.model import build_segmenter_checkpoint  # noqa: E402
from gcross_ros.msgs import codec  # noqa: E402
from gcross_ros.msgs import rclpy_msgs as cv  # noqa: E402
from gcross_ros.node.process import start_node_process, stop_node_process  # noqa: E402
from gcross_ros.node.params import RUNTIME_PARAMETERS, SegmentNodeParams, declare_parameters  # noqa: E402

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[3]
CLASSES = ["floor", "wall", "chair", "table", "other"]
W, H = 32, 24
K = np.array([[20.0, 0, 15.5], [0, 20.0, 11.5], [0, 0, 1]])
RENDER_W, RENDER_H = 40, 30
QUEUE = 4
SYNC_QUEUE = max(QUEUE, 5)  # the node raises queue_size to its deepest input queue (sensor-data QoS keeps 5)
RED = np.array([200, 30, 30], np.uint8)
NODE_PARAMS = dict(map_frame="map", pose_source="topic", sync_slop_s=0.01, queue_size=QUEUE, voxel_size_m=0.1,
                   max_voxels=50_000, segment_period_s=0.5, render_period_s=0.5, render_width=RENDER_W,
                   render_height=RENDER_H, pose_tolerance_s=0.02, pose_wait_s=0.3, diagnostics_period_s=0.2,
                   warn_throttle_s=0.5, torch_threads=1)
STARTUP_S = 90.0  # importing torch and spconv on a loaded 2-core machine
WAIT_S = 20.0


def _tiny_checkpoint(path):
    # grid_size_m = the tests' voxel_size_m, so the encoder sees the map at its own density
    return build_segmenter_checkpoint(path, CLASSES, SpUNetConfig(base_channels=8, channels=(8, 8, 8, 8),
                                                                  layers=(1, 1, 1, 1)), grid_size_m=0.1)


def _params_file(tmp, **params):
    path = Path(tmp) / "params.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
    return path


def _start_node(params_file, log_path):
    return start_node_process(params_file, log_path, cwd=REPO)


def _wall_frame(x_offset_m):
    """A textured wall 2 m in front of a camera at x = x_offset_m looking along +z, with a box at 1.5 m."""
    v, u = np.mgrid[0:H, 0:W]
    depth_m = np.full((H, W), 2.0, np.float32)
    depth_m[8:16, 10:20] = 1.5
    rgb = np.empty((H, W, 3), np.uint8)
    rgb[:] = RED
    rgb[..., 1] += (u * 2).astype(np.uint8)  # a little texture, red stays dominant
    cam_to_map = np.eye(4)
    cam_to_map[0, 3] = x_offset_m
    return rgb, depth_m, cam_to_map


class Fixture:
    """Publishes synthetic RGB-D frames and records what the node publishes."""

    def __init__(self, context, node_name="gcross_segment"):
        self.node = rclpy.create_node("gcross_test_fixture", context=context)
        self.services = {name: self.node.create_client(srv, f"/{node_name}/{name}") for name, srv in (
            ("save_map", Trigger), ("reset_map", Trigger), ("segment_now", Trigger),
            ("pause_integration", SetBool), ("set_parameters", SetParameters),
            ("get_parameters", GetParameters))}
        self.lock = threading.Lock()
        self.clouds, self.diags, self.legends = [], [], []
        self.rendered = {"color": [], "depth": [], "semantic": []}
        self.stamp_ns = 1_000 * 10**9
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.pub_color = self.node.create_publisher(Image, "color/image_raw", reliable)
        self.pub_depth = self.node.create_publisher(Image, "depth/image_raw", reliable)
        self.pub_info = self.node.create_publisher(CameraInfo, "color/camera_info", reliable)
        self.pub_pose = self.node.create_publisher(PoseStamped, "pose", reliable)
        self._sub(PointCloud2, "labelled_cloud", self.clouds, reliable)
        self._sub(DiagnosticArray, "diagnostics", self.diags, 10)
        for name, store in self.rendered.items():
            self._sub(Image, f"rendered/{name}", store, reliable)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._sub(String, "class_legend", self.legends, latched)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _sub(self, msg_type, topic, store, qos):
        def keep(msg):
            with self.lock:
                store.append(msg)
                del store[:-5]  # only the latest few matter
        self.node.create_subscription(msg_type, topic, keep, qos)

    def latest(self, store):
        with self.lock:
            return store[-1] if store else None

    def diag(self):
        msg = self.latest(self.diags)
        if msg is None:
            return {}
        return {kv.key: float(kv.value) for kv in msg.status[0].values}

    def statuses(self):
        """(level, message) of the diagnostics kept (the latest few)."""
        with self.lock:
            return [(int.from_bytes(m.status[0].level, "little") if isinstance(m.status[0].level, bytes)
                     else int(m.status[0].level), m.status[0].message) for m in self.diags]

    def call(self, name, data=None, timeout_s=WAIT_S, **fields):
        """Call one of the node's services; returns the response (success, message)."""
        client = self.services[name]
        assert client.wait_for_service(timeout_sec=timeout_s), f"service {name} is not offered"
        request = client.srv_type.Request(**fields)
        if data is not None:
            request.data = data
        future = client.call_async(request)
        deadline = time.monotonic() + timeout_s
        while not future.done():
            assert time.monotonic() < deadline, f"service {name} did not answer in {timeout_s} s"
            time.sleep(0.02)
        return future.result()

    def set_params(self, **values):
        """``ros2 param set`` over the node's parameter service; one SetParametersResult per value."""
        request = [Parameter(name, value=value).to_parameter_msg() for name, value in values.items()]
        return self.call("set_parameters", parameters=request).results

    def get_param(self, name):
        return parameter_value_to_python(self.call("get_parameters", names=[name]).values[0])

    def next_stamp(self):
        self.stamp_ns += 100_000_000
        return self.stamp_ns

    def send(self, x_offset_m=0.0, color_encoding="rgb8", depth_encoding="16UC1", stamp_ns=None, pose=True,
             info=True, rgb=None, depth_m=None, color_msg=None, depth_msg=None):
        stamp = self.next_stamp() if stamp_ns is None else stamp_ns
        rgb0, depth0, cam_to_map = _wall_frame(x_offset_m)
        rgb = rgb0 if rgb is None else rgb
        depth_m = depth0 if depth_m is None else depth_m
        if pose:
            self.pub_pose.publish(cv.pose_stamped(cam_to_map, stamp, "map"))
        if info:
            self.pub_info.publish(cv.make_camera_info(K, W, H, stamp, "camera_optical"))
        if depth_msg is None:
            depth_px = (np.round(depth_m * 1000).astype(np.uint16) if depth_encoding == "16UC1" else depth_m)
            depth_msg = cv.numpy_to_image(depth_px, depth_encoding, stamp, "camera_optical")
        depth_msg.header = cv.make_header(stamp, "camera_optical")
        self.pub_depth.publish(depth_msg)
        if color_msg is None:
            px = np.ascontiguousarray(rgb[:, :, ::-1]) if color_encoding == "bgr8" else rgb
            color_msg = cv.numpy_to_image(px, color_encoding, stamp, "camera_optical")
        color_msg.header = cv.make_header(stamp, "camera_optical")
        self.pub_color.publish(color_msg)
        time.sleep(0.03)  # a camera's pace; keeps the node's best-effort queues from overflowing
        return stamp

    def close(self):
        self.executor.shutdown(timeout_sec=10.0)  # bounded: a spin that missed the shutdown must not hang the run
        self.thread.join(timeout=10.0)
        self.node.destroy_node()


def wait_for(predicate, timeout_s=WAIT_S, what="condition", proc=None, log_path=None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = Path(log_path).read_text()[-3000:] if log_path else ""
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\nnode log tail:\n{tail}")


def wait_ready(fx, proc, log_path):
    """Until the started node publishes diagnostics and subscribes to every input the fixture sends."""
    wait_for(lambda: fx.diag(), STARTUP_S, "the node's first diagnostics", proc, log_path)
    wait_for(lambda: all(p.get_subscription_count() > 0 for p in
                         (fx.pub_color, fx.pub_depth, fx.pub_info, fx.pub_pose)),
             WAIT_S, "the node's subscriptions", proc, log_path)


def rendered_depths(fx, encodings, proc, log_path):
    """Waits for each rendered/<name> of ``encodings`` ((name, encoding) pairs), checks its size, encoding
    and frame; returns the rendered depth image and its finite values (at least a quarter of the pixels)."""
    for name, enc in encodings:
        img = wait_for(lambda: fx.latest(fx.rendered[name]), WAIT_S, f"rendered/{name}", proc, log_path)
        assert (img.width, img.height, img.encoding) == (RENDER_W, RENDER_H, enc)
        assert img.header.frame_id == "camera_optical"
    depth = codec.decode_image(fx.latest(fx.rendered["depth"]))
    seen = depth[np.isfinite(depth)]
    assert seen.size > RENDER_W * RENDER_H // 4
    return depth, seen


@pytest.fixture(scope="module")
def ros_context():
    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.try_shutdown(context=context)


@pytest.fixture(scope="module")
def running(tmp_path_factory, ros_context):
    tmp = tmp_path_factory.mktemp("node")
    ckpt = _tiny_checkpoint(tmp / "tiny.safetensors")
    params_file = _params_file(tmp, checkpoint=str(ckpt), save_map_path=str(tmp / "maps" / "room"), **NODE_PARAMS)
    log_path = tmp / "node.log"
    proc, log = _start_node(params_file, log_path)
    fx = Fixture(ros_context)
    fx.tmp, fx.checkpoint = tmp, ckpt
    try:
        wait_ready(fx, proc, log_path)
        yield fx, proc, log_path
    finally:
        fx.close()
        rc = stop_node_process(proc, log)
    out = log_path.read_text()
    # SIGTERM: the workers stop before the context goes, so nothing fails on the way out
    assert rc == 0 and "failed" not in out and "Traceback" not in out, out[-3000:]


def _fused_after(fx, proc, log_path, before, x_offset_m=0.0, frames=3):
    """Send good frames until the node has fused more than ``before`` frames."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        fx.send(x_offset_m)
        if fx.diag().get("frames_fused", 0) > before:
            return
        time.sleep(0.1)
    wait_for(lambda: fx.diag().get("frames_fused", 0) > before, 2.0, "good frames to be fused again",
             proc, log_path)


def _check_drop_then_recovery(running, reason, send_bad):
    fx, proc, log_path = running
    start = fx.diag()
    send_bad(fx)
    wait_for(lambda: fx.diag().get(f"dropped.{reason}", 0) > start.get(f"dropped.{reason}", 0), WAIT_S,
             f"a frame dropped as {reason}", proc, log_path)
    fused = fx.diag().get("frames_fused", 0)
    _fused_after(fx, proc, log_path, fused)
    assert proc.poll() is None, "the node exited"


# ---------------------------------------------------------------- good input

def test_labelled_cloud_rendered_views_and_legend(running):
    fx, proc, log_path = running
    for _ in range(3):
        fx.send(0.0, "rgb8", "16UC1")
        fx.send(20.0, "bgr8", "32FC1")

    def both_regions():
        msg = fx.latest(fx.clouds)
        if msg is None:
            return None
        pts = codec.decode_cloud(msg)
        return msg if (pts["x"] < 10).any() and (pts["x"] > 10).any() else None

    msg = wait_for(both_regions, WAIT_S, "a labelled_cloud covering both frames", proc, log_path)
    assert msg.header.frame_id == "map"
    # a semantic-only checkpoint: no instance field, no instances topic
    assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb", "label", "confidence"]
    assert fx.node.count_publishers("/instances") == 0
    pts = codec.decode_cloud(msg)
    assert len(pts) > 100
    assert pts["label"].max() < len(CLASSES)
    assert np.all((pts["confidence"] >= 1.0 / len(CLASSES) - 1e-6) & (pts["confidence"] <= 1.0 + 1e-6))
    # the wall is 2 m in front of the camera, the box 1.5 m: the fused points must lie there
    assert np.all((pts["z"] > 1.3) & (pts["z"] < 2.2))
    rgb = codec.unpack_rgb(pts["rgb"]).astype(int)
    for region in (pts["x"] < 10, pts["x"] > 10):  # rgb8 and bgr8 inputs both come out red
        mean = rgb[region].mean(0)
        assert mean[0] > 150 and mean[2] < 60, f"colour {mean} is not the red that was sent"

    _, seen = rendered_depths(fx, (("color", "rgb8"), ("depth", "32FC1"), ("semantic", "rgb8")), proc, log_path)
    assert 1.2 < np.median(seen) < 2.3
    color = codec.decode_image(fx.latest(fx.rendered["color"])).astype(int)
    assert color[..., 0].mean() > 2 * color[..., 2].mean()
    semantic = wait_for(lambda: (lambda m: m if m is not None and codec.decode_image(m).any() else None)(
        fx.latest(fx.rendered["semantic"])), WAIT_S, "a labelled rendered/semantic", proc, log_path)
    palette = class_palette(len(CLASSES))
    colors = {tuple(c) for c in codec.decode_image(semantic).reshape(-1, 3)} - {(0, 0, 0)}
    assert colors and colors <= {tuple(c) for c in palette}

    legend = wait_for(lambda: fx.latest(fx.legends), WAIT_S, "class_legend", proc, log_path)
    classes = json.loads(legend.data)["classes"]
    assert [c["name"] for c in classes] == CLASSES
    assert [c["color"] for c in classes] == palette.tolist()

    d = fx.diag()
    for key in ("frames_in", "frames_fused", "fusion_ms_last", "segmentation_ms", "map_voxels", "latency_ms"):
        assert key in d, f"diagnostics lack {key}: {sorted(d)}"
    assert d["frames_fused"] >= 2 and d["map_voxels"] > 100


# ---------------------------------------------------------------- bad input: dropped, then still serving

def test_unsupported_encoding(running):
    def bad(fx):
        rgba = np.zeros((H, W, 4), np.uint8)
        msg = Image(height=H, width=W, encoding="rgba8", step=4 * W)
        msg.data = rgba.tobytes()
        fx.send(color_msg=msg)
    _check_drop_then_recovery(running, "unsupported_encoding", bad)


def test_color_depth_size_mismatch(running):
    def bad(fx):
        fx.send(depth_msg=cv.numpy_to_image(np.full((H // 2, W // 2), 2000, np.uint16), "16UC1"))
    _check_drop_then_recovery(running, "size_mismatch", bad)


def test_all_invalid_depth(running):
    def bad(fx):
        fx.send(depth_m=np.zeros((H, W), np.float32), depth_encoding="32FC1")
        fx.send(depth_m=np.full((H, W), np.nan, np.float32), depth_encoding="32FC1")
    _check_drop_then_recovery(running, "no_valid_depth", bad)


def test_missing_camera_info(running):
    def bad(fx):
        for _ in range(SYNC_QUEUE + 2):  # overflows the synchronizer's colour queue
            fx.send(info=False)
    _check_drop_then_recovery(running, "no_camera_info", bad)


def test_no_pose_for_stamp(running):
    _check_drop_then_recovery(running, "no_pose", lambda fx: fx.send(pose=False))


def test_out_of_order_stamps(running):
    def bad(fx):
        fx.send()
        fx.send(stamp_ns=fx.stamp_ns - 250_000_000)
    _check_drop_then_recovery(running, "out_of_order", bad)


def _image_with_data(rgb, data_len=None, step=None):
    """An rgb8 Image of ``rgb`` whose data is cut or padded to ``data_len`` bytes, with ``step`` as given."""
    h, w = rgb.shape[:2]
    msg = Image(height=h, width=w, encoding="rgb8", step=3 * w if step is None else step)
    data = rgb.tobytes()
    data_len = len(data) if data_len is None else data_len
    msg.data = (data + b"\x00" * max(0, data_len - len(data)))[:data_len]
    return msg


@pytest.mark.parametrize("case", ["short", "step_below_row", "rows_beyond_height"])
def test_malformed_buffers(running, case):
    rgb = _wall_frame(0.0)[0]
    size = W * H * 3
    bad = {"short": lambda: _image_with_data(rgb, size - 10),
           "step_below_row": lambda: _image_with_data(rgb, step=3 * W - 3),
           "rows_beyond_height": lambda: _image_with_data(rgb, size + 2 * 3 * W)}[case]
    _check_drop_then_recovery(running, "malformed_image", lambda fx: fx.send(color_msg=bad()))


def test_trailing_padding_shorter_than_a_row_is_accepted(running):
    fx, proc, log_path = running
    before = fx.diag()
    rgb = _wall_frame(0.0)[0]
    for _ in range(3):
        fx.send(color_msg=_image_with_data(rgb, W * H * 3 + 7))
    wait_for(lambda: fx.diag().get("frames_fused", 0) >= before.get("frames_fused", 0) + 2, WAIT_S,
             "frames with trailing padding to be fused", proc, log_path)
    assert fx.diag().get("dropped.malformed_image", 0) == before.get("dropped.malformed_image", 0)


def test_frames_never_sent_are_not_losses_and_a_skipped_sequence_number_is(running):
    """Stamps that skip ahead while every message arrives are not losses: DDS sequence numbers say so."""
    fx, proc, log_path = running
    start = fx.diag()
    for _ in range(4):  # a steady 10 Hz stream
        fx.send()
    # diagnostics come every 0.2 s: count from a report that has seen the stream's last frame (a frame the
    # transport lost on the way counts as lost there, not after the gap)
    seen = start.get("frames_in", 0) + start.get("frames_lost", 0) + 4
    before = wait_for(lambda: (lambda d: d if d.get("frames_in", 0) + d.get("frames_lost", 0) >= seen else None)(
        fx.diag()), WAIT_S, "the steady stream in diagnostics", proc, log_path)
    fx.stamp_ns += 5 * 100_000_000  # five stamps skipped, but every message published arrives
    fx.send()
    d = wait_for(lambda: (lambda d: d if d.get("frames_in", 0) >= before["frames_in"] + 1 else None)(fx.diag()),
                 WAIT_S, "the frame after the gap in diagnostics", proc, log_path)
    assert d["arrivals.exact"] == 1 and d["frames_lost"] == before.get("frames_lost", 0)
    assert d["frames_in"] == d["frames_fused"] + d["frames_dropped"] + d["frames_waiting"]


def test_time_jump_back_resets_inputs_once_and_keeps_the_map(running):
    fx, proc, log_path = running
    _fused_after(fx, proc, log_path, fx.diag().get("frames_fused", 0))
    start = fx.diag()
    log_before = Path(log_path).read_text().count("time jumped back by")
    fx.stamp_ns -= 30 * 10**9  # the bag starts again
    fx.send(0.0)
    # diagnostics come every 0.2 s: wait for the jump itself, not for a count a frame before it may have raised
    wait_for(lambda: fx.diag().get("time_jumps", 0) > start.get("time_jumps", 0), WAIT_S, "the time jump",
             proc, log_path)
    _fused_after(fx, proc, log_path, fx.diag()["frames_fused"], x_offset_m=0.0)
    d = fx.diag()
    assert d["time_jumps"] == start.get("time_jumps", 0) + 1
    assert d["map_voxels"] >= start["map_voxels"]  # reset_map_on_time_jump is false: the map is kept
    out = Path(log_path).read_text()
    lines = [line for line in out.splitlines() if "time jumped back by" in line]
    assert len(lines) == log_before + 1, out[-3000:]
    assert "jumped back by 29.9 s" in lines[-1] and "map kept" in lines[-1]  # 30 s less the next frame's 0.1 s


def test_no_render_while_idle(running):
    fx, proc, log_path = running
    _fused_after(fx, proc, log_path, fx.diag().get("frames_fused", 0))
    before = fx.diag().get("renders_published", 0)
    wait_for(lambda: fx.diag().get("renders_published", 0) > before, WAIT_S, "a render of the new frame",
             proc, log_path)
    time.sleep(2.0)  # the last segmentation and its render
    d0 = fx.diag()
    time.sleep(2.5)  # five render periods
    d1 = fx.diag()
    new_clouds = d1.get("clouds_published", 0) - d0.get("clouds_published", 0)
    # renders follow map changes (a segmentation that updated labels), never the clock
    assert d1["renders_published"] - d0["renders_published"] <= new_clouds + 1, (d0, d1)


# ---------------------------------------------------------------- services

def test_segment_now_save_pause_and_reset(running):
    fx, proc, log_path = running
    _fused_after(fx, proc, log_path, fx.diag().get("frames_fused", 0))
    answer = fx.call("segment_now")
    assert answer.success and "segmented" in answer.message, answer.message
    assert fx.diag()["map_voxels"] > 0 or wait_for(lambda: fx.diag()["map_voxels"] > 0, WAIT_S, "map voxels")

    answer = fx.call("save_map")
    path = fx.tmp / "maps" / "room"
    assert answer.success and str(path) in answer.message, answer.message
    saved = load_map(path)
    assert len(saved) > 100 and (saved.label >= 0).any() and saved.class_names == tuple(CLASSES)
    assert saved.voxel_size_m == pytest.approx(NODE_PARAMS["voxel_size_m"])

    answer = fx.call("pause_integration", True)
    assert answer.success and "paused" in answer.message
    d = wait_for(lambda: (lambda d: d if d.get("integration_paused") == 1 else None)(fx.diag()), WAIT_S,
                 "integration_paused in diagnostics")
    voxels, fused = d["map_voxels"], d["frames_fused"]
    renders = d.get("renders_published", 0)
    for _ in range(3):
        fx.send(50.0)  # a place never seen: fusing it would grow the map
    wait_for(lambda: fx.diag().get("dropped.integration_paused", 0) >= d.get("dropped.integration_paused", 0) + 2,
             WAIT_S, "frames received while paused", proc, log_path)
    wait_for(lambda: fx.diag().get("renders_published", 0) > renders, WAIT_S, "a render at the new pose",
             proc, log_path)
    d = fx.diag()
    assert d["map_voxels"] == voxels and d["frames_fused"] == fused
    assert fx.call("pause_integration", False).success
    _fused_after(fx, proc, log_path, fused, x_offset_m=50.0)

    answer = fx.call("reset_map")
    assert answer.success and "cleared" in answer.message
    wait_for(lambda: fx.latest(fx.clouds) is not None and fx.latest(fx.clouds).width == 0, WAIT_S,
             "an empty labelled_cloud after the reset", proc, log_path)
    # fusion goes on in the empty map
    _fused_after(fx, proc, log_path, fx.diag()["frames_fused"])
    assert proc.poll() is None


def test_save_map_failure_is_answered_and_the_node_keeps_fusing(running):
    fx, proc, log_path = running
    _fused_after(fx, proc, log_path, fx.diag().get("frames_fused", 0))
    maps = fx.tmp / "maps"
    maps.mkdir(exist_ok=True)
    moved = fx.tmp / "maps_aside"
    maps.rename(moved)
    maps.write_text("a file where the map folder's parent should be")  # even root cannot write below a file
    try:
        answer = fx.call("save_map")
    finally:
        maps.unlink()
        moved.rename(maps)
    assert not answer.success
    assert answer.message.startswith(f"cannot save the map to {maps / 'room'}: "), answer.message
    assert proc.poll() is None
    _fused_after(fx, proc, log_path, fx.diag()["frames_fused"])
    assert fx.call("save_map").success  # and saves again once the folder is writable


def test_initial_map_starts_from_a_saved_map(running, ros_context, tmp_path):
    """save -> reset -> a node started with initial_map holds the saved map; another voxel size is refused."""
    from gcross_core.errors import InputError
    from gcross_core.mapping.voxel_keys import unpack_keys
    from gcross_ros.node import segment_node as sn

    fx, proc, log_path = running
    _fused_after(fx, proc, log_path, fx.diag().get("frames_fused", 0))
    assert fx.call("segment_now").success
    assert fx.call("save_map").success
    saved = load_map(fx.tmp / "maps" / "room")
    assert fx.call("reset_map").success

    def node(**params):
        overrides = {"checkpoint": str(fx.checkpoint), "voxel_size_m": 0.1, "publish_rendered": False,
                     "initial_map": str(fx.tmp / "maps" / "room"), **params}
        return sn.SegmentNode(context=ros_context, parameter_overrides=[Parameter(k, value=v)
                                                                         for k, v in overrides.items()])

    loaded = node()
    try:
        snap = loaded.pipeline.map.snapshot()
        assert len(snap) == len(saved)
        order = np.lexsort(saved.voxel_index.T)
        mine = np.lexsort(unpack_keys(snap.keys).T)
        np.testing.assert_array_equal(snap.coords[mine], saved.coord[order])
        np.testing.assert_array_equal(snap.labels[mine], saved.label[order])
        np.testing.assert_allclose(snap.confidence[mine], saved.confidence[order], atol=1e-6)
        np.testing.assert_array_equal(np.rint(snap.colors[mine]), saved.color[order])
    finally:
        loaded.destroy_node()
    with pytest.raises(InputError, match="voxel_size_m=0.1, this map uses 0.2: set voxel_size_m to 0.1"):
        node(voxel_size_m=0.2)


# ---------------------------------------------------------------- start-up failures

@pytest.mark.parametrize("case", ["missing", "corrupt"])
def test_bad_checkpoint_fails_at_start(tmp_path, case):
    ckpt = tmp_path / "model.safetensors"
    if case == "corrupt":
        ckpt.write_bytes(b"\x00\x01 definitely not safetensors" * 10)
    params_file = _params_file(tmp_path, checkpoint=str(ckpt), **NODE_PARAMS)
    log_path = tmp_path / "node.log"
    proc, log = _start_node(params_file, log_path)
    try:
        rc = proc.wait(timeout=STARTUP_S)
    finally:
        stop_node_process(proc, log)
    out = log_path.read_text()
    assert rc != 0, out
    assert "cannot start" in out and str(ckpt) in out, out
    assert "Traceback" not in out, out


@pytest.mark.parametrize("case", ["cuda", "tf"])
def test_unavailable_device_or_tf_fails_with_one_fatal_line(tmp_path, case):
    if case == "cuda":
        torch = pytest.importorskip("torch")
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        params, expected = {"device": "cuda"}, "cannot start: device 'cuda': this machine has no usable CUDA device"
        advice = "set device:=cpu"
    else:
        try:
            import tf2_ros  # noqa: F401
            pytest.skip("tf2_ros is installed here")
        except ImportError:
            pass
        params, expected = {"pose_source": "tf"}, "cannot start: pose_source 'tf' needs the tf2_ros Python package"
        advice = "set pose_source:=topic"
    ckpt = _tiny_checkpoint(tmp_path / "tiny.safetensors")
    params_file = _params_file(tmp_path, checkpoint=str(ckpt), **{**NODE_PARAMS, **params})
    log_path = tmp_path / "node.log"
    proc, log = _start_node(params_file, log_path)
    try:
        rc = proc.wait(timeout=STARTUP_S)
    finally:
        stop_node_process(proc, log)
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    assert rc == 1, lines
    assert len(lines) == 1 and lines[0].startswith("[FATAL]"), lines  # no second traceback, nothing else
    assert expected in lines[0] and advice in lines[0], lines[0]


# ---------------------------------------------------------------- parameters and configuration

def test_params_coerce_and_validate(tmp_path):
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"x")
    p = SegmentNodeParams.from_dict({"checkpoint": str(ckpt), "segment_period_s": 1, "queue_size": 3}).validate()
    assert p.pipeline.segment_period_s == 1.0 and isinstance(p.pipeline.segment_period_s, float)
    assert p.assembly.queue_size == 3 and p.flat()["queue_size"] == 3
    with pytest.raises(ValueError, match="queue_size must be an integer"):
        SegmentNodeParams.from_dict({"queue_size": 2.5})
    with pytest.raises(ValueError, match="unknown parameters \\['voxel_size'\\]"):
        SegmentNodeParams.from_dict({"voxel_size": 0.1})
    demo = SegmentNodeParams().validate()  # empty checkpoint: the bundled demo segmenter, which must exist
    assert Path(demo.checkpoint_path).is_file() and demo.checkpoint_path.endswith(".safetensors")
    with pytest.raises(ValueError, match="does not exist"):
        SegmentNodeParams(checkpoint=str(tmp_path / "nope")).validate()
    bad = dict(checkpoint=str(ckpt), pose_source="odom", device="gpu", render_width=0)
    with pytest.raises(ValueError) as err:
        SegmentNodeParams(**bad).validate()
    for name in ("pose_source 'odom'", "device 'gpu'", "render_width"):
        assert name in str(err.value)
    for name, value in (("sync_slop_s", -1.0), ("max_voxels", 0), ("segment_scope", "room")):
        with pytest.raises(ValueError, match=name):  # the assembly's and the pipeline's own checks
            SegmentNodeParams.from_dict({name: value})
    assert SegmentNodeParams(checkpoint=str(ckpt), render_up="0, 0, 2").validate().render_up_vector == (0, 0, 1)
    assert SegmentNodeParams().render_up_vector is None  # cameras
    for up in ("plane", "1,2", "0,0,0"):
        with pytest.raises(ValueError, match="render_up"):
            SegmentNodeParams(checkpoint=str(ckpt), render_up=up).validate()
    # max_depth_m is one parameter for both the assembly and the pipeline
    both = SegmentNodeParams.from_dict({"max_depth_m": 3})
    assert both.assembly.max_depth_m == both.pipeline.max_depth_m == 3.0


def test_parameters_set_at_run_time_apply_at_once_or_are_refused_with_the_reason(running):
    fx, proc, log_path = running
    _fused_after(fx, proc, log_path, fx.diag().get("frames_fused", 0))
    # invalid: refused with the reason, the old value kept; a read-only parameter: refused
    (bad,) = fx.set_params(segment_period_s=-1.0)
    assert not bad.successful and re.search(r"segment_period_s must be >=? 0, got -1.0", bad.reason)
    (zero,) = fx.set_params(segment_period_s=0.0)  # the node's own rule: its worker needs a pause
    assert not zero.successful and "segment_period_s must be > 0, got 0.0" in zero.reason
    (bad_scope,) = fx.set_params(segment_scope="room")
    assert not bad_scope.successful and "segment_scope 'room'" in bad_scope.reason
    assert fx.get_param("segment_period_s") == NODE_PARAMS["segment_period_s"]
    (fixed,) = fx.set_params(voxel_size_m=0.2)
    assert not fixed.successful and fx.get_param("voxel_size_m") == NODE_PARAMS["voxel_size_m"]
    (rclpys,) = fx.set_params(use_sim_time=False)  # rclpy's own parameters stay rclpy's to set
    assert rclpys.successful
    try:
        # a long period: no cloud while frames keep being fused, then a short one: clouds again
        (ok,) = fx.set_params(segment_period_s=1000)  # an integer for a float parameter, as in YAML
        assert ok.successful and fx.get_param("segment_period_s") == 1000
        time.sleep(2.0)  # a segmentation under way when the period changed still publishes
        d0 = fx.diag()
        for i in range(20):
            fx.send(0.05 * (i % 4))
        time.sleep(1.0)
        d1 = fx.diag()
        assert d1["frames_fused"] > d0["frames_fused"] + 5, (d0, d1)
        assert d1.get("clouds_published", 0) == d0.get("clouds_published", 0), (d0, d1)
        assert fx.set_params(segment_period_s=0.2)[0].successful
        wait_for(lambda: fx.diag().get("clouds_published", 0) > d1.get("clouds_published", 0), WAIT_S,
                 "a cloud once the period is short again", proc, log_path)
        # the depth range applies to the frames' checks: nothing within 1 m, so every frame is dropped
        assert fx.set_params(max_depth_m=1.0)[0].successful
        _check_drop_then_recovery_after(fx, proc, log_path, "no_valid_depth",
                                        lambda: fx.set_params(max_depth_m=NODE_PARAMS.get("max_depth_m", 5.0)))
    finally:
        fx.set_params(segment_period_s=NODE_PARAMS["segment_period_s"], max_depth_m=5.0)
    assert proc.poll() is None


def _check_drop_then_recovery_after(fx, proc, log_path, reason, restore):
    before = fx.diag().get(f"dropped.{reason}", 0)
    deadline = time.monotonic() + WAIT_S
    while fx.diag().get(f"dropped.{reason}", 0) <= before and time.monotonic() < deadline:
        fx.send()
        time.sleep(0.1)
    assert fx.diag().get(f"dropped.{reason}", 0) > before, f"no frame dropped as {reason}"
    assert all(r.successful for r in restore())
    _fused_after(fx, proc, log_path, fx.diag().get("frames_fused", 0))


def test_rendering_turned_off_and_on_at_run_time(running):
    fx, proc, log_path = running
    try:
        assert fx.set_params(publish_rendered=False)[0].successful
        time.sleep(1.5)  # a render under way finishes
        before = fx.diag().get("renders_published", 0)
        for i in range(10):
            fx.send(0.1 * i)
        time.sleep(1.5)
        assert fx.diag().get("renders_published", 0) == before
    finally:
        assert fx.set_params(publish_rendered=True)[0].successful
    fx.send(0.3)
    wait_for(lambda: fx.diag().get("renders_published", 0) > before, WAIT_S, "renders again", proc, log_path)


def test_params_declared_on_a_node_with_descriptions(ros_context):
    node = rclpy.create_node("gcross_param_check", context=ros_context, parameter_overrides=[
        Parameter("voxel_size_m", value=0.07), Parameter("segment_period_s", value=3)])
    try:
        declare_parameters(node)
        p = SegmentNodeParams.from_node(node)
        assert p.pipeline.voxel_size_m == 0.07 and p.pipeline.segment_period_s == 3.0 and p.map_frame == "map"
        for name, text in SegmentNodeParams.descriptions().items():
            desc = node.describe_parameter(name)
            assert desc.description.startswith(text) and len(text) > 10
            assert desc.read_only == (name not in RUNTIME_PARAMETERS), name
            assert ("run time" in desc.description) == (name in RUNTIME_PARAMETERS)
        (refused,) = node.set_parameters([Parameter("voxel_size_m", value=0.2)])
        assert not refused.successful and node.get_parameter("voxel_size_m").value == 0.07
    finally:
        node.destroy_node()


def test_config_yaml_lists_every_parameter_with_its_default():
    cfg = yaml.safe_load((REPO / "config" / "segment.yaml").read_text())["/**"]["ros__parameters"]
    assert set(cfg) == set(SegmentNodeParams.parameter_names())
    defaults = SegmentNodeParams.defaults()
    for name, value in cfg.items():
        assert value == defaults[name], f"{name}: yaml {value!r} vs default {defaults[name]!r}"


def test_rviz_config_shows_the_node_outputs():
    cfg = yaml.safe_load((REPO / "config" / "segment.rviz").read_text())
    manager = cfg["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "map"
    displays = manager["Displays"]
    clouds = [d for d in displays if d["Class"] == "rviz_default_plugins/PointCloud2"]
    assert {d["Topic"]["Value"] for d in clouds} == {"/labelled_cloud"}
    by_transformer = {d["Color Transformer"]: d for d in clouds}
    assert by_transformer["Intensity"]["Channel Name"] == "label" and by_transformer["Intensity"]["Enabled"]
    assert "RGB8" in by_transformer and not by_transformer["RGB8"]["Enabled"]
    images = {d["Topic"]["Value"] for d in displays if d["Class"] == "rviz_default_plugins/Image"}
    assert images == {"/rendered/color", "/rendered/depth", "/rendered/semantic"}
    markers = [d for d in displays if d["Class"] == "rviz_default_plugins/MarkerArray"]
    assert [d["Topic"]["Value"] for d in markers] == ["/instances"] and markers[0]["Enabled"]


def test_launch_file_parses_and_declares_its_arguments():
    path = REPO / "launch" / "segment.launch.py"
    tree = ast.parse(path.read_text())
    assert "generate_launch_description" in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    declared = {c.args[0].value for c in ast.walk(tree) if isinstance(c, ast.Call)
                and getattr(c.func, "id", "") == "DeclareLaunchArgument" and c.args
                and isinstance(c.args[0], ast.Constant)}
    assert {"checkpoint", "camera", "params_file", "use_rviz", "device"} <= declared


def test_launch_description_builds():
    pytest.importorskip("launch_ros")
    pytest.importorskip("launch.actions")  # the repo's own launch/ folder would satisfy a bare "launch"
    import importlib.util

    spec = importlib.util.spec_from_file_location("segment_launch", REPO / "launch" / "segment.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from launch import LaunchDescription

    assert isinstance(module.generate_launch_description(), LaunchDescription)


def test_pose_helper_rejects_bad_quaternions():
    from geometry_msgs.msg import Pose

    pose = Pose()
    pose.orientation.w = 0.0
    with pytest.raises(ValueError, match="quaternion"):
        codec.pose_to_matrix(pose.position, pose.orientation)
    pose.orientation.w, pose.orientation.z = 2 * math.cos(0.3), 2 * math.sin(0.3)  # not unit: normalised
    T = codec.pose_to_matrix(pose.position, pose.orientation)
    np.testing.assert_allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-12)


def test_tf_pose_source_with_a_stand_in_tf2_ros(tmp_path, ros_context, monkeypatch):
    """pose_source tf: the node asks TF for map <- camera at the image stamp, waits, then drops ('no pose')."""
    import types

    from geometry_msgs.msg import TransformStamped

    from gcross_ros.node import segment_node as sn

    fake = types.ModuleType("tf2_ros")

    class TransformException(Exception):
        pass

    class Buffer:
        def __init__(self):
            self.transforms, self.asked = {}, []

        def lookup_transform(self, target, source, when):
            self.asked.append((target, source, when.nanoseconds))
            if (target, source, when.nanoseconds) not in self.transforms:
                raise TransformException(f"no {target} <- {source}")
            return self.transforms[(target, source, when.nanoseconds)]

    fake.TransformException, fake.Buffer = TransformException, Buffer
    fake.TransformListener = lambda buffer, node: None
    monkeypatch.setitem(sys.modules, "tf2_ros", fake)

    ckpt = _tiny_checkpoint(tmp_path / "tiny.safetensors")
    node = sn.SegmentNode(context=ros_context, parameter_overrides=[
        Parameter("checkpoint", value=str(ckpt)), Parameter("pose_source", value="tf"),
        Parameter("voxel_size_m", value=0.1), Parameter("pose_wait_s", value=0.2),
        Parameter("publish_rendered", value=False)])
    try:
        rgb, depth_m, _ = _wall_frame(0.0)

        def offer(stamp):
            out = node.assembler.add_camera_info(cv.make_camera_info(K, W, H, stamp, "camera_optical"), stamp,
                                                 time.monotonic())
            out.extend(node.assembler.add_depth(cv.numpy_to_image(depth_m, "32FC1", stamp, "camera_optical"), stamp,
                                                time.monotonic()))
            node._handle(out.extend(node.assembler.add_color(cv.numpy_to_image(rgb, "rgb8", stamp, "camera_optical"),
                                                             stamp, time.monotonic())))

        offer(5 * 10**9)
        assert node.assembler.waiting_for_pose == 1
        assert node._tf_buffer.asked[-1] == ("map", "camera_optical", 5 * 10**9)

        tf = TransformStamped()
        tf.transform.translation.x = 3.0
        tf.transform.rotation.y, tf.transform.rotation.w = math.sin(0.25), math.cos(0.25)  # 0.5 rad about y
        node._tf_buffer.transforms[("map", "camera_optical", 5 * 10**9)] = tf
        node._poll_assembler()
        assert node.wait_for_fusion()  # the fusion thread takes the frame
        assert len(node.pipeline) > 0
        R = np.array([[math.cos(0.5), 0, math.sin(0.5)], [0, 1, 0], [-math.sin(0.5), 0, math.cos(0.5)]])
        in_cam = (node.pipeline.map.coords() - [3.0, 0.0, 0.0]) @ R  # back into the camera frame with the TF pose
        assert np.all((in_cam[:, 2] > 1.4) & (in_cam[:, 2] < 2.1))  # the wall (2 m) and the box (1.5 m)
        assert abs(np.median(in_cam[:, 2]) - 2.0) < 0.06

        offer(6 * 10**9)
        assert node.assembler.waiting_for_pose == 1
        time.sleep(0.3)
        node._poll_assembler()  # waited longer than pose_wait_s
        acc = node.assembler.account()
        assert node.assembler.waiting_for_pose == 0 and acc.dropped == {"no_pose": 1} and acc.frames_fused == 1
    finally:
        node.destroy_node()


def test_node_without_checkpoint_uses_the_demo_segmenter(ros_context):
    """`ros2 launch gcross_ros segment.launch.py` with no arguments starts on the bundled demo model."""
    from gcross_core.data.classes import SYNTHETIC_CLASSES
    from gcross_core.segmentation.segmenter import DEMO_CHECKPOINT
    from gcross_ros.node import segment_node as sn

    node = sn.SegmentNode(context=ros_context, parameter_overrides=[Parameter("publish_rendered", value=False)])
    try:
        assert node.params.checkpoint == "" and node.params.checkpoint_path == str(DEMO_CHECKPOINT)
        assert node.class_names == list(SYNTHETIC_CLASSES)
        # voxel_size_m 0 (the default): half the grid recorded in the checkpoint (5 cm for the demo segmenter)
        assert SegmentNodeParams().pipeline.voxel_size_m == 0
        assert node.pipeline.voxel_size_m == pytest.approx(node.segmenter.grid_size_m / 2)
        cfg = node.pipeline.config  # the node's parameters, but paced in wall time by its worker
        assert (cfg.segment_scope, cfg.segment_context_m, cfg.max_voxels, cfg.segment_period_s) == (
            node.params.pipeline.segment_scope, node.params.pipeline.segment_context_m,
            node.params.pipeline.max_voxels, 0.0)
    finally:
        node.destroy_node()


def test_time_jump_can_reset_the_map(tmp_path, ros_context):
    """reset_map_on_time_jump: a bag played again starts an empty map; the previous run's poses are not used."""
    from gcross_ros.node import segment_node as sn

    ckpt = _tiny_checkpoint(tmp_path / "tiny.safetensors")
    node = sn.SegmentNode(context=ros_context, parameter_overrides=[
        Parameter("checkpoint", value=str(ckpt)), Parameter("voxel_size_m", value=0.1),
        Parameter("publish_rendered", value=False), Parameter("reset_map_on_time_jump", value=True),
        Parameter("pose_tolerance_s", value=0.02)])

    def offer(stamp, x_offset_m):
        rgb, depth_m, cam_to_map = _wall_frame(x_offset_m)
        asm, now = node.assembler, time.monotonic()
        asm.add_pose(stamp, cam_to_map)
        node._handle(asm.add_camera_info(cv.make_camera_info(K, W, H, stamp, "camera_optical"), stamp, now))
        node._handle(asm.add_depth(cv.numpy_to_image(np.round(depth_m * 1000).astype(np.uint16), "16UC1", stamp,
                                                     "camera_optical"), stamp, now))
        node._handle(asm.add_color(cv.numpy_to_image(rgb, "rgb8", stamp, "camera_optical"), stamp, now))
        assert node.wait_for_fusion()

    try:
        t0 = 100 * 10**9
        offer(t0, 0.0)
        offer(t0 + 10**8, 0.0)
        assert node.assembler.account().frames_fused == 2 and (node.pipeline.map.coords()[:, 0] < 10).all()
        node.assembler.add_pose(t0 + 40 * 10**9, np.eye(4))  # a pose of the old run, far ahead of the new time
        offer(t0 - 30 * 10**9, 20.0)
        acc = node.assembler.account()
        assert acc.time_jumps == 1 and acc.frames_fused == 3
        coords = node.pipeline.map.coords()
        assert len(coords) > 0 and (coords[:, 0] > 10).all()  # only the new run's frame is in the map
        assert node.assembler.poses.newest_stamp_ns == t0 - 30 * 10**9
    finally:
        node.destroy_node()


def test_frames_fusion_cannot_keep_up_with_are_dropped_as_backlog_never_lost(tmp_path, ros_context):
    """The callbacks only assemble; a fusion thread that falls behind drops the oldest waiting frames with
    a reason (fusion_backlog), fuses the newest, and the account adds up."""
    from gcross_ros.node import segment_node as sn

    ckpt = _tiny_checkpoint(tmp_path / "tiny.safetensors")
    node = sn.SegmentNode(context=ros_context, parameter_overrides=[
        Parameter("checkpoint", value=str(ckpt)), Parameter("voxel_size_m", value=0.1),
        Parameter("publish_rendered", value=False), Parameter("pose_tolerance_s", value=0.02)])
    gate = threading.Event()
    fuse = node.pipeline.process_frame

    def held_fusion(*args, **kwargs):  # fusion stalls until the whole burst was assembled
        gate.wait(30.0)
        return fuse(*args, **kwargs)

    node.pipeline.process_frame = held_fusion
    try:
        asm, t0, n = node.assembler, 100 * 10**9, 16
        for i in range(n):
            stamp = t0 + i * 10**8
            rgb, depth_m, cam_to_map = _wall_frame(0.01 * i)
            asm.add_pose(stamp, cam_to_map)
            node._handle(asm.add_camera_info(cv.make_camera_info(K, W, H, stamp, "camera_optical"), stamp, 0.0))
            node._handle(asm.add_depth(cv.numpy_to_image(depth_m, "32FC1", stamp, "camera_optical"), stamp, 0.0))
            node._handle(asm.add_color(cv.numpy_to_image(rgb, "rgb8", stamp, "camera_optical"), stamp, 0.0))
        size = node._fusion_queue.size
        assert size == 10 and len(node._fusion_queue) == size  # the default, at least the input queues' depth
        gate.set()
        assert node.wait_for_fusion()
        acc = node.assembler.account()
        backlog = acc.dropped.get("fusion_backlog", 0)
        # the queue's frames are fused (and the one the fusion thread may have taken before it stalled)
        assert acc.frames_fused in (size, size + 1) and backlog == n - acc.frames_fused
        assert acc.frames_in == n == acc.frames_fused + acc.frames_dropped and acc.frames_waiting == 0
    finally:
        gate.set()
        node.destroy_node()


def test_the_synchronizer_holds_the_deepest_input_queue(tmp_path, ros_context):
    """Reliable inputs with a deep queue: a lagging colour stream must not push its partners out."""
    from gcross_ros.node import segment_node as sn

    ckpt = _tiny_checkpoint(tmp_path / "tiny.safetensors")
    node = sn.SegmentNode(context=ros_context, parameter_overrides=[
        Parameter("checkpoint", value=str(ckpt)), Parameter("publish_rendered", value=False),
        Parameter("qos_overrides./color/image_raw.subscription.depth", value=60),
        Parameter("qos_overrides./color/image_raw.subscription.reliability", value="reliable")])
    try:
        assert node.assembler.config.queue_size == 60
        depths = {s.topic_name: s.qos_profile.depth for s in node.subscriptions}
        # the override of one topic stays with it (rclpy writes overrides into the profile it is given)
        assert depths["/color/image_raw"] == 60 and depths["/depth/image_raw"] == depths["/color/camera_info"] == 5
    finally:
        node.destroy_node()
