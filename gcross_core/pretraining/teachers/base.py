"""The interface every frozen 2D teacher implements.

A teacher X_f maps real color images to dense features F*_m = X_f(C*_m) (Sec. 3.3, the target of eq. 19).
Callers hand it images as they come from the data pipeline (RGB in 0..1, any size); the teacher resizes them
to its own input size and applies its own normalization, so nothing outside this package needs to know
which mean/std or patch size a given network was trained with.
"""
from __future__ import annotations

import hashlib
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gcross_core.errors import InputError


def check_input_size(input_size: Sequence[int], multiple: int = 1, name: str = "input_size") -> Tuple[int, int]:
    """Validate an (height, width) pair of positive ints divisible by ``multiple``."""
    if len(input_size) != 2 or any(int(v) != v or v <= 0 for v in input_size):
        raise InputError(f"{name} must be (height, width) positive ints, got {tuple(input_size)}")
    h, w = int(input_size[0]), int(input_size[1])
    if h % multiple or w % multiple:
        near = (max(multiple, round(h / multiple) * multiple), max(multiple, round(w / multiple) * multiple))
        raise InputError(f"{name} {h}x{w} must be a multiple of {multiple} (the patch size); nearest: {near[0]}x{near[1]}")
    return h, w


def round_to_multiple(size: Sequence[int], multiple: int) -> Tuple[int, int]:
    """Nearest (height, width) that is a non-zero multiple of ``multiple``."""
    return tuple(max(multiple, int(round(v / multiple)) * multiple) for v in size)  # type: ignore[return-value]


class Teacher(nn.Module):
    """A frozen image encoder: ``forward(images [B,3,H,W] in 0..1) -> features [B, feature_dim, h', w']``.

    Subclasses build their network, call ``Teacher.__init__`` first and ``self._freeze()`` last, and implement
    ``extract(x)`` on already resized and normalized input. The module stays in eval mode (``train()`` is a
    no-op) so batch-norm statistics never move, no parameter requires grad, and ``forward`` runs under
    ``torch.no_grad`` (not inference mode: the outputs are used as loss targets in autograd graphs).
    """

    name: str
    feature_dim: int
    input_size: Tuple[int, int]

    def __init__(self, name: str, feature_dim: int, input_size: Sequence[int],
                 mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0)):
        super().__init__()
        self.name = name
        self.feature_dim = int(feature_dim)
        self.input_size = check_input_size(input_size)
        # Not persistent: the normalization is part of the teacher's definition, not of its weights.
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self._fingerprint: Optional[str] = None

    # -- to implement ------------------------------------------------------------------------------------
    @property
    def output_size(self) -> Tuple[int, int]:
        """(h', w') of the feature map for an input of ``self.input_size``."""
        raise NotImplementedError

    def extract(self, x: Tensor) -> Tensor:  # x: [B, 3, *input_size], normalized
        raise NotImplementedError

    # -- shared behaviour ----------------------------------------------------------------------------------
    def _freeze(self) -> None:
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "Teacher":
        # A teacher is never trained; keeping BN/dropout in eval even inside a model put in train mode.
        return super().train(False)

    def preprocess(self, images: Tensor) -> Tensor:
        """[B,3,H,W] RGB 0..1 -> [B,3,*input_size] resized (bilinear, antialiased) and normalized."""
        x = images.to(device=self.pixel_mean.device, dtype=torch.float32)
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        return (x - self.pixel_mean) / self.pixel_std

    def forward(self, images: Tensor) -> Tensor:  # images: [B, 3, H, W] float RGB in 0..1
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images has shape {tuple(images.shape)}, expected [B, 3, H, W] RGB in 0..1")
        if not images.is_floating_point():
            raise ValueError(f"images has dtype {images.dtype}, expected float RGB in 0..1 (divide uint8 by 255)")
        with torch.no_grad():
            feats = self.extract(self.preprocess(images)).float()
        expected = (images.shape[0], self.feature_dim, *self.output_size)
        if tuple(feats.shape) != expected:
            raise RuntimeError(f"teacher {self.name} produced features {tuple(feats.shape)}, expected {expected}")
        return feats

    def fingerprint(self) -> str:
        """Hex digest identifying this teacher: name, input size, output and every weight's bytes.

        Feature caches store it so features computed by other weights under the same name count as stale.
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(f"{self.name}|{self.input_size}|{self.feature_dim}|{self.output_size}".encode())
            h.update(self.pixel_mean.cpu().numpy().tobytes() + self.pixel_std.cpu().numpy().tobytes())
            for key, t in sorted(self.state_dict().items()):
                h.update(key.encode())
                h.update(str(t.dtype).encode())
                h.update(t.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def extra_repr(self) -> str:
        return f"name={self.name!r}, feature_dim={self.feature_dim}, input_size={self.input_size}, output_size={self.output_size}"


def ceil_div(a: int, b: int) -> int:
    return int(math.ceil(a / b))
