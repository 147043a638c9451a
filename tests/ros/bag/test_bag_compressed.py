"""Compressed camera streams in the one codec and the bag tools: image_transport ``compressed`` colour
(JPEG, PNG) and ``compressedDepth`` (16UC1 PNG, 32FC1 quantised inverse depth), recorded with
``gcross-bag record --compressed`` and read by ``gcross-bag eval`` like raw images."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("rosbags")
from gcross_core.errors import InputError, MalformedMessageError  # noqa: E402
from gcross_core.mapping.pipeline import PipelineConfig  # noqa: E402
from gcross_ros.bag.cli import main  # noqa: E402
from gcross_ros.bag.evaluate import evaluate_bag  # noqa: E402
from gcross_ros.bag.format import RecordConfig  # noqa: E402
from gcross_ros.bag.frames import read_bag  # noqa: E402
from gcross_ros.bag.reader import BagReader  # noqa: E402
from gcross_ros.bag.writer import record_scene  # noqa: E402
from gcross_ros.msgs import codec  # noqa: E402
from test_bag_io import CLASSES, HeightOracle, plane_scene  # noqa: E402


def _msg(fields):
    return SimpleNamespace(format=fields["format"], data=fields["data"])


def _depth(seed=0):
    rng = np.random.default_rng(seed)
    d = rng.uniform(0.3, 6.0, (24, 32)).astype(np.float32)
    d[0, :3] = 0.0
    d[1, 1] = np.nan
    return d


def test_compressed_depth_round_trips_within_its_quantisation():
    d = _depth()
    valid = np.isfinite(d) & (d > 0)
    mm = codec.decode_compressed_depth_m(_msg(codec.encode_compressed_depth(d, "16UC1")))
    np.testing.assert_allclose(mm[valid], np.round(d[valid] * 1000) / 1000, atol=1e-6)
    assert (mm[~valid] == 0).all()
    inv = codec.decode_compressed_depth_m(_msg(codec.encode_compressed_depth(d, "32FC1")))
    # inverse depth in steps of 1 / (q (q + 1)) with q = 100: the error grows with the square of the range
    err = np.abs(inv[valid] - d[valid])
    assert (err <= d[valid] ** 2 / 10_100 + 1e-5).all() and err.max() > 1e-4  # quantised, not exact
    assert np.isnan(inv[~valid]).all()
    # beyond the transport's depth_max there is no reading
    far = codec.decode_compressed_depth_m(_msg(codec.encode_compressed_depth(d, "32FC1", depth_max_m=3.0)))
    assert np.isnan(far[d >= 3.0]).all() and np.isfinite(far[valid & (d < 3.0)]).all()


def test_a_plain_16_bit_png_of_millimetres_is_read_as_depth():
    d = _depth()
    fields = codec.encode_compressed_depth(d, "16UC1")
    plain = {"format": "png", "data": fields["data"][12:]}  # no compressedDepth header
    np.testing.assert_array_equal(codec.decode_compressed_depth_m(_msg(plain)),
                                  codec.decode_compressed_depth_m(_msg(fields)))


def test_unreadable_compressed_payloads_name_what_was_expected():
    d = _depth()
    corrupt = {"format": "16UC1; compressedDepth png", "data": np.zeros(40, np.uint8)}
    with pytest.raises(MalformedMessageError, match="neither a compressedDepth PNG"):
        codec.decode_compressed_depth_m(_msg(corrupt))
    truncated = codec.encode_compressed_depth(d, "16UC1")
    truncated["data"] = truncated["data"][:40]
    with pytest.raises(MalformedMessageError, match="cannot be decoded"):
        codec.decode_compressed_depth_m(_msg(truncated))
    with pytest.raises(InputError, match="RVL"):
        codec.decode_compressed_depth_m(_msg({"format": "16UC1; compressedDepth rvl", "data": np.zeros(40, np.uint8)}))
    headerless = codec.encode_compressed_depth(d, "32FC1")
    headerless["data"] = headerless["data"][12:]
    with pytest.raises(InputError, match="quantisation header"):
        codec.decode_compressed_depth_m(_msg(headerless))
    jpeg = codec.encode_compressed_color(np.zeros((8, 8, 3), np.uint8), "jpeg")
    jpeg["data"] = jpeg["data"][:30]
    with pytest.raises(MalformedMessageError, match="compressed color image"):
        codec.decode_compressed_color_rgb(_msg(jpeg))
    with pytest.raises(InputError, match="webp"):
        codec.encode_compressed_color(np.zeros((8, 8, 3), np.uint8), "webp")


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("compressed_bags")
    scene = plane_scene()
    for name, compressed in (("raw", ""), ("png", "png"), ("jpeg", "jpeg")):
        record_scene(scene, root / name, RecordConfig(compressed=compressed), class_names=CLASSES)
    return root


def test_a_compressed_recording_reads_back_as_the_raw_one(bags):
    with BagReader(bags / "png") as bag:
        assert bag.topics["/camera/color/image_raw/compressed"] == "sensor_msgs/msg/CompressedImage"
        assert bag.topics["/camera/depth/image_raw/compressedDepth"] == "sensor_msgs/msg/CompressedImage"
        assert "/camera/color/image_raw" not in bag.topics
    raw, png, jpeg = (read_bag(bags / name) for name in ("raw", "png", "jpeg"))
    assert len(raw.stamps_ns) == len(png.stamps_ns) == len(jpeg.stamps_ns) == 4
    np.testing.assert_array_equal(png.color, raw.color)  # PNG is lossless
    np.testing.assert_array_equal(png.depth_m, raw.depth_m)
    np.testing.assert_array_equal(jpeg.depth_m, raw.depth_m)
    jpeg_error = np.abs(jpeg.color.astype(int) - raw.color.astype(int))
    assert 0 < jpeg_error.mean() < 6, jpeg_error.mean()  # JPEG at quality 95: lossy at the colour edges
    np.testing.assert_array_equal(png.cam_to_map, raw.cam_to_map)


def test_eval_of_a_compressed_bag_scores_as_the_raw_one(bags, tmp_path):
    results = {name: evaluate_bag(bags / name, HeightOracle(), tmp_path / name, PipelineConfig(segment_period_s=0.15))
               for name in ("raw", "png")}
    assert results["png"].miou == pytest.approx(1.0)
    assert results["png"].performance["frames"] == results["raw"].performance["frames"] == 4
    assert results["png"].coverage == results["raw"].coverage


def test_eval_cli_takes_named_topics_and_names_a_missing_one(bags, tmp_path, capsys):
    from gcross_core.model.encoder import SpUNetConfig
    from gcross_core.segmentation.model import build_segmenter_checkpoint

    pytest.importorskip("spconv")
    tiny = SpUNetConfig(base_channels=8, channels=(8, 8, 8, 8), layers=(1, 1, 1, 1))
    ckpt = build_segmenter_checkpoint(tmp_path / "seg.safetensors", CLASSES, tiny)
    args = ["-q", "eval", str(bags / "jpeg"), "--checkpoint", str(ckpt), "--segment-period-s", "0.2"]
    assert main(args + ["--out", str(tmp_path / "r1"), "--color-topic", "/camera/color/image_raw/compressed",
                        "--depth-topic", "/camera/depth/image_raw/compressedDepth"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["frames_fused"] == 4 and summary["frames_dropped"] == 0
    assert main(args + ["--out", str(tmp_path / "r2"), "--color-topic", "/camera/rgb/image_raw"]) == 2
    assert "/camera/rgb/image_raw" in capsys.readouterr().err
