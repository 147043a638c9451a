"""The frame assembler's decoder (:class:`gcross_core.mapping.assembly.FrameDecoder`) for ROS camera messages.

Works on rclpy messages and rosbags messages alike (through :mod:`gcross_ros.msgs.codec`), raw
``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage`` (image_transport ``compressed`` colour,
``compressedDepth`` depth) alike: a compressed image is told by its ``format`` field.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

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
