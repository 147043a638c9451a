"""The checkpoint header: one typed record of a checkpoint's metadata, read and written in checkpoint.py.

Round trips, compatibility with the files on disk (the shipped assets, Pointcept imports) and the errors:
a missing or malformed field is a CheckpointError naming the file and the field.
"""
import json

import pytest
import torch
from safetensors.torch import save_file

from gcross_core.checkpoint import (FORMAT_KEY, FORMAT_VERSION, PRETRAIN_ENCODER_PREFIX, SEGMENTER_ENCODER_PREFIX,
                                    CheckpointHeader, load_checkpoint, read_header, save_checkpoint, stamp_header)
from gcross_core.errors import CheckpointError
from gcross_core.model.api import DEMO_MODEL
from gcross_core.model.features import POINTCEPT_CONVENTION, EncoderInput, InputConvention
from gcross_core.segmentation.segmenter import DEMO_CHECKPOINT

TENSORS = {"encoder.w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}


def _full_header() -> CheckpointHeader:
    return CheckpointHeader(
        kind="segmenter", encoder_config={"in_channels": 6, "channels": [8, 8]}, encoder_prefix="encoder",
        grid_size_m=0.05, input_features="rgb01_normal", grid_lattice="center_shift", class_names=("wall", "floor"),
        instance={"stuff_classes": ["wall"]}, model_config={"grid_size_m": 0.05}, config={"name": "run"},
        trainer={"step": 3}, optimizer={"param_groups": []}, rng=[{"numpy": 1}], grad_scaler={"scale": 2.0},
        extra={"source": {"epoch": 7}, "note": "x"})


def _raw(path, **metadata):
    """A safetensors file whose metadata is exactly ``metadata`` (values JSON-encoded), plus the format key."""
    meta = {k: json.dumps(v) for k, v in metadata.items()}
    meta[FORMAT_KEY] = FORMAT_VERSION
    save_file(TENSORS, str(path), metadata=meta)
    return path


def test_every_field_round_trips(tmp_path):
    header = _full_header()
    path = save_checkpoint(tmp_path / "a.safetensors", TENSORS, header)
    tensors, read = load_checkpoint(path)
    assert read == header and read_header(path) == header
    assert read.source == str(path) and read.class_names == ("wall", "floor")
    assert torch.equal(tensors["encoder.w"], TENSORS["encoder.w"])
    # the metadata keys are the field names, as every checkpoint on disk has them
    assert {"kind", "grid_size_m", "class_names", "note", FORMAT_KEY} <= set(header.to_metadata())
    assert CheckpointHeader.from_metadata(header.to_metadata(), "x") == header


def test_stamp_changes_fields_and_keeps_the_rest(tmp_path):
    path = save_checkpoint(tmp_path / "a.safetensors", TENSORS, _full_header())
    stamp_header(path, **POINTCEPT_CONVENTION.header_fields())
    read = read_header(path)
    assert InputConvention.from_header(read) == POINTCEPT_CONVENTION
    assert read == _full_header().replace(**POINTCEPT_CONVENTION.header_fields())


def test_shipped_checkpoints_read():
    seg = read_header(DEMO_CHECKPOINT)
    assert seg.kind == "segmenter" and seg.encoder_prefix == SEGMENTER_ENCODER_PREFIX
    assert len(seg.class_names) >= 2 and seg.instance is not None
    assert EncoderInput.from_header(seg, 6).grid_size_m == seg.grid_size_m > 0
    model = read_header(DEMO_MODEL)
    assert model.kind == "pretrain" and model.encoder_prefix == PRETRAIN_ENCODER_PREFIX
    assert model.model_config is not None and model.config is not None


def test_the_format_default_fills_the_encoder_prefix_of_known_kinds_only(tmp_path):
    assert read_header(_raw(tmp_path / "p.safetensors", kind="pretrain")).encoder_prefix == PRETRAIN_ENCODER_PREFIX
    assert read_header(_raw(tmp_path / "e.safetensors", kind="encoder")).encoder_prefix == "encoder"
    toy = read_header(_raw(tmp_path / "t.safetensors", kind="toy"))
    with pytest.raises(CheckpointError, match=r"t\.safetensors.*'encoder_prefix'"):
        toy.require("encoder_prefix")


@pytest.mark.parametrize("field, value, match", [
    ("grid_size_m", 0.0, "'grid_size_m' is 0.0, expected a number > 0"),
    ("grid_size_m", "0.02", "'grid_size_m' is '0.02'"),
    ("grid_size_m", True, "'grid_size_m' is True"),
    ("class_names", ["wall", "wall"], "'class_names'.*unique"),
    ("class_names", "wall", "'class_names'"),
    ("encoder_config", [6, 32], "'encoder_config'.*JSON object"),
    ("kind", "", "'kind'"),
    ("rng", {"numpy": 1}, "'rng'.*a list"),
])
def test_malformed_fields_name_the_file_and_the_field(tmp_path, field, value, match):
    path = _raw(tmp_path / "bad.safetensors", **{"kind": "segmenter", field: value})
    with pytest.raises(CheckpointError, match=r"bad\.safetensors.*" + match):
        read_header(path)


def test_missing_and_unreadable_metadata(tmp_path):
    with pytest.raises(CheckpointError, match=r"nokind\.safetensors has no 'kind'"):
        read_header(_raw(tmp_path / "nokind.safetensors", grid_size_m=0.02))
    save_file(TENSORS, str(tmp_path / "foreign.safetensors"), metadata={"kind": "segmenter"})
    with pytest.raises(CheckpointError, match="foreign.safetensors has no gcross metadata"):
        read_header(tmp_path / "foreign.safetensors")
    save_file(TENSORS, str(tmp_path / "nojson.safetensors"), metadata={FORMAT_KEY: FORMAT_VERSION, "kind": "{"})
    with pytest.raises(CheckpointError, match="nojson.safetensors: metadata 'kind' is not JSON"):
        read_header(tmp_path / "nojson.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_header(tmp_path / "none.safetensors")


def test_required_fields_and_parsing_name_the_file_and_the_field(tmp_path):
    header = read_header(_raw(tmp_path / "h.safetensors", kind="segmenter", encoder_config={"in_channels": 6}))
    with pytest.raises(CheckpointError, match=r"h\.safetensors \(kind 'segmenter'\) has no 'grid_size_m'"):
        header.require("grid_size_m")
    # no silent grid default: the encoder input of a checkpoint without a grid is an error
    with pytest.raises(CheckpointError, match="no 'grid_size_m'"):
        EncoderInput.from_header(header.replace(**POINTCEPT_CONVENTION.header_fields()), 6)
    with pytest.raises(CheckpointError, match=r"h\.safetensors: unusable encoder_config.*boom"):
        header.parse("encoder_config", lambda d: (_ for _ in ()).throw(ValueError("boom")))
    with pytest.raises(CheckpointError, match=r"h\.safetensors is a 'segmenter' checkpoint, expected a pretraining"):
        header.expect_kind(["pretrain"], "a pretraining checkpoint")
    with pytest.raises(CheckpointError, match="no 'input_features'"):
        InputConvention.from_header(header.replace(grid_size_m=0.02))
    with pytest.raises(CheckpointError, match="'grid_lattice' is 'voxel_centre', expected one of"):
        InputConvention.from_header(header.replace(input_features="rgb01_normal", grid_lattice="voxel_centre"))
    with pytest.raises(CheckpointError, match="encoder takes 9 input channels"):
        EncoderInput.from_header(header.replace(grid_size_m=0.02, **POINTCEPT_CONVENTION.header_fields()), 9)


def test_extra_metadata_cannot_shadow_a_field():
    with pytest.raises(CheckpointError, match="shadow"):
        CheckpointHeader(kind="toy", extra={"grid_size_m": 0.02})
    with pytest.raises(TypeError):
        save_checkpoint("/nonexistent/x.safetensors", TENSORS, {"kind": "toy"})
