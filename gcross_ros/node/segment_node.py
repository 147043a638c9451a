"""ROS 2 node ``gcross_segment``: fuse RGB-D frames into a voxel map, segment it, publish what it sees.

Interface (relative names; the launch file remaps the inputs under the camera namespace):
  in   color/image_raw (rgb8 | bgr8), depth/image_raw (16UC1 mm | 32FC1 m, registered to color),
       color/camera_info, and pose (geometry_msgs/PoseStamped, camera-to-map) when pose_source is topic
       or TF (map_frame <- camera frame at the image stamp) when it is tf; all with sensor-data QoS.
  out  labelled_cloud (PointCloud2 in map_frame: x, y, z, rgb, label, confidence, and instance (uint32
       object id, 0 = none) when the checkpoint has an instance head), instances (visualization_msgs/
       MarkerArray: a box and a label per object, ids stable while an object persists; instance head
       only; gcross_ros.msgs.markers), rendered/color
       (rgb8), rendered/depth (32FC1 m, NaN where nothing is rendered), rendered/semantic (rgb8 class
       palette), all reliable; class_legend (std_msgs/String JSON: id, name, color per class;
       transient-local); diagnostics (frames in, fused, dropped per reason, timings, map size).

Data flow: the three camera streams are synchronized by stamp (sync_slop_s), converted and checked;
the camera pose at the image stamp is looked up (a frame may wait up to pose_wait_s for it); the frame
is fused into the VoxelMap on the callback thread. A worker thread segments a snapshot of the map,
(segment_scope: the voxels observed since the previous segmentation plus context, or the whole map),
fuses the class probabilities into it and publishes labelled_cloud, then pauses segment_period_s;
another worker renders the map as Gaussians at the latest camera pose (gcross_core.mapping.map_view),
then pauses render_period_s. Message conversion is gcross_ros.msgs; counters, throttled warnings and the
diagnostics status are gcross_ros.node.health.

Camera poses are camera-to-map transforms of the camera's *optical* frame (x right, y down, z forward),
which is the convention of the images and of the renderer.

Bad input never stops the node: the frame is dropped, the reason counted (``diagnostics``) and a
throttled warning logged. A checkpoint that does not exist or cannot be loaded, or an unusable parameter,
stops it at start with a message and a non-zero exit status; with no checkpoint at all it loads the
bundled demo segmenter and warns.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Deque, Dict, Optional

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from gcross_core.cli import cli_main, exit_code_for
from gcross_core.errors import GcrossError
from gcross_core.evaluation.report import class_palette
from gcross_core.geometry import scale_intrinsics
from gcross_core.image import has_valid_depth
from gcross_core.mapping.map_view import render_map_view
from gcross_core.mapping.pipeline import PipelineConfig, SegmentationPipeline
from gcross_core.segmentation.segmenter import Segmenter
from gcross_ros.msgs.codec import (camera_info_to_K, decode_color_rgb, decode_depth, pose_to_matrix,
                                   stamp_to_ns)
from gcross_ros.msgs.markers import object_markers
from gcross_ros.msgs.rclpy_msgs import labelled_cloud, numpy_to_image
from gcross_ros.node.health import Stats, ThrottledWarnings, diagnostics_msg
from gcross_ros.node.params import SegmentNodeParams, declare_parameters
from gcross_ros.node.sync import (OUT_OF_ORDER, POSE_MISSING, POSE_OK, POSE_WAIT, TIME_JUMP, ApproximateTimeSync,
                                  PoseBuffer, PoseLookup)

NODE_NAME = "gcross_segment"
COLOR, DEPTH, INFO = 0, 1, 2
STREAM_NAMES = ("color", "depth", "camera_info")
TIME_JUMP_RESET_S = 1.0  # stamps this far behind their predecessor mean a restarted bag or simulator

# Drop reasons (keys of the diagnostics counters).
UNSUPPORTED_ENCODING = "unsupported_encoding"
SIZE_MISMATCH = "size_mismatch"
NO_VALID_DEPTH = "no_valid_depth"
INVALID_CAMERA_INFO = "invalid_camera_info"
NO_CAMERA_INFO = "no_camera_info"
NO_DEPTH = "no_depth"
UNMATCHED = "unmatched"
NO_POSE = "no_pose"
OUT_OF_ORDER_STAMP = "out_of_order"
TIME_JUMP_RESET = "time_jump"
FUSION_ERROR = "fusion_error"


@dataclass(frozen=True)
class _Frame:
    """A synchronized, converted and checked RGB-D frame waiting for (or holding) its pose."""

    stamp_ns: int
    frame_id: str
    color_rgb: np.ndarray  # [H, W, 3] uint8 (a view into the color message)
    depth: np.ndarray  # [H, W] uint16 millimetres or float32 metres (a view into the depth message)
    K: np.ndarray  # [3, 3]
    received: float  # time.monotonic() when the set completed


@dataclass(frozen=True)
class _View:
    """The latest fused camera: where the renderer looks from."""

    stamp_ns: int
    frame_id: str
    cam_to_map: np.ndarray  # [4, 4]
    K: np.ndarray  # [3, 3] for width x height
    width: int
    height: int
    received: float


class SegmentNode(Node):
    """Fuses RGB-D into a voxel map, segments it and renders it (see the module docstring)."""

    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        declare_parameters(self)
        self.params = SegmentNodeParams.from_node(self).validate()
        p = self.params
        torch.set_num_threads(p.torch_threads or max(1, (os.cpu_count() or 2) - 1))
        if not p.checkpoint:
            self.get_logger().warning(
                f"no checkpoint given: using the bundled demo segmenter {p.checkpoint_path}, trained on synthetic "
                "rooms only; pass checkpoint:=/path/segmenter.safetensors for real scans")
        self.segmenter = Segmenter.from_checkpoint(p.checkpoint_path, p.device)
        if p.voxel_size_m > 1.5 * self.segmenter.grid_size_m:
            self.get_logger().warning(
                f"voxel_size_m={p.voxel_size_m:g} is coarser than the segmenter's grid "
                f"({self.segmenter.grid_size_m:g} m): its first layers see isolated points, unlike in training; "
                "expect lower accuracy")
        self.class_names = list(self.segmenter.class_names)
        self.palette = class_palette(len(self.class_names))
        # The same fusion + segmentation steps as the offline evaluator (gcross-bag eval); the node paces
        # segmentation in wall time on its worker thread, so the pipeline's stream-time period is unused.
        self.pipeline = SegmentationPipeline(self.segmenter,
                                             PipelineConfig.from_values({**asdict(p), "segment_period_s": 0.0}))
        self.map = self.pipeline.map

        self.stats = Stats()
        self._dropped_at_last_report = 0
        self._warn = ThrottledWarnings(self.get_logger(), p.warn_throttle_s)
        self._sync = ApproximateTimeSync(3, int(p.sync_slop_s * 1e9), p.queue_size,
                                         reset_jump_ns=int(TIME_JUMP_RESET_S * 1e9))
        self._pending: Deque[_Frame] = deque()  # frames waiting for their pose
        self._latest_view: Optional[_View] = None
        self._pose_buffer = PoseBuffer(int(p.pose_tolerance_s * 1e9))

        # The camera callbacks and timers share the node's default (mutually exclusive) callback group, so
        # the synchronizer and the frames waiting for poses need no lock under any executor. Poses have a
        # group of their own: behind a busy image stream (whose keep-last queues skip ahead) they would
        # otherwise fall behind the images that need them. Segmentation and rendering run on worker
        # threads of their own (_start_workers).
        #
        # Sensor-data QoS (best effort, keep last 5) by default. Deployments whose transport loses large
        # best-effort samples can switch an input to reliable with the standard parameter
        # qos_overrides./<topic>.subscription.reliability.
        overridable = QoSOverridingOptions.with_default_policies()
        for msg_type, topic, callback in ((Image, "color/image_raw", self._on_color),
                                          (Image, "depth/image_raw", self._on_depth),
                                          (CameraInfo, "color/camera_info", self._on_camera_info)):
            self.create_subscription(msg_type, topic, callback, qos_profile_sensor_data,
                                     qos_overriding_options=overridable)
        self._tf_buffer = None
        if p.pose_source == "topic":
            pose_qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT)
            self.create_subscription(PoseStamped, "pose", self._on_pose, pose_qos,
                                     callback_group=MutuallyExclusiveCallbackGroup())
        else:
            import tf2_ros  # only this pose source needs it, and it is not on PyPI

            self._tf_buffer = tf2_ros.Buffer()
            self._tf_listener = tf2_ros.TransformListener(self._tf_buffer, self)
            self._tf_errors = (tf2_ros.TransformException,)

        reliable = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
        self.cloud_pub = self.create_publisher(PointCloud2, "labelled_cloud", reliable)
        self.diag_pub = self.create_publisher(DiagnosticArray, "diagnostics", 10)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.legend_pub = self.create_publisher(String, "class_legend", latched)
        self.instances_pub = None
        if self.segmenter.has_instance_head:
            self.instances_pub = self.create_publisher(MarkerArray, "instances", reliable)
        if p.publish_rendered:
            self.render_pubs = {name: self.create_publisher(Image, f"rendered/{name}", reliable)
                                for name in ("color", "depth", "semantic")}

        self.create_timer(0.05, self._retry_pending)
        self.create_timer(p.diagnostics_period_s, self._publish_diagnostics)
        self._stop = threading.Event()
        self._workers = []
        self._start_workers()
        self._publish_legend()
        self.get_logger().info(
            f"segmenting with {p.checkpoint_path} ({len(self.class_names)} classes) on {p.device}; "
            f"map_frame={p.map_frame}, pose_source={p.pose_source}, voxel_size_m={p.voxel_size_m}")

    # ------------------------------------------------------------------ inputs

    def _on_color(self, msg: Image) -> None:
        self.stats.inc("frames_in")
        self._offer(COLOR, msg)

    def _on_depth(self, msg: Image) -> None:
        self._offer(DEPTH, msg)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._offer(INFO, msg)

    def _on_pose(self, msg: PoseStamped) -> None:
        frame = msg.header.frame_id.lstrip("/")
        if frame and frame != self.params.map_frame:
            self.stats.inc("poses_ignored")
            self._warn.warn("pose_frame", f"pose in frame '{frame}' ignored: poses must be camera-to-map in "
                                          f"map_frame '{self.params.map_frame}'")
            return
        try:
            self._pose_buffer.add(stamp_to_ns(msg.header.stamp),
                                  pose_to_matrix(msg.pose.position, msg.pose.orientation))
        except ValueError as e:
            self.stats.inc("poses_ignored")
            self._warn.warn("pose_invalid", f"pose ignored: {e}")
        # frames waiting for this pose are picked up by _retry_pending on the camera callbacks' thread

    def _offer(self, stream: int, msg) -> None:
        result = self._sync.add(stream, stamp_to_ns(msg.header.stamp), msg)
        for d in result.dropped:
            self._on_sync_drop(d)
        for color, depth, info in result.matched:
            self._on_frame(color, depth, info)

    def _on_sync_drop(self, d) -> None:
        name = STREAM_NAMES[d.stream]
        if d.stream != COLOR:  # a frame is counted by its color image; partners only by stream
            self.stats.inc(f"unmatched.{name}")
            return
        t = d.stamp_ns * 1e-9
        slop = self.params.sync_slop_s
        if d.reason == OUT_OF_ORDER:
            self._drop(OUT_OF_ORDER_STAMP, f"color image at {t:.3f} s dropped: its stamp is not newer than "
                                           "the previous one (out-of-order or repeated stamps)")
        elif d.reason == TIME_JUMP:
            self._drop(TIME_JUMP_RESET, f"time jumped back by more than {TIME_JUMP_RESET_S:g} s; "
                                        f"synchronizer reset, color image at {t:.3f} s dropped")
        elif INFO in d.missing:
            self._drop(NO_CAMERA_INFO, f"color image at {t:.3f} s dropped: no camera_info within "
                                       f"sync_slop_s={slop:g} s (is color/camera_info published?)")
        elif DEPTH in d.missing:
            self._drop(NO_DEPTH, f"color image at {t:.3f} s dropped: no depth image within "
                                 f"sync_slop_s={slop:g} s (is depth/image_raw published?)")
        else:
            self._drop(UNMATCHED, f"color image at {t:.3f} s dropped: depth and camera_info stamps "
                                  f"spread more than sync_slop_s={slop:g} s around it")

    def _drop(self, reason: str, message: str) -> None:
        self.stats.drop(reason)
        self._warn.warn(reason, message)

    def _on_frame(self, color: Image, depth: Image, info: CameraInfo) -> None:
        """Convert and check a synchronized set, then fuse it once its pose is known."""
        stamp = stamp_to_ns(color.header.stamp)
        t = stamp * 1e-9
        try:
            rgb = decode_color_rgb(color)
        except ValueError as e:
            return self._drop(UNSUPPORTED_ENCODING, f"color image at {t:.3f} s dropped: {e}")
        try:
            depth_px = decode_depth(depth)
        except ValueError as e:
            return self._drop(UNSUPPORTED_ENCODING, f"depth image at {t:.3f} s dropped: {e}")
        h, w = rgb.shape[:2]
        if depth_px.shape != (h, w):
            return self._drop(SIZE_MISMATCH, f"frame at {t:.3f} s dropped: depth image {depth_px.shape[1]}x"
                                             f"{depth_px.shape[0]} does not match color {w}x{h} "
                                             "(depth must be registered to color)")
        try:
            K, info_w, info_h = camera_info_to_K(info)
        except ValueError as e:
            return self._drop(INVALID_CAMERA_INFO, f"frame at {t:.3f} s dropped: {e}")
        if (info_w, info_h) != (w, h):
            return self._drop(SIZE_MISMATCH, f"frame at {t:.3f} s dropped: camera_info {info_w}x{info_h} does "
                                             f"not match color {w}x{h}")
        if not has_valid_depth(depth_px, self.params.max_depth_m):
            return self._drop(NO_VALID_DEPTH, f"frame at {t:.3f} s dropped: no depth pixel is valid (all zero, "
                                              f"NaN, inf or beyond max_depth_m={self.params.max_depth_m:g})")
        frame_id = self.params.camera_frame or color.header.frame_id
        self._resolve(_Frame(stamp, frame_id, rgb, depth_px, K, time.monotonic()))

    def _lookup_pose(self, frame: _Frame) -> PoseLookup:
        if self._tf_buffer is None:
            return self._pose_buffer.lookup(frame.stamp_ns)
        try:
            tf = self._tf_buffer.lookup_transform(self.params.map_frame, frame.frame_id,
                                                  Time(nanoseconds=frame.stamp_ns))
        except self._tf_errors:
            return PoseLookup(POSE_WAIT)  # TF may still arrive; pose_wait_s bounds the wait
        try:
            return PoseLookup(POSE_OK, pose_to_matrix(tf.transform.translation, tf.transform.rotation))
        except ValueError:
            return PoseLookup(POSE_MISSING)  # TF holds an unusable rotation for this stamp

    def _resolve(self, frame: _Frame) -> None:
        lookup = self._lookup_pose(frame)
        if lookup.status == POSE_OK:
            self._fuse(frame, lookup.cam_to_map)
        elif lookup.status == POSE_MISSING:
            self._drop_no_pose(frame)
        else:
            self._pending.append(frame)
            while len(self._pending) > self.params.queue_size:
                self._drop_no_pose(self._pending.popleft())

    def _retry_pending(self) -> None:
        now = time.monotonic()
        waiting = self._pending
        self._pending = deque()
        for frame in waiting:
            lookup = self._lookup_pose(frame)
            if lookup.status == POSE_OK:
                self._fuse(frame, lookup.cam_to_map)
            elif lookup.status == POSE_MISSING or now - frame.received > self.params.pose_wait_s:
                self._drop_no_pose(frame)
            else:
                self._pending.append(frame)

    def _drop_no_pose(self, frame: _Frame) -> None:
        src = ("pose topic (within pose_tolerance_s)" if self._tf_buffer is None
               else f"TF {self.params.map_frame} <- {frame.frame_id}")
        self._drop(NO_POSE, f"frame at {frame.stamp_ns * 1e-9:.3f} s dropped: no pose for its stamp from the {src}")

    def _fuse(self, frame: _Frame, cam_to_map: np.ndarray) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            self.pipeline.process_frame(frame.color_rgb, frame.depth, frame.K, cam_to_map, frame.stamp_ns * 1e-9)
        except ValueError as e:
            return self._drop(FUSION_ERROR, f"frame at {frame.stamp_ns * 1e-9:.3f} s dropped: {e}")
        self.stats.fusion_time((time.perf_counter() - t0) * 1e3, (time.thread_time() - c0) * 1e3)
        self.stats.inc("frames_fused")
        h, w = frame.color_rgb.shape[:2]
        self._latest_view = _View(frame.stamp_ns, frame.frame_id, cam_to_map, frame.K, w, h, frame.received)

    # ------------------------------------------------------------------ workers

    def _start_workers(self) -> None:
        """Segmentation (and rendering) threads; they run whatever executor spins the node, and end with it."""
        jobs = [("segment", self._segment, self.params.segment_period_s)]
        if self.params.publish_rendered:
            jobs.append(("render", self._render, self.params.render_period_s))
        for name, work, pause_s in jobs:
            thread = threading.Thread(target=self._work_loop, args=(work, pause_s), name=f"{NODE_NAME}_{name}",
                                      daemon=True)
            thread.start()
            self._workers.append(thread)

    def stop_workers(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout_s)  # a segmentation in flight may take seconds; the threads are daemons

    def destroy_node(self) -> None:
        self.stop_workers()
        super().destroy_node()

    def _work_loop(self, work, pause_s: float) -> None:
        # A pause after each run, not a rate: a segmentation slower than its period must not starve fusion.
        while not self._stop.wait(pause_s):
            work()

    def _segment(self) -> None:
        view = self._latest_view  # read before the segmentation's snapshot, which contains this frame
        if view is None:
            return
        try:
            seg = self.pipeline.segment()
            if seg is None or seg.updated == 0:  # empty map, or nothing observed since the last segmentation
                return
            pts = self.pipeline.labelled_points()
            keep = pts.label >= 0  # voxels added since the segmentation's snapshot have no label yet
            msg = labelled_cloud(pts.coord[keep], pts.color[keep], pts.label[keep], pts.confidence[keep],
                                 stamp_ns=view.stamp_ns, frame_id=self.params.map_frame,
                                 instance=pts.instance[keep] if pts.instance is not None else None)
            self.cloud_pub.publish(msg)
            if self.instances_pub is not None:
                self._publish_instances(view.stamp_ns)
        except Exception as e:  # the worker must survive; the error is reported, not swallowed
            self.stats.inc("segmentation_errors")
            self._warn.warn("segmentation_error", f"segmentation failed: {type(e).__name__}: {e}")
            return
        self.stats.inc("clouds_published")
        self.stats.timing("segmentation_ms", seg.seconds * 1e3)
        self.stats.timing("segmented_voxels", seg.voxels)
        self.stats.timing("latency_ms", (time.monotonic() - view.received) * 1e3)

    def _publish_instances(self, stamp_ns: int) -> None:
        self.instances_pub.publish(object_markers(self.pipeline.objects(), self.class_names, self.palette, stamp_ns,
                                                  self.params.map_frame))

    def _render(self) -> None:
        view = self._latest_view
        if view is None:
            return
        try:
            t0 = time.perf_counter()
            images = self.render_view(view)
            for name, msg in images.items():
                self.render_pubs[name].publish(msg)
        except Exception as e:
            self.stats.inc("render_errors")
            self._warn.warn("render_error", f"rendering failed: {type(e).__name__}: {e}")
            return
        self.stats.timing("render_ms", (time.perf_counter() - t0) * 1e3)
        self.stats.inc("renders_published")

    def render_view(self, view: _View) -> Dict[str, Image]:
        """rendered/{color, depth, semantic} of the map seen from ``view``, at render_width x render_height."""
        p = self.params
        w, h = p.render_width, p.render_height
        snap = self.map.snapshot()
        out = render_map_view(snap.coords, snap.colors, snap.labels, view.cam_to_map,
                              scale_intrinsics(view.K, w / view.width, h / view.height), w, h, self.palette,
                              p.voxel_size_m, p.max_render_gaussians, p.device, p.render_backend)
        return {"color": numpy_to_image(out.color, "rgb8", view.stamp_ns, view.frame_id),
                "depth": numpy_to_image(out.depth_m, "32FC1", view.stamp_ns, view.frame_id),
                "semantic": numpy_to_image(out.semantic, "rgb8", view.stamp_ns, view.frame_id)}

    # ------------------------------------------------------------------ reporting

    def _publish_legend(self) -> None:
        legend = {"classes": [{"id": i, "name": n, "color": self.palette[i].tolist()}
                              for i, n in enumerate(self.class_names)],
                  "label_field": "label", "checkpoint": self.params.checkpoint_path}
        if self.segmenter.has_instance_head:
            legend.update(instance_field="instance", stuff_classes=list(self.segmenter.instance_config.stuff_classes))
        self.legend_pub.publish(String(data=json.dumps(legend)))

    def _publish_diagnostics(self) -> None:
        report = self.stats.report()
        report["pending_pose"] = len(self._pending)
        report["map_voxels"] = len(self.map)
        report["evicted_voxels"] = self.map.evicted_total
        self.diag_pub.publish(diagnostics_msg(report, f"{self.get_name()}: pipeline", self.params.map_frame,
                                              self._dropped_at_last_report, self.get_clock().now().to_msg()))
        self._dropped_at_last_report = report["frames_dropped"]


@cli_main("segment_node")
def main(args=None) -> int:
    """Console script ``segment_node``: run the node until shutdown.

    A node that cannot start logs one FATAL line naming the parameter and exits 2 for an unusable
    parameter or input file (``gcross_core.cli``), 1 for any other failure.
    """
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = SegmentNode()
        except (GcrossError, ValueError, FileNotFoundError) as e:
            rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {e}")
            return exit_code_for(e)
        executor = MultiThreadedExecutor(num_threads=2)  # camera callbacks + pose callbacks
        executor.add_node(node)
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
