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

Frames are assembled as the node assembles them (:mod:`gcross_ros.bag.frames`): colour, depth and
camera_info paired by header stamp within ``slop_s``, the pose looked up at the colour stamp within
``pose_tolerance_s``. Frames without a partner or a pose are counted and reported, never guessed; a
message that cannot be decoded is skipped and counted. A bag that lacks a needed topic is a :class:`BagError` naming it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import numpy as np

from gcross_core.data.frames import Frame, SensReaderFrames, write_frames
from gcross_core.errors import BagError, InputError
from gcross_core.mapping.assembly import NOT_USED, AssemblyConfig
from gcross_core.mapping.fusion_cache import FusionSettings, default_cache_dir, fused_points
from gcross_ros.bag.format import CLASS_NAMES_KEY, COMPRESSED_SUFFIXES, RECORDER_KEY, SCENE_NAME_KEY
from gcross_ros.bag.frames import TF, BagFrames
from gcross_ros.bag.reader import BagReader

log = logging.getLogger(__name__)

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
MAX_EXPORT_DEPTH_M = 65.0  # export keeps every reading a 16-bit millimetre PNG can hold; fusion applies its own limit

# topic endings in order of preference (driver conventions, see the module docstring)
COLOR_NAMES = ("color/image_raw", "color/image_rect_color", "rgb/image_raw", "rgb/image_rect_color",
               "image_color", "color/image_rect_raw")
REGISTERED_DEPTH_NAMES = ("aligned_depth_to_color/image_raw", "depth_to_rgb/image_raw",
                          "depth_registered/image_raw", "depth_registered/image_rect",
                          "depth_registered/sw_registered/image_rect_raw")
DEPTH_NAMES = REGISTERED_DEPTH_NAMES + ("depth/image_raw", "depth/image_rect_raw", "depth/image_rect")


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
    frames_without_pose: int = 0  # synchronised frames with no pose within tolerance
    messages_unmatched: int = 0  # colour, depth or camera_info messages without partners within slop
    messages_skipped: int = 0  # messages whose payload could not be decoded
    account: dict = field(default_factory=dict)  # the frame assembly's account (BagFrames.summary)
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


def resolve_topics(topics: Dict[str, str], cfg: ExportConfig, bag: Path, registered: bool = False) -> Dict[str, str]:
    """role -> topic for color, depth, camera_info and pose (a PoseStamped topic or /tf). ``registered``: the
    bag says its depth is registered to colour (a bag gcross recorded), so any depth topic name is taken."""
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
    if cfg.depth_topic is None and not registered and not any(n in depth for n in REGISTERED_DEPTH_NAMES):
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


# ---------------------------------------------------------------- export

def _frames(frames: BagFrames, cfg: ExportConfig, summary: ExportSummary) -> Iterator[Frame]:
    """The assembled frames, every ``cfg.every``-th of them, as SensReader frames (the rest counted not used);
    reading stops after ``cfg.max_frames``."""
    kept = seen = 0
    for f in frames:
        seen += 1
        if cfg.max_frames is not None and kept >= cfg.max_frames:
            frames.assembler.drop(f, NOT_USED)
            return
        if (seen - 1) % cfg.every:
            frames.assembler.drop(f, NOT_USED)
            summary.pairs_skipped_every += 1
            continue
        frames.used(f)
        summary.image_size = (f.width, f.height)
        kept += 1
        yield Frame(color=np.ascontiguousarray(f.color_rgb), depth_m=np.ascontiguousarray(f.depth_m), K_color=f.K,
                    K_depth=f.K, cam_to_world=f.cam_to_map, frame_id=str(f.stamp_ns))


def export_bag(bag_path, out, cfg: ExportConfig = ExportConfig()) -> ExportSummary:
    """Write the frames of ``bag_path`` as a frames-only scene folder ``out`` and fuse (cache) its points."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"--out {out} exists and is not empty; choose a new scene folder")
    with BagReader(bag_path) as bag:
        custom = bag.custom_data
        topics = resolve_topics(bag.topics, cfg, bag.path,
                                registered=any(k in custom for k in (RECORDER_KEY, CLASS_NAMES_KEY, SCENE_NAME_KEY)))
        log.info("exporting %s: %s", bag.path, ", ".join(f"{k} {v}" for k, v in topics.items()))
        summary = ExportSummary(out=out, topics=topics)
        assembly = AssemblyConfig(sync_slop_s=cfg.slop_s, pose_tolerance_s=cfg.pose_tolerance_s,
                                  max_depth_m=MAX_EXPORT_DEPTH_M)
        frames = BagFrames(bag, topics, assembly, map_frame=cfg.map_frame)
        written = write_frames(out / "frames", _frames(frames, cfg, summary), color_format=cfg.color_format)
        summary.account = frames.summary()
        described = frames.describe()
    summary.frames_written = written
    acc = summary.account
    summary.frames_without_pose = acc.get("dropped.no_pose", 0)
    summary.messages_unmatched = sum(v for k, v in acc.items() if k.startswith("unmatched.")) + sum(
        acc.get(f"dropped.{r}", 0) for r in ("no_depth", "no_camera_info", "unmatched"))
    summary.messages_skipped = acc["messages_skipped"]
    if written == 0:
        raise BagError(f"bag {bag_path}: no frame had colour, depth, camera_info and a pose ({described})")
    if acc["frames_dropped"] - acc.get(f"dropped.{NOT_USED}", 0) or summary.messages_skipped:
        log.warning("%s: %s", bag_path, described)
    if cfg.fusion is not None:
        t0 = time.perf_counter()
        fused = fused_points(SensReaderFrames(out / "frames"), cfg.fusion, default_cache_dir(out))
        summary.fused_points, summary.fuse_seconds = len(fused.coord), time.perf_counter() - t0
    return summary
