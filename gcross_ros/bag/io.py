"""Write and read gcross RGB-D bags (ROS 2 bag format) with ``rosbags``, without ROS installed.

A recorded bag holds, for every frame (same header stamp on all of them):

- ``/camera/color/image_raw``   sensor_msgs/Image rgb8, registered to the depth camera (see below)
- ``/camera/depth/image_raw``   sensor_msgs/Image 16UC1, millimetres, 0 = no measurement
- ``/camera/color/camera_info`` sensor_msgs/CameraInfo of that registered camera (no distortion)
- ``/camera/pose``              geometry_msgs/PoseStamped, camera-to-map, frame ``map``
- ``/tf``                       ``map -> camera_color_optical_frame`` at the frame's stamp

and once, at the start time: ``/tf_static`` (``camera_color_optical_frame -> camera_depth_optical_frame``,
identity, because depth is registered to color) and ``/gt/labelled_cloud`` (sensor_msgs/PointCloud2 in
``map`` with fields x, y, z float32, rgb float32 packed as RViz expects, label uint32 where the ignore
label -1 is stored as 0xFFFFFFFF). Both once-only topics are offered transient-local, so a late
subscriber to ``ros2 bag play`` still gets them. The class names ride in the bag metadata
(``custom_data['gcross/class_names']``, JSON).

Registration: the color image is resampled into the depth camera (depth resolution, ``K_depth``; the
two cameras share a pose, as in the ScanNet SensReader export) by bilinear sampling through
``K_color @ inv(K_depth)``. When both cameras have the same intrinsics and size the image is copied
unchanged; when ``K_depth`` is the scaled ``K_color`` this is a plain resize.

Everything here produces or consumes raw CDR through the rosbags typestore; nothing imports rclpy.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sqlite3
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from gcross_core.image import depth_m_to_mm, depth_mm_to_m, register_color_to_depth
from gcross_core.errors import BagError

log = logging.getLogger(__name__)

# Fixed start so that recording the same scene twice gives byte-identical bags (2023-11-14 22:13:20 UTC).
DEFAULT_START_TIME_NS = 1_700_000_000 * 10**9
CLASS_NAMES_KEY = "gcross/class_names"
SCENE_NAME_KEY = "gcross/scene"
IGNORE_LABEL_U32 = 0xFFFFFFFF  # label -1 as uint32 (two's complement), what .view(int32) turns back into -1


@dataclass(frozen=True)
class BagTopics:
    color: str = "/camera/color/image_raw"
    depth: str = "/camera/depth/image_raw"
    camera_info: str = "/camera/color/camera_info"
    pose: str = "/camera/pose"
    tf: str = "/tf"
    tf_static: str = "/tf_static"
    gt_cloud: str = "/gt/labelled_cloud"


@dataclass(frozen=True)
class RecordConfig:
    rate_hz: float = 10.0  # stamp spacing of the recorded frames (after --every), i.e. the replay rate
    start_time_ns: int = DEFAULT_START_TIME_NS
    every: int = 1  # keep every k-th frame of the scene
    storage: str = "sqlite3"  # or "mcap"
    map_frame: str = "map"
    camera_frame: str = "camera_color_optical_frame"
    depth_frame: str = "camera_depth_optical_frame"  # only named in /tf_static; images carry camera_frame
    topics: BagTopics = field(default_factory=BagTopics)


@dataclass
class BagFrame:
    stamp_ns: int
    color: np.ndarray  # [H, W, 3] uint8 RGB, registered to depth
    depth_m: np.ndarray  # [H, W] float32 metres, 0 = no measurement
    K: np.ndarray  # [3, 3] float64 intrinsics of the (registered) camera
    cam_to_map: np.ndarray  # [4, 4] float64
    frame_id: str = ""


@dataclass
class GroundTruthCloud:
    coord: np.ndarray  # [N, 3] float32 metres, map frame
    color: np.ndarray  # [N, 3] uint8
    label: np.ndarray  # [N] int64, -1 = ignore
    class_names: Optional[List[str]] = None
    stamp_ns: int = 0


@dataclass
class BagContents:
    stamps_ns: np.ndarray  # [F] int64
    color: np.ndarray  # [F, H, W, 3] uint8
    depth_m: np.ndarray  # [F, H, W] float32
    K: np.ndarray  # [F, 3, 3] float64
    cam_to_map: np.ndarray  # [F, 4, 4] float64
    gt: Optional[GroundTruthCloud]
    class_names: Optional[List[str]]
    scene_name: Optional[str]


@dataclass
class RecordSummary:
    path: Path
    frames_written: int
    frames_skipped_invalid_pose: int
    gt_points: int
    image_size: Tuple[int, int]  # (width, height)


# ---------------------------------------------------------------- typestore helpers

_TYPESTORE = None


def typestore():
    """The newest ROS 2 typestore rosbags ships (Kilted where available)."""
    global _TYPESTORE
    if _TYPESTORE is None:
        from rosbags.typesys import Stores, get_typestore

        for name in ("ROS2_KILTED", "ROS2_JAZZY", "ROS2_HUMBLE"):
            if hasattr(Stores, name):
                _TYPESTORE = get_typestore(getattr(Stores, name))
                break
    return _TYPESTORE


def _msg(msgtype: str, **kw):
    return typestore().types[msgtype](**kw)


def _stamp(t_ns: int):
    return _msg("builtin_interfaces/msg/Time", sec=int(t_ns // 10**9), nanosec=int(t_ns % 10**9))


def _header(t_ns: int, frame_id: str):
    return _msg("std_msgs/msg/Header", stamp=_stamp(t_ns), frame_id=frame_id)


def _stamp_ns(header) -> int:
    return int(header.stamp.sec) * 10**9 + int(header.stamp.nanosec)


# ---------------------------------------------------------------- numpy <-> message dataclasses

def image_msg(pixels: np.ndarray, encoding: str, t_ns: int, frame_id: str):
    pixels = np.ascontiguousarray(pixels)
    h, w = pixels.shape[:2]
    step = pixels.strides[0]
    return _msg("sensor_msgs/msg/Image", header=_header(t_ns, frame_id), height=h, width=w,
                encoding=encoding, is_bigendian=0, step=step,
                data=np.frombuffer(pixels.tobytes(), np.uint8))


_IMAGE_DTYPES = {"rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "16UC1": (np.uint16, 1),
                 "mono16": (np.uint16, 1), "32FC1": (np.float32, 1), "mono8": (np.uint8, 1)}


def image_from_msg(msg) -> np.ndarray:
    """[H, W, C] or [H, W] array of a sensor_msgs/Image (rosbags dataclass or rclpy message)."""
    enc = msg.encoding
    if enc not in _IMAGE_DTYPES:
        raise ValueError(f"image encoding {enc!r} is not supported (expected one of {sorted(_IMAGE_DTYPES)})")
    dtype, ch = _IMAGE_DTYPES[enc]
    dtype = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    row = w * ch * dtype.itemsize
    buf = np.asarray(msg.data, dtype=np.uint8).reshape(-1) if not isinstance(msg.data, (bytes, bytearray)) \
        else np.frombuffer(msg.data, np.uint8)
    if step < row or buf.size < step * h:
        raise ValueError(f"image {w}x{h} {enc}: step {step} and {buf.size} data bytes are too small "
                         f"(need step >= {row} and {row * h} bytes)")
    rows = buf[: step * h].reshape(h, step)[:, :row]
    arr = np.ascontiguousarray(rows).view(dtype).astype(dtype.newbyteorder("="))
    arr = arr.reshape(h, w, ch) if ch > 1 else arr.reshape(h, w)
    if enc == "bgr8":
        arr = arr[..., ::-1].copy()
    return arr


def camera_info_msg(K: np.ndarray, width: int, height: int, t_ns: int, frame_id: str):
    K = np.asarray(K, np.float64)
    P = np.zeros((3, 4))
    P[:, :3] = K
    roi = _msg("sensor_msgs/msg/RegionOfInterest", x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return _msg("sensor_msgs/msg/CameraInfo", header=_header(t_ns, frame_id), height=int(height),
                width=int(width), distortion_model="plumb_bob", d=np.zeros(5), k=K.reshape(-1).copy(),
                r=np.eye(3).reshape(-1), p=P.reshape(-1), binning_x=0, binning_y=0, roi=roi)


def _pose_parts(T: np.ndarray):
    from gcross_core.geometry import quat_from_pose  # geometry imports torch: not needed by play

    t, q = quat_from_pose(np.asarray(T, np.float64))
    q = q / np.linalg.norm(q)
    if q[0] < 0:  # one canonical sign so recordings are reproducible
        q = -q
    return t, q


def pose_stamped_msg(cam_to_map: np.ndarray, t_ns: int, map_frame: str):
    t, q = _pose_parts(cam_to_map)
    pose = _msg("geometry_msgs/msg/Pose",
                position=_msg("geometry_msgs/msg/Point", x=float(t[0]), y=float(t[1]), z=float(t[2])),
                orientation=_msg("geometry_msgs/msg/Quaternion", x=float(q[1]), y=float(q[2]),
                                 z=float(q[3]), w=float(q[0])))
    return _msg("geometry_msgs/msg/PoseStamped", header=_header(t_ns, map_frame), pose=pose)


def transform_stamped_msg(parent_to_child: np.ndarray, t_ns: int, parent: str, child: str):
    """TF convention: the transform maps child-frame coordinates into the parent frame."""
    t, q = _pose_parts(parent_to_child)
    tr = _msg("geometry_msgs/msg/Transform",
              translation=_msg("geometry_msgs/msg/Vector3", x=float(t[0]), y=float(t[1]), z=float(t[2])),
              rotation=_msg("geometry_msgs/msg/Quaternion", x=float(q[1]), y=float(q[2]), z=float(q[3]),
                            w=float(q[0])))
    return _msg("geometry_msgs/msg/TransformStamped", header=_header(t_ns, parent), child_frame_id=child,
                transform=tr)


def pose_from_msg(pose) -> np.ndarray:  # geometry_msgs Pose or Transform -> [4, 4]
    if hasattr(pose, "position"):
        p, q = pose.position, pose.orientation
    else:
        p, q = pose.translation, pose.rotation
    quat = np.array([q.w, q.x, q.y, q.z], np.float64)
    n = np.linalg.norm(quat)
    if not np.isfinite(n) or n < 1e-9:
        raise ValueError(f"pose quaternion {quat.tolist()} is not a rotation")
    from gcross_core.geometry import pose_from_quat

    return pose_from_quat([p.x, p.y, p.z], quat / n)


_PF_FLOAT32, _PF_UINT32 = 7, 6  # sensor_msgs/PointField datatypes
_CLOUD_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4"), ("label", "<u4")])


def pack_rgb(color: np.ndarray) -> np.ndarray:  # [N, 3] 0..255 -> [N] float32 carrying 0x00RRGGBB bits
    c = np.clip(np.rint(np.asarray(color, np.float64)), 0, 255).astype(np.uint32)
    return ((c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]).view(np.float32)


def unpack_rgb(rgb: np.ndarray) -> np.ndarray:  # [N] float32 -> [N, 3] uint8
    u = np.ascontiguousarray(rgb, dtype=np.float32).view(np.uint32)
    return np.stack([(u >> 16) & 255, (u >> 8) & 255, u & 255], axis=1).astype(np.uint8)


def labelled_cloud_msg(coord: np.ndarray,  # [N, 3] m
                       color: np.ndarray,  # [N, 3] 0..255
                       label: np.ndarray,  # [N] int, -1 = ignore
                       t_ns: int, frame_id: str):
    coord = np.asarray(coord)
    n = len(coord)
    if coord.shape != (n, 3) or np.shape(color) != (n, 3) or np.shape(label) != (n,):
        raise ValueError(f"cloud coord {coord.shape}, color {np.shape(color)}, label {np.shape(label)}: "
                         f"expected [N, 3], [N, 3], [N]")
    rec = np.empty(n, _CLOUD_DTYPE)
    rec["x"], rec["y"], rec["z"] = coord[:, 0], coord[:, 1], coord[:, 2]
    rec["rgb"] = pack_rgb(color)
    rec["label"] = np.asarray(label, np.int64).astype(np.int32).view(np.uint32)  # -1 -> 0xFFFFFFFF
    fields = [_msg("sensor_msgs/msg/PointField", name=name, offset=_CLOUD_DTYPE.fields[name][1],
                   datatype=_PF_UINT32 if name == "label" else _PF_FLOAT32, count=1)
              for name in _CLOUD_DTYPE.names]
    return _msg("sensor_msgs/msg/PointCloud2", header=_header(t_ns, frame_id), height=1, width=n,
                fields=fields, is_bigendian=False, point_step=_CLOUD_DTYPE.itemsize,
                row_step=_CLOUD_DTYPE.itemsize * n, data=np.frombuffer(rec.tobytes(), np.uint8),
                is_dense=bool(np.isfinite(coord).all()))


def cloud_from_msg(msg) -> Dict[str, np.ndarray]:
    """Fields of a little-endian PointCloud2 (rosbags or rclpy message) as arrays; needs x, y, z."""
    if msg.is_bigendian:
        raise ValueError("big-endian PointCloud2 is not supported")
    types = {1: "i1", 2: "u1", 3: "<i2", 4: "<u2", 5: "<i4", 6: "<u4", 7: "<f4", 8: "<f8"}
    names, formats, offsets = [], [], []
    for f in msg.fields:
        if int(f.datatype) not in types or int(f.count) != 1:
            continue
        names.append(f.name)
        formats.append(types[int(f.datatype)])
        offsets.append(int(f.offset))
    if not {"x", "y", "z"} <= set(names):
        raise ValueError(f"PointCloud2 has fields {names}, expected at least x, y, z")
    dt = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": int(msg.point_step)})
    n = int(msg.width) * int(msg.height)
    buf = np.asarray(msg.data, np.uint8).reshape(-1) if not isinstance(msg.data, (bytes, bytearray)) \
        else np.frombuffer(msg.data, np.uint8)
    if buf.size < n * int(msg.point_step):
        raise ValueError(f"PointCloud2 of {n} points x {msg.point_step} B has only {buf.size} data bytes")
    rec = np.frombuffer(buf[: n * int(msg.point_step)].tobytes(), dt)
    return {name: np.ascontiguousarray(rec[name]) for name in names}


# ---------------------------------------------------------------- writing

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
            raise ValueError(f"storage must be 'sqlite3' or 'mcap', got {storage!r}")
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
            topic, msgtype, typestore=typestore(),
            offered_qos_profiles=[_qos(1 if latched else 10, transient_local=latched)])

    def write(self, topic: str, msg, t_ns: int) -> None:
        conn = self._connections[topic]
        self._writer.write(conn, int(t_ns), typestore().serialize_cdr(msg, conn.msgtype))


def record_frames(out,
                  frames,  # iterable of (color [H,W,3] uint8, depth_m [H,W] f32, K_color, K_depth, cam_to_map)
                  gt: Optional[GroundTruthCloud] = None,
                  config: RecordConfig = RecordConfig(),
                  scene_name: str = "") -> RecordSummary:
    """Write frames (already subsampled) and an optional ground-truth cloud as a bag at ``out``."""
    from gcross_core.geometry import is_valid_pose

    if config.rate_hz <= 0:
        raise ValueError(f"rate_hz must be > 0, got {config.rate_hz}")
    tp = config.topics
    period_ns = int(round(1e9 / config.rate_hz))
    t0 = int(config.start_time_ns)
    written = skipped = 0
    size = (0, 0)
    with BagWriter(out, config.storage) as bag:
        bag.add_topic(tp.tf_static, "tf2_msgs/msg/TFMessage", latched=True)
        if gt is not None:
            bag.add_topic(tp.gt_cloud, "sensor_msgs/msg/PointCloud2", latched=True)
        for topic, msgtype in ((tp.color, "sensor_msgs/msg/Image"), (tp.depth, "sensor_msgs/msg/Image"),
                               (tp.camera_info, "sensor_msgs/msg/CameraInfo"),
                               (tp.pose, "geometry_msgs/msg/PoseStamped"), (tp.tf, "tf2_msgs/msg/TFMessage")):
            bag.add_topic(topic, msgtype)
        if gt is not None and gt.class_names:
            bag.set_custom_data(CLASS_NAMES_KEY, json.dumps(list(gt.class_names)))
        if scene_name:
            bag.set_custom_data(SCENE_NAME_KEY, scene_name)

        static = transform_stamped_msg(np.eye(4), t0, config.camera_frame, config.depth_frame)
        bag.write(tp.tf_static, _msg("tf2_msgs/msg/TFMessage", transforms=[static]), t0)
        if gt is not None:
            bag.write(tp.gt_cloud, labelled_cloud_msg(gt.coord, gt.color, gt.label, t0, config.map_frame), t0)

        for color, depth_m, K_color, K_depth, cam_to_map in frames:
            depth_m = np.asarray(depth_m)
            if depth_m.ndim != 2:
                raise ValueError(f"depth image has shape {depth_m.shape}, expected [H, W]")
            if not is_valid_pose(cam_to_map):
                skipped += 1  # ScanNet marks lost tracking with -inf poses; such frames carry no geometry
                continue
            K_depth = np.asarray(K_color if K_depth is None else K_depth, np.float64)
            rgb, seen = register_color_to_depth(color, K_color, K_depth, depth_m.shape)
            depth_m = np.where(seen, depth_m, 0.0)  # no color of its own: no point
            t = t0 + written * period_ns
            h, w = depth_m.shape
            size = (w, h)
            bag.write(tp.color, image_msg(rgb, "rgb8", t, config.camera_frame), t)
            bag.write(tp.depth, image_msg(depth_m_to_mm(depth_m), "16UC1", t, config.camera_frame), t)
            bag.write(tp.camera_info, camera_info_msg(K_depth, w, h, t, config.camera_frame), t)
            bag.write(tp.pose, pose_stamped_msg(cam_to_map, t, config.map_frame), t)
            tf = transform_stamped_msg(cam_to_map, t, config.map_frame, config.camera_frame)
            bag.write(tp.tf, _msg("tf2_msgs/msg/TFMessage", transforms=[tf]), t)
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
        raise ValueError(f"scene {getattr(scene, 'name', '?')!r} has no RGB-D frames to record")
    if config.every < 1:
        raise ValueError(f"every must be >= 1, got {config.every}")
    if class_names is None and getattr(scene, "class_names", None):
        class_names = list(scene.class_names)
    gt = None
    if getattr(scene, "segment", None) is not None:
        coord = np.asarray(scene.coord, np.float32)
        gt = GroundTruthCloud(coord=coord, color=np.asarray(scene.color), label=np.asarray(scene.segment),
                              class_names=list(class_names) if class_names else None)
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


# ---------------------------------------------------------------- reading

@contextlib.contextmanager
def _errors_name_bag(path, doing: str):
    try:
        yield
    except BagError:
        raise
    except FileNotFoundError as e:
        raise BagError(f"bag {path}: not found ({e})") from e
    except (sqlite3.Error, struct.error, EOFError, OSError, KeyError, IndexError, ValueError, TypeError,
            AssertionError, RuntimeError, UnicodeDecodeError) as e:
        # rosbags raises ReaderError (a subclass of Exception) and lets sqlite/mcap/CDR errors through;
        # all of them mean the same to a caller: this bag is unreadable.
        raise BagError(f"bag {path} is corrupt or truncated ({doing}): {type(e).__name__}: {e}") from e
    except Exception as e:  # rosbags' own error classes
        if type(e).__module__.startswith("rosbags"):
            raise BagError(f"bag {path} cannot be read ({doing}): {e}") from e
        raise


class BagReader:
    """Read raw CDR messages of a bag; every failure becomes a :class:`BagError` naming the bag."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"bag {self.path} does not exist")
        with _errors_name_bag(self.path, "opening"):
            from rosbags.rosbag2 import Reader

            self._reader = Reader(self.path)
            self._reader.open()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    @property
    def topics(self) -> Dict[str, str]:
        """topic -> message type."""
        return {c.topic: c.msgtype for c in self._reader.connections}

    @property
    def topic_counts(self) -> Dict[str, int]:
        """topic -> message count from the metadata."""
        counts: Dict[str, int] = {}
        for c in self._reader.connections:
            counts[c.topic] = counts.get(c.topic, 0) + int(c.msgcount)
        return counts

    def qos(self, topic: str):
        """Offered QoS profiles recorded for ``topic`` (rosbags Qos tuples, possibly empty)."""
        for c in self._reader.connections:
            if c.topic == topic:
                return list(getattr(c.ext, "offered_qos_profiles", []) or [])
        return []

    @property
    def message_count(self) -> int:
        return int(self._reader.message_count)

    @property
    def start_time_ns(self) -> int:
        return int(self._reader.start_time)

    @property
    def end_time_ns(self) -> int:
        return int(self._reader.end_time)

    @property
    def custom_data(self) -> Dict[str, str]:
        meta = getattr(self._reader.storage, "metadata", None)
        return dict(getattr(meta, "custom", None) or {})

    @property
    def class_names(self) -> Optional[List[str]]:
        raw = self.custom_data.get(CLASS_NAMES_KEY)
        if raw is None:
            return None
        with _errors_name_bag(self.path, f"parsing metadata {CLASS_NAMES_KEY}"):
            names = json.loads(raw)
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError(f"{CLASS_NAMES_KEY} is not a list of names")
            return names

    def messages(self, topics: Optional[Sequence[str]] = None,
                 ) -> Iterator[Tuple[str, str, int, bytes]]:
        """(topic, msgtype, receive time ns, raw CDR) in time order.

        After a complete pass over all topics the count is checked against the metadata, so a bag
        whose data file lost its tail is reported instead of silently yielding fewer messages.
        """
        conns = [c for c in self._reader.connections if topics is None or c.topic in topics]
        if topics is not None and not conns:
            return
        expected = sum(int(c.msgcount) for c in conns)
        n = 0
        with _errors_name_bag(self.path, "reading messages"):
            for conn, t_ns, raw in self._reader.messages(connections=conns):
                n += 1
                yield conn.topic, conn.msgtype, int(t_ns), bytes(raw)
        if n != expected:
            raise BagError(f"bag {self.path} is truncated: its metadata lists {expected} messages on "
                           f"{sorted({c.topic for c in conns})} but only {n} could be read")

    def deserialize(self, raw: bytes, msgtype: str, topic: str = ""):
        with _errors_name_bag(self.path, f"decoding a {msgtype} on {topic or '?'}"):
            return typestore().deserialize_cdr(raw, msgtype)


def _ground_truth_from_msg(msg, class_names) -> GroundTruthCloud:
    fields = cloud_from_msg(msg)
    coord = np.stack([fields["x"], fields["y"], fields["z"]], axis=1).astype(np.float32)
    color = unpack_rgb(fields["rgb"]) if "rgb" in fields else np.zeros((len(coord), 3), np.uint8)
    if "label" not in fields:
        raise ValueError("ground-truth cloud has no 'label' field")
    label = fields["label"].astype(np.uint32).view(np.int32).astype(np.int64)
    return GroundTruthCloud(coord, color, label, class_names, _stamp_ns(msg.header))


def read_ground_truth(path, topics: BagTopics = BagTopics()) -> Optional[GroundTruthCloud]:
    """The labelled ground-truth cloud of a bag, or None when the bag has none."""
    with BagReader(path) as bag:
        if topics.gt_cloud not in bag.topics:
            return None
        for topic, msgtype, _, raw in bag.messages([topics.gt_cloud]):
            msg = bag.deserialize(raw, msgtype, topic)
            with _errors_name_bag(bag.path, f"decoding {topic}"):
                return _ground_truth_from_msg(msg, bag.class_names)
    return None


def iter_frames(path, topics: BagTopics = BagTopics()) -> Iterator[BagFrame]:
    """RGB-D frames of a bag in stamp order: color, depth, camera info and pose with equal header stamps.

    The pose comes from the pose topic, or from /tf (map -> camera frame) when the bag has no pose
    topic. Incomplete frames (a message missing for a stamp) are dropped with a warning.
    """
    with BagReader(path) as bag:
        avail = bag.topics
        use_tf = topics.pose not in avail
        need = [topics.color, topics.depth, topics.camera_info, topics.tf if use_tf else topics.pose]
        missing = [t for t in need if t not in avail]
        if missing:
            raise BagError(f"bag {bag.path} lacks topics {missing} (has {sorted(avail)})")
        pending: Dict[int, dict] = {}
        dropped = 0
        for topic, msgtype, _, raw in bag.messages(need):
            msg = bag.deserialize(raw, msgtype, topic)
            if topic == topics.tf:
                items = [(tr.header, tr.transform) for tr in msg.transforms]
            else:
                items = [(msg.header, msg)]
            for header, payload in items:
                stamp = _stamp_ns(header)
                slot = pending.setdefault(stamp, {})
                slot[topic] = payload
                if len(slot) == len(need):
                    del pending[stamp]
                    # frames arrive in stamp order; anything older that is still incomplete never will be
                    for old in [s for s in pending if s < stamp]:
                        del pending[old]
                        dropped += 1
                    with _errors_name_bag(bag.path, f"decoding the frame at stamp {stamp}"):
                        frame = _frame_from_msgs(stamp, slot, topics, use_tf)
                    yield frame
        dropped += len(pending)
        if dropped:
            log.warning("bag %s: dropped %d incomplete frames", bag.path, dropped)


def _frame_from_msgs(stamp: int, slot: dict, topics: BagTopics, use_tf: bool) -> BagFrame:
    color_msg = slot[topics.color]
    color = image_from_msg(color_msg)
    if color.ndim != 3:
        raise ValueError(f"color image encoding {color_msg.encoding} is not 3-channel")
    depth_msg = slot[topics.depth]
    depth = image_from_msg(depth_msg)
    if depth_msg.encoding in ("16UC1", "mono16"):
        depth_m = depth_mm_to_m(depth)
    elif depth_msg.encoding == "32FC1":
        depth_m = np.nan_to_num(depth.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    else:
        raise ValueError(f"depth encoding {depth_msg.encoding!r} is not 16UC1 or 32FC1")
    if depth_m.shape != color.shape[:2]:
        raise ValueError(f"depth image {depth_m.shape[1]}x{depth_m.shape[0]} does not match color "
                         f"{color.shape[1]}x{color.shape[0]} (depth must be registered to color)")
    K = np.asarray(slot[topics.camera_info].k, np.float64).reshape(3, 3)
    pose_payload = slot[topics.tf if use_tf else topics.pose]
    cam_to_map = pose_from_msg(pose_payload if use_tf else pose_payload.pose)
    return BagFrame(stamp, color, depth_m, K, cam_to_map, color_msg.header.frame_id)


def read_bag(path, topics: BagTopics = BagTopics()) -> BagContents:
    """Everything in a gcross bag as stacked arrays (for tests and small bags; use iter_frames otherwise)."""
    frames = list(iter_frames(path, topics))
    gt = read_ground_truth(path, topics)
    with BagReader(path) as bag:
        class_names = bag.class_names
        scene_name = bag.custom_data.get(SCENE_NAME_KEY)
    if frames:
        shapes = {f.depth_m.shape for f in frames}
        if len(shapes) > 1:
            raise BagError(f"bag {path}: frames have different sizes {sorted(shapes)}; use iter_frames")
        stack = dict(stamps_ns=np.array([f.stamp_ns for f in frames], np.int64),
                     color=np.stack([f.color for f in frames]), depth_m=np.stack([f.depth_m for f in frames]),
                     K=np.stack([f.K for f in frames]), cam_to_map=np.stack([f.cam_to_map for f in frames]))
    else:
        stack = dict(stamps_ns=np.zeros(0, np.int64), color=np.zeros((0, 0, 0, 3), np.uint8),
                     depth_m=np.zeros((0, 0, 0), np.float32), K=np.zeros((0, 3, 3)), cam_to_map=np.zeros((0, 4, 4)))
    return BagContents(**stack, gt=gt, class_names=class_names, scene_name=scene_name)


__all__ = [
    "BagContents", "BagError", "BagFrame", "BagReader", "BagTopics", "BagWriter", "GroundTruthCloud",
    "RecordConfig", "RecordSummary", "cloud_from_msg", "image_from_msg", "iter_frames",
    "labelled_cloud_msg", "pack_rgb", "read_bag", "read_ground_truth", "record_frames",
    "record_scene", "unpack_rgb",
]
