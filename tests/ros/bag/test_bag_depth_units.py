"""Depth at the edge of uint16 millimetres reads back the same from a bag as from a SensReader folder."""
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("rosbags")

from gcross_core.data.frames import Frame, FrameList, SensReaderFrames, write_frames  # noqa: E402
from gcross_ros.bag.frames import iter_frames  # noqa: E402
from gcross_ros.bag.writer import record_scene  # noqa: E402


def test_65535_mm_means_no_measurement_in_bags_and_scene_folders(tmp_path):
    depth_m = np.array([[65.535, 65.534, 0.0, 1.5]] * 2, np.float32)  # 65535 mm is the invalid marker
    K = np.array([[10.0, 0, 1.5], [0, 10.0, 0.5], [0, 0, 1]])
    frame = Frame(color=np.full((2, 4, 3), 128, np.uint8), depth_m=depth_m, K_color=K, K_depth=K,
                  cam_to_world=np.eye(4))

    record_scene(SimpleNamespace(name="edge", frames=FrameList([frame]), segment=None), tmp_path / "bag")
    (from_bag,) = list(iter_frames(tmp_path / "bag"))
    write_frames(tmp_path / "frames", [frame], color_format="png")
    from_folder = SensReaderFrames(tmp_path / "frames").frame(0).depth_m

    expected = np.array([[0.0, 65.534, 0.0, 1.5]] * 2, np.float32)
    for depth in (from_bag.depth_m, from_folder):
        assert depth.dtype == np.float32
        np.testing.assert_array_equal(depth, expected)
    np.testing.assert_array_equal(from_bag.depth_m, from_folder)
