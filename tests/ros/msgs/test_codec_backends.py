"""One codec, two message backends: the same numpy goes in and comes out through rclpy and rosbags messages.

Each message is built by its backend, serialized to CDR and read back (what a subscriber or a bag reader
gets), then decoded by the codec. The rclpy half skips without rclpy; where both exist, what one backend
writes must read back identically through the other (CDR padding bytes may differ, so bytes are not
compared).
"""
import numpy as np
import pytest

pytest.importorskip("rosbags")

from gcross_ros.msgs import codec  # noqa: E402
from gcross_ros.msgs import rosbags_msgs as rb  # noqa: E402

RNG = np.random.default_rng(3)
STAMP_NS, FRAME = 1_700_000_000_123_456_789, "camera_color_optical_frame"
IMAGES = {
    "rgb8": RNG.integers(0, 256, (6, 9, 3), dtype=np.uint8),
    "bgr8": RNG.integers(0, 256, (6, 9, 3), dtype=np.uint8),
    "16UC1": np.array([[0, 1, 65534, 65535]] * 3, np.uint16),
    "32FC1": (RNG.random((6, 9)) * 10).astype(np.float32),
}
K = np.array([[525.0, 0, 319.5], [0, 526.0, 239.5], [0, 0, 1]])
N = 17
CLOUD = codec.labelled_points(RNG.normal(size=(N, 3)).astype(np.float32), RNG.integers(0, 256, (N, 3), dtype=np.uint8),
                              RNG.integers(-1, 20, N), RNG.random(N).astype(np.float32))
TYPES = {"image": ("sensor_msgs/msg/Image", "Image"), "info": ("sensor_msgs/msg/CameraInfo", "CameraInfo"),
         "cloud": ("sensor_msgs/msg/PointCloud2", "PointCloud2")}


def _rosbags(kind, value):
    if kind == "image":
        msg = rb.image_msg(*value, STAMP_NS, FRAME)
    elif kind == "info":
        msg = rb.camera_info_msg(*value, STAMP_NS, FRAME)
    else:
        msg = rb.cloud_msg(value, STAMP_NS, FRAME)
    raw = bytes(rb.serialize(msg, TYPES[kind][0]))
    return raw, rb.deserialize(raw, TYPES[kind][0])


def _rclpy(kind, value):
    pytest.importorskip("rclpy")
    import sensor_msgs.msg
    from rclpy.serialization import deserialize_message, serialize_message

    from gcross_ros.msgs import rclpy_msgs

    if kind == "image":
        msg = rclpy_msgs.numpy_to_image(*value, STAMP_NS, FRAME)
    elif kind == "info":
        msg = rclpy_msgs.make_camera_info(*value, STAMP_NS, FRAME)
    else:
        msg = rclpy_msgs.array_to_pointcloud2(value, STAMP_NS, FRAME)
    raw = bytes(serialize_message(msg))
    return raw, deserialize_message(raw, getattr(sensor_msgs.msg, TYPES[kind][1]))


BACKENDS = {"rosbags": _rosbags, "rclpy": _rclpy}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("encoding", sorted(IMAGES))
def test_image_round_trip(backend, encoding):
    pixels = IMAGES[encoding]
    _, msg = BACKENDS[backend]("image", (pixels, encoding))
    assert codec.stamp_to_ns(msg.header.stamp) == STAMP_NS and msg.header.frame_id == FRAME
    out = codec.decode_image(msg)
    assert out.dtype == pixels.dtype
    np.testing.assert_array_equal(out, pixels)
    if encoding == "bgr8":
        np.testing.assert_array_equal(codec.decode_color_rgb(msg), pixels[:, :, ::-1])
    if encoding == "16UC1":  # 65535 mm is no measurement, 65534 mm the farthest one
        np.testing.assert_array_equal(codec.decode_depth_m(msg)[0], np.float32([0, 0.001, 65.534, 0]))


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_camera_info_round_trip(backend):
    _, msg = BACKENDS[backend]("info", (K, 640, 480))
    K2, w, h = codec.camera_info_to_K(msg)
    np.testing.assert_array_equal(K2, K)
    assert (w, h) == (640, 480)
    np.testing.assert_array_equal(np.reshape(msg.p, (3, 4)), np.concatenate([K, np.zeros((3, 1))], 1))


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_cloud_round_trip(backend):
    _, msg = BACKENDS[backend]("cloud", CLOUD)
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, codec.FLOAT32, 1), ("y", 4, codec.FLOAT32, 1), ("z", 8, codec.FLOAT32, 1),
        ("rgb", 12, codec.FLOAT32, 1), ("label", 16, codec.UINT32, 1), ("confidence", 20, codec.FLOAT32, 1)]
    points = codec.decode_cloud(msg)
    assert points.dtype == codec.LABELLED_CLOUD_DTYPE
    np.testing.assert_array_equal(points, CLOUD)
    xyz, rgb, label = codec.split_labelled_points(points)
    np.testing.assert_array_equal(label, CLOUD["label"].view(np.int32))  # -1 survives as 0xFFFFFFFF
    np.testing.assert_array_equal(rgb, codec.unpack_rgb(CLOUD["rgb"]))


def _decoded(kind, msg):
    if kind == "image":
        return codec.decode_image(msg)
    if kind == "info":
        return codec.camera_info_to_K(msg)[0]
    return codec.decode_cloud(msg)


@pytest.mark.parametrize("kind,value", [("image", (IMAGES["rgb8"], "rgb8")), ("image", (IMAGES["16UC1"], "16UC1")),
                                        ("image", (IMAGES["32FC1"], "32FC1")), ("info", (K, 640, 480)),
                                        ("cloud", CLOUD)], ids=["rgb8", "16UC1", "32FC1", "camera_info", "cloud"])
def test_each_backend_reads_what_the_other_writes(kind, value):
    from rclpy.serialization import deserialize_message  # the rclpy half skipped already without rclpy

    rclpy_raw, rclpy_msg = _rclpy(kind, value)
    rosbags_raw, rosbags_msg = _rosbags(kind, value)
    msgtype, cls_name = TYPES[kind]
    import sensor_msgs.msg

    via_rosbags = rb.deserialize(rclpy_raw, msgtype)
    via_rclpy = deserialize_message(rosbags_raw, getattr(sensor_msgs.msg, cls_name))
    expected = _decoded(kind, rosbags_msg)
    for msg in (rclpy_msg, via_rosbags, via_rclpy):
        np.testing.assert_array_equal(_decoded(kind, msg), expected)
        assert codec.stamp_to_ns(msg.header.stamp) == STAMP_NS and msg.header.frame_id == FRAME


def test_pose_round_trip_and_canonical_sign():
    from gcross_core.geometry import pose_from_quat

    q = np.array([-0.5, 0.5, -0.5, 0.5])  # w < 0: written as the equal rotation with w > 0
    T = pose_from_quat([1.0, -2.0, 3.0], q)
    msg = rb.pose_stamped_msg(T, STAMP_NS, "map")
    assert msg.pose.orientation.w > 0
    np.testing.assert_allclose(codec.pose_to_matrix(msg.pose.position, msg.pose.orientation), T, atol=1e-12)
    msg.pose.orientation.w = msg.pose.orientation.x = msg.pose.orientation.y = msg.pose.orientation.z = 0.0
    with pytest.raises(ValueError, match="quaternion"):
        codec.pose_to_matrix(msg.pose.position, msg.pose.orientation)
