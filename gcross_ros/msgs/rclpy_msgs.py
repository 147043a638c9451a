"""rclpy messages from numpy through :mod:`gcross_ros.msgs.codec`: Image, CameraInfo, PointCloud2, headers.

Reading needs no helper here: the codec's ``decode_*`` functions take rclpy messages as they are.
Writing copies the array once into the message.
"""
from __future__ import annotations

import array
from typing import Optional

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, PoseStamped, Quaternion
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

from gcross_ros.msgs import codec


def ns_to_stamp(ns: int) -> Time:
    sec, nanosec = codec.ns_to_sec_nanosec(ns)
    return Time(sec=sec, nanosec=nanosec)


def make_header(stamp_ns: int, frame_id: str) -> Header:
    return Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)


def _uint8_array(data: np.ndarray) -> array.array:
    """One copy of the codec's uint8 ``data`` into the array.array('B') that message byte fields hold.

    Handing the setter an array.array skips rosidl's per-element check of generic sequences.
    """
    out = array.array("B")
    out.frombytes(memoryview(data))
    return out


def numpy_to_image(pixels: np.ndarray,  # [H, W, C] or [H, W]
                   encoding: str, stamp_ns: int = 0, frame_id: str = "") -> Image:
    """An Image message holding ``pixels`` (host byte order, no row padding)."""
    fields = codec.encode_image(pixels, encoding)
    data = fields.pop("data")
    msg = Image(header=make_header(stamp_ns, frame_id), **fields)
    msg.data = _uint8_array(data)
    return msg


def compressed_image(fields: dict,  # codec.encode_compressed_color / encode_compressed_depth
                     stamp_ns: int = 0, frame_id: str = "") -> CompressedImage:
    """A CompressedImage message of the codec's (format, data)."""
    msg = CompressedImage(header=make_header(stamp_ns, frame_id), format=fields["format"])
    msg.data = _uint8_array(fields["data"])
    return msg


def make_camera_info(K: np.ndarray,  # [3, 3] pixels
                     width: int, height: int, stamp_ns: int = 0, frame_id: str = "") -> CameraInfo:
    """A CameraInfo for an undistorted pinhole camera (P = [K | 0], R = I)."""
    return CameraInfo(header=make_header(stamp_ns, frame_id), **codec.encode_camera_info(K, width, height))


def pose_stamped(cam_to_map: np.ndarray,  # [4, 4]
                 stamp_ns: int = 0, frame_id: str = "map") -> PoseStamped:
    t, (qx, qy, qz, qw) = codec.matrix_to_pose(cam_to_map)
    pose = Pose(position=Point(x=t[0], y=t[1], z=t[2]), orientation=Quaternion(x=qx, y=qy, z=qz, w=qw))
    return PoseStamped(header=make_header(stamp_ns, frame_id), pose=pose)


def array_to_pointcloud2(points: np.ndarray,  # [N] structured
                         stamp_ns: int = 0, frame_id: str = "", is_dense: Optional[bool] = None) -> PointCloud2:
    """An unorganized (height 1) PointCloud2 of a structured array; its dtype gives the field layout."""
    fields = codec.encode_cloud(points, is_dense)
    data = fields.pop("data")
    point_fields = [PointField(**f) for f in fields.pop("fields")]
    msg = PointCloud2(header=make_header(stamp_ns, frame_id), fields=point_fields, **fields)
    msg.data = _uint8_array(data)
    return msg


def labelled_cloud(xyz: np.ndarray,  # [N, 3] float metres, frame ``frame_id``
                   rgb: np.ndarray,  # [N, 3] uint8
                   label: np.ndarray,  # [N] int, class index
                   confidence: np.ndarray,  # [N] float in 0..1
                   stamp_ns: int = 0, frame_id: str = "map",
                   instance: Optional[np.ndarray] = None,  # [N] int object id, 0 = none
                   ) -> PointCloud2:
    """The node's output cloud: fields x, y, z, rgb (packed), label (uint32), confidence (float32), and
    instance (uint32, 0 = none) when ``instance`` is given."""
    return array_to_pointcloud2(codec.labelled_points(xyz, rgb, label, confidence, instance), stamp_ns, frame_id)
