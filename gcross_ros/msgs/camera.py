"""The frame assembler's decoder (:class:`gcross_core.mapping.assembly.FrameDecoder`) for ROS camera messages.

Works on rclpy messages and rosbags messages alike (through :mod:`gcross_ros.msgs.codec`), raw
``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage`` (image_transport ``compressed`` colour,
``compressedDepth`` depth) alike: a compressed image is told by its ``format`` field.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from gcross_core.errors import InputError
from gcross_ros.msgs import codec


def _compressed(msg) -> bool:
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


class CameraDecoder:
    """colour -> RGB, depth -> float32 metres, CameraInfo -> K, size; InputError for what it cannot read."""

    def color_rgb(self, msg) -> np.ndarray:  # -> [H, W, 3] uint8
        return codec.decode_compressed_color_rgb(msg) if _compressed(msg) else codec.decode_color_rgb(msg)

    def depth_m(self, msg) -> np.ndarray:  # -> [H, W] float32 metres
        return codec.decode_compressed_depth_m(msg) if _compressed(msg) else codec.decode_depth_m(msg)

    def camera(self, msg) -> Tuple[np.ndarray, int, int]:
        return codec.camera_info_to_K(msg)

    def frame_id(self, msg) -> str:
        return str(msg.header.frame_id)


def add_pose_message(assembler, msg) -> Optional[int]:
    """A geometry_msgs/PoseStamped (camera-to-map) into a FrameAssembler's pose buffer; returns how far
    pose stamps jumped back when it cleared the buffer. InputError, counted as an ignored pose, for a pose
    that is not a finite rigid transform."""
    stamp_ns = codec.stamp_to_ns(msg.header.stamp)
    try:
        cam_to_map = codec.pose_to_matrix(msg.pose.position, msg.pose.orientation)
    except ValueError as e:
        assembler.ignore_pose()
        raise InputError(f"pose at {stamp_ns * 1e-9:.3f} s ignored: {e}") from None
    return assembler.add_pose(stamp_ns, cam_to_map)
