"""What a gcross RGB-D bag (ROS 2 bag format) holds: topics, metadata keys and the records read from it.

A recorded bag holds, for every frame (same header stamp on all of them):

- ``/camera/color/image_raw``   sensor_msgs/Image rgb8, registered to the depth camera (see below)
- ``/camera/depth/image_raw``   sensor_msgs/Image 16UC1, millimetres, 0 = no measurement
- ``/camera/color/camera_info`` sensor_msgs/CameraInfo of that registered camera (no distortion)
- ``/camera/pose``              geometry_msgs/PoseStamped, camera-to-map, frame ``map``
- ``/tf``                       ``map -> camera_color_optical_frame`` at the frame's stamp

With ``--compressed jpeg|png`` the images travel as image_transport records them instead:
``/camera/color/image_raw/compressed`` (sensor_msgs/CompressedImage, JPEG or PNG) and
``/camera/depth/image_raw/compressedDepth`` (compressedDepth: a 12-byte header, then a 16-bit PNG of
millimetres).

and once, at the start time: ``/tf_static`` (``camera_color_optical_frame -> camera_depth_optical_frame``,
identity, because depth is registered to color) and ``/gt/labelled_cloud`` (sensor_msgs/PointCloud2 in
``map`` with fields x, y, z float32, rgb float32 packed as RViz expects, label uint32 where the ignore
label -1 is stored as 0xFFFFFFFF). Both once-only topics are offered transient-local, so a late
subscriber to ``ros2 bag play`` still gets them. The class names ride in the bag metadata
(``custom_data['gcross/class_names']``, JSON).

:mod:`gcross_ros.bag.writer` writes such bags and :mod:`gcross_ros.bag.reader` reads them, with ``rosbags``
(no ROS installation needed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

# Fixed start so that recording the same scene twice gives byte-identical bags (2023-11-14 22:13:20 UTC).
DEFAULT_START_TIME_NS = 1_700_000_000 * 10**9
CLASS_NAMES_KEY = "gcross/class_names"
SCENE_NAME_KEY = "gcross/scene"
# Written into every bag gcross records: its depth images are registered to colour (gcross-bag export
# then takes the depth topic without asking, whatever its name).
RECORDER_KEY = "gcross/recorder"


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
    # "": raw images; "jpeg" or "png": colour on <color>/compressed, depth on <depth>/compressedDepth
    compressed: str = ""


# image_transport's topic suffixes of compressed colour and compressed depth
COMPRESSED_SUFFIXES = {"color": "/compressed", "depth": "/compressedDepth"}


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
    instance: Optional[np.ndarray] = None  # [N] int64 object id, -1 = none (the cloud's instance field minus 1)


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
