"""rosbags message dataclasses from numpy through :mod:`gcross_ros.msgs.codec`, and CDR (de)serialization.

For writing and reading bags without ROS installed. Reading needs no helper here: the codec's
``decode_*`` functions take rosbags messages as they are.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from gcross_ros.msgs import codec


@functools.lru_cache(maxsize=1)
def typestore():
    """The newest ROS 2 typestore rosbags ships (Kilted where available)."""
    from rosbags.typesys import Stores, get_typestore

    for name in ("ROS2_KILTED", "ROS2_JAZZY", "ROS2_HUMBLE"):
        if hasattr(Stores, name):
            return get_typestore(getattr(Stores, name))
    raise ImportError("rosbags ships no ROS 2 Humble or newer typestore")


def message(msgtype: str, **fields):
    """A rosbags dataclass of ``msgtype`` ('sensor_msgs/msg/Image')."""
    return typestore().types[msgtype](**fields)


def serialize(msg, msgtype: str) -> bytes:
    return typestore().serialize_cdr(msg, msgtype)


def deserialize(raw: bytes, msgtype: str):
    return typestore().deserialize_cdr(raw, msgtype)


def header(stamp_ns: int, frame_id: str):
    sec, nanosec = codec.ns_to_sec_nanosec(stamp_ns)
    return message("std_msgs/msg/Header", stamp=message("builtin_interfaces/msg/Time", sec=sec, nanosec=nanosec),
                   frame_id=frame_id)


def image_msg(pixels: np.ndarray,  # [H, W, C] or [H, W]
              encoding: str, stamp_ns: int, frame_id: str):
    fields = codec.encode_image(pixels, encoding)
    fields["data"] = fields["data"].copy()
    return message("sensor_msgs/msg/Image", header=header(stamp_ns, frame_id), **fields)


def compressed_image_msg(fields: dict,  # codec.encode_compressed_color / encode_compressed_depth
                         stamp_ns: int, frame_id: str):
    return message("sensor_msgs/msg/CompressedImage", header=header(stamp_ns, frame_id), format=fields["format"],
                   data=np.array(fields["data"], np.uint8))


def camera_info_msg(K: np.ndarray,  # [3, 3] pixels
                    width: int, height: int, stamp_ns: int, frame_id: str):
    fields = codec.encode_camera_info(K, width, height)
    for name in ("d", "k", "r", "p"):
        fields[name] = np.asarray(fields[name], np.float64)
    roi = message("sensor_msgs/msg/RegionOfInterest", x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return message("sensor_msgs/msg/CameraInfo", header=header(stamp_ns, frame_id), binning_x=0, binning_y=0,
                   roi=roi, **fields)


def _quaternion(q_xyzw: Sequence[float]):
    x, y, z, w = q_xyzw
    return message("geometry_msgs/msg/Quaternion", x=x, y=y, z=z, w=w)


def pose_stamped_msg(cam_to_map: np.ndarray,  # [4, 4]
                     stamp_ns: int, map_frame: str):
    t, q = codec.matrix_to_pose(cam_to_map)
    pose = message("geometry_msgs/msg/Pose", position=message("geometry_msgs/msg/Point", x=t[0], y=t[1], z=t[2]),
                   orientation=_quaternion(q))
    return message("geometry_msgs/msg/PoseStamped", header=header(stamp_ns, map_frame), pose=pose)


def transform_stamped_msg(parent_to_child: np.ndarray,  # [4, 4]
                          stamp_ns: int, parent: str, child: str):
    """TF convention: the transform maps child-frame coordinates into the parent frame."""
    t, q = codec.matrix_to_pose(parent_to_child)
    tr = message("geometry_msgs/msg/Transform",
                 translation=message("geometry_msgs/msg/Vector3", x=t[0], y=t[1], z=t[2]), rotation=_quaternion(q))
    return message("geometry_msgs/msg/TransformStamped", header=header(stamp_ns, parent), child_frame_id=child,
                   transform=tr)


def tf_msg(transforms: list):
    return message("tf2_msgs/msg/TFMessage", transforms=list(transforms))


def cloud_msg(points: np.ndarray,  # [N] structured
              stamp_ns: int, frame_id: str):
    fields = codec.encode_cloud(points)
    fields["data"] = fields["data"].copy()
    fields["fields"] = [message("sensor_msgs/msg/PointField", **f) for f in fields["fields"]]
    return message("sensor_msgs/msg/PointCloud2", header=header(stamp_ns, frame_id), **fields)
