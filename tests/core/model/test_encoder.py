"""SpUNet encoder: Pointcept SpUNet-v1m1 state-dict layout, shapes, determinism and input checks."""
import pytest
import torch

from gcross_core.model.encoder import SpUNet, SpUNetConfig
from gcross_core.types import PointBatch

TINY = SpUNetConfig(base_channels=8, channels=(8, 16, 16, 16, 16, 16, 8, 8), layers=(1, 1, 1, 1, 1, 1, 1, 1))

# Pointcept SpUNet-v1m1 (SpUNetBase) with in_channels=6, num_classes=0 and the SpUNet34C defaults, written
# down from its construction rules: spconv >= 2.2 weights are [out, kx, ky, kz, in]; BatchNorm1d carries
# weight/bias/running_mean/running_var/num_batches_tracked; a block's `proj` only has parameters when its
# input and output widths differ (first decoder block: upsampled + skip channels).
POINTCEPT_SPUNET34C = {
    "conv_input.0.weight": (32, 5, 5, 5, 6),
    "conv_input.1.weight": (32,),
    "conv_input.1.running_var": (32,),
    "conv_input.1.num_batches_tracked": (),
    "down.0.0.weight": (32, 2, 2, 2, 32),
    "down.0.1.bias": (32,),
    "down.1.0.weight": (64, 2, 2, 2, 32),
    "down.2.0.weight": (128, 2, 2, 2, 64),
    "down.3.0.weight": (256, 2, 2, 2, 128),
    "down.3.1.running_mean": (256,),
    "enc.0.block0.conv1.weight": (32, 3, 3, 3, 32),
    "enc.0.block1.bn2.running_mean": (32,),
    "enc.1.block2.conv2.weight": (64, 3, 3, 3, 64),
    "enc.2.block3.conv1.weight": (128, 3, 3, 3, 128),
    "enc.2.block3.bn1.bias": (128,),
    "enc.3.block5.conv2.weight": (256, 3, 3, 3, 256),
    "enc.3.block5.bn2.weight": (256,),
    "up.3.0.weight": (256, 2, 2, 2, 256),
    "up.3.1.weight": (256,),
    "up.2.0.weight": (128, 2, 2, 2, 256),
    "up.1.0.weight": (96, 2, 2, 2, 128),
    "up.0.0.weight": (96, 2, 2, 2, 96),
    "up.0.1.num_batches_tracked": (),
    "dec.3.block0.proj.0.weight": (256, 1, 1, 1, 384),
    "dec.3.block0.proj.1.running_var": (256,),
    "dec.3.block0.conv1.weight": (256, 3, 3, 3, 384),
    "dec.3.block1.conv1.weight": (256, 3, 3, 3, 256),
    "dec.2.block0.proj.0.weight": (128, 1, 1, 1, 192),
    "dec.2.block0.conv1.weight": (128, 3, 3, 3, 192),
    "dec.1.block0.conv1.weight": (96, 3, 3, 3, 128),
    "dec.1.block1.bn1.weight": (96,),
    "dec.0.block0.proj.0.weight": (96, 1, 1, 1, 128),
    "dec.0.block0.conv1.weight": (96, 3, 3, 3, 128),
    "dec.0.block1.conv2.weight": (96, 3, 3, 3, 96),
    "dec.0.block1.bn2.bias": (96,),
}
# keys Pointcept does not have for this configuration
NOT_IN_POINTCEPT = ["enc.0.block0.proj.0.weight", "dec.0.block1.proj.0.weight", "enc.3.block6.conv1.weight",
                    "down.4.0.weight", "final.weight", "final.bias", "conv_input.0.bias"]


def test_default_state_dict_matches_pointcept_spunet_v1m1_names_and_shapes():
    sd = SpUNet(SpUNetConfig()).state_dict()
    for key, shape in POINTCEPT_SPUNET34C.items():
        assert key in sd, f"missing Pointcept key {key}"
        assert tuple(sd[key].shape) == shape, f"{key}: {tuple(sd[key].shape)} != {shape}"
    for key in NOT_IN_POINTCEPT:
        assert key not in sd, f"{key} is not part of Pointcept's SpUNet-v1m1"
    # conv_input (1 conv + 5 BN entries) + 4 down + 4 up (6 each) + 23 residual blocks (conv1, bn1, conv2,
    # bn2: 12 each) + 4 projected shortcuts in the first decoder blocks (6 each)
    assert len(sd) == 6 + 4 * 6 + 4 * 6 + (2 + 3 + 4 + 6 + 2 * 4) * 12 + 4 * 6
    assert sd["conv_input.1.num_batches_tracked"].dtype == torch.int64


def test_num_classes_adds_pointcept_final_layer():
    sd = SpUNet(SpUNetConfig(base_channels=8, channels=(8, 8, 8, 8), layers=(1, 1, 1, 1), num_classes=5)).state_dict()
    assert tuple(sd["final.weight"].shape) == (5, 1, 1, 1, 8)
    assert tuple(sd["final.bias"].shape) == (5,)


def test_forward_one_feature_per_row_for_scenes_of_different_sizes(box_scenes):
    torch.manual_seed(0)
    points = box_scenes()
    model = SpUNet(TINY)
    assert model.out_channels == 8
    out = model(points)
    assert out.shape == (points.coord.shape[0], 8)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.abs().sum() > 0


def test_scenes_are_independent_and_runs_are_repeatable_in_eval(box_scenes):
    # also guards the CPU scatter-add fix in gcross_core.model.encoder: the stock kernel races between threads
    torch.manual_seed(0)
    points = box_scenes()
    model = SpUNet(TINY).eval()
    n0 = int(points.offset[0])
    alone = PointBatch(coord=points.coord[:n0], feat=points.feat[:n0], offset=points.offset[:1],
                       grid_coord=points.grid_coord[:n0])
    with torch.no_grad():
        batched = model(points)
        single_a = model(alone)
        single_b = model(alone)
    assert torch.equal(single_a, single_b)
    torch.testing.assert_close(batched[:n0], single_a, atol=1e-5, rtol=1e-5)


def test_same_seed_same_weights_and_outputs(box_scenes):
    points = box_scenes(sizes=(500, 300))
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = SpUNet(TINY)
        outs.append(model(points))
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)


def test_backward_reaches_every_stage(box_scenes):
    torch.manual_seed(0)
    points = box_scenes(sizes=(500, 300))
    model = SpUNet(TINY)
    (model(points) ** 2).mean().backward()
    for name in ("conv_input.0.weight", "down.3.0.weight", "enc.3.block0.conv2.weight", "up.3.0.weight",
                 "dec.0.block0.proj.0.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_bad_input_raises_naming_the_problem(box_scenes):
    model = SpUNet(TINY)
    points = box_scenes(sizes=(300,))
    with pytest.raises(ValueError, match="in_channels=6"):
        model(PointBatch(points.coord, points.feat[:, :5], points.offset, points.grid_coord))
    with pytest.raises(ValueError, match="grid_coord is None"):
        model(PointBatch(points.coord, points.feat, points.offset))
    with pytest.raises(ValueError, match="empty"):
        model(PointBatch(torch.zeros(0, 3), torch.zeros(0, 6), torch.tensor([0]), torch.zeros(0, 3, dtype=torch.int32)))
    nan_feat = points.feat.clone()
    nan_feat[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(PointBatch(points.coord, nan_feat, points.offset, points.grid_coord))
    neg = points.grid_coord.clone()
    neg[0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        model(PointBatch(points.coord, points.feat, points.offset, neg))


def test_config_validation_and_round_trip():
    with pytest.raises(ValueError, match="even"):
        SpUNetConfig(channels=(8, 8, 8), layers=(1, 1, 1))
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['in_channel'\]"):
        SpUNetConfig.from_dict({"in_channel": 6})
    assert SpUNetConfig.from_dict(TINY.to_dict()) == TINY
