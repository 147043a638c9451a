import numpy as np
import pytest
import torch

from gcross_core.data.grid import collate_points, grid_sample, split_by_offset
from gcross_core.checkpoint import CheckpointHeader, load_checkpoint, save_checkpoint
from gcross_core.errors import CheckpointError


def test_grid_sample_one_point_per_cell_and_inverse():
    rng = np.random.default_rng(0)
    coord = rng.uniform(0, 0.2, (500, 3))
    keep, grid, inverse = grid_sample(coord, 0.05)
    cells = np.floor((coord - coord.min(0)) / 0.05).astype(int)
    assert len(np.unique(cells, axis=0)) == len(keep)
    # every point maps to the kept row of its own cell
    np.testing.assert_array_equal(cells[keep][inverse], cells)
    np.testing.assert_array_equal(grid, cells[keep])
    keep2, _, _ = grid_sample(coord, 0.05, rng=np.random.default_rng(1))
    assert len(keep2) == len(keep)


@pytest.mark.parametrize("bad", [np.zeros((0, 3)), np.full((3, 3), np.nan), np.zeros((4, 2))])
def test_grid_sample_rejects_bad_input(bad):
    with pytest.raises(ValueError, match="grid_sample"):
        grid_sample(bad, 0.02)


def test_collate_round_trip():
    rng = np.random.default_rng(0)
    scenes = [rng.uniform(0, 1, (n, 3)) for n in (50, 80)]
    parts = [grid_sample(c, 0.1) for c in scenes]
    batch = collate_points([c[k] for c, (k, _, _) in zip(scenes, parts)],
                           [np.ones((len(k), 6)) for k, _, _ in parts],
                           [g for _, g, _ in parts], [i for _, _, i in parts])
    assert batch.num_scenes == 2
    pieces = split_by_offset(batch.coord, batch.offset)
    for c, (k, _, inv), p in zip(scenes, parts, pieces):
        np.testing.assert_allclose(p.numpy(), c[k].astype(np.float32))
    # the global inverse map sends every original point to the row of its own kept point
    orig = np.concatenate(scenes).astype(np.float32)
    rows = batch.coord[batch.inverse].numpy()
    assert np.all(np.abs(rows - orig) < 0.1 * np.sqrt(3) + 1e-6)


def test_checkpoint_round_trip_and_atomicity(tmp_path):
    path = tmp_path / "a.safetensors"
    t = {"w": torch.randn(3, 4), "b": torch.arange(5)}
    header = CheckpointHeader(kind="toy", config={"lr": 0.1}, extra={"classes": ["wall", "floor"]})
    save_checkpoint(path, t, header)
    got, read = load_checkpoint(path)
    assert torch.equal(got["w"], t["w"]) and torch.equal(got["b"], t["b"])
    assert read == header and read.source == str(path)
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_checkpoint(bad)
