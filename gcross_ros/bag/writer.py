"""Write gcross RGB-D bags (layout in :mod:`gcross_ros.bag.format`) with ``rosbags``; nothing imports rclpy.

Registration: the color image is resampled into the depth camera (depth resolution, ``K_depth``; the
two cameras share a pose, as in the ScanNet SensReader export) by bilinear sampling through
``K_color @ inv(K_depth)``. When both cameras have the same intrinsics and size the image is copied
unchanged; when ``K_depth`` is the scaled ``K_color`` this is a plain resize. Depth pixels the color
camera does not see are written as 0 (no measurement).
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from gcross_core.errors import BagError, InputError
from gcross_core.geometry import is_valid_pose
from gcross_core.image import depth_m_to_mm, register_color_to_depth
from gcross_ros.bag.format import (CLASS_NAMES_KEY, COMPRESSED_SUFFIXES, RECORDER_KEY, SCENE_NAME_KEY,
                                   GroundTruthCloud, RecordConfig, RecordSummary)
from gcross_ros.msgs import codec
from gcross_ros.msgs import rosbags_msgs as rb

log = logging.getLogger(__name__)


def _qos(depth: int, transient_local: bool):
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    zero = QosTime(0, 0)  # 0 = the RMW default, i.e. infinite deadline/lifespan/lease
    return Qos(QosHistory.KEEP_LAST, depth, QosReliability.RELIABLE,
               QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
               zero, zero, QosLiveliness.AUTOMATIC, zero, False)


class BagWriter:
    """Thin wrapper over ``rosbags.rosbag2.Writer`` that serializes rosbags message dataclasses."""

    def __init__(self, path, storage: str = "sqlite3"):
        from rosbags.rosbag2 import StoragePlugin, Writer

        if storage not in ("sqlite3", "mcap"):
            raise InputError(f"storage must be 'sqlite3' or 'mcap', got {storage!r}")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"bag {self.path} already exists; choose a new --out path")
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=Writer.VERSION_LATEST, storage_plugin=plugin)
        self._connections = {}

    def __enter__(self):
        self._writer.open()
        return self

    def __exit__(self, exc_type, exc, tb):
        self._writer.close()
        if exc_type is not None:
            # a half-written bag with valid metadata would look complete to every reader
            shutil.rmtree(self.path, ignore_errors=True)
        return False

    def set_custom_data(self, key: str, value: str) -> None:
        self._writer.set_custom_data(key, value)

    def add_topic(self, topic: str, msgtype: str, latched: bool = False) -> None:
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, typestore=rb.typestore(),
            offered_qos_profiles=[_qos(1 if latched else 10, transient_local=latched)])

    def write(self, topic: str, msg, t_ns: int) -> None:
        conn = self._connections[topic]
        self._writer.write(conn, int(t_ns), rb.serialize(msg, conn.msgtype))


def record_frames(out,
                  frames,  # iterable of (color [H,W,3] uint8, depth_m [H,W] f32, K_color, K_depth, cam_to_map)
                  gt: Optional[GroundTruthCloud] = None,
                  config: RecordConfig = RecordConfig(),
                  scene_name: str = "") -> RecordSummary:
    """Write frames (already subsampled) and an optional ground-truth cloud as a bag at ``out``."""
    if config.rate_hz <= 0:
        raise InputError(f"rate_hz must be > 0, got {config.rate_hz}")
    tp = config.topics
    period_ns = int(round(1e9 / config.rate_hz))
    t0 = int(config.start_time_ns)
    written = skipped = 0
    size = (0, 0)
    with BagWriter(out, config.storage) as bag:
        bag.add_topic(tp.tf_static, "tf2_msgs/msg/TFMessage", latched=True)
        if gt is not None:
            bag.add_topic(tp.gt_cloud, "sensor_msgs/msg/PointCloud2", latched=True)
        if config.compressed not in ("", "jpeg", "png"):
            raise InputError(f"compressed must be '', 'jpeg' or 'png', got {config.compressed!r}")
        image_type = "sensor_msgs/msg/CompressedImage" if config.compressed else "sensor_msgs/msg/Image"
        color_topic = tp.color + (COMPRESSED_SUFFIXES["color"] if config.compressed else "")
        depth_topic = tp.depth + (COMPRESSED_SUFFIXES["depth"] if config.compressed else "")
        for topic, msgtype in ((color_topic, image_type), (depth_topic, image_type),
                               (tp.camera_info, "sensor_msgs/msg/CameraInfo"),
                               (tp.pose, "geometry_msgs/msg/PoseStamped"), (tp.tf, "tf2_msgs/msg/TFMessage")):
            bag.add_topic(topic, msgtype)
        bag.set_custom_data(RECORDER_KEY, "gcross-bag record")
        if gt is not None and gt.class_names:
            bag.set_custom_data(CLASS_NAMES_KEY, json.dumps(list(gt.class_names)))
        if scene_name:
            bag.set_custom_data(SCENE_NAME_KEY, scene_name)

        static = rb.transform_stamped_msg(np.eye(4), t0, config.camera_frame, config.depth_frame)
        bag.write(tp.tf_static, rb.tf_msg([static]), t0)
        if gt is not None:
            # instance ids travel shifted by one: the field's 0 means "no object"
            inst = None if gt.instance is None else np.asarray(gt.instance, np.int64) + 1
            points = codec.labelled_points(gt.coord, gt.color, gt.label, instance=inst)
            bag.write(tp.gt_cloud, rb.cloud_msg(points, t0, config.map_frame), t0)

        for color, depth_m, K_color, K_depth, cam_to_map in frames:
            depth_m = np.asarray(depth_m)
            if depth_m.ndim != 2:
                raise InputError(f"depth image has shape {depth_m.shape}, expected [H, W]")
            if not is_valid_pose(cam_to_map):
                skipped += 1  # ScanNet marks lost tracking with -inf poses; such frames carry no geometry
                continue
            K_depth = np.asarray(K_color if K_depth is None else K_depth, np.float64)
            rgb, seen = register_color_to_depth(color, K_color, K_depth, depth_m.shape)
            depth_m = np.where(seen, depth_m, 0.0)  # no color of its own: no point
            t = t0 + written * period_ns
            h, w = depth_m.shape
            size = (w, h)
            if config.compressed:
                bag.write(color_topic, rb.compressed_image_msg(codec.encode_compressed_color(rgb, config.compressed),
                                                               t, config.camera_frame), t)
                bag.write(depth_topic, rb.compressed_image_msg(codec.encode_compressed_depth(depth_m), t,
                                                               config.camera_frame), t)
            else:
                bag.write(color_topic, rb.image_msg(rgb, "rgb8", t, config.camera_frame), t)
                bag.write(depth_topic, rb.image_msg(depth_m_to_mm(depth_m), "16UC1", t, config.camera_frame), t)
            bag.write(tp.camera_info, rb.camera_info_msg(K_depth, w, h, t, config.camera_frame), t)
            bag.write(tp.pose, rb.pose_stamped_msg(cam_to_map, t, config.map_frame), t)
            tf = rb.transform_stamped_msg(cam_to_map, t, config.map_frame, config.camera_frame)
            bag.write(tp.tf, rb.tf_msg([tf]), t)
            written += 1
    if skipped:
        log.warning("bag %s: skipped %d frames with invalid poses", out, skipped)
    return RecordSummary(Path(out), written, skipped, 0 if gt is None else len(gt.coord), size)


def record_scene(scene, out, config: RecordConfig = RecordConfig(),
                 class_names: Optional[Sequence[str]] = None, max_frames: Optional[int] = None,
                 progress: bool = False) -> RecordSummary:
    """Record a scene (``gcross_core.data.Scene`` or anything with the same attributes) as a bag.

    Uses ``scene.frames`` (``len()``, ``frame(i)`` with color, depth_m, K_color, K_depth, cam_to_world;
    the scene's world frame is the bag's map frame) and, when ``scene.segment`` is set, the labelled
    cloud ``scene.coord/color/segment`` with ``class_names`` (default: ``scene.class_names``).
    """
    if getattr(scene, "frames", None) is None or len(scene.frames) == 0:
        raise InputError(f"scene {getattr(scene, 'name', '?')!r} has no RGB-D frames to record")
    if config.every < 1:
        raise InputError(f"every must be >= 1, got {config.every}")
    if class_names is None and getattr(scene, "class_names", None):
        class_names = list(scene.class_names)
    gt = None
    if getattr(scene, "segment", None) is not None:
        coord = np.asarray(scene.coord, np.float32)
        # scene colors are 0..255 in any numeric type; the cloud holds uint8
        color = np.clip(np.rint(np.asarray(scene.color, np.float64)), 0, 255).astype(np.uint8)
        instance = getattr(scene, "instance", None)
        gt = GroundTruthCloud(coord=coord, color=color, label=np.asarray(scene.segment),
                              class_names=list(class_names) if class_names else None,
                              instance=None if instance is None else np.asarray(instance, np.int64))
    else:
        log.warning("scene %s has no labels; the bag gets no ground-truth cloud", getattr(scene, "name", "?"))
    indices = list(range(0, len(scene.frames), config.every))
    if max_frames is not None:
        indices = indices[:max_frames]
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="record", unit="frame")

    def gen():
        for i in indices:
            f = scene.frames.frame(i)
            yield f.color, f.depth_m, f.K_color, f.K_depth, f.cam_to_world

    return record_frames(out, gen(), gt, config, scene_name=str(getattr(scene, "name", "") or ""))
