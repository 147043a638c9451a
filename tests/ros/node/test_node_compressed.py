"""The node on image_transport's compressed streams over real DDS (color_transport:=compressed,
depth_transport:=compressedDepth): JPEG colour and compressedDepth (16UC1 PNG and 32FC1 quantised inverse
depth) are fused like the raw frames they were made from, a corrupt JPEG or compressedDepth payload is
dropped and counted, and the stream goes on."""
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage  # noqa: E402

from gcross_core.mapping.fusion import VoxelMap  # noqa: E402
from gcross_core.mapping.voxel_keys import pack_keys  # noqa: E402
from gcross_core.mapping.map_io import load_map  # noqa: E402
from gcross_ros.msgs import codec  # noqa: E402
from gcross_ros.msgs import rclpy_msgs as cv  # noqa: E402
from gcross_ros.node.process import stop_node_process  # noqa: E402
from test_node import (CLASSES, NODE_PARAMS, STARTUP_S, WAIT_S, H, K, W, Fixture, _params_file,  # noqa: E402
                       _start_node, _tiny_checkpoint, ros_context, wait_for)

pytestmark = pytest.mark.ros
__all__ = ["ros_context", "CLASSES"]  # the module-scoped rclpy context fixture, shared with test_node.py

FRAMES = 8


def _frame(i):
    """A textured wall about 2 m away with a box in front, seen from a camera sliding along x; depths off
    the 0.1 m voxel lattice, so that quantised 32FC1 depth stays in the same voxels almost everywhere."""
    v, u = np.mgrid[0:H, 0:W]
    depth_m = (2.03 + 0.004 * (u % 5)).astype(np.float32)
    depth_m[8:16, 10:20] = 1.47
    depth_m[0, :4] = 0.0  # no reading
    rgb = np.stack([(u * 7) % 256, (v * 11) % 256, np.full_like(u, 90 + 10 * i)], axis=-1).astype(np.uint8)
    cam_to_map = np.eye(4)
    cam_to_map[0, 3] = 0.13 * i
    return rgb, depth_m, cam_to_map


class CompressedFixture(Fixture):
    def __init__(self, context):
        super().__init__(context)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.pub_jpeg = self.node.create_publisher(CompressedImage, "color/image_raw/compressed", reliable)
        self.pub_zdepth = self.node.create_publisher(CompressedImage, "depth/image_raw/compressedDepth", reliable)

    def send_compressed(self, rgb, depth_m, cam_to_map, depth_encoding="16UC1", color_data=None, depth_data=None):
        stamp = self.next_stamp()
        self.pub_pose.publish(cv.pose_stamped(cam_to_map, stamp, "map"))
        self.pub_info.publish(cv.make_camera_info(K, W, H, stamp, "camera_optical"))
        depth = codec.encode_compressed_depth(depth_m, depth_encoding)
        color = codec.encode_compressed_color(rgb, "jpeg", quality=95)
        if depth_data is not None:
            depth["data"] = depth_data
        if color_data is not None:
            color["data"] = color_data
        self.pub_zdepth.publish(cv.compressed_image(depth, stamp, "camera_optical"))
        self.pub_jpeg.publish(cv.compressed_image(color, stamp, "camera_optical"))
        return stamp


@pytest.fixture(scope="module")
def compressed_node(tmp_path_factory, ros_context):
    tmp = tmp_path_factory.mktemp("compressed")
    ckpt = _tiny_checkpoint(tmp / "tiny.safetensors")
    params = {**NODE_PARAMS, "publish_rendered": False, "color_transport": "compressed",
              "depth_transport": "compressedDepth"}
    maps = tmp / "maps" / "room"
    log_path = tmp / "node.log"
    proc, log = _start_node(_params_file(tmp, checkpoint=str(ckpt), save_map_path=str(maps), **params), log_path)
    fx = CompressedFixture(ros_context)
    fx.maps = maps
    try:
        wait_for(lambda: fx.diag(), STARTUP_S, "the node's first diagnostics", proc, log_path)
        wait_for(lambda: all(p.get_subscription_count() > 0 for p in (fx.pub_jpeg, fx.pub_zdepth, fx.pub_info,
                                                                     fx.pub_pose)),
                 WAIT_S, "the node's compressed subscriptions", proc, log_path)
        assert fx.pub_color.get_subscription_count() == 0  # the raw topic is not subscribed
        yield fx, proc, log_path
    finally:
        fx.close()
        rc = stop_node_process(proc, log)
    out = log_path.read_text()
    assert rc == 0 and "Traceback" not in out, out[-3000:]


def test_compressed_streams_are_fused_like_the_raw_frames(compressed_node):
    fx, proc, log_path = compressed_node
    reference = VoxelMap(NODE_PARAMS["voxel_size_m"], NODE_PARAMS["max_voxels"], len(CLASSES))
    for i in range(FRAMES):
        rgb, depth_m, cam_to_map = _frame(i)
        fx.send_compressed(rgb, depth_m, cam_to_map, "16UC1" if i % 2 == 0 else "32FC1")
        reference.integrate(rgb, depth_m, K, cam_to_map)
        wait_for(lambda: fx.diag().get("frames_fused", 0) >= i + 1, WAIT_S, f"frame {i} fused", proc, log_path)
    d = fx.diag()
    assert d["frames_in"] == d["frames_fused"] == FRAMES and d["frames_dropped"] == 0, d
    assert fx.call("save_map").success
    saved = load_map(fx.maps)
    got, ref = pack_keys(saved.voxel_index), reference.keys()
    common, i_got, i_ref = np.intersect1d(got, ref, return_indices=True)
    # 16UC1 PNG is lossless; 32FC1 inverse depth is quantised (0.4 mm at 2 m), which may move a point that
    # lies on a voxel face into the neighbour
    assert len(common) >= 0.98 * len(ref) and len(got) <= 1.02 * len(ref), (len(got), len(ref), len(common))
    colour_error = np.abs(saved.color[i_got].astype(int) - reference.colors()[i_ref].astype(int))
    assert colour_error.mean() < 6, colour_error.mean()  # JPEG at quality 95
    np.testing.assert_allclose(saved.coord[i_got], reference.centers()[i_ref], atol=0.05)


@pytest.mark.parametrize("stream", ["color", "depth"])
def test_a_corrupt_payload_is_dropped_and_counted_and_the_stream_goes_on(compressed_node, stream):
    fx, proc, log_path = compressed_node
    before = fx.diag()
    garbage = np.frombuffer(b"\xff\xd8\xff\xe0 truncated jpeg" + bytes(40), np.uint8)
    rgb, depth_m, cam_to_map = _frame(1)
    fx.send_compressed(rgb, depth_m, cam_to_map, **{f"{stream}_data": garbage})
    wait_for(lambda: fx.diag().get("dropped.malformed_image", 0) > before.get("dropped.malformed_image", 0), WAIT_S,
             f"a corrupt {stream} payload dropped as malformed_image", proc, log_path)
    fused = fx.diag()["frames_fused"]
    for i in range(3):
        fx.send_compressed(*_frame(i))
    wait_for(lambda: fx.diag().get("frames_fused", 0) >= fused + 3, WAIT_S, "good frames fused again", proc,
             log_path)
    d = fx.diag()
    assert d["frames_in"] == d["frames_fused"] + d["frames_dropped"] + d.get("frames_waiting", 0), d
    assert proc.poll() is None
