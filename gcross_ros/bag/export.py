"""A recorded RGB-D bag -> a frames-only scene folder (SensReader layout) with its fused points cached.

    <out>/frames/color/<i>.jpg, depth/<i>.png (uint16 mm), pose/<i>.txt (camera-to-map), intrinsic/
    <out>/fused/ (coord.npy, color.npy, normal.npy, fusion.json: gcross_core.mapping.fusion_cache)

Works on the bags this project records (:mod:`gcross_ros.bag.format`) and on what ``ros2 bag record``
makes of a camera driver:

- colour: ``sensor_msgs/Image`` (rgb8, bgr8) or ``sensor_msgs/CompressedImage`` (JPEG/PNG), found by the
  names drivers publish (``color/image_raw`` of RealSense and most drivers, ``rgb/image_raw`` of Azure
  Kinect and openni/freenect, ``image_rect_color``, each optionally ``/compressed``);
- depth registered to colour: ``aligned_depth_to_color/image_raw`` (RealSense with ``align_depth``),
  ``depth_to_rgb/image_raw`` (Azure Kinect), ``depth_registered/image_raw`` (openni/freenect), else
  ``depth/image_raw`` (then it must already be registered: same size as colour, warned); 16UC1 mm or
  32FC1 m, or ``compressedDepth`` PNG;
- ``camera_info`` next to the colour topic (``<namespace>/camera_info``);
- poses: a ``geometry_msgs/PoseStamped`` topic (camera-to-map), else ``/tf`` + ``/tf_static``, composed
  from ``map_frame`` down to the colour images' ``frame_id`` and interpolated at each image stamp.

Colour and depth are paired by header stamp within ``slop_s`` (approximate-time sync, as the node does);
the pose is looked up at the colour stamp within ``pose_tolerance_s``. Frames without a partner or a pose
are counted and reported, never guessed. A bag that lacks a needed topic is a :class:`BagError` naming it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from gcross_core.data.frames import Frame, SensReaderFrames, write_frames
from gcross_core.errors import BagError, InputError
from gcross_core.mapping.fusion_cache import FusionSettings, default_cache_dir, fused_points
from gcross_ros.bag.reader import BagReader, _content_errors
from gcross_ros.msgs import codec
from gcross_ros.node.sync import POSE_OK, ApproximateTimeSync, PoseBuffer

log = logging.getLogger(__name__)

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
TF = "/tf"
TF_STATIC = "/tf_static"

# topic endings in order of preference (driver conventions, see the module docstring)
COLOR_NAMES = ("color/image_raw", "color/image_rect_color", "rgb/image_raw", "rgb/image_rect_color",
               "image_color", "color/image_rect_raw")
REGISTERED_DEPTH_NAMES = ("aligned_depth_to_color/image_raw", "depth_to_rgb/image_raw",
                          "depth_registered/image_raw", "depth_registered/image_rect",
                          "depth_registered/sw_registered/image_rect_raw")
DEPTH_NAMES = REGISTERED_DEPTH_NAMES + ("depth/image_raw", "depth/image_rect_raw", "depth/image_rect")
COMPRESSED_SUFFIXES = {"color": "/compressed", "depth": "/compressedDepth"}


@dataclass(frozen=True)
class ExportConfig:
    color_topic: Optional[str] = None  # None: found by driver name (COLOR_NAMES)
    depth_topic: Optional[str] = None  # None: found by driver name (DEPTH_NAMES, registered ones first)
    camera_info_topic: Optional[str] = None  # None: <colour namespace>/camera_info
    pose_topic: Optional[str] = None  # PoseStamped camera-to-map; None: the bag's only PoseStamped topic, else /tf
    map_frame: str = "map"  # TF frame the poses are expressed in
    every: int = 1  # keep every k-th synchronised frame
    max_frames: Optional[int] = None  # stop after this many written frames
    slop_s: float = 0.02  # colour and depth stamps may differ this much (half a frame at 30 Hz is 0.017 s)
    pose_tolerance_s: float = 0.1  # poses this far from the colour stamp are used (interpolated between two)
    color_format: str = "jpg"  # jpg (quality 95) or png
    fusion: Optional[FusionSettings] = field(default_factory=FusionSettings)  # None: do not fuse

    def __post_init__(self) -> None:
        if int(self.every) != self.every or self.every < 1:
            raise InputError(f"every must be an integer >= 1, got {self.every}")
        if self.max_frames is not None and self.max_frames < 1:
            raise InputError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.slop_s < 0 or self.pose_tolerance_s < 0:
            raise InputError("slop_s and pose_tolerance_s must be >= 0")


@dataclass
class ExportSummary:
    out: Path
    topics: Dict[str, str]  # role (color, depth, camera_info, pose) -> topic
    frames_written: int = 0
    pairs_skipped_every: int = 0  # synchronised pairs left out by --every
    frames_without_pose: int = 0  # colour+depth pairs with no pose within tolerance
    messages_unmatched: int = 0  # colour or depth images without a partner within slop
    image_size: Tuple[int, int] = (0, 0)  # (width, height)
    fused_points: int = 0
    fuse_seconds: float = 0.0


# ---------------------------------------------------------------- topics

def _find(topics: Dict[str, str], names, types, role: str, bag: Path) -> Optional[str]:
    for name in names:
        hits = sorted(t for t, ty in topics.items() if ty in types and
                      (t.endswith("/" + name) or t == "/" + name or
                       (ty == COMPRESSED and any(t.endswith("/" + name + s) for s in COMPRESSED_SUFFIXES.values()))))
        if len(hits) > 1:
            raise BagError(f"bag {bag}: several {role} topics {hits}; choose one with --{role}-topic")
        if hits:
            return hits[0]
    return None


def resolve_topics(topics: Dict[str, str], cfg: ExportConfig, bag: Path) -> Dict[str, str]:
    """role -> topic for color, depth, camera_info and pose (a PoseStamped topic or /tf)."""
    listing = ", ".join(f"{t} ({ty})" for t, ty in sorted(topics.items())) or "none"

    def given(topic: Optional[str], role: str, types) -> Optional[str]:
        if topic is None:
            return None
        if topic not in topics:
            raise BagError(f"bag {bag} has no {role} topic {topic}; its topics: {listing}")
        if topics[topic] not in types:
            raise BagError(f"bag {bag}: {role} topic {topic} carries {topics[topic]}, expected one of {list(types)}")
        return topic

    color = given(cfg.color_topic, "color", (IMAGE, COMPRESSED)) or _find(
        topics, COLOR_NAMES, (IMAGE, COMPRESSED), "color", bag)
    if color is None:
        raise BagError(f"bag {bag} has no colour image topic (sensor_msgs/Image or CompressedImage ending in "
                       f"{' or '.join(COLOR_NAMES[:3])}); pass --color-topic. Its topics: {listing}")
    depth = given(cfg.depth_topic, "depth", (IMAGE, COMPRESSED)) or _find(
        topics, DEPTH_NAMES, (IMAGE, COMPRESSED), "depth", bag)
    if depth is None:
        raise BagError(f"bag {bag} has no depth image topic (ending in {' or '.join(DEPTH_NAMES[:3])} or "
                       f"depth/image_raw); pass --depth-topic. Its topics: {listing}")
    if cfg.depth_topic is None and not any(n in depth for n in REGISTERED_DEPTH_NAMES):
        log.warning("depth topic %s is not one a driver registers to colour; it is used as if it were "
                    "(enable depth alignment in the driver, e.g. RealSense align_depth.enable:=true)", depth)
    namespace = color[:-len("/compressed")] if color.endswith("/compressed") else color
    namespace = namespace.rsplit("/", 1)[0]
    info = given(cfg.camera_info_topic, "camera_info", (CAMERA_INFO,)) or f"{namespace}/camera_info"
    if info not in topics:
        raise BagError(f"bag {bag} lacks the camera_info topic {info} (sensor_msgs/CameraInfo of the colour "
                       f"camera {color}); pass --camera-info-topic. Its topics: {listing}")
    pose = given(cfg.pose_topic, "pose", (POSE_STAMPED,))
    if pose is None:
        stamped = sorted(t for t, ty in topics.items() if ty == POSE_STAMPED)
        if len(stamped) > 1:
            raise BagError(f"bag {bag}: several pose topics {stamped}; choose one with --pose-topic")
        pose = stamped[0] if stamped else (TF if TF in topics else None)
    if pose is None:
        raise BagError(f"bag {bag} has no camera poses: no pose topic (geometry_msgs/PoseStamped, "
                       f"camera-to-{cfg.map_frame}) and no {TF}; pass --pose-topic. Its topics: {listing}")
    return {"color": color, "depth": depth, "camera_info": info, "pose": pose}


# ---------------------------------------------------------------- poses from TF

class TfTree:
    """Transforms of /tf (interpolated in time) and /tf_static; answers parent <- child at a stamp."""

    def __init__(self, tolerance_ns: int):
        self.tolerance_ns = int(tolerance_ns)
        self._static: Dict[str, Tuple[str, np.ndarray]] = {}  # child -> (parent, parent_from_child)
        self._dynamic: Dict[str, Tuple[str, List[Tuple[int, np.ndarray]]]] = {}

    def add(self, msg, static: bool) -> None:
        for tr in msg.transforms:
            parent, child = tr.header.frame_id.lstrip("/"), tr.child_frame_id.lstrip("/")
            T = codec.pose_to_matrix(tr.transform.translation, tr.transform.rotation)
            if static:
                self._static[child] = (parent, T)
            else:
                self._dynamic.setdefault(child, (parent, []))[1].append((codec.stamp_to_ns(tr.header.stamp), T))

    @property
    def frames(self) -> List[str]:
        names = set(self._static) | set(self._dynamic)
        names |= {p for p, _ in self._static.values()} | {p for p, _ in self._dynamic.values()}
        return sorted(names)

    def chain(self, target: str, source: str) -> List[str]:
        """Frames from ``source`` up to ``target``; BagError when TF does not connect them."""
        path, frame = [source], source
        while frame != target:
            edge = self._static.get(frame) or self._dynamic.get(frame)
            if edge is None or len(path) > 64:
                raise BagError(f"TF has no path from {source} up to {target} (stuck at {frame}); frames in "
                               f"/tf and /tf_static: {self.frames}")
            frame = edge[0]
            path.append(frame)
        return path

    def buffers(self) -> Dict[str, PoseBuffer]:
        out = {}
        for child, (_, samples) in self._dynamic.items():
            buf = PoseBuffer(self.tolerance_ns, capacity=max(len(samples), 2))
            for stamp, T in samples:
                buf.add(stamp, T)
            out[child] = buf
        return out

    def lookup(self, chain: List[str], buffers: Dict[str, PoseBuffer], stamp_ns: int) -> Optional[np.ndarray]:
        """target <- source at ``stamp_ns`` along ``chain`` (from :meth:`chain`); None if a link has no pose."""
        T = np.eye(4)
        for child in chain[:-1]:
            if child in self._static:
                link = self._static[child][1]
            else:
                found = buffers[child].lookup(stamp_ns)
                if found.status != POSE_OK:
                    return None
                link = found.cam_to_map
            T = link @ T
        return T


# ---------------------------------------------------------------- export

def _decode_color(msg, msgtype: str) -> np.ndarray:
    return codec.decode_compressed_color_rgb(msg) if msgtype == COMPRESSED else codec.decode_color_rgb(msg)


def _decode_depth_m(msg, msgtype: str) -> np.ndarray:
    depth = codec.decode_compressed_depth_m(msg) if msgtype == COMPRESSED else codec.decode_depth_m(msg)
    return np.nan_to_num(np.asarray(depth, np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def _poses(bag: BagReader, topics: Dict[str, str], cfg: ExportConfig):
    """A function stamp_ns, frame_id -> camera-to-map [4, 4] or None, from the pose topic or TF."""
    tol = int(cfg.pose_tolerance_s * 1e9)
    if topics["pose"] != TF:
        buf: Optional[PoseBuffer] = None
        samples = []
        for topic, msgtype, _, raw in bag.messages([topics["pose"]]):
            msg = bag.deserialize(raw, msgtype, topic)
            samples.append((codec.stamp_to_ns(msg.header.stamp),
                            codec.pose_to_matrix(msg.pose.position, msg.pose.orientation)))
        if not samples:
            raise BagError(f"bag {bag.path}: pose topic {topics['pose']} holds no messages")
        buf = PoseBuffer(tol, capacity=max(len(samples), 2))
        for stamp, T in samples:
            with _content_errors(bag.path, f"pose at stamp {stamp} on {topics['pose']}"):
                buf.add(stamp, T)

        def from_topic(stamp_ns: int, frame_id: str) -> Optional[np.ndarray]:
            found = buf.lookup(stamp_ns)
            return found.cam_to_map if found.status == POSE_OK else None
        return from_topic

    tree = TfTree(tol)
    tf_topics = [t for t in (TF, TF_STATIC) if t in bag.topics]
    for topic, msgtype, _, raw in bag.messages(tf_topics):
        tree.add(bag.deserialize(raw, msgtype, topic), static=topic == TF_STATIC)
    buffers = tree.buffers()
    chains: Dict[str, List[str]] = {}

    def from_tf(stamp_ns: int, frame_id: str) -> Optional[np.ndarray]:
        frame_id = frame_id.lstrip("/")
        if not frame_id:
            raise BagError(f"bag {bag.path}: colour images carry no header.frame_id, so TF cannot place them; "
                           "pass --pose-topic")
        if frame_id not in chains:
            chains[frame_id] = tree.chain(cfg.map_frame, frame_id)
        return tree.lookup(chains[frame_id], buffers, stamp_ns)
    return from_tf


def _frames(bag: BagReader, topics: Dict[str, str], cfg: ExportConfig, summary: ExportSummary) -> Iterator[Frame]:
    pose_at = _poses(bag, topics, cfg)
    K = None
    for topic, msgtype, _, raw in bag.messages([topics["camera_info"]]):
        with _content_errors(bag.path, f"camera_info on {topic}"):
            K, w_info, h_info = codec.camera_info_to_K(bag.deserialize(raw, msgtype, topic))
        break
    if K is None:
        raise BagError(f"bag {bag.path}: camera_info topic {topics['camera_info']} holds no messages")
    sync = ApproximateTimeSync(2, int(cfg.slop_s * 1e9), queue_size=30)
    streams = {topics["color"]: 0, topics["depth"]: 1}
    pairs = emitted = 0
    for topic, msgtype, _, raw in bag.messages(list(streams)):
        msg = bag.deserialize(raw, msgtype, topic)
        result = sync.add(streams[topic], codec.stamp_to_ns(msg.header.stamp), (msg, msgtype))
        summary.messages_unmatched += len(result.dropped)
        for (cmsg, ctype), (dmsg, dtype) in result.matched:
            pairs += 1
            if (pairs - 1) % cfg.every:
                summary.pairs_skipped_every += 1
                continue
            stamp = codec.stamp_to_ns(cmsg.header.stamp)
            pose = pose_at(stamp, cmsg.header.frame_id)
            if pose is None:
                summary.frames_without_pose += 1
                continue
            with _content_errors(bag.path, f"the frame at stamp {stamp}"):
                color, depth_m = _decode_color(cmsg, ctype), _decode_depth_m(dmsg, dtype)
                if depth_m.shape != color.shape[:2]:
                    raise InputError(f"depth image {depth_m.shape[1]}x{depth_m.shape[0]} on {topics['depth']} "
                                     f"does not match colour {color.shape[1]}x{color.shape[0]} on {topics['color']}"
                                     " (depth must be registered to colour: e.g. RealSense align_depth)")
                if (w_info, h_info) != (color.shape[1], color.shape[0]):
                    raise InputError(f"camera_info is for {w_info}x{h_info}, the colour images are "
                                     f"{color.shape[1]}x{color.shape[0]}")
                frame = Frame(color=np.ascontiguousarray(color), depth_m=np.ascontiguousarray(depth_m),
                              K_color=K, K_depth=K, cam_to_world=pose, frame_id=str(stamp))
            summary.image_size = (color.shape[1], color.shape[0])
            yield frame
            emitted += 1
            if cfg.max_frames is not None and emitted >= cfg.max_frames:
                return
    summary.messages_unmatched += sum(sync.pending(s) for s in range(2))


def export_bag(bag_path, out, cfg: ExportConfig = ExportConfig()) -> ExportSummary:
    """Write the frames of ``bag_path`` as a frames-only scene folder ``out`` and fuse (cache) its points."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"--out {out} exists and is not empty; choose a new scene folder")
    with BagReader(bag_path) as bag:
        topics = resolve_topics(bag.topics, cfg, bag.path)
        log.info("exporting %s: %s", bag.path, ", ".join(f"{k} {v}" for k, v in topics.items()))
        summary = ExportSummary(out=out, topics=topics)
        written = write_frames(out / "frames", _frames(bag, topics, cfg, summary), color_format=cfg.color_format)
    summary.frames_written = written
    if written == 0:
        raise BagError(f"bag {bag_path}: no frame had colour, depth and a pose ({summary.messages_unmatched} images "
                       f"without a partner within {cfg.slop_s} s, {summary.frames_without_pose} pairs without a "
                       f"pose within {cfg.pose_tolerance_s} s)")
    if summary.frames_without_pose or summary.messages_unmatched:
        log.warning("%s: %d colour+depth pairs had no pose within %.3f s, %d images no partner within %.3f s",
                    bag_path, summary.frames_without_pose, cfg.pose_tolerance_s, summary.messages_unmatched,
                    cfg.slop_s)
    if cfg.fusion is not None:
        t0 = time.perf_counter()
        fused = fused_points(SensReaderFrames(out / "frames"), cfg.fusion, default_cache_dir(out))
        summary.fused_points, summary.fuse_seconds = len(fused.coord), time.perf_counter() - t0
    return summary
