"""ROS 2 node ``gcross_segment``: fuse RGB-D frames into a voxel map, segment it, publish what it sees.

Interface (relative names; the launch file remaps the inputs under the camera namespace):
  in   color/image_raw (rgb8 | bgr8), depth/image_raw (16UC1 mm | 32FC1 m, registered to color), or their
       image_transport compressed forms (color_transport:=compressed: color/image_raw/compressed, JPEG or
       PNG; depth_transport:=compressedDepth: depth/image_raw/compressedDepth), color/camera_info, and
       pose (geometry_msgs/PoseStamped, camera-to-map) when pose_source is topic or TF (map_frame <- camera frame at the image stamp) when it is tf; all with sensor-data QoS.
  out  labelled_cloud (PointCloud2 in map_frame: x, y, z, rgb, label, confidence, and instance (uint32
       object id, 0 = none) when the checkpoint has an instance head), instances (visualization_msgs/
       MarkerArray: a box and a label per object, ids stable while an object persists; instance head
       only; gcross_ros.msgs.markers), rendered/color
       (rgb8), rendered/depth (32FC1 m, NaN where nothing is rendered), rendered/semantic (rgb8 class
       palette), with render_source gaussians also rendered/features (rgb8 false colour of the model's
       feature field, PCA basis fixed per map), all reliable; class_legend (std_msgs/String JSON: id,
       name, color per class; transient-local); diagnostics (frames in, lost, fused, dropped per reason,
       timings, map size).
  services (std_srvs, in the node's namespace; gcross_ros.node.services): ~/save_map, ~/reset_map,
       ~/pause_integration (SetBool), ~/segment_now. The map can start from a saved one (initial_map).

Data flow: the callbacks hand the camera messages and poses to the frame assembler
(gcross_core.mapping.assembly, the same one gcross-bag eval and export run): stamp synchronisation within
sync_slop_s, checks with one drop reason each, depth in metres, the camera pose at the image stamp (a
frame may wait up to pose_wait_s for it). The callbacks only assemble: a fusion thread takes the assembled
frames from a queue of fusion_queue_size and fuses them into the pipeline's VoxelMap, so the middleware's
queues are emptied whatever fusion costs, and a frame that waited while fusion fell behind is dropped
(fusion_backlog), never lost. A worker thread segments a snapshot of the map,
(segment_scope: the voxels observed since the previous segmentation plus context, or the whole map),
fuses the class probabilities into it and publishes labelled_cloud, then pauses segment_period_s;
another worker renders the map as Gaussians at the latest camera pose (render_source voxels:
gcross_core.mapping.map_view, distant voxels merged into coarser splats beyond max_render_gaussians;
gaussians: the GaussianCross model's Gaussians of the visible map turned z-up, gcross_core.mapping.model_view),
then pauses render_period_s; it renders only when the view or the map changed since its last render, so an
idle node does no work. Message conversion is gcross_ros.msgs; counters, throttled warnings and the
diagnostics status are gcross_ros.node.health.

Camera poses are camera-to-map transforms of the camera's *optical* frame (x right, y down, z forward),
which is the convention of the images and of the renderer.

Parameters (gcross_ros.node.params) are read at start; those in RUNTIME_PARAMETERS (periods, rendering,
the depth range, segmentation scope, warning thresholds) can also be set while the node runs, checked by
the same rules as at start: an invalid value is refused with its reason and the old one kept.

The map's voxel size is half the segmenter's grid, read from the checkpoint, unless voxel_size_m says
otherwise (a voxel coarser than the grid is warned about).

Bad input never stops the node: the frame is dropped, the reason counted (``diagnostics``) and a
throttled warning logged. Every color frame received is fused, dropped with a reason or still waiting
(frames_in = frames_fused + frames_dropped + frames_waiting). Frames that never reach the callback are
counted exactly from DDS publication sequence numbers (frames_lost; estimated from stamp gaps where the
middleware gives none) and turn diagnostics WARN above lost_warn_ratio; pauses in the stream are paused
seconds and stamp jumps are jumps, never losses. Stamps jumping back by more than a second (a bag played
again) are logged once and clear the synchronizer, the frames waiting for a pose and the previous run's
poses; the map is kept unless reset_map_on_time_jump. A checkpoint that does not exist or cannot be loaded, an unusable
parameter or initial_map, or a parameter this machine cannot serve (device:=cuda without CUDA,
pose_source:=tf without tf2_ros) stops it at start with one FATAL line and a non-zero exit status; with
no checkpoint at all it loads the bundled demo segmenter and warns.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import threading
import time
from dataclasses import replace
from typing import Dict, Optional, Tuple

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.time import Time
from rcl_interfaces.msg import SetParametersResult
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from gcross_core.cli import cli_main, exit_code_for
from gcross_core.errors import GcrossError, InputError, UnavailableError
from gcross_core.evaluation.report import class_palette
from gcross_core.geometry import scale_intrinsics
from gcross_core.mapping.assembly import (FUSION_BACKLOG, FUSION_ERROR, INTEGRATION_PAUSED, TIME_JUMP_RESET,
                                          AssembledFrame, Assembled, FrameAssembler)
from gcross_core.mapping.map_io import load_map, save_map
from gcross_core.mapping.sync import POSE_MISSING, POSE_OK, POSE_WAIT, PoseLookup
from gcross_core.mapping.model_view import ModelMapRenderer, render_view
from gcross_core.model.api import GaussianCrossModel
from gcross_core.mapping.pipeline import SegmentationPipeline, warm_up_kernels
from gcross_core.segmentation.process import SegmenterProcess
from gcross_core.segmentation.segmenter import Segmenter
from gcross_ros.msgs.camera import CameraDecoder, add_pose_message
from gcross_ros.msgs.codec import pose_to_matrix, stamp_to_ns
from gcross_ros.msgs.markers import object_markers
from gcross_ros.msgs.rclpy_msgs import labelled_cloud, numpy_to_image
from gcross_ros.node.health import Stats, ThrottledWarnings, diagnostics_msg
from gcross_ros.node.params import RUNTIME_PARAMETERS, SegmentNodeParams, declare_parameters
from gcross_ros.node.services import ServiceHost
from gcross_ros.node.workers import FrameQueue, Workers

NODE_NAME = "gcross_segment"
POSE_QUEUE_DEPTH = 1000  # poses kept by the middleware for the pose callback (a pose is ~100 bytes)


class SegmentNode(Node):
    """Fuses RGB-D into a voxel map, segments it and renders it (see the module docstring)."""

    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        # first, so that destroying a node whose construction failed finds what it stops
        self.workers = Workers(NODE_NAME)
        # The assembler is used by the callbacks and by the fusion thread (the account of each frame).
        self._assembly_lock = threading.Lock()
        declare_parameters(self)
        p = SegmentNodeParams.from_node(self).validate()
        _check_available(p)
        threads = p.torch_threads or max(1, (os.cpu_count() or 2) - 1)
        if not p.checkpoint:
            self.get_logger().warning(
                f"no checkpoint given: using the bundled demo segmenter {p.checkpoint_path}, trained on synthetic "
                "rooms only; pass checkpoint:=/path/segmenter.safetensors for real scans")
        if p.segment_in_process:  # the model's work never holds fusion's core or the interpreter lock
            torch.set_num_threads(1)  # this process: fusion, DDS and rendering
            self.segmenter = SegmenterProcess(p.checkpoint_path, p.device, threads, nice=p.background_nice)
        else:
            torch.set_num_threads(threads)
            self.segmenter = Segmenter.from_checkpoint(p.checkpoint_path, p.device)
        # The same fusion + segmentation steps as the offline evaluator (gcross-bag eval).
        # voxel_size_m 0: half the segmenter's grid (PipelineConfig.with_segmenter_grid says why).
        self.pipeline = SegmentationPipeline(self.segmenter, _wall_paced(p))
        grid, voxel = self.segmenter.grid_size_m, self.pipeline.voxel_size_m
        if voxel > grid * 1.01:
            self.get_logger().warning(
                f"voxel_size_m={voxel:g} is coarser than the segmenter's grid ({grid:g} m, from the checkpoint): "
                "its first layers see isolated points, unlike in training; expect lower accuracy (voxel_size_m: 0 "
                "maps at half the grid)")
        self.params = p
        self.class_names = list(self.segmenter.class_names)
        self.palette = class_palette(len(self.class_names))
        if p.initial_map:
            self.pipeline.restore(load_map(p.initial_map), f"initial_map {p.initial_map!r}")
            objects = f", {len(self.pipeline.tracker)} objects" if self.pipeline.tracker is not None else ""
            self.get_logger().info(f"started from the map in {p.initial_map} ({len(self.pipeline)} voxels{objects})")
        self._model: Tuple[str, Optional[GaussianCrossModel]] = ("", None)  # (checkpoint, model) once loaded
        # render_source gaussians: the GaussianCross model's view of the map
        self.model_renderer = self._model_renderer_for(p)

        self.stats = Stats()
        self._last_report: Dict[str, float] = {}
        self._warn = ThrottledWarnings(self.get_logger(), p.warn_throttle_s)
        self._tf_buffer = None
        if p.pose_source == "tf":
            import tf2_ros  # only this pose source needs it (checked by _check_available)

            self._tf_buffer = tf2_ros.Buffer()
            self._tf_listener = tf2_ros.TransformListener(self._tf_buffer, self)
            self._tf_errors = (tf2_ros.TransformException,)
        self._latest_view: Optional[AssembledFrame] = None  # the latest camera: where the renderer looks from
        self._integration_paused = False
        # The render worker skips views it has already rendered of an unchanged map (pipeline.version).
        self._rendered = (None, 0)  # (view, map version) of the last published render

        # The node spins on one thread (main): its callbacks only take messages and assemble frames, so poses
        # never wait long behind images. Fusion, segmentation and rendering run on worker threads of their
        # own (gcross_ros.node.workers), the services on a companion node (gcross_ros.node.services); the
        # assembler's lock serialises the callbacks with the fusion thread.
        #
        # Sensor-data QoS (best effort, keep last 5) by default. Deployments whose transport loses large
        # best-effort samples can switch an input to reliable with the standard parameter
        # qos_overrides./<topic>.subscription.reliability (the pose topic too).
        overridable = QoSOverridingOptions.with_default_policies()
        depths = []
        # image_transport's names: the compressed forms of a raw topic are sub-topics of it
        compressed_color, compressed_depth = p.color_transport == "compressed", p.depth_transport == "compressedDepth"
        for name, msg_type, topic, callback in (
                ("color", CompressedImage if compressed_color else Image,
                 "color/image_raw" + ("/compressed" if compressed_color else ""), self._on_color),
                ("depth", CompressedImage if compressed_depth else Image,
                 "depth/image_raw" + ("/compressedDepth" if compressed_depth else ""), self._on_depth),
                ("camera_info", CameraInfo, "color/camera_info", self._on_camera_info)):
            # a copy: rclpy writes the overrides into the profile it is given
            sub = self._subscribe_counting_lost(name, msg_type, topic, callback, copy.copy(qos_profile_sensor_data),
                                                overridable)
            depths.append(int(sub.qos_profile.depth))
        # The synchronizer holds at least what the input queues hold: a stream that lags behind a deeper
        # one (large colour images behind small camera_info under reliable QoS) must not push out partners
        # it will still be matched with.
        assembly = p.assembly
        if max(depths) > assembly.queue_size:
            self.get_logger().info(f"queue_size raised from {assembly.queue_size} to {max(depths)}, the deepest "
                                   "input queue")
            assembly = replace(assembly, queue_size=max(depths))
        # Likewise the fusion queue: a burst the input queues were made deep enough to hold (reliable QoS for
        # a bag played fast) is fused, not pushed out.
        fusion_queue_size = max(p.fusion_queue_size, max(depths))
        self._fusion_queue: FrameQueue[AssembledFrame] = FrameQueue(fusion_queue_size)
        # The fusion kernels are compiled (or loaded from their disk cache) now, not on the first frames.
        warm_up_kernels()
        # The one frame assembly (gcross_core.mapping.assembly), shared with gcross-bag eval and export.
        self.assembler = FrameAssembler(CameraDecoder(), assembly,
                                        pose_source=self._lookup_tf if self._tf_buffer is not None else None)
        if p.pose_source == "topic":
            # Poses are small: the queue holds as many as the frames that can wait for one, and more, so a
            # burst of images does not outrun its poses.
            pose_qos = QoSProfile(depth=POSE_QUEUE_DEPTH, reliability=ReliabilityPolicy.BEST_EFFORT)
            self._subscribe_counting_lost("pose", PoseStamped, "pose", self._on_pose, pose_qos, overridable)

        reliable = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
        self.cloud_pub = self.create_publisher(PointCloud2, "labelled_cloud", reliable)
        self.diag_pub = self.create_publisher(DiagnosticArray, "diagnostics", 10)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.legend_pub = self.create_publisher(String, "class_legend", latched)
        self.instances_pub = None
        if self.segmenter.has_instance_head:
            self.instances_pub = self.create_publisher(MarkerArray, "instances", reliable)
        self.render_pubs: Dict[str, object] = {}  # created when rendering is on (publish_rendered), by name
        self._render_publishers(p, self.model_renderer)

        self.create_timer(0.05, self._poll_assembler)
        self._diagnostics_timer = self.create_timer(p.diagnostics_period_s, self._publish_diagnostics)
        self.service_host = ServiceHost(self)
        # Workers stop as soon as the context shuts down (SIGINT/SIGTERM), before the publishers they use
        # become invalid.
        self.context.on_shutdown(self.workers.stopping.set)
        self.workers.consume("fusion", self._fusion_queue, self._fuse, on_error=lambda e: self._failed("fusion", e))
        self.workers.start("segment", self._segment, p.pipeline.segment_period_s)
        # idle while publish_rendered is false; behind fusion on a contended core (background_nice)
        self.workers.start("render", self._render, p.render_period_s, nice=p.background_nice)
        self._publish_legend()
        # last: parameters set from now on are checked and applied by _on_set_parameters
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.get_logger().info(
            f"segmenting with {p.checkpoint_path} ({len(self.class_names)} classes) on {p.device}; "
            f"map_frame={p.map_frame}, pose_source={p.pose_source}, voxel_size_m={self.pipeline.voxel_size_m}, "
            f"render_source={p.render_source}" + (f" ({p.model_checkpoint_path})" if self.model_renderer else ""))

    # ------------------------------------------------------------------ inputs

    def _subscribe_counting_lost(self, name, msg_type, topic, callback, qos, overridable, **kwargs):
        """Subscribe (the subscription's qos_profile holds the overrides); messages the middleware reports
        lost count as lost.middleware.<name>."""
        def on_lost(info, key=f"lost.middleware.{name}"):
            self.stats.inc(key, int(info.total_count_change))

        try:
            return self.create_subscription(msg_type, topic, callback, qos, qos_overriding_options=overridable,
                                            event_callbacks=SubscriptionEventCallbacks(message_lost=on_lost),
                                            **kwargs)
        except Exception as e:  # an rmw without the message-lost event: sequence numbers and stamps still count
            self.get_logger().info(f"{topic}: the middleware does not report lost messages ({e}); lost frames "
                                   "are counted from sequence numbers or stamp gaps only")
            return self.create_subscription(msg_type, topic, callback, qos, qos_overriding_options=overridable,
                                            **kwargs)

    def _on_color(self, msg: Image, info) -> None:
        gid = info.get("publisher_gid") or {}
        with self._assembly_lock:
            out = self.assembler.add_color(msg, stamp_to_ns(msg.header.stamp), time.monotonic(),
                                           sent_ns=info.get("source_timestamp") or None,
                                           sequence=info.get("publication_sequence_number") or None,
                                           publisher=bytes(gid.get("data", b"")))
        self._handle(out)

    def _on_depth(self, msg: Image) -> None:
        with self._assembly_lock:
            out = self.assembler.add_depth(msg, stamp_to_ns(msg.header.stamp), time.monotonic())
        self._handle(out)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        with self._assembly_lock:
            out = self.assembler.add_camera_info(msg, stamp_to_ns(msg.header.stamp), time.monotonic())
        self._handle(out)

    def _poll_assembler(self) -> None:
        with self._assembly_lock:
            out = self.assembler.poll(time.monotonic())
        self._handle(out)

    def _on_pose(self, msg: PoseStamped) -> None:
        frame = msg.header.frame_id.lstrip("/")
        if frame and frame != self.params.map_frame:
            with self._assembly_lock:
                self.assembler.ignore_pose()
            self._warn.warn("pose_frame", f"pose in frame '{frame}' ignored: poses must be camera-to-map in "
                                          f"map_frame '{self.params.map_frame}'")
            return
        try:
            with self._assembly_lock:
                jump = add_pose_message(self.assembler, msg)
        except InputError as e:
            self._warn.warn("pose_invalid", str(e))
            return
        if jump is not None:
            self.get_logger().info(f"pose stamps jumped back by {jump * 1e-9:.1f} s: pose buffer cleared")
        # frames waiting for this pose are picked up by _poll_assembler on the camera callbacks' group

    def _lookup_tf(self, stamp_ns: int, frame_id: str) -> PoseLookup:
        frame_id = self.params.assembly.camera_frame or frame_id
        try:
            tf = self._tf_buffer.lookup_transform(self.params.map_frame, frame_id, Time(nanoseconds=stamp_ns))
        except self._tf_errors:
            return PoseLookup(POSE_WAIT)  # TF may still arrive; pose_wait_s bounds the wait
        try:
            return PoseLookup(POSE_OK, pose_to_matrix(tf.transform.translation, tf.transform.rotation))
        except ValueError:
            return PoseLookup(POSE_MISSING)  # TF holds an unusable rotation for this stamp

    def _handle(self, out: Assembled) -> None:
        """What the assembler produced: jumps logged, drops warned about, frames queued for fusion."""
        if out.time_jump is not None:
            self._on_time_jump(out.time_jump)
        for d in out.drops:
            if d.message:
                self._warn.warn(d.reason, d.message)
        for frame in out.frames:
            pushed_out = self._fusion_queue.put(frame)
            if pushed_out is not None:
                self._drop(pushed_out, FUSION_BACKLOG, f"frame at {pushed_out.stamp_ns * 1e-9:.3f} s dropped: fusion "
                           f"fell behind the camera ({self._fusion_queue.size} newer frames were waiting)")

    def _on_time_jump(self, jump) -> None:
        """Stamps went back in time (a bag played again, a simulator reset): the assembly started over, and
        the frames of the previous run still waiting for fusion are dropped with the others."""
        for frame in self._fusion_queue.drain():
            self._drop(frame, TIME_JUMP_RESET)
        self._fusion_queue.wait_idle(5.0)  # a frame of the previous run being fused lands before the reset
        if self.params.reset_map_on_time_jump:
            self._clear_map()
            kept = "map cleared (reset_map_on_time_jump)"
        else:
            kept = f"map kept ({len(self.pipeline)} voxels; reset_map_on_time_jump:=true clears it)"
        self.get_logger().warning(
            f"time jumped back by {jump.jump_ns * 1e-9:.1f} s on {jump.stream} (now {jump.stamp_ns * 1e-9:.3f} s; a "
            f"restarted bag or simulator?): synchronizer, {jump.frames_cleared} frames waiting for a pose and "
            f"{jump.poses_cleared} poses cleared; {kept}")

    def wait_for_fusion(self, timeout_s: float = 10.0) -> bool:
        """Wait until every frame handed to the fusion thread so far was fused or dropped (scripts, tests);
        False on timeout."""
        return self._fusion_queue.wait_idle(timeout_s)

    def _drop(self, frame: AssembledFrame, reason: str, message: str = "") -> None:
        """Count a frame the assembler handed out as dropped; warn (throttled) when there is a message."""
        with self._assembly_lock:
            d = self.assembler.drop(frame, reason, message)
        if message:
            self._warn.warn(d.reason, d.message)

    def _fuse(self, frame: AssembledFrame) -> None:
        """The fusion thread's job: one assembled frame into the map."""
        if self._integration_paused:  # ~/pause_integration: the view still follows the camera
            self._drop(frame, INTEGRATION_PAUSED)
            self._latest_view = frame
            return
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            self.pipeline.process_frame(frame.color_rgb, frame.depth_m, frame.K, frame.cam_to_map, frame.stamp_ns * 1e-9)
        except Exception as e:  # bad input (InputError) or a fault: this frame is dropped, fusion goes on
            self._drop(frame, FUSION_ERROR, f"frame at {frame.stamp_ns * 1e-9:.3f} s dropped: {e}")
            return
        with self._assembly_lock:
            self.assembler.fused(frame)
        self.stats.fusion_time((time.perf_counter() - t0) * 1e3, (time.thread_time() - c0) * 1e3)
        self._latest_view = frame
        if self.model_renderer is not None:
            self.model_renderer.observe_camera(frame.cam_to_map)

    # ------------------------------------------------------------------ workers

    def stop_workers(self, timeout_s: float = 10.0) -> None:
        self.workers.stop(timeout_s)

    def destroy_node(self) -> None:
        if getattr(self, "service_host", None) is not None:
            self.service_host.close()
        if hasattr(self, "workers"):  # a node whose construction failed early has no workers
            self.stop_workers()
        if isinstance(getattr(self, "segmenter", None), SegmenterProcess):
            self.segmenter.close()
        super().destroy_node()

    def _failed(self, kind: str, e: Exception) -> None:
        """A worker's error: counted and logged, unless the node is shutting down (its publishers are gone)."""
        if self.workers.stopping.is_set() or not self.context.ok():
            return
        self.stats.inc(f"{kind}_errors")
        what = {"render": "rendering"}.get(kind, kind)
        self._warn.warn(f"{kind}_error", f"{what} failed: {type(e).__name__}: {e}")

    def _segment(self, force: bool = False) -> Optional[str]:
        """Segment what is due and publish labelled_cloud; with ``force`` (segment_now) also without a camera
        view yet and when nothing new was observed. Returns what was done, None when nothing was."""
        view = self._latest_view  # read before the segmentation's snapshot, which contains this frame
        if view is None and not force:
            return None
        try:
            # segment_now: the whole map, every voxel labelled (its cost grows with the map)
            seg = self.pipeline.segment(force=True, scope="map") if force else self.pipeline.segment()
            if seg is None or (seg.updated == 0 and not force):  # empty map, or nothing new observed
                return None
            pts = self.pipeline.labelled_points()
            keep = pts.label >= 0  # voxels added since the segmentation's snapshot have no label yet
            stamp_ns = view.stamp_ns if view is not None else self.get_clock().now().nanoseconds
            msg = labelled_cloud(pts.coord[keep], pts.color[keep], pts.label[keep], pts.confidence[keep],
                                 stamp_ns=stamp_ns, frame_id=self.params.map_frame,
                                 instance=pts.instance[keep] if pts.instance is not None else None)
            self.cloud_pub.publish(msg)
            if self.instances_pub is not None:
                self._publish_instances(stamp_ns)
        except Exception as e:  # the worker must survive; the error is reported, not swallowed
            self._failed("segmentation", e)
            if force:
                raise
            return None
        self.stats.inc("clouds_published")
        self.stats.timing("segmentation_ms", seg.seconds * 1e3)
        self.stats.timing("segmented_voxels", seg.voxels)
        for tier, due in (seg.due or {}).items():  # segment_scope priority: what is left to do, per tier
            self.stats.timing(f"segment_due.{tier}", due - seg.tiers[tier])
        if view is not None:
            self.stats.timing("latency_ms", (time.monotonic() - view.received_s) * 1e3)
        return (f"segmented {seg.voxels} voxels in {seg.seconds:.2f} s, {seg.updated} labels updated; "
                f"labelled_cloud of {int(keep.sum())} points published")

    def _publish_instances(self, stamp_ns: int) -> None:
        self.instances_pub.publish(object_markers(self.pipeline.objects(), self.class_names, self.palette, stamp_ns,
                                                  self.params.map_frame))

    def _render(self) -> None:
        if not self.params.publish_rendered:
            return
        view, version = self._latest_view, self.pipeline.version
        last_view, last_version = self._rendered
        if view is None or (view is last_view and version == last_version):  # nothing new: no work while idle
            return
        try:
            t0 = time.perf_counter()
            images = self.render_view(view)
            for name, msg in images.items():
                pub = self.render_pubs.get(name)
                if pub is not None:  # rendering was turned off, or its source changed, meanwhile
                    pub.publish(msg)
        except Exception as e:
            self._failed("render", e)
            return
        self._rendered = (view, version)
        self.stats.timing("render_ms", (time.perf_counter() - t0) * 1e3)
        self.stats.inc("renders_published")

    # ------------------------------------------------------------------ services (gcross_ros.node.services)

    def save_map(self) -> Tuple[bool, str]:
        """~/save_map: the map, its labels and (when tracked) instance ids to save_map_path."""
        path = os.path.expanduser(self.params.save_map_path)
        saved = self.pipeline.saved_map(self.params.map_frame)
        try:
            out = save_map(path, saved)
        except OSError as e:  # no permission, disk full, a file in the way: answered, the node goes on
            reason = e.strerror or str(e)
            where = f" ({e.filename})" if e.filename and str(e.filename) != path else ""
            return False, f"cannot save the map to {path}: {reason}{where}"
        self.get_logger().info(f"map of {len(saved)} voxels saved to {out}")
        return True, f"saved {len(saved)} voxels to {out}"

    def _clear_map(self) -> int:
        """Empty the map, forget its objects and the feature colour basis of its renders."""
        voxels = self.pipeline.reset()
        if self.model_renderer is not None:
            self.model_renderer.reset()
        return voxels

    def reset_map(self) -> Tuple[bool, str]:
        """~/reset_map: clear the map and publish an empty labelled_cloud."""
        voxels = self._clear_map()
        empty = np.zeros((0, 3), np.float32)
        self.cloud_pub.publish(labelled_cloud(empty, np.zeros((0, 3), np.uint8), np.zeros(0, np.int64),
                                              np.zeros(0, np.float32), stamp_ns=self.get_clock().now().nanoseconds,
                                              frame_id=self.params.map_frame))
        self.stats.inc("map_resets")
        self.get_logger().info(f"map reset ({voxels} voxels cleared)")
        return True, f"map reset: {voxels} voxels cleared"

    def pause_integration(self, pause: bool) -> Tuple[bool, str]:
        """~/pause_integration: stop (True) or resume (False) fusing frames; segmenting and rendering go on."""
        self._integration_paused = bool(pause)
        state = "paused" if pause else "resumed"
        self.get_logger().info(f"integration {state}")
        return True, f"integration {state} ({len(self.pipeline)} voxels in the map)"

    def segment_now(self) -> Tuple[bool, str]:
        """~/segment_now: segment the map now (whatever segment_period_s) and publish labelled_cloud."""
        done = self._segment(force=True)
        return (True, done) if done else (False, "the map is empty: nothing to segment")

    def render_view(self, view: AssembledFrame) -> Dict[str, Image]:
        """rendered/{color, depth, semantic[, features]} of the map seen from ``view``, at render_width x
        render_height."""
        p, model_renderer = self.params, self.model_renderer  # one consistent set while parameters change
        w, h = p.render_width, p.render_height
        snap = self.pipeline.map.snapshot()
        K = scale_intrinsics(view.K, w / view.width, h / view.height)
        out = render_view(snap, view.cam_to_map, K, w, h, self.palette, voxel_size_m=self.pipeline.voxel_size_m,
                          max_gaussians=p.max_render_gaussians, device=p.device, backend=p.render_backend,
                          model_renderer=model_renderer)
        self.stats.timing("render_voxels_in_view", out.voxels_in_view)
        self.stats.timing("render_gaussians", out.gaussians)
        images = {"color": numpy_to_image(out.color, "rgb8", view.stamp_ns, view.frame_id),
                  "depth": numpy_to_image(out.depth_m, "32FC1", view.stamp_ns, view.frame_id),
                  "semantic": numpy_to_image(out.semantic, "rgb8", view.stamp_ns, view.frame_id)}
        if model_renderer is not None:
            images["features"] = numpy_to_image(out.features, "rgb8", view.stamp_ns, view.frame_id)
        return images

    # ------------------------------------------------------------------ parameters

    def _model_renderer_for(self, p: SegmentNodeParams) -> Optional[ModelMapRenderer]:
        """render_source gaussians: a renderer of the GaussianCross model (loaded once per checkpoint)."""
        if p.render_source != "gaussians":
            return None
        path, model = self._model
        if model is None or path != p.model_checkpoint_path:
            model = GaussianCrossModel.from_checkpoint(p.model_checkpoint_path, p.device)
            self._model = (p.model_checkpoint_path, model)
        return ModelMapRenderer(model, p.max_render_gaussians, backend=p.render_backend, up=p.render_up_vector)

    def _render_publishers(self, p: SegmentNodeParams, model_renderer) -> None:
        """The rendered/* publishers that ``p`` needs and that do not exist yet."""
        if not p.publish_rendered:
            return
        reliable = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
        for name in ("color", "depth", "semantic") + (("features",) if model_renderer is not None else ()):
            if name not in self.render_pubs:
                self.render_pubs[name] = self.create_publisher(Image, f"rendered/{name}", reliable)

    def _on_set_parameters(self, changed) -> SetParametersResult:
        """``ros2 param set``: the new values are checked as at start and applied at once, or refused with
        the reason and nothing changed. rclpy refuses the read-only ones (those not in RUNTIME_PARAMETERS)
        before this runs; parameters that are not the node's own (use_sim_time, qos_overrides.*) are
        rclpy's to handle."""
        values = {param.name: param.value for param in changed if param.name in RUNTIME_PARAMETERS}
        if not values:
            return SetParametersResult(successful=True)
        old = self.params
        try:
            new = SegmentNodeParams.from_dict({**old.flat(), **values}).validate()
            self.pipeline.reconfigure(_wall_paced(new))
            renderer_args = ("render_source", "model_checkpoint", "render_up", "render_backend",
                             "max_render_gaussians")
            model_renderer = self.model_renderer
            if any(getattr(new, a) != getattr(old, a) for a in renderer_args):
                model_renderer = self._model_renderer_for(new)  # may load a model, and fail: then refused
        except (GcrossError, ValueError, OSError) as e:
            self.pipeline.reconfigure(_wall_paced(old))
            reason = " ".join(str(e).split())
            self.get_logger().warning(f"parameters {sorted(values)} refused: {reason}")
            return SetParametersResult(successful=False, reason=reason)
        # accepted: nothing below can fail on a validated set
        with self._assembly_lock:
            self.assembler.config = replace(self.assembler.config, max_depth_m=new.assembly.max_depth_m,
                                            max_frame_rate_hz=new.assembly.max_frame_rate_hz)
        self.workers.set_pause("segment", new.pipeline.segment_period_s)
        self.workers.set_pause("render", new.render_period_s)
        self._diagnostics_timer.timer_period_ns = int(new.diagnostics_period_s * 1e9)
        self._warn.period_s = new.warn_throttle_s
        self._render_publishers(new, model_renderer)
        if model_renderer is not self.model_renderer:
            if model_renderer is not None and self._latest_view is not None:
                model_renderer.observe_camera(self._latest_view.cam_to_map)
            self.model_renderer = model_renderer
        self.params = new
        self._rendered = (None, 0)  # the next render shows the new settings
        self.get_logger().info("parameters set: " + ", ".join(f"{k}={v!r}" for k, v in sorted(values.items())))
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ reporting

    def _publish_legend(self) -> None:
        legend = {"classes": [{"id": i, "name": n, "color": self.palette[i].tolist()}
                              for i, n in enumerate(self.class_names)],
                  "label_field": "label", "checkpoint": self.params.checkpoint_path,
                  "voxel_size_m": self.pipeline.voxel_size_m, "grid_size_m": self.segmenter.grid_size_m}
        if self.segmenter.has_instance_head:
            legend.update(instance_field="instance", stuff_classes=list(self.segmenter.instance_config.stuff_classes))
        self.legend_pub.publish(String(data=json.dumps(legend)))

    def _publish_diagnostics(self) -> None:
        report = self.stats.report()
        with self._assembly_lock:
            report.update(self.assembler.account().as_dict())
        report["map_voxels"] = len(self.pipeline)
        report["evicted_voxels"] = self.pipeline.map.evicted_total
        report["integration_paused"] = int(self._integration_paused)
        # Publication sequence numbers (DDS) count exactly the color frames that never reached the callback;
        # without them, the larger of the stamp-gap estimate and the middleware's own count.
        if not report["arrivals.exact"]:
            report["frames_lost"] = max(report["frames_lost"], report.get("lost.middleware.color", 0))
        self.diag_pub.publish(diagnostics_msg(report, f"{self.get_name()}: pipeline", self.params.map_frame,
                                              self._last_report, self.get_clock().now().to_msg(),
                                              self.params.lost_warn_ratio))
        self._last_report = report


def _wall_paced(p: SegmentNodeParams):
    """The pipeline's config for the node: it paces segmentation in wall time on its worker thread
    (segment_period_s is the worker's pause), so the pipeline's stream-time period is unused."""
    return replace(p.pipeline, segment_period_s=0.0)


def _check_available(p: SegmentNodeParams) -> None:
    """UnavailableError naming the parameter when this machine cannot serve it (checked before the
    checkpoint loads, so that the node fails fast and with one line)."""
    if p.device.startswith("cuda"):
        index = int(p.device.partition(":")[2] or 0)
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= count:
            found = f"{count} CUDA devices" if count else "no usable CUDA device"
            raise UnavailableError(f"device {p.device!r}: this machine has {found} (torch "
                                   f"{torch.__version__}); set device:=cpu, or run where CUDA is available")
    if p.pose_source == "tf":
        try:
            import tf2_ros  # noqa: F401  (only this pose source needs it, and it is not on PyPI)
        except ImportError as e:
            raise UnavailableError(
                f"pose_source 'tf' needs the tf2_ros Python package, which cannot be imported here ({e}): source "
                "a ROS 2 installation (source /opt/ros/<distro>/setup.bash), or set pose_source:=topic and "
                "publish camera-to-map poses as geometry_msgs/PoseStamped on 'pose'") from None


@cli_main("segment_node")
def main(args=None) -> int:
    """Console script ``segment_node``: run the node until shutdown.

    A node that cannot start logs one FATAL line naming the parameter and what to do, and exits 2 for an
    unusable parameter or input file (``gcross_core.cli``), 1 when this machine cannot serve a parameter
    (``device:=cuda`` without CUDA, ``pose_source:=tf`` without tf2_ros) or for any other failure.
    """
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = SegmentNode()
        except (GcrossError, ValueError, FileNotFoundError) as e:
            rclpy.logging.get_logger(NODE_NAME).fatal("cannot start: " + " ".join(str(e).split()))
            return exit_code_for(e)
        # One thread: the callbacks only assemble frames (fusion, segmentation, rendering and the services
        # have threads of their own); rclpy's multi-threaded executor spun on the interpreter lock.
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        except Exception:
            # SIGTERM shuts the context down under the spinning executor, which may then fail to build its
            # wait set (RCLError "context is not valid"): that is the shutdown, not a failure
            if rclpy.ok():
                raise
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
