"""The encoder input is built in one place (gcross_core/model/features.py): the training datasets and the
Segmenter feed the encoder exactly the same features for the same points."""
import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from gcross_core.data.grid import grid_sample
from gcross_core.data.scene import Scene
from gcross_core.data.synthetic import make_room
from gcross_core.data.transforms import AugmentConfig
from gcross_core.model.encoder import SpUNetConfig
from gcross_core.model.features import IN_CHANNELS, encoder_features
from gcross_core.pretraining.dataset import PretrainDataConfig, PretrainDataset
from gcross_core.segmentation.dataset import SegDataConfig, training_sample
from gcross_core.segmentation.model import SegmentationModel
from gcross_core.segmentation.segmenter import Segmenter

PACKAGE = Path(__file__).resolve().parents[3] / "gcross_core"
GRID = 0.05
NO_AUGMENTATION = AugmentConfig(rotate_z_rad=0.0, rotate_xy_rad=0.0, scale=(1.0, 1.0), flip_p=0.0, shuffle=False,
                                center_shift=False)
TINY = SpUNetConfig(base_channels=8, channels=(8, 8, 8, 8), layers=(1, 1, 1, 1))


class _Recorder(torch.nn.Module):
    """Stands in for the segmentation model: keeps the batch features and predicts class 0."""

    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes
        self.feat = None

    def forward(self, points):
        self.feat = points.feat.detach().cpu().numpy()
        return torch.zeros(points.feat.shape[0], self.num_classes)


@pytest.fixture(scope="module")
def room() -> Scene:
    return make_room(4, num_points=3000, num_views=2, width=32, height=24)


def test_encoder_features_are_rgb01_then_normal():
    color = np.array([[255, 0, 51]], dtype=np.uint8)
    normal = np.array([[0.0, 0.6, 0.8]])
    feat = encoder_features(color, normal, "rgb01_normal")
    assert feat.dtype == np.float32 and feat.shape == (1, IN_CHANNELS)
    np.testing.assert_array_equal(feat, np.float32([[1.0, 0.0, 0.2, 0.0, 0.6, 0.8]]))


def test_training_samples_and_segmenter_feed_the_same_features(room):
    reference = encoder_features(room.color, room.normal, "rgb01_normal")  # [N, 6], one row per scene point

    # segmentation training sample without augmentation: feature rows are scene points `rows`
    cfg = SegDataConfig(root="unused", class_set="synthetic", grid_size_m=GRID, augment=False, max_points=10 ** 6)
    seg = training_sample(room, cfg, np.random.default_rng(0))
    seg_rows = [int(np.flatnonzero(np.all(room.coord == c, axis=1))[0]) for c in seg["coord"]]
    np.testing.assert_array_equal(seg["feat"], reference[seg_rows])

    # pretraining sample with the identity augmentation and no shuffle: rows are scene points `keep`
    pre_cfg = PretrainDataConfig(grid_size_m=GRID, views_per_scene=1, image_size=(24, 32), augment=NO_AUGMENTATION)
    rng = np.random.default_rng(0)
    pre = PretrainDataset([room], pre_cfg).sample(0, rng)
    pre_rows = [int(np.flatnonzero(np.all(room.coord == c, axis=1))[0]) for c in pre.coord]
    np.testing.assert_array_equal(pre.feat, reference[pre_rows])

    # the Segmenter: rows are the points grid_sample keeps
    segmenter = Segmenter(SegmentationModel(TINY, 3), ["a", "b", "c"], GRID)
    segmenter.model = _Recorder(3)
    segmenter.predict(room.coord, room.color, room.normal)
    keep, _, _ = grid_sample(np.asarray(room.coord, np.float32), GRID)
    np.testing.assert_array_equal(segmenter.model.feat, reference[keep])


def _builds_encoder_input(node: ast.Call, source: str) -> bool:
    """A concatenation of an RGB / colour-scaled-by-255 part, or of a colour and a normal."""
    name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
    if name not in ("concatenate", "cat", "hstack", "column_stack", "concat"):
        return False
    text = " ".join(ast.get_source_segment(source, a) or "" for a in node.args).lower().replace(" ", "")
    colour = "color" in text or "colour" in text
    return "rgb" in text or "/255" in text or (colour and "normal" in text)


def test_no_other_module_builds_encoder_input():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "model" / "features.py":
            continue
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and _builds_encoder_input(node, source):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not offenders, f"encoder input built outside gcross_core/model/features.py: {offenders}"


@pytest.mark.parametrize("line, builds", [
    ("feat = np.concatenate([rgb[keep], n[keep]], axis=1)", True),
    ("feat = np.concatenate([color[keep] / 255.0, normal[keep]], axis=1)", True),
    ("x = torch.cat([colour, normals], 1)", True),
    ("x = torch.cat([g.colors[sel], g.features[sel]], 1)", False),  # the renderer's blended channels
    ("p = np.concatenate([palette, [[255, 255, 255]]])", False),
])
def test_the_checker_tells_encoder_inputs_from_other_concatenations(line, builds):
    call = next(n for n in ast.walk(ast.parse(line)) if isinstance(n, ast.Call) and
                getattr(n.func, "attr", "") in ("concatenate", "cat"))
    assert _builds_encoder_input(call, line) is builds
