import os
import random

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
