"""Cuboid normalization, voxel scatter, Gaussian heads and the GaussianCross model (eqs. 4-13)."""
import pytest
import torch

from gcross_core.model.encoder import SpUNetConfig
from gcross_core.model.gaussians import (CubeTransform, GaussianHead, GaussianHeadConfig, scatter_to_voxels,
                                   to_unit_cube)
from gcross_core.model.gaussiancross import GaussianCross, GaussianCrossConfig, mask_points
from gcross_core.types import PointBatch

ENC = SpUNetConfig(base_channels=8, channels=(8, 16, 16, 16, 16, 16, 8, 8), layers=(1, 1, 1, 1, 1, 1, 1, 1))
HEAD = GaussianHeadConfig(grid=(16, 16, 8), dense_channels=8, dense_blocks=1, head_hidden=8, feature_dim=4,
                          offset_scale=0.75)
CFG = GaussianCrossConfig(encoder=ENC, head=HEAD)


def test_unit_cube_round_trip_and_isotropy(box_scenes):
    points = box_scenes(shift_m=(-7.0, 3.0, 1.5))
    cube, tf = to_unit_cube(points.coord, points.offset)
    batch = points.batch
    assert cube.shape == points.coord.shape
    assert cube.min() >= 0 and cube.max() < 1
    torch.testing.assert_close(tf.to_world(cube, batch), points.coord, atol=1e-5, rtol=0)
    # one scale per scene: distances shrink by exactly size_m, so angles and covariances survive
    for b in range(points.num_scenes):
        sel = batch == b
        world_d = torch.pdist(points.coord[sel][:50].double())
        cube_d = torch.pdist(cube[sel][:50].double())
        torch.testing.assert_close(cube_d * tf.size_m[b].double(), world_d, atol=1e-5, rtol=1e-5)
        # the largest side nearly fills the cube, the floor sits at the bottom
        extent = cube[sel].amax(0) - cube[sel].amin(0)
        assert 0.99 < float(extent.max()) < 1.0
        assert float(cube[sel][:, 2].min()) < 0.01
    m = tf.cube_to_world_matrix()
    homo = torch.cat([cube, torch.ones(len(cube), 1)], 1)
    torch.testing.assert_close(torch.einsum("nij,nj->ni", m[batch], homo)[:, :3], points.coord, atol=1e-5, rtol=0)


def test_unit_cube_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        to_unit_cube(torch.zeros(0, 3), torch.tensor([0]))
    coord = torch.rand(10, 3)
    coord[4, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        to_unit_cube(coord, torch.tensor([10]))
    with pytest.raises(ValueError, match=r"scene\(s\) \[1\]"):
        to_unit_cube(torch.rand(10, 3), torch.tensor([10, 10]))
    with pytest.raises(ValueError, match=r"expected \[N, 3\]"):
        to_unit_cube(torch.rand(10, 2), torch.tensor([10]))


def test_scatter_to_voxels_means_and_empty_zero():
    g = torch.Generator().manual_seed(0)
    cube = torch.rand(200, 3, generator=g)
    batch = torch.cat([torch.zeros(120, dtype=torch.long), torch.ones(80, dtype=torch.long)])
    feat = torch.randn(200, 5, generator=g)
    grid = (4, 3, 2)
    volume, occupied, flat = scatter_to_voxels(cube, batch, feat, grid, 2)
    assert volume.shape == (2 * 24, 5) and occupied.shape == (48,)
    for v in range(48):
        sel = flat == v
        if sel.any():
            assert occupied[v]
            torch.testing.assert_close(volume[v], feat[sel].mean(0))
        else:
            assert not occupied[v] and torch.all(volume[v] == 0)
    # the flat index follows (x * Y + y) * Z + z per scene
    ijk = (cube * torch.tensor(grid)).floor().long()
    torch.testing.assert_close(flat, batch * 24 + (ijk[:, 0] * 3 + ijk[:, 1]) * 2 + ijk[:, 2])


def _head_out(points, head, seed=0):
    g = torch.Generator().manual_seed(seed)
    feat = torch.randn(points.coord.shape[0], head.in_channels, generator=g)
    return head(points, feat)


def test_head_shapes_dtypes_and_ranges_for_three_scenes(box_scenes):
    torch.manual_seed(0)
    points = box_scenes()
    head = GaussianHead(8, HEAD)
    out = _head_out(points, head)
    gs = out.gaussians
    g = len(gs)
    assert g > 0
    assert gs.means.shape == (g, 3) and gs.quats.shape == (g, 4) and gs.scales.shape == (g, 3)
    assert gs.colors.shape == (g, 3) and gs.opacities.shape == (g,) and gs.features.shape == (g, 4)
    for t in (gs.means, gs.quats, gs.scales, gs.colors, gs.opacities, gs.features):
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
    assert gs.batch.dtype == torch.int64
    assert torch.equal(torch.unique(gs.batch), torch.arange(3))  # every scene has Gaussians
    assert torch.all(gs.batch[1:] >= gs.batch[:-1])
    torch.testing.assert_close(gs.quats.norm(dim=1), torch.ones(g))
    assert (gs.scales > 0).all() and (gs.colors > 0).all() and (gs.colors < 1).all()
    assert out.occupied.shape == (3, 16, 16, 8) and out.opacity_volume.shape == (3, 16, 16, 8)
    # initialisation: Gaussians exactly where the points are, each about half a voxel wide in metres
    assert len(gs) == int(out.occupied.sum())
    voxel_m = out.transform.size_m[gs.batch, None] / torch.tensor(HEAD.grid, dtype=torch.float32)
    ratio = (gs.scales / voxel_m).detach()  # per axis: the 16 x 16 x 8 voxels are twice as tall as wide
    assert 0.3 < float(ratio.min()) and float(ratio.max()) < 0.8
    torch.testing.assert_close(gs.quats[:, 0].detach(), torch.ones(g), atol=0.05, rtol=0)


def test_kept_gaussians_are_above_tau_and_offsets_bounded_by_delta(box_scenes):
    torch.manual_seed(1)
    points = box_scenes()
    head = GaussianHead(8, HEAD)
    with torch.no_grad():  # large random last layers: opacities on both sides of tau, saturated offsets
        for mlp in (head.opacity_head, head.offset_head):
            mlp[-1].weight.normal_(0, 5.0)
            mlp[-1].bias.normal_(0, 2.0)
    out = _head_out(points, head)
    gs = out.gaussians
    tau = HEAD.opacity_threshold
    assert (gs.opacities > tau).all()
    assert len(gs) == int((out.opacity_volume > tau).sum())
    assert 0 < len(gs) < out.opacity_volume.numel()  # some pruned, some kept
    voxel_m = out.transform.size_m[gs.batch, None] / torch.tensor(HEAD.grid, dtype=torch.float32)
    bound = HEAD.offset_scale * voxel_m
    delta = (gs.means - out.anchors_m).abs()
    assert (delta <= bound * (1 + 1e-4) + 1e-6).all()
    assert float((delta / bound).max().detach()) > 0.9  # the bound is reached, so the check above has teeth
    # anchors are the voxel centres, in world metres
    nx, ny, nz = HEAD.grid
    v = out.voxel_index
    ijk = torch.stack([v // (ny * nz), (v // nz) % ny, v % nz], 1).float()
    centre_cube = (ijk + 0.5) / torch.tensor(HEAD.grid, dtype=torch.float32)
    torch.testing.assert_close(out.anchors_m, out.transform.to_world(centre_cube, gs.batch), atol=1e-5, rtol=0)


def test_gaussians_scale_with_the_scene_in_world_metres(box_scenes):
    torch.manual_seed(0)
    points = box_scenes(sizes=(600, 400))
    head = GaussianHead(8, HEAD)
    feat = torch.randn(points.coord.shape[0], 8)
    a = head(points, feat).gaussians
    scaled = PointBatch(points.coord * 2.5, points.feat, points.offset, points.grid_coord)
    b = head(scaled, feat).gaussians
    assert len(a) == len(b)
    torch.testing.assert_close(b.means, a.means * 2.5, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(b.scales, a.scales * 2.5, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(b.quats, a.quats)
    torch.testing.assert_close(b.opacities, a.opacities)


def test_head_rejects_bad_input(box_scenes):
    head = GaussianHead(8, HEAD)
    points = box_scenes(sizes=(300,))
    n = points.coord.shape[0]
    with pytest.raises(ValueError, match=rf"expected \[{n}, 8\]"):
        head(points, torch.randn(n, 7))
    coord = points.coord.clone()
    coord[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        head(PointBatch(coord, points.feat, points.offset, points.grid_coord), torch.randn(n, 8))
    with pytest.raises(ValueError, match="grid"):
        GaussianHeadConfig(grid=(16, 0, 8))


def test_model_forward_masks_encodes_and_backpropagates_to_the_encoder(box_scenes):
    torch.manual_seed(0)
    points = box_scenes()
    model = GaussianCross(CFG).train()
    out = model(points, generator=torch.Generator().manual_seed(0))
    counts = torch.diff(points.offset, prepend=torch.zeros(1, dtype=torch.long))
    kept_per_scene = torch.stack([out.kept[int(o - c):int(o)].sum() for o, c in zip(points.offset, counts)])
    torch.testing.assert_close(kept_per_scene, counts - torch.floor(counts * 0.5).long())  # eq. 4, gamma=0.5
    assert out.point_feat.shape == (int(out.kept.sum()), model.encoder.out_channels)
    gs = out.gaussians
    loss = (gs.means.sum() + gs.scales.sum() + gs.colors.sum() + gs.opacities.sum() + gs.features.sum()
            + gs.quats.sum())
    loss.backward()
    for name in ("conv_input.0.weight", "enc.3.block0.conv1.weight", "dec.0.block0.conv2.weight"):
        grad = dict(model.encoder.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    # encode() never masks, even in training mode
    assert model.encode(points).shape == (points.coord.shape[0], model.encoder.out_channels)
    model.eval()
    assert model(points).kept.all()


def test_model_is_deterministic_under_a_fixed_seed(box_scenes):
    points = box_scenes(sizes=(500, 300))
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        model = GaussianCross(CFG).train()
        runs.append(model(points, generator=torch.Generator().manual_seed(11)))
    a, b = runs
    assert torch.equal(a.kept, b.kept)
    for name in ("means", "quats", "scales", "colors", "opacities", "features", "batch"):
        assert torch.equal(getattr(a.gaussians, name), getattr(b.gaussians, name)), name
    other = mask_points(points, 0.5, torch.Generator().manual_seed(12))[1]
    assert not torch.equal(other, a.kept)


def test_model_rejects_bad_input(box_scenes):
    model = GaussianCross(CFG)
    points = box_scenes(sizes=(300,))
    with pytest.raises(ValueError, match="in_channels=6"):
        model(PointBatch(points.coord, points.feat[:, :4], points.offset, points.grid_coord))
    with pytest.raises(ValueError, match="empty"):
        model(PointBatch(torch.zeros(0, 3), torch.zeros(0, 6), torch.tensor([0]),
                         torch.zeros(0, 3, dtype=torch.int32)))
    coord = points.coord.clone()
    coord[5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.eval()(PointBatch(coord, points.feat, points.offset, points.grid_coord))


def test_config_round_trip():
    assert GaussianCrossConfig.from_dict(CFG.to_dict()) == CFG
    with pytest.raises(ValueError, match="mask_ratio"):
        GaussianCrossConfig(mask_ratio=1.0)
    t = CubeTransform(torch.zeros(2, 3), torch.ones(2))
    with pytest.raises(ValueError):
        CubeTransform(torch.zeros(2, 3), torch.ones(3))
    assert t.cube_to_world_matrix().shape == (2, 4, 4)
