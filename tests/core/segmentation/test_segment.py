"""Segmentation model, checkpoints and the Segmenter inference API."""
import numpy as np
import pytest
import torch

from gcross_core.data.grid import collate_points, grid_sample
from gcross_core.model.encoder import SpUNetConfig
from gcross_core.checkpoint import CheckpointHeader, load_checkpoint, prefixed, save_checkpoint
from gcross_core.errors import CheckpointError, ConfigError, InputError
from gcross_core.model.features import encoder_features
from gcross_core.segmentation.model import (SegmentationModel, load_pretrained_encoder, save_segmenter,
                                            segmentation_loss)
from gcross_core.segmentation.model import build_segmenter_checkpoint
from gcross_core.segmentation.segmenter import DEMO_CHECKPOINT, Segmenter

TINY = SpUNetConfig(base_channels=8, channels=(8, 8, 8, 8), layers=(1, 1, 1, 1))
OTHER = SpUNetConfig(base_channels=8, channels=(8, 16, 16, 8), layers=(1, 1, 1, 1))
CLASSES = ["floor", "wall", "chair"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _cloud(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    coord = rng.uniform(0, 1.0, (n, 3)).astype(np.float32)
    color = rng.uniform(0, 255, (n, 3)).astype(np.float32)
    normal = rng.normal(size=(n, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    return coord, color, normal


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_segmenter_checkpoint(tmp_path_factory.mktemp("seg") / "seg.safetensors", CLASSES, TINY, 0.05)


def test_predict_returns_one_label_per_input_point_undoing_grid_sampling(ckpt):
    seg = Segmenter.from_checkpoint(ckpt)
    assert seg.class_names == CLASSES and seg.grid_size_m == 0.05
    coord, color, normal = _cloud()
    labels, conf, probs = seg.predict(coord, color, normal, return_probs=True)
    assert labels.shape == (3000,) and labels.dtype == np.int64
    assert conf.shape == (3000,) and conf.dtype == np.float32
    assert probs.shape == (3000, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(labels, probs.argmax(1))
    np.testing.assert_allclose(conf, probs.max(1))
    # points sharing a grid cell share the row they were mapped to, hence the probabilities
    _, _, inverse = grid_sample(coord, 0.05)
    assert len(np.unique(inverse)) < 3000
    same = inverse == inverse[0]
    assert same.sum() >= 1
    np.testing.assert_allclose(probs[same], np.broadcast_to(probs[0], probs[same].shape), atol=1e-6)
    # and the per-point result equals running the model on the grid rows by hand
    keep, grid, inv = grid_sample(coord, 0.05)
    batch = collate_points([coord[keep]], [encoder_features(color, normal, "rgb01_normal")[keep]], [grid], [inv])
    with torch.no_grad():
        rows = torch.softmax(seg.model(batch), 1).numpy()
    np.testing.assert_allclose(probs, rows[inv], atol=1e-5)
    assert seg.predict(coord, color, normal)[2] is None


def test_predict_with_rotations_averages_probabilities(ckpt):
    seg = Segmenter.from_checkpoint(ckpt)
    coord, color, normal = _cloud(800, seed=1)
    p1 = seg.predict_proba(coord, color, normal)
    p4 = seg.predict_proba(coord, color, normal, rotations=4)
    assert p4.shape == p1.shape
    np.testing.assert_allclose(p4.sum(1), 1.0, atol=1e-5)
    assert not np.allclose(p1, p4)  # the other angles contributed


@pytest.mark.parametrize("args, match", [
    (lambda c, k, n: (c[:, :2], k, n), "coord"),
    (lambda c, k, n: (c[:0], k[:0], n[:0]), "coord"),
    (lambda c, k, n: (c, k[:-1], n), "color"),
    (lambda c, k, n: (c, k, n[:, :2]), "normal"),
    (lambda c, k, n: (np.where(np.arange(len(c))[:, None] == 3, np.nan, c), k, n), "coord contains NaN"),
    (lambda c, k, n: (c, k, np.full_like(n, np.inf)), "normal contains NaN or inf"),
])
def test_predict_rejects_bad_input(ckpt, args, match):
    seg = Segmenter.from_checkpoint(ckpt)
    coord, color, normal = _cloud(200)
    with pytest.raises(ValueError, match=match):
        seg.predict(*args(coord, color, normal))


def test_checkpoint_of_another_class_set_is_refused(ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="expected 4 classes"):
        Segmenter.from_checkpoint(ckpt, expected_classes=CLASSES + ["table"])
    # metadata that names more classes than the head was trained for
    tensors, header = load_checkpoint(ckpt)
    save_checkpoint(tmp_path / "more.safetensors", tensors, header.replace(class_names=tuple(CLASSES + ["table"])))
    with pytest.raises(CheckpointError, match="seg_head weights do not match.*shape"):
        Segmenter.from_checkpoint(tmp_path / "more.safetensors")


def test_checkpoint_of_another_architecture_is_refused(ckpt, tmp_path):
    tensors, header = load_checkpoint(ckpt)
    # weights of TINY, a header claiming OTHER
    save_checkpoint(tmp_path / "arch.safetensors", tensors, header.replace(encoder_config=OTHER.to_dict()))
    with pytest.raises(CheckpointError, match="encoder weights do not match"):
        Segmenter.from_checkpoint(tmp_path / "arch.safetensors")
    save_checkpoint(tmp_path / "cfg.safetensors", tensors,
                    header.replace(encoder_config={**TINY.to_dict(), "stem_width": 3}))
    with pytest.raises(CheckpointError, match="cfg.safetensors: unusable encoder_config"):
        Segmenter.from_checkpoint(tmp_path / "cfg.safetensors")
    save_checkpoint(tmp_path / "kind.safetensors", tensors, header.replace(kind="pretrain"))
    with pytest.raises(CheckpointError, match="expected a segmenter"):
        Segmenter.from_checkpoint(tmp_path / "kind.safetensors")
    # no silent default: a segmenter without its grid or classes is refused, naming the file and the field
    for field in ("grid_size_m", "class_names", "encoder_config"):
        save_checkpoint(tmp_path / "gap.safetensors", tensors, header.replace(**{field: None}))
        with pytest.raises(CheckpointError, match=f"gap.safetensors .*no '{field}' in its metadata"):
            Segmenter.from_checkpoint(tmp_path / "gap.safetensors")
    # an unknown or missing input convention is refused naming the key, never guessed
    for key, value in (("input_features", "rgb_minus1_1"), ("grid_lattice", "voxel_centre")):
        save_checkpoint(tmp_path / "conv.safetensors", tensors, header.replace(**{key: value}))
        with pytest.raises(CheckpointError, match=f"'{key}' is '{value}', expected one of"):
            Segmenter.from_checkpoint(tmp_path / "conv.safetensors")
        save_checkpoint(tmp_path / "conv.safetensors", tensors, header.replace(**{key: None}))
        with pytest.raises(CheckpointError, match=f"no '{key}' in its metadata"):
            Segmenter.from_checkpoint(tmp_path / "conv.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        Segmenter.from_checkpoint(tmp_path / "junk.safetensors")


def test_saved_segmenter_round_trips_exactly(tmp_path):
    torch.manual_seed(1)
    model = SegmentationModel(TINY, 3)
    path = save_segmenter(tmp_path / "s.safetensors", model, CLASSES, 0.05, extra={"note": "x"})
    seg = Segmenter.from_checkpoint(path)
    for (k, a), (k2, b) in zip(model.state_dict().items(), seg.model.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert load_checkpoint(path)[1].extra == {"note": "x"}
    with pytest.raises(InputError, match="2 class names for a 3-class head"):
        save_segmenter(tmp_path / "bad.safetensors", model, CLASSES[:2], 0.05)
    with pytest.raises(InputError, match=r"unique, got \['floor'\] more than once"):
        save_segmenter(tmp_path / "bad.safetensors", model, ["floor", "wall", "floor"], 0.05)
    with pytest.raises(ConfigError, match="num_classes must be >= 2"):
        SegmentationModel(TINY, 1)


def test_pretrained_encoder_loads_strictly_from_a_pretraining_checkpoint(tmp_path):
    torch.manual_seed(0)
    source = SegmentationModel(TINY, 3)
    # a pretraining checkpoint keeps the encoder under model.encoder next to other modules
    tensors = {**prefixed(source.encoder.state_dict(), "model.encoder"),
               "model.head.w": torch.zeros(2), "projection.w": torch.zeros(2)}
    meta = CheckpointHeader(kind="pretrain", encoder_config=TINY.to_dict(), encoder_prefix="model.encoder")
    save_checkpoint(tmp_path / "pre.safetensors", tensors, meta)
    target = SegmentationModel(TINY, 5)
    load_pretrained_encoder(target, tmp_path / "pre.safetensors")
    for k, v in source.encoder.state_dict().items():
        assert torch.equal(target.encoder.state_dict()[k], v)

    with pytest.raises(CheckpointError, match="holds an encoder"):
        load_pretrained_encoder(SegmentationModel(OTHER, 5), tmp_path / "pre.safetensors")
    missing = {k: v for k, v in tensors.items() if "conv_input.0" not in k}
    save_checkpoint(tmp_path / "missing.safetensors", missing, meta)
    with pytest.raises(CheckpointError, match="1 missing.*conv_input.0.weight"):
        load_pretrained_encoder(SegmentationModel(TINY, 5), tmp_path / "missing.safetensors")
    extra = {**tensors, "model.encoder.extra.weight": torch.zeros(1)}
    save_checkpoint(tmp_path / "extra.safetensors", extra, meta)
    with pytest.raises(CheckpointError, match="1 unexpected"):
        load_pretrained_encoder(SegmentationModel(TINY, 5), tmp_path / "extra.safetensors")
    save_checkpoint(tmp_path / "nowhere.safetensors", tensors,
                    CheckpointHeader(kind="toy", encoder_config=TINY.to_dict()))
    with pytest.raises(CheckpointError, match="encoder_prefix"):
        load_pretrained_encoder(SegmentationModel(TINY, 5), tmp_path / "nowhere.safetensors")


def test_linear_probe_trains_only_the_head_and_keeps_batchnorm_statistics():
    torch.manual_seed(0)
    model = SegmentationModel(TINY, 3)
    model.freeze_encoder()
    model.train()
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    coord, color, normal = _cloud(500)
    keep, grid, inv = grid_sample(coord, 0.05)
    batch = collate_points([coord[keep]], [encoder_features(color, normal, "rgb01_normal")[keep]], [grid])
    labels = torch.from_numpy(np.random.default_rng(0).integers(-1, 3, len(keep)))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = segmentation_loss(model(batch), labels)
    loss.backward()
    opt.step()
    assert model.seg_head.weight.grad is not None
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights and running statistics untouched


def test_loss_ignores_unlabelled_rows_and_survives_an_all_ignored_batch():
    logits = torch.randn(5, 3, requires_grad=True)
    labels = torch.tensor([0, -1, 2, -1, 1])
    ref = torch.nn.functional.cross_entropy(logits[[0, 2, 4]], labels[[0, 2, 4]])
    assert torch.allclose(segmentation_loss(logits, labels), ref)
    zero = segmentation_loss(logits, torch.full((5,), -1))
    zero.backward()
    assert zero.item() == 0.0 and torch.all(logits.grad == 0)
    with pytest.raises(ValueError, match="labels"):
        segmentation_loss(logits, labels[:4])


@pytest.mark.skipif(not DEMO_CHECKPOINT.is_file(),
                    reason="demo checkpoint not built (training/make_demo_checkpoint.sh)")
def test_demo_checkpoint_segments_an_unseen_synthetic_room_well_above_chance():
    from gcross_core.data.classes import SYNTHETIC_CLASSES
    from gcross_core.data.synthetic import make_room
    from gcross_core.evaluation.metrics import confusion_matrix, segmentation_metrics

    seg = Segmenter.from_checkpoint(DEMO_CHECKPOINT, expected_classes=SYNTHETIC_CLASSES)
    room = make_room(4242, num_views=0, num_points=10000)  # a seed no training room used
    labels, _, _ = seg.predict(room.coord, room.color, room.normal)
    m = segmentation_metrics(confusion_matrix(labels, room.segment, len(SYNTHETIC_CLASSES)))
    majority = np.bincount(room.segment[room.segment >= 0]).max() / (room.segment >= 0).sum()
    assert m.allacc > majority + 0.1 and m.miou > 0.2
