"""Losses of eqs. 17-20 against values computed by hand on tiny tensors."""
import math

import pytest
import torch

from gcross_core.pretraining.losses import LossConfig, depth_l1, feature_cosine, image_l1, total_loss, valid_depth_mask


def _color_pair():
    color = torch.tensor([[[[0.0, 0.5, 1.0], [0.2, 0.2, 0.2]]]])  # [1, 1, 2, 3]
    target = torch.tensor([[[[0.5, 0.5, 0.5], [0.2, 0.4, 0.0]]]])
    return color, target


def _depth_pair():
    depth = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # [1, 2, 2]
    target = torch.tensor([[[1.5, 0.0], [float("nan"), 5.0]]])  # 0 and NaN are missing readings
    return depth, target


def _feature_pair():
    # three pixels with cosines 1, 0, -1 -> losses 0, 1, 2
    pred = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]]).view(1, 2, 1, 3)
    target = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, -1.0]]).view(1, 2, 1, 3)
    return pred, target


def test_image_l1_is_mean_absolute_error_and_respects_mask():
    color, target = _color_pair()
    # |diffs| = .5 0 .5 | 0 .2 .2 -> 1.4 / 6
    assert image_l1(color, target).item() == pytest.approx(1.4 / 6)
    mask = torch.tensor([[[True, False]]])
    assert image_l1(color, target, mask).item() == pytest.approx(1.0 / 3)


def test_depth_l1_counts_only_valid_pixels_and_normalises_by_all_pixels():
    depth, target = _depth_pair()
    assert valid_depth_mask(target).tolist() == [[[True, False], [False, True]]]
    # valid errors 0.5 and 1.0; eq. 18 divides by M*H*W = 4
    assert depth_l1(depth, target).item() == pytest.approx(1.5 / 4)
    assert depth_l1(depth, target, normalize="valid").item() == pytest.approx(1.5 / 2)
    extra = torch.tensor([[[False, True], [True, True]]])
    assert depth_l1(depth, target, extra).item() == pytest.approx(1.0 / 4)


def test_depth_l1_gradient_is_finite_and_zero_on_invalid_pixels():
    depth, target = _depth_pair()
    target[0, 0, 1] = float("inf")
    depth.requires_grad_(True)
    depth_l1(depth, target).backward()
    assert torch.isfinite(depth.grad).all()
    # d/dD |D - D*| / 4 = sign / 4 on valid pixels, 0 elsewhere
    assert depth.grad.tolist() == [[[-0.25, 0.0], [0.0, -0.25]]]


def test_depth_l1_with_no_valid_pixel_is_zero_not_nan():
    depth = torch.ones(2, 3, 3, requires_grad=True)
    loss = depth_l1(depth, torch.zeros(2, 3, 3), normalize="valid")
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(depth.grad).all()


def test_feature_cosine_per_pixel_and_mask():
    pred, target = _feature_pair()
    assert feature_cosine(pred, target).item() == pytest.approx(1.0)  # mean of 0, 1, 2
    assert feature_cosine(pred, target, torch.tensor([[[True, True, False]]])).item() == pytest.approx(0.5)
    assert feature_cosine(pred, target, torch.tensor([[[False, False, True]]])).item() == pytest.approx(2.0)


def test_feature_cosine_is_scale_invariant_and_safe_on_zero_vectors():
    pred, target = _feature_pair()
    assert feature_cosine(pred * 7.0, target * 0.1).item() == pytest.approx(1.0, abs=1e-6)
    zero = torch.zeros(1, 4, 2, 2, requires_grad=True)
    loss = feature_cosine(zero, torch.randn(1, 4, 2, 2))
    loss.backward()
    assert loss.item() == pytest.approx(1.0) and torch.isfinite(zero.grad).all()


def test_total_loss_weights_terms_and_gradients_reach_every_prediction():
    color, color_t = _color_pair()
    depth, depth_t = _depth_pair()
    feat, feat_t = _feature_pair()
    for t in (color, depth, feat):
        t.requires_grad_(True)
    cfg = LossConfig(lambda_img=2.0, lambda_dep=3.0, lambda_sem=0.5)
    out = total_loss(cfg, color=color, color_target=color_t, depth_m=depth, depth_target_m=depth_t,
                     features=feat, features_target=feat_t)
    assert set(out) == {"img", "dep", "sem", "total"}
    expected = 2.0 * (1.4 / 6) + 3.0 * (1.5 / 4) + 0.5 * 1.0
    assert out["total"].item() == pytest.approx(expected)
    out["total"].backward()
    for t in (color, depth, feat):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_switched_off_terms_are_skipped_and_need_no_input():
    color, color_t = _color_pair()
    out = total_loss(LossConfig(use_dep=False, use_sem=False, lambda_img=4.0), color=color, color_target=color_t)
    assert set(out) == {"img", "total"}
    assert out["total"].item() == pytest.approx(4.0 * 1.4 / 6)
    with pytest.raises(ValueError, match="'dep' is switched on"):
        total_loss(LossConfig(use_sem=False), color=color, color_target=color_t)
    with pytest.raises(ValueError, match="at least one"):
        LossConfig(use_img=False, use_dep=False, use_sem=False)


def test_multi_teacher_semantic_term_is_the_weighted_sum():
    feat, feat_t = _feature_pair()
    other = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    other_t = torch.tensor([1.0, 1.0]).view(1, 2, 1, 1)  # cos 45 deg
    out = total_loss(LossConfig(use_img=False, use_dep=False, lambda_sem=2.0),
                     features={"a": feat, "b": other}, features_target={"a": feat_t, "b": other_t},
                     feature_weights={"a": 1.0, "b": 3.0})
    loss_b = 1.0 - 1.0 / math.sqrt(2.0)
    assert out["sem/a"].item() == pytest.approx(1.0)
    assert out["sem/b"].item() == pytest.approx(loss_b)
    assert out["sem"].item() == pytest.approx(1.0 + 3.0 * loss_b)
    assert out["total"].item() == pytest.approx(2.0 * (1.0 + 3.0 * loss_b))
    with pytest.raises(ValueError, match="same teachers"):
        total_loss(LossConfig(use_img=False, use_dep=False), features={"a": feat}, features_target={"b": feat_t})


def test_shape_mismatches_are_named():
    with pytest.raises(ValueError, match="color_target"):
        image_l1(torch.zeros(1, 2, 2, 3), torch.zeros(1, 2, 3, 3))
    with pytest.raises(ValueError, match=r"\[V, H, W\]"):
        depth_l1(torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="mask"):
        feature_cosine(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), torch.ones(1, 3, 3, dtype=torch.bool))
