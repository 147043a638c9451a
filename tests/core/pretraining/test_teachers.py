"""Teachers (real loading code on the shipped EfficientNet weights and on tiny models built here) and eq. 16 heads."""
import copy
import textwrap

import pytest
import torch
import torch.nn.functional as F

from gcross_core.pretraining.losses import LossConfig, total_loss
from gcross_core.pretraining.teachers import (MultiTeacherProjection, ProjectionHead, TeacherHeadSpec, TeacherWeightsNotFound,
                                  build_teacher)
from gcross_core.pretraining.teachers.efficientnet import Conv2dSame, default_weights_path, load_efficientnet_lite0


def _assert_frozen(teacher):
    assert all(not p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())


# -- EfficientNet-Lite0 (the shipped ImageNet weights) ------------------------------------------------------

@pytest.fixture(scope="module")
def effnet():
    return build_teacher("efficientnet_lite0", input_size=(64, 96))


@pytest.fixture(scope="module")
def effnet_state():
    return torch.load(default_weights_path(), map_location="cpu", weights_only=True)


def test_efficientnet_weights_come_from_the_package_and_fill_every_key(effnet, effnet_state):
    assert default_weights_path().name == "efficientnet-lite0-57934424.pth"
    own = effnet.net.state_dict()
    assert len(effnet_state) == 296 and set(own) == set(effnet_state)
    assert all(torch.equal(own[k], effnet_state[k]) for k in own)
    # trained batch-norm statistics, not the defaults of a freshly built network
    assert not torch.allclose(own["_bn0.running_var"], torch.ones(32))


def test_efficientnet_dense_features_shape_frozen_and_no_grad(effnet):
    images = torch.rand(2, 3, 50, 70, requires_grad=True)  # any size: the teacher resizes to 64x96
    feats = effnet(images)
    assert effnet.feature_dim == 112 + 320
    assert feats.shape == (2, 432, 4, 6) and effnet.output_size == (4, 6)
    assert torch.isfinite(feats).all() and not feats.requires_grad
    # each tap is unit length per pixel, so the concatenation has norm sqrt(2)
    assert torch.allclose(feats.norm(dim=1), torch.full((2, 4, 6), 2 ** 0.5), atol=1e-4)
    _assert_frozen(effnet)


@pytest.mark.parametrize("layers,channels,stride", [(("s8",), 40, 8), (("head",), 1280, 32), (("s8", "s32"), 360, 8)])
def test_efficientnet_taps_use_tf_same_output_sizes(effnet, layers, channels, stride):
    teacher = copy.copy(effnet)  # share the loaded network, change only the selection
    teacher.layers, teacher.stride, teacher.feature_dim = layers, stride, channels
    teacher.input_size = (65, 97)
    out = teacher(torch.rand(1, 3, 65, 97))
    assert out.shape == (1, channels, -(-65 // stride), -(-97 // stride))


def test_efficientnet_logits_are_finite_and_depend_on_the_image(effnet):
    logits = effnet.classify(torch.rand(2, 3, 96, 96))
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()
    assert not torch.allclose(logits[0], logits[1])


def test_efficientnet_input_normalization_is_the_lite_preprocessing(effnet):
    gray = torch.full((1, 3, 64, 96), 127.0 / 255.0)
    assert effnet.preprocess(gray).abs().max() < 1e-6
    assert effnet.preprocess(torch.ones(1, 3, 64, 96)).sub(128.0 / 128.0).abs().max() < 1e-6


def test_efficientnet_refuses_missing_unexpected_and_misshapen_keys(effnet_state, tmp_path):
    bad = dict(effnet_state)
    bad.pop("_fc.bias")
    bad["_extra.weight"] = torch.zeros(1)
    bad["_conv_head.weight"] = torch.zeros(1280, 320, 3, 3)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as err:
        load_efficientnet_lite0(tmp_path / "bad.pth")
    msg = str(err.value)
    assert "_fc.bias" in msg and "_extra.weight" in msg and "_conv_head.weight" in msg
    with pytest.raises(TeacherWeightsNotFound, match="nowhere.pth"):
        load_efficientnet_lite0(tmp_path / "nowhere.pth")


def test_tf_same_padding_pads_bottom_right_for_stride_two():
    conv = Conv2dSame(1, 1, 3, stride=2)
    x = torch.randn(1, 1, 8, 8)
    out = conv(x)
    assert out.shape == (1, 1, 4, 4)
    # total padding 1 goes to the bottom/right, so the first output sees the unpadded top-left window
    assert torch.allclose(out[0, 0, 0, 0], (x[0, 0, :3, :3] * conv.weight[0, 0]).sum(), atol=1e-6)
    sym = torch.nn.Conv2d(1, 1, 5, padding=2, bias=False)
    same = Conv2dSame(1, 1, 5)
    same.weight.data.copy_(sym.weight.data)
    assert torch.allclose(same(x), sym(x), atol=1e-6)


def test_fingerprint_is_stable_and_follows_the_weights(effnet):
    fp = effnet.fingerprint()
    assert fp == effnet.fingerprint() and len(fp) == 16
    other = copy.deepcopy(effnet)
    other._fingerprint = None
    assert other.fingerprint() == fp
    other = copy.deepcopy(effnet)
    other._fingerprint = None
    other.net._fc.bias.data[0] += 1.0
    assert other.fingerprint() != fp


def test_build_teacher_rejects_unknown_names_and_bad_images(effnet):
    with pytest.raises(ValueError, match="unknown teacher"):
        build_teacher("sam")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        effnet(torch.rand(3, 64, 96))
    with pytest.raises(ValueError, match="float"):
        effnet(torch.zeros(1, 3, 64, 96, dtype=torch.uint8))


# -- DINOv2 / CLIP through transformers, on tiny checkpoints saved here ------------------------------------

def _tiny_dinov2(path, layers=1):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Dinov2Config(hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                                    intermediate_size=32, patch_size=4, image_size=16)
    torch.manual_seed(0)
    transformers.Dinov2Model(cfg).save_pretrained(path)
    return path


def test_dinov2_loads_from_a_local_directory_and_keeps_patch_layout(tmp_path):
    src = _tiny_dinov2(tmp_path / "dinov2", layers=0)  # no attention: token (i, j) sees only patch (i, j)
    teacher = build_teacher("dinov2", source=src, input_size=(12, 20))
    assert (teacher.feature_dim, teacher.output_size) == (16, (3, 5))
    _assert_frozen(teacher)
    x = torch.rand(1, 3, 12, 20)
    y = x.clone()
    y[:, :, 4:8, 12:16] = 1.0 - y[:, :, 4:8, 12:16]  # patch row 1, column 3
    changed = (teacher(x) - teacher(y)).abs().sum(dim=1)[0] > 1e-5
    assert changed.nonzero().tolist() == [[1, 3]]


def test_dinov2_default_size_rounds_480x640_to_the_patch(tmp_path):
    teacher = build_teacher("dinov2", source=_tiny_dinov2(tmp_path / "d"))
    assert teacher.input_size == (480, 640) and teacher.output_size == (120, 160)
    with pytest.raises(ValueError, match="multiple of 4"):
        build_teacher("dinov2", source=tmp_path / "d", input_size=(30, 40))


def test_dinov2_checkpoint_that_leaves_layers_uninitialised_is_refused(tmp_path):
    transformers = pytest.importorskip("transformers")
    src = _tiny_dinov2(tmp_path / "two_layers", layers=1)
    bigger = transformers.Dinov2Config.from_pretrained(src)
    bigger.num_hidden_layers = 2
    bigger.save_pretrained(src)  # config now asks for a layer the weights do not have
    with pytest.raises(ValueError, match="missing"):
        build_teacher("dinov2", source=src)


def test_hf_teachers_name_the_files_they_need(tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(TeacherWeightsNotFound) as err:
        build_teacher("dinov2", source=tmp_path / "absent")
    assert str(tmp_path / "absent") in str(err.value) and "config.json" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherWeightsNotFound, match="model.safetensors"):
        build_teacher("clip", source=tmp_path / "empty")
    with pytest.raises(TeacherWeightsNotFound) as err:
        build_teacher("clip", source="openai/clip-vit-base-patch16", cache_dir=tmp_path / "hub")
    msg = str(err.value)
    assert "models--openai--clip-vit-base-patch16" in msg and "source=" in msg


def test_clip_vision_tower_loads_from_a_full_clip_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  image_size=16, patch_size=8)
    text = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, vocab_size=50)
    full = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=8))
    full.save_pretrained(tmp_path / "clip")
    teacher = build_teacher("clip", source=tmp_path / "clip", input_size=(24, 40))
    feats = teacher(torch.rand(2, 3, 30, 30))
    assert feats.shape == (2, 16, 3, 5) and torch.isfinite(feats).all()
    patch = teacher.model.embeddings.patch_embedding.weight
    assert torch.equal(patch, full.vision_model.embeddings.patch_embedding.weight)
    _assert_frozen(teacher)


# -- RADIO through torch.hub from a local directory ---------------------------------------------------------

FAKE_HUBCONF = '''
dependencies = ["torch"]
import torch
from torch import nn


class FakeRadio(nn.Module):
    """RADIO's output convention: (summary, spatial tokens [B, h*w, D]); adaptors give a dict."""
    patch_size = 4
    min_resolution_step = 4

    def __init__(self, dim, adaptor):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 4, stride=4)
        self.adaptor = adaptor

    def forward(self, x):
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        out = (tokens.mean(1), tokens)
        if self.adaptor:
            return {"backbone": out, self.adaptor: (out[0], -tokens[..., :3])}
        return out


def radio_model(version="", progress=True, adaptor_names=None, **kwargs):
    state = torch.load(version, map_location="cpu", weights_only=True)  # a local file, never a download
    model = FakeRadio(state["proj.weight"].shape[0], adaptor_names[0] if adaptor_names else None)
    model.load_state_dict(state)
    model.loaded_from = version
    return model
'''


@pytest.fixture()
def fake_radio(tmp_path):
    repo = tmp_path / "RADIO"
    repo.mkdir()
    (repo / "hubconf.py").write_text(textwrap.dedent(FAKE_HUBCONF))
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 4, stride=4)
    ckpt = tmp_path / "radio-fake.pth.tar"
    torch.save({f"proj.{k}": v for k, v in conv.state_dict().items()}, ckpt)
    return repo, ckpt, conv


def test_radio_loads_through_torch_hub_from_a_local_repo(fake_radio):
    repo, ckpt, conv = fake_radio
    teacher = build_teacher("radio", repo_dir=repo, checkpoint=ckpt, input_size=(16, 24))
    assert teacher.model.loaded_from == str(ckpt)
    assert (teacher.feature_dim, teacher.output_size) == (8, (4, 6))
    x = torch.rand(2, 3, 16, 24)
    with torch.no_grad():
        expected = conv(x)  # identity normalization: RADIO conditions its own input
    assert torch.allclose(teacher(x), expected, atol=1e-5)  # tokens reshaped back in row-major order
    _assert_frozen(teacher)


def test_radio_adaptor_features_are_selected(fake_radio):
    repo, ckpt, conv = fake_radio
    teacher = build_teacher("radio", repo_dir=repo, checkpoint=ckpt, input_size=(8, 8), adaptor="siglip")
    x = torch.rand(1, 3, 8, 8)
    assert teacher.feature_dim == 3
    with torch.no_grad():
        assert torch.allclose(teacher(x), -conv(x)[:, :3], atol=1e-5)


def test_radio_errors_name_the_expected_locations(fake_radio, tmp_path, monkeypatch):
    repo, ckpt, _ = fake_radio
    with pytest.raises(TeacherWeightsNotFound) as err:
        build_teacher("radio", repo_dir=tmp_path / "no_clone", checkpoint=ckpt)
    assert str(tmp_path / "no_clone") in str(err.value) and "hubconf.py" in str(err.value)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(TeacherWeightsNotFound) as err:
        build_teacher("radio", repo_dir=repo)  # default version: checkpoint expected in the hub cache
    assert str(tmp_path / "hub" / "checkpoints" / "radio-v2.5-b_half.pth.tar") in str(err.value)
    monkeypatch.setenv("GCROSS_RADIO_DIR", str(tmp_path / "env_clone"))
    with pytest.raises(TeacherWeightsNotFound, match="env_clone"):
        build_teacher("radio", checkpoint=ckpt)
    with pytest.raises(ValueError, match="multiple of 4"):
        build_teacher("radio", repo_dir=repo, checkpoint=ckpt, input_size=(10, 12))


# -- projection heads (eq. 16) ------------------------------------------------------------------------------

def test_projection_head_resizes_to_the_teacher_grid_by_area_and_lifts_width():
    torch.manual_seed(0)
    head = ProjectionHead(4, 6)
    rendered = torch.randn(2, 8, 10, 4, requires_grad=True)  # [V, H, W, d_f]
    out = head(rendered, (4, 5))
    assert out.shape == (2, 6, 4, 5)
    pooled = rendered.detach().view(2, 4, 2, 5, 2, 4).mean(dim=(2, 4))  # 2x2 block means
    expected = torch.einsum("vhwc,oc->vohw", pooled, head.net.weight[:, :, 0, 0]) + head.net.bias.view(1, 6, 1, 1)
    assert torch.allclose(out, expected, atol=1e-5)
    # linear head: projecting first and pooling afterwards gives the same map
    projected_first = F.interpolate(head(rendered), size=(4, 5), mode="area")
    assert torch.allclose(out, projected_first, atol=1e-5)
    out.sum().backward()
    assert rendered.grad.abs().sum() > 0 and head.net.weight.grad.abs().sum() > 0
    assert head(rendered, (16, 20)).shape == (2, 6, 16, 20)  # enlarging works too (bilinear)
    with pytest.raises(ValueError, match=r"\[V, H, W, 4\]"):
        head(torch.zeros(2, 8, 10, 3))


def test_multi_teacher_projection_trains_each_head_with_its_weight():
    torch.manual_seed(0)
    proj = MultiTeacherProjection(4, {"radio": TeacherHeadSpec(12, loss_weight=1.0),
                                      "dinov2": TeacherHeadSpec(6, loss_weight=0.5, hidden=8)})
    rendered = torch.randn(2, 8, 8, 4, requires_grad=True)
    sizes = {"radio": (2, 2), "dinov2": (4, 4)}
    preds = proj(rendered, sizes)
    assert preds["radio"].shape == (2, 12, 2, 2) and preds["dinov2"].shape == (2, 6, 4, 4)
    targets = {name: torch.randn_like(p) for name, p in preds.items()}
    out = total_loss(LossConfig(use_img=False, use_dep=False), features=preds, features_target=targets,
                     feature_weights=proj.loss_weights)
    assert out["sem"].item() == pytest.approx(out["sem/radio"].item() + 0.5 * out["sem/dinov2"].item(), rel=1e-6)
    out["total"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in proj.parameters())
    with pytest.raises(ValueError, match="missing"):
        proj(rendered, {"radio": (2, 2)})
    with pytest.raises(ValueError, match="may only contain"):
        MultiTeacherProjection(4, {"a.b": TeacherHeadSpec(3)})


def test_one_network_split_into_two_keyed_teachers_each_with_its_own_projector():
    """Chorus: EfficientNet-Lite0 as a low-level s8 teacher and a semantic head teacher, by distinct keys."""
    from gcross_core.pretraining.config import TeacherConfig
    from gcross_core.pretraining.module import build_teachers

    opts = {"input_size": (64, 96)}
    cfgs = [TeacherConfig(key="lite0_s8", options={**opts, "layers": ["s8"]}),
            TeacherConfig(key="lite0_head", options={**opts, "layers": ["head"]})]
    low, sem = build_teachers(cfgs)
    assert (low.name, sem.name) == ("lite0_s8", "lite0_head")
    assert (low.feature_dim, sem.feature_dim) == (40, 1280)
    with pytest.raises(ValueError, match="distinct key"):
        build_teachers([TeacherConfig(options=opts), TeacherConfig(options=opts)])
