import os
import random
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is false)")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session", autouse=True)
def _isolated_ros_domain():
    """Keep DDS traffic of this test run away from other runs on the same machine."""
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    yield


@pytest.fixture
def one_torch_thread():
    """torch (and spconv's OpenMP kernels) on one thread for the test: on the shared 2-core machines
    oversubscribed threads are an order of magnitude slower, and reductions sum in a fixed order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The micro GaussianCross of the pretraining tests (a few CPU steps): the pieces their configs share
MICRO_MODEL = {
    "encoder": {"base_channels": 8, "channels": [8, 16, 16, 8], "layers": [1, 1, 1, 1]},
    "head": {"grid": [16, 16, 8], "dense_channels": 8, "dense_blocks": 1, "head_hidden": 8, "feature_dim": 4},
    "grid_size_m": 0.1,
}
MICRO_PIPELINE = {"grid_size_m": 0.1, "views_per_scene": 2, "image_size": [24, 32]}
MICRO_TEACHERS = [{"name": "efficientnet_lite0", "options": {"input_size": [64, 64], "layers": ["s16"]}}]


def _box_wall_scenes(sizes=(1200, 700, 300), grid_size_m=0.05, seed=0, shift_m=(0.0, 0.0, 0.0)):
    """Points on the walls of boxes of different sizes (one scene each, scene i shifted by
    (i + 1) * shift_m), random 6-channel features, grid-sampled and collated into a PointBatch."""
    from gcross_core.data.grid import collate_points, grid_sample

    rng = np.random.default_rng(seed)
    coords, feats, grids = [], [], []
    for i, n in enumerate(sizes):
        box = np.array([2.0 + i, 1.5, 1.0 + 0.5 * i])
        pts = rng.uniform(0, 1, (n, 3)) * box
        face = rng.integers(0, 6, n)
        pts[np.arange(n), face // 2] = np.where(face % 2, box[face // 2], 0.0)
        pts += np.asarray(shift_m) * (i + 1)
        keep, grid, _ = grid_sample(pts, grid_size_m)
        coords.append(pts[keep])
        feats.append(rng.uniform(0, 1, (len(keep), 6)))
        grids.append(grid)
    return collate_points(coords, feats, grids)


@pytest.fixture
def box_scenes():
    """Factory of small multi-scene PointBatches (see _box_wall_scenes)."""
    return _box_wall_scenes


class _PointceptSegmentorV2(torch.nn.Module):
    """Pointcept's DefaultSegmentorV2 forward: backbone features (num_classes=0) -> seg_head Linear."""

    def __init__(self, backbone, num_classes):
        super().__init__()
        self.backbone = backbone
        self.seg_head = torch.nn.Linear(backbone.out_channels, num_classes)

    def forward(self, points):
        return self.seg_head(self.backbone(points))


class _PointceptPointGroup(_PointceptSegmentorV2):
    """Pointcept's PointGroup (PG-v1m1) heads: seg_head, and the offset branch bias_head (Linear, BatchNorm1d
    with eps 1e-3 / momentum 0.01, ReLU, Linear to 3); forward gives the logits, ``offsets`` the offsets."""

    def __init__(self, backbone, num_classes):
        super().__init__(backbone, num_classes)
        c = backbone.out_channels
        self.bias_head = torch.nn.Sequential(torch.nn.Linear(c, c), torch.nn.BatchNorm1d(c, eps=1e-3, momentum=0.01),
                                             torch.nn.ReLU(), torch.nn.Linear(c, 3))

    def offsets(self, points):
        return self.bias_head(self.backbone(points))


def _write_pointcept_pth(path, layout, encoder_config, num_classes=0, seed=0, module_prefix="module.",
                         legacy_format=False):
    """A checkpoint the way Pointcept's CheckpointSaver writes it, of a random SpUNet built here.

    layout: "backbone" (plus a pretraining decoder key that is not converted), "DefaultSegmentor" (the
    backbone's own `final`, num_classes outputs), "DefaultSegmentorV2" (backbone + `seg_head`) or
    "PointGroup" (backbone + `seg_head` + `bias_head`). The file
    carries optimizer state, a numpy best_metric_value and OneCycleLR state with a function reference (the
    bound `anneal_func` PyTorch < 2.4 pickled), which torch.load(weights_only=True) refuses.
    Returns (path, net): net maps a PointBatch to the source model's per-row outputs (logits).
    """
    from dataclasses import replace

    from gcross_core.model.encoder import SpUNet

    torch.manual_seed(seed)
    if layout == "DefaultSegmentor":
        net = SpUNet(replace(encoder_config, num_classes=num_classes))
        backbone, head = net, None
    elif layout in ("DefaultSegmentorV2", "PointGroup"):
        cls = _PointceptSegmentorV2 if layout == "DefaultSegmentorV2" else _PointceptPointGroup
        net = cls(SpUNet(encoder_config), num_classes)
        backbone, head = net.backbone, net.seg_head
    else:
        net = backbone = SpUNet(encoder_config)
        head = None
    with torch.no_grad():
        for p in net.parameters():  # distinctive weights, well away from the initialisation
            p.add_(0.2 * torch.randn_like(p))
        points = _box_wall_scenes(sizes=(900,), grid_size_m=0.05, seed=seed)
        backbone.train()(points)  # BatchNorm statistics
        if layout == "PointGroup":  # small variances: where BatchNorm's eps (1e-3 here) shows
            bn = net.bias_head[1]
            bn.running_mean.copy_(0.1 * torch.randn_like(bn.running_mean))
            bn.running_var.copy_(torch.empty_like(bn.running_var).uniform_(0.002, 0.02))
    net.eval()
    state = {f"{module_prefix}backbone.{k}": v.clone() for k, v in backbone.state_dict().items()}
    if head is not None:
        state.update({f"{module_prefix}seg_head.{k}": v.clone() for k, v in head.state_dict().items()})
    if layout == "PointGroup":
        state.update({f"{module_prefix}bias_head.{k}": v.clone() for k, v in net.bias_head.state_dict().items()})
    if layout == "backbone":
        state[f"{module_prefix}gaussian_decoder.0.weight"] = torch.zeros(4, 4)
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.AdamW(params, lr=0.005)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.005, total_steps=10)
    torch.save({"epoch": 7, "state_dict": state, "optimizer": optimizer.state_dict(),
                "scheduler": {**scheduler.state_dict(), "anneal_func": scheduler._anneal_func},
                "scaler": None, "best_metric_value": np.float64(0.42)}, path,
               _use_new_zipfile_serialization=not legacy_format)
    return path, net


@pytest.fixture
def pointcept_pth():
    """Factory of Pointcept-layout .pth files (see _write_pointcept_pth)."""
    return _write_pointcept_pth


def tree_listing(root: Path):
    """Every path under ``root``, relative and sorted: what a failed write must leave as it was."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))


def failing_renames(monkeypatch, matches, times=1):
    """os.replace and os.rename raise PermissionError for the first ``times`` (src, dst) pairs that ``matches``."""
    real, failed = os.replace, []

    def rename(src, dst, *args, **kwargs):
        if len(failed) < times and matches(Path(src), Path(dst)):
            failed.append(src)
            raise PermissionError(13, "Permission denied (test)", str(src))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", rename)
    monkeypatch.setattr(os, "rename", rename)


def pypi_get(url: str):
    """The body at a PyPI url, None on 404; skips the test without network access."""
    try:
        with urllib.request.urlopen(url, timeout=15) as answer:
            return answer.read()
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        pytest.skip(f"PyPI answered {err.code} for {url}")
    except (urllib.error.URLError, OSError) as err:
        pytest.skip(f"no network access to PyPI ({err})")
