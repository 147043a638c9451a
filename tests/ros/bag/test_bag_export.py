"""gcross-bag export: our bags and driver-style bags (TF chain, compressed images, offset stamps) ->
frames-only scene folder with cached fused points; missing topics are named."""
import io

import numpy as np
import pytest

pytest.importorskip("rosbags")

from PIL import Image  # noqa: E402

from gcross_core.data.frames import SensReaderFrames  # noqa: E402
from gcross_core.data.synthetic import make_room  # noqa: E402
from gcross_core.errors import BagError  # noqa: E402
from gcross_core.geometry import invert_rigid  # noqa: E402
from gcross_core.image import depth_m_to_mm  # noqa: E402
from gcross_core.mapping.fusion_cache import FusionSettings, default_cache_dir, fused_points  # noqa: E402
from gcross_ros.bag.cli import main  # noqa: E402
from gcross_ros.bag.export import ExportConfig, export_bag  # noqa: E402
from gcross_ros.bag.format import RecordConfig  # noqa: E402
from gcross_ros.bag.writer import BagWriter, record_scene  # noqa: E402
from gcross_ros.msgs import rosbags_msgs as rb  # noqa: E402

FUSION = FusionSettings(voxel_size_m=0.05)


@pytest.fixture(scope="module")
def room():
    return make_room(3, num_points=3000, num_views=5, width=32, height=24)


def test_export_of_a_recorded_bag_round_trips_frames_and_caches_points(room, tmp_path):
    bag = tmp_path / "bag"
    record_scene(room, bag, RecordConfig(), progress=False)
    summary = export_bag(bag, tmp_path / "scene", ExportConfig(fusion=FUSION, color_format="png"))
    assert summary.frames_written == 5 and summary.image_size == (32, 24)
    assert summary.topics["pose"] == "/camera/pose" and summary.fused_points > 100
    frames = SensReaderFrames(tmp_path / "scene" / "frames")
    for i in range(5):
        ref = room.frames.frame(i).registered()
        got = frames.frame(i)
        np.testing.assert_allclose(got.cam_to_world, ref.cam_to_world, atol=1e-6)
        np.testing.assert_array_equal(depth_m_to_mm(got.depth_m), depth_m_to_mm(ref.depth_m))
        np.testing.assert_allclose(got.K_depth, ref.K_depth, atol=1e-9)
    again = fused_points(frames, FUSION, default_cache_dir(tmp_path / "scene"))
    assert again.from_cache and len(again.coord) == summary.fused_points


def test_every_keeps_every_nth_frame(room, tmp_path):
    bag = tmp_path / "bag"
    record_scene(room, bag, RecordConfig(), progress=False)
    s = export_bag(bag, tmp_path / "scene", ExportConfig(every=2, fusion=None))
    assert s.frames_written == 3 and s.pairs_skipped_every == 2
    np.testing.assert_allclose(SensReaderFrames(tmp_path / "scene" / "frames").cam_to_world(1),
                               room.frames.frame(2).cam_to_world, atol=1e-6)


def _png(pixels: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return np.frombuffer(buf.getvalue(), np.uint8).copy()


def write_driver_bag(path, room, *, camera_info=True, poses=True, depth_offset_ns=4_000_000):
    """What `ros2 bag record` makes of a RealSense driver with align_depth and a localiser publishing
    map -> base_link on /tf: compressed colour (PNG), compressedDepth depth stamped 4 ms after colour,
    camera_info, and /tf_static base_link -> camera_link -> camera_color_optical_frame."""
    ns = "/camera/camera"
    base_to_link = np.eye(4)
    base_to_link[:3, 3] = [0.1, 0.0, 0.3]
    link_to_optical = np.array([[0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]], np.float64)
    with BagWriter(path) as w:
        w.add_topic(f"{ns}/color/image_raw/compressed", "sensor_msgs/msg/CompressedImage")
        w.add_topic(f"{ns}/aligned_depth_to_color/image_raw/compressedDepth", "sensor_msgs/msg/CompressedImage")
        if camera_info:
            w.add_topic(f"{ns}/color/camera_info", "sensor_msgs/msg/CameraInfo")
        if poses:
            w.add_topic("/tf", "tf2_msgs/msg/TFMessage")
            w.add_topic("/tf_static", "tf2_msgs/msg/TFMessage", latched=True)
            t0 = 1_700_000_000 * 10**9
            w.write("/tf_static", rb.tf_msg([rb.transform_stamped_msg(base_to_link, t0, "base_link", "camera_link"),
                                            rb.transform_stamped_msg(link_to_optical, t0, "camera_link",
                                                                     "camera_color_optical_frame")]), t0)
        for i in range(len(room.frames)):
            f = room.frames.frame(i).registered()
            t = 1_700_000_000 * 10**9 + (i + 1) * 100_000_000
            h, wd = f.depth_m.shape
            if poses:
                map_to_base = f.cam_to_world @ invert_rigid(base_to_link @ link_to_optical)
                for dt in (-30_000_000, 30_000_000):  # poses bracket the image: interpolated
                    w.write("/tf", rb.tf_msg([rb.transform_stamped_msg(map_to_base, t + dt, "map", "base_link")]),
                            t + dt)
            color = rb.message("sensor_msgs/msg/CompressedImage", header=rb.header(t, "camera_color_optical_frame"),
                               format="rgb8; png compressed rgb8", data=_png(f.color))
            w.write(f"{ns}/color/image_raw/compressed", color, t)
            header12 = np.zeros(12, np.uint8)
            depth = rb.message("sensor_msgs/msg/CompressedImage",
                               header=rb.header(t + depth_offset_ns, "camera_color_optical_frame"),
                               format="16UC1; compressedDepth png",
                               data=np.concatenate([header12, _png(depth_m_to_mm(f.depth_m))]))
            w.write(f"{ns}/aligned_depth_to_color/image_raw/compressedDepth", depth, t + depth_offset_ns)
            if camera_info:
                w.write(f"{ns}/color/camera_info", rb.camera_info_msg(f.K_depth, wd, h, t, "camera_color_optical_frame"),
                        t)


def test_driver_style_bag_with_tf_chain_and_compressed_images(room, tmp_path):
    write_driver_bag(tmp_path / "bag", room)
    s = export_bag(tmp_path / "bag", tmp_path / "scene", ExportConfig(fusion=FUSION))
    assert s.topics == {"color": "/camera/camera/color/image_raw/compressed",
                        "depth": "/camera/camera/aligned_depth_to_color/image_raw/compressedDepth",
                        "camera_info": "/camera/camera/color/camera_info", "pose": "/tf"}
    assert s.frames_written == len(room.frames) and s.frames_without_pose == 0
    frames = SensReaderFrames(tmp_path / "scene" / "frames")
    for i in range(len(room.frames)):
        ref = room.frames.frame(i).registered()
        np.testing.assert_allclose(frames.cam_to_world(i), ref.cam_to_world, atol=1e-6)
        np.testing.assert_array_equal(depth_m_to_mm(frames.frame(i).depth_m), depth_m_to_mm(ref.depth_m))


def test_bag_without_camera_info_names_the_topic(room, tmp_path):
    write_driver_bag(tmp_path / "bag", room, camera_info=False)
    with pytest.raises(BagError, match="/camera/camera/color/camera_info"):
        export_bag(tmp_path / "bag", tmp_path / "scene")
    assert main(["export", str(tmp_path / "bag"), "--out", str(tmp_path / "scene2")]) == 2


def test_bag_without_poses_names_what_is_missing(room, tmp_path):
    write_driver_bag(tmp_path / "bag", room, poses=False)
    with pytest.raises(BagError, match=r"no camera poses.*PoseStamped.*/tf"):
        export_bag(tmp_path / "bag", tmp_path / "scene")


def test_tf_without_a_path_to_the_map_frame_is_an_error(room, tmp_path):
    write_driver_bag(tmp_path / "bag", room)
    with pytest.raises(BagError, match="no path from camera_color_optical_frame up to world"):
        export_bag(tmp_path / "bag", tmp_path / "scene", ExportConfig(map_frame="world", fusion=None))


def test_export_cli_prints_a_summary(room, tmp_path, capsys):
    bag = tmp_path / "bag"
    record_scene(room, bag, RecordConfig(), progress=False)
    assert main(["-q", "export", str(bag), "--out", str(tmp_path / "scene"), "--fuse-voxel-size-m", "0.05"]) == 0
    out = capsys.readouterr().out
    assert '"frames": 5' in out and '"fused_points"' in out
    assert (tmp_path / "scene" / "fused" / "fusion.json").is_file()


@pytest.mark.parametrize("topics,expected", [
    ({"/rgb/image_raw": "sensor_msgs/msg/Image", "/depth_to_rgb/image_raw": "sensor_msgs/msg/Image",
      "/depth/image_raw": "sensor_msgs/msg/Image", "/rgb/camera_info": "sensor_msgs/msg/CameraInfo",
      "/tf": "tf2_msgs/msg/TFMessage"},  # Azure Kinect ROS driver
     ("/rgb/image_raw", "/depth_to_rgb/image_raw", "/rgb/camera_info", "/tf")),
    ({"/camera/rgb/image_raw": "sensor_msgs/msg/Image", "/camera/depth_registered/image_raw": "sensor_msgs/msg/Image",
      "/camera/rgb/camera_info": "sensor_msgs/msg/CameraInfo", "/slam/pose": "geometry_msgs/msg/PoseStamped",
      "/tf": "tf2_msgs/msg/TFMessage"},  # openni / freenect with a SLAM pose topic
     ("/camera/rgb/image_raw", "/camera/depth_registered/image_raw", "/camera/rgb/camera_info", "/slam/pose")),
])
def test_driver_topic_names_are_found(topics, expected, tmp_path):
    from gcross_ros.bag.export import resolve_topics

    got = resolve_topics(topics, ExportConfig(), tmp_path)
    assert (got["color"], got["depth"], got["camera_info"], got["pose"]) == expected


def test_two_cameras_need_a_choice(tmp_path):
    from gcross_ros.bag.export import resolve_topics

    topics = {f"/{c}/color/image_raw": "sensor_msgs/msg/Image" for c in ("front", "back")}
    with pytest.raises(BagError, match="several color topics"):
        resolve_topics(topics, ExportConfig(), tmp_path)
    topics.update({"/front/aligned_depth_to_color/image_raw": "sensor_msgs/msg/Image",
                   "/front/color/camera_info": "sensor_msgs/msg/CameraInfo", "/tf": "tf2_msgs/msg/TFMessage"})
    got = resolve_topics(topics, ExportConfig(color_topic="/front/color/image_raw"), tmp_path)
    assert got["camera_info"] == "/front/color/camera_info"


def test_export_skips_garbled_messages_and_writes_the_rest(room, tmp_path, caplog):
    from garble import garble_bag

    bag = tmp_path / "bag"
    record_scene(room, bag, RecordConfig(), progress=False)
    garble_bag(bag, tmp_path / "garbled", lambda topic, k: (topic, k) in {("/camera/color/camera_info", 0),
                                                                          ("/camera/color/image_raw", 3)})
    caplog.set_level("WARNING")
    s = export_bag(tmp_path / "garbled", tmp_path / "scene", ExportConfig(fusion=None))
    assert s.messages_skipped == 2 and s.frames_written == 3
    assert s.account["dropped.no_camera_info"] == 1 and s.account["frames_in"] == 4
    frames = SensReaderFrames(tmp_path / "scene" / "frames")
    np.testing.assert_allclose(frames.cam_to_world(2), room.frames.frame(4).cam_to_world, atol=1e-6)
    # a bag gcross recorded: its depth topic is registered to colour, whatever its name
    assert "is not one a driver registers to colour" not in caplog.text


def test_max_frames_stops_reading(room, tmp_path):
    bag = tmp_path / "bag"
    record_scene(room, bag, RecordConfig(), progress=False)
    s = export_bag(bag, tmp_path / "scene", ExportConfig(max_frames=2, fusion=None))
    assert s.frames_written == 2 and s.account["dropped.not_used"] == 1
    assert s.account["frames_in"] < 5  # the rest of the bag is not read
