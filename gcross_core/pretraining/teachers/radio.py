"""RADIOv2.5 (the paper's teacher) through ``torch.hub`` from a local clone: nothing is fetched at run time.

Two things must be on disk:
- the code: a clone of github.com/NVlabs/RADIO (it has ``hubconf.py`` at its root), by default where torch.hub
  keeps its clones, ``<torch.hub.get_dir()>/NVlabs_RADIO_main``, or wherever ``GCROSS_RADIO_DIR`` / ``repo_dir``
  points; its own dependencies (timm, einops) must be installed;
- the weights: the checkpoint file of the chosen version (``radio-v2.5-b_half.pth.tar`` for ``radio_v2.5-b``,
  from huggingface.co/nvidia/RADIO), by default in ``<torch.hub.get_dir()>/checkpoints``, or given as ``checkpoint``.

The checkpoint path is handed to RADIO's ``radio_model`` as its ``version``, which makes it read the local file
instead of downloading. RADIO conditions its own input (it expects RGB in 0..1), so this wrapper only resizes.
Features are the spatial tokens of the backbone (or of one adaptor, e.g. ``adaptor="siglip2-g"``), reshaped
to [B, d*, H/patch, W/patch]; the input size must be a multiple of the model's ``min_resolution_step``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from gcross_core.errors import InputError, TeacherWeightsNotFound
from gcross_core.pretraining.teachers.base import Teacher, check_input_size, round_to_multiple

DEFAULT_VERSION = "radio_v2.5-b"
# Checkpoint file names of the RADIOv2.5 releases (the file torch.hub would cache for each version).
CHECKPOINT_FILES = {
    "radio_v2.5-b": "radio-v2.5-b_half.pth.tar",
    "radio_v2.5-l": "radio-v2.5-l_half.pth.tar",
    "radio_v2.5-h": "radio_v2.5-h.pth.tar",
    "radio_v2.5-g": "radio_v2.5-g.pth.tar",
}
DEFAULT_FRAME_SIZE = (480, 640)
REPO_ENV = "GCROSS_RADIO_DIR"


def default_repo_dir() -> Path:
    env = os.environ.get(REPO_ENV)
    return Path(env) if env else Path(torch.hub.get_dir()) / "NVlabs_RADIO_main"


def default_checkpoint(version: str) -> Path:
    if version not in CHECKPOINT_FILES:
        raise InputError(f"unknown RADIO version {version!r}; known: {sorted(CHECKPOINT_FILES)} "
                         "(or pass checkpoint=<path to a .pth.tar>)")
    return Path(torch.hub.get_dir()) / "checkpoints" / CHECKPOINT_FILES[version]


def load_radio(repo_dir: Optional[Union[str, Path]] = None, version: str = DEFAULT_VERSION,
               checkpoint: Optional[Union[str, Path]] = None, adaptor: Optional[str] = None) -> nn.Module:
    """``torch.hub.load(repo_dir, 'radio_model', source='local', version=<local checkpoint>)`` with clear errors."""
    repo = Path(repo_dir).expanduser() if repo_dir is not None else default_repo_dir()
    if not (repo / "hubconf.py").is_file():
        raise TeacherWeightsNotFound(
            f"RADIO code not found: expected a clone of github.com/NVlabs/RADIO (with hubconf.py) at {repo}. "
            f"Clone it there on a machine with network access and copy it over, or point {REPO_ENV} or "
            "repo_dir= at an existing clone.")
    ckpt = Path(checkpoint).expanduser() if checkpoint is not None else default_checkpoint(version)
    if not ckpt.is_file():
        raise TeacherWeightsNotFound(
            f"RADIO weights not found: expected the checkpoint file {ckpt} "
            f"({ckpt.name}, from huggingface.co/nvidia/RADIO for {version}); put it there or pass checkpoint=<file>.")
    kwargs = {"version": str(ckpt), "progress": False}
    if adaptor is not None:
        kwargs["adaptor_names"] = [adaptor]
    model = torch.hub.load(str(repo), "radio_model", source="local", **kwargs)
    return model.eval()


def _spatial_features(output, adaptor: Optional[str], patch_size: int, hw: Tuple[int, int]) -> Tensor:
    """RADIO output -> [B, D, h, w]: (summary, features) or {name: (summary, features)}; features NLC or NCHW."""
    if isinstance(output, dict):
        key = adaptor or "backbone"
        if key not in output:
            raise KeyError(f"RADIO output has no {key!r} entry; it has {sorted(output)}")
        output = output[key]
    features = output.features if hasattr(output, "features") else output[1]
    h, w = hw[0] // patch_size, hw[1] // patch_size
    if features.ndim == 3:  # [B, h*w, D] tokens in row-major order
        if features.shape[1] != h * w:
            raise RuntimeError(f"RADIO returned {features.shape[1]} tokens for a {hw[0]}x{hw[1]} input, expected {h * w}")
        features = features.transpose(1, 2).reshape(features.shape[0], -1, h, w)
    return features


class RadioTeacher(Teacher):
    """RADIOv2.5 spatial features (see the module docstring for where code and weights must be)."""

    def __init__(self, repo_dir: Optional[Union[str, Path]] = None, version: str = DEFAULT_VERSION,
                 checkpoint: Optional[Union[str, Path]] = None, input_size: Optional[Sequence[int]] = None,
                 adaptor: Optional[str] = None):
        model = load_radio(repo_dir, version, checkpoint, adaptor)
        patch = int(model.patch_size)
        step = int(getattr(model, "min_resolution_step", None) or patch)
        size = round_to_multiple(DEFAULT_FRAME_SIZE, step) if input_size is None else input_size
        size = check_input_size(size, step)
        with torch.no_grad():  # the width depends on version and adaptor: ask the model once
            probe = _spatial_features(model(torch.zeros(1, 3, step, step)), adaptor, patch, (step, step))
        super().__init__("radio", probe.shape[1], size)  # identity mean/std: RADIO conditions its own input
        self.model = model
        self.patch_size = patch
        self.adaptor = adaptor
        self.version = version if checkpoint is None else str(checkpoint)
        self._freeze()

    @property
    def output_size(self) -> Tuple[int, int]:
        return self.input_size[0] // self.patch_size, self.input_size[1] // self.patch_size

    def extract(self, x: Tensor) -> Tensor:  # x: [B, 3, *input_size] in 0..1 -> [B, d*, h', w']
        return _spatial_features(self.model(x), self.adaptor, self.patch_size, self.input_size)


__all__ = ["RadioTeacher", "load_radio", "default_repo_dir", "default_checkpoint", "CHECKPOINT_FILES"]
