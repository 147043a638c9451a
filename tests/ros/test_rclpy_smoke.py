"""A real rclpy node publishes and receives a PointCloud2 over DDS inside the test process."""
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from sensor_msgs.msg import PointCloud2, PointField  # noqa: E402

pytestmark = pytest.mark.ros


def test_pointcloud2_roundtrip_over_dds():
    rclpy.init()
    try:
        node = rclpy.create_node("gcross_smoke")
        received = []
        node.create_subscription(PointCloud2, "smoke_cloud", received.append, 10)
        pub = node.create_publisher(PointCloud2, "smoke_cloud", 10)

        pts = np.arange(30, dtype=np.float32).reshape(10, 3)
        msg = PointCloud2()
        msg.header.frame_id = "map"
        msg.height, msg.width = 1, len(pts)
        msg.fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                      for i, n in enumerate("xyz")]
        msg.point_step, msg.row_step = 12, 12 * len(pts)
        msg.is_dense = True
        msg.data = pts.tobytes()

        deadline = time.monotonic() + 20.0
        while not received and time.monotonic() < deadline:
            pub.publish(msg)
            rclpy.spin_once(node, timeout_sec=0.1)
        assert received, "no PointCloud2 arrived over DDS within 20 s"
        got = received[0]
        assert got.header.frame_id == "map" and got.width == 10
        np.testing.assert_array_equal(np.frombuffer(bytes(got.data), np.float32).reshape(10, 3), pts)
        node.destroy_node()
    finally:
        rclpy.shutdown()
