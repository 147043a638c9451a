"""The codec on rclpy messages: exact round trips, layouts with padding and foreign byte order."""
import numpy as np
import pytest

pytest.importorskip("sensor_msgs")
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from sensor_msgs.msg import Image, PointCloud2, PointField  # noqa: E402

from gcross_ros.msgs import codec  # noqa: E402
from gcross_ros.msgs import rclpy_msgs as cv  # noqa: E402

pytestmark = pytest.mark.ros

RNG = np.random.default_rng(0)
SAMPLES = {
    "rgb8": RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8),
    "bgr8": RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8),
    "mono8": RNG.integers(0, 256, (5, 7), dtype=np.uint8),
    "16UC1": RNG.integers(0, 65536, (5, 7), dtype=np.uint16),
    "32FC1": RNG.random((5, 7), dtype=np.float32) * 10,
}


def _shares(arr, msg):
    return np.shares_memory(arr, np.frombuffer(msg.data, np.uint8))


@pytest.mark.parametrize("encoding", sorted(SAMPLES))
def test_image_round_trip_is_exact_and_a_view(encoding):
    pixels = SAMPLES[encoding]
    msg = cv.numpy_to_image(pixels, encoding, stamp_ns=1_500_000_000, frame_id="cam")
    assert msg.header.frame_id == "cam" and codec.stamp_to_ns(msg.header.stamp) == 1_500_000_000
    msg = deserialize_message(serialize_message(msg), Image)  # what a subscriber receives
    out = codec.decode_image(msg)
    np.testing.assert_array_equal(out, pixels)
    assert out.dtype == pixels.dtype
    assert _shares(out, msg), "reading a native, aligned image should not copy"
    assert not out.flags.writeable


def _padded_image(pixels, encoding, step, bigendian=False):
    """Hand-built Image whose rows carry junk padding after the pixels."""
    h, w = pixels.shape[:2]
    wire = pixels.astype(pixels.dtype.newbyteorder(">" if bigendian else "<"))
    raw = wire.reshape(h, -1).view(np.uint8).reshape(h, -1)
    rows = np.full((h, step), 0xAB, np.uint8)
    rows[:, :raw.shape[1]] = raw
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian), step=step)
    msg.data = rows.tobytes()
    return msg


@pytest.mark.parametrize("encoding,extra", [("rgb8", 5), ("16UC1", 6), ("32FC1", 12), ("16UC1", 3)])
def test_image_row_padding_is_skipped(encoding, extra):
    pixels = SAMPLES[encoding]
    row_bytes = pixels.shape[1] * pixels.itemsize * (pixels.shape[2] if pixels.ndim == 3 else 1)
    msg = _padded_image(pixels, encoding, row_bytes + extra)
    out = codec.decode_image(msg)
    np.testing.assert_array_equal(out, pixels)
    if extra % pixels.itemsize == 0:
        assert _shares(out, msg), "padding aligned to the element size should be skipped by strides"


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_big_endian_images_are_converted(encoding):
    pixels = SAMPLES[encoding]
    msg = _padded_image(pixels, encoding, pixels.shape[1] * pixels.itemsize, bigendian=True)
    out = codec.decode_image(msg)
    np.testing.assert_array_equal(out, pixels)
    assert out.dtype.isnative


def test_bgr8_is_returned_as_rgb_and_depth_in_metres():
    rgb = SAMPLES["rgb8"]
    bgr_msg = cv.numpy_to_image(np.ascontiguousarray(rgb[:, :, ::-1]), "bgr8")
    np.testing.assert_array_equal(codec.decode_color_rgb(bgr_msg), rgb)
    np.testing.assert_array_equal(codec.decode_color_rgb(cv.numpy_to_image(rgb, "rgb8")), rgb)

    mm = np.array([[0, 1500], [65535, 20]], np.uint16)
    # 65535 mm means "no measurement" on the wire as on disk (gcross_core.image)
    np.testing.assert_allclose(codec.decode_depth_m(cv.numpy_to_image(mm, "16UC1")),
                               np.where(mm == 65535, 0.0, mm / 1000.0), rtol=1e-6)
    m = np.array([[np.nan, 1.25], [0.0, np.inf]], np.float32)
    np.testing.assert_array_equal(codec.decode_depth_m(cv.numpy_to_image(m, "32FC1")), m)


def test_unsupported_encodings_and_bad_buffers_raise():
    msg = Image(height=2, width=2, encoding="rgba8", step=8)
    msg.data = bytes(16)
    with pytest.raises(ValueError, match="rgba8.*supported: rgb8, bgr8"):
        codec.decode_image(msg)
    with pytest.raises(ValueError, match="'16UC1'.*supported: rgb8, bgr8"):
        codec.decode_color_rgb(cv.numpy_to_image(SAMPLES["16UC1"], "16UC1"))
    with pytest.raises(ValueError, match="'rgb8'.*supported: 16UC1, 32FC1"):
        codec.decode_depth_m(cv.numpy_to_image(SAMPLES["rgb8"], "rgb8"))
    short = cv.numpy_to_image(SAMPLES["rgb8"], "rgb8")
    short.data = bytes(10)
    with pytest.raises(ValueError, match="data holds 10 bytes"):
        codec.decode_image(short)
    with pytest.raises(ValueError, match="expected \\[H, W, 3\\]"):
        cv.numpy_to_image(SAMPLES["mono8"], "rgb8")
    with pytest.raises(ValueError, match="dtype"):
        cv.numpy_to_image(SAMPLES["32FC1"], "16UC1")


def test_camera_info_round_trip_and_validation():
    K = np.array([[525.0, 0, 319.5], [0, 526.0, 239.5], [0, 0, 1]])
    msg = cv.make_camera_info(K, 640, 480, stamp_ns=7, frame_id="cam")
    K2, w, h = codec.camera_info_to_K(msg)
    np.testing.assert_array_equal(K2, K)
    assert (w, h) == (640, 480)
    np.testing.assert_array_equal(np.asarray(msg.p).reshape(3, 4)[:, :3], K)
    bad = cv.make_camera_info(K, 0, 480)
    with pytest.raises(ValueError, match="size 0x480"):
        codec.camera_info_to_K(bad)
    bad = cv.make_camera_info(np.zeros((3, 3)), 640, 480)
    with pytest.raises(ValueError, match="focal"):
        codec.camera_info_to_K(bad)


def test_stamps_round_trip():
    for ns in (0, 1, 999_999_999, 1_700_000_000_123_456_789):
        assert codec.stamp_to_ns(cv.ns_to_stamp(ns)) == ns
    with pytest.raises(ValueError):
        cv.ns_to_stamp(-1)


def test_rgb_is_packed_as_rviz_expects():
    rgb = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [1, 2, 3]], np.uint8)
    packed = codec.pack_rgb(rgb)
    assert packed.dtype == np.float32
    assert packed.view(np.uint32).tolist() == [0xFF0000, 0x00FF00, 0x0000FF, 0x010203]
    np.testing.assert_array_equal(codec.unpack_rgb(packed), rgb)


def test_labelled_cloud_layout_and_round_trip():
    n = 50
    xyz = RNG.normal(size=(n, 3)).astype(np.float32)
    rgb = RNG.integers(0, 256, (n, 3), dtype=np.uint8)
    label = RNG.integers(0, 20, n)
    conf = RNG.random(n).astype(np.float32)
    msg = cv.labelled_cloud(xyz, rgb, label, conf, stamp_ns=42, frame_id="map")
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, PointField.FLOAT32, 1), ("y", 4, PointField.FLOAT32, 1), ("z", 8, PointField.FLOAT32, 1),
        ("rgb", 12, PointField.FLOAT32, 1), ("label", 16, PointField.UINT32, 1),
        ("confidence", 20, PointField.FLOAT32, 1)]
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, n, 24, 24 * n)
    assert msg.is_dense and msg.header.frame_id == "map"
    msg = deserialize_message(serialize_message(msg), PointCloud2)
    pts = codec.decode_cloud(msg)
    assert _shares(pts, msg)
    np.testing.assert_array_equal(np.stack([pts["x"], pts["y"], pts["z"]], 1), xyz)
    np.testing.assert_array_equal(codec.unpack_rgb(pts["rgb"]), rgb)
    np.testing.assert_array_equal(pts["label"], label)
    np.testing.assert_array_equal(pts["confidence"], conf)
    with pytest.raises(ValueError, match="confidence has shape"):
        cv.labelled_cloud(xyz, rgb, label, conf[:-1])
    with pytest.raises(ValueError, match="label values"):
        cv.labelled_cloud(xyz, rgb, -label - 1, conf)


def _cloud(fields, point_step, raw_rows, width, bigendian=False):
    msg = PointCloud2(height=len(raw_rows), width=width, point_step=point_step,
                      row_step=len(raw_rows[0]), is_bigendian=bigendian)
    msg.fields = fields
    msg.data = b"".join(raw_rows)
    return msg


@pytest.mark.parametrize("bigendian", [False, True])
def test_reads_foreign_layouts(bigendian):
    """Gaps between fields, a subarray field, an organized cloud with row padding, either byte order."""
    order = ">" if bigendian else "<"
    dtype = np.dtype({"names": ["x", "y", "z", "intensity", "ring", "normal"],
                      "formats": [order + "f4", order + "f4", order + "f4", order + "u2", "u1", (order + "f8", (2,))],
                      "offsets": [0, 4, 8, 16, 18, 24], "itemsize": 48})
    h, w = 3, 4
    pts = np.zeros((h, w), dtype)
    pts["x"] = RNG.normal(size=(h, w))
    pts["y"] = RNG.normal(size=(h, w))
    pts["z"] = RNG.normal(size=(h, w))
    pts["intensity"] = RNG.integers(0, 65535, (h, w))
    pts["ring"] = RNG.integers(0, 255, (h, w))
    pts["normal"] = RNG.normal(size=(h, w, 2))
    rows = [pts[r].tobytes() + b"\xee" * 8 for r in range(h)]  # 8 bytes of row padding
    fields = [PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1),
              PointField(name="y", offset=4, datatype=PointField.FLOAT32, count=1),
              PointField(name="z", offset=8, datatype=PointField.FLOAT32, count=1),
              PointField(name="intensity", offset=16, datatype=PointField.UINT16, count=1),
              PointField(name="ring", offset=18, datatype=PointField.UINT8, count=1),
              PointField(name="normal", offset=24, datatype=PointField.FLOAT64, count=2)]
    out = codec.decode_cloud(_cloud(fields, 48, rows, w, bigendian))
    assert out.shape == (h * w,)
    for name in dtype.names:
        np.testing.assert_array_equal(out[name], pts[name].reshape(h * w, *pts[name].shape[2:]))
        assert out[name].dtype.isnative or out[name].dtype.itemsize == 1


def test_cloud_errors_name_the_problem():
    fields = [PointField(name="x", offset=0, datatype=99, count=1)]
    with pytest.raises(ValueError, match="unknown datatype 99"):
        codec.decode_cloud(_cloud(fields, 4, [bytes(8)], 2))
    fields = [PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1)]
    short = _cloud(fields, 4, [bytes(4)], 2)
    short.row_step = 8
    with pytest.raises(ValueError, match="data holds 4 bytes"):
        codec.decode_cloud(short)
    with pytest.raises(ValueError, match="row_step 4 is smaller"):
        codec.decode_cloud(_cloud(fields, 4, [bytes(4)], 2))
    with pytest.raises(ValueError, match="not structured"):
        cv.array_to_pointcloud2(np.zeros(3, np.float32))


def test_matches_sensor_msgs_py():
    """Where ROS provides sensor_msgs_py, both give identical bytes and read back identical points."""
    pc2 = pytest.importorskip("sensor_msgs_py.point_cloud2")
    n = 30
    msg = cv.labelled_cloud(RNG.normal(size=(n, 3)).astype(np.float32), RNG.integers(0, 256, (n, 3), dtype=np.uint8),
                            RNG.integers(0, 20, n), RNG.random(n).astype(np.float32), frame_id="map")
    ours = codec.decode_cloud(msg)
    theirs = pc2.create_cloud(msg.header, msg.fields, ours.copy())
    assert bytes(theirs.data) == bytes(msg.data)
    assert (theirs.point_step, theirs.row_step, theirs.width, theirs.height) == (
        msg.point_step, msg.row_step, msg.width, msg.height)
    read = pc2.read_points(msg)
    for name in ours.dtype.names:
        np.testing.assert_array_equal(read[name], ours[name])
