"""DINOv2 and CLIP image encoders as teachers, through Hugging Face ``transformers``.

Weights are only ever read from disk (``local_files_only=True``): either a directory holding a checkpoint saved
with ``save_pretrained`` (``config.json`` + ``model.safetensors``), or a repository id such as
``facebook/dinov2-base`` that is already in the standard Hugging Face cache (``$HF_HUB_CACHE``, by default
``~/.cache/huggingface/hub``). A checkpoint that leaves any parameter of the encoder uninitialised is refused,
since a silently random teacher would distil noise.

Dense features are the patch tokens of the last layer, reshaped to [B, d*, H/patch, W/patch]; the class token
(and DINOv2 register tokens) are dropped. For CLIP the final ``post_layernorm`` is applied to the patch tokens
too, so they live in the same normalised space as CLIP's pooled embedding. Position embeddings are interpolated
to the input size, which must be a multiple of the patch size (default: 480x640 rounded to that multiple).

``transformers`` is imported lazily: the rest of the library never needs it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

from torch import Tensor

from gcross_core.errors import CheckpointError, InputError, TeacherWeightsNotFound
from gcross_core.pretraining.teachers.base import Teacher, check_input_size, round_to_multiple

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_FRAME_SIZE = (480, 640)  # ScanNet/Kinect color frames; teachers keep their aspect ratio


@dataclass(frozen=True)
class HFFamily:
    model_class: str  # name in the transformers namespace
    default_source: str  # repository id looked up in the local cache when no directory is given
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    post_layernorm: bool  # apply the model's final norm to the patch tokens (CLIP only)


FAMILIES = {
    "dinov2": HFFamily("Dinov2Model", "facebook/dinov2-base", IMAGENET_MEAN, IMAGENET_STD, post_layernorm=False),
    "clip": HFFamily("CLIPVisionModel", "openai/clip-vit-base-patch16", CLIP_MEAN, CLIP_STD, post_layernorm=True),
}

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def _hub_cache_dir(cache_dir: Optional[Union[str, Path]]) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    try:
        from huggingface_hub import constants
        return Path(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def _missing_message(family: str, source: str, cache_dir: Optional[Union[str, Path]]) -> str:
    fam = FAMILIES[family]
    if _REPO_ID.match(source) and not Path(source).exists():
        cache = _hub_cache_dir(cache_dir)
        folder = cache / ("models--" + source.replace("/", "--"))
        return (f"{family} weights for {source!r} are not on this machine (nothing is downloaded). Either put "
                f"config.json and model.safetensors of {source} into a directory and pass it as source=<dir> "
                f"(build_teacher({family!r}, source='/path/to/dir')), or fill the Hugging Face cache on a machine "
                f"with network access (`hf download {source}`) and copy {folder} to this machine.")
    return (f"{family} weights not found: expected a directory {source} holding config.json and "
            f"model.safetensors (a {fam.model_class} or full checkpoint saved with save_pretrained), "
            f"or a repository id like {fam.default_source!r} present in the Hugging Face cache")


def load_hf_encoder(family: str, source: Optional[Union[str, Path]] = None,
                    cache_dir: Optional[Union[str, Path]] = None):
    """Load the ``transformers`` encoder of a family from a local directory or the local cache, in float32."""
    if family not in FAMILIES:
        raise InputError(f"unknown Hugging Face teacher family {family!r}; expected one of {sorted(FAMILIES)}")
    fam = FAMILIES[family]
    source = str(source) if source is not None else fam.default_source
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise TeacherWeightsNotFound(_missing_message(family, str(path), cache_dir))
        source = str(path)
    elif not _REPO_ID.match(source):
        raise TeacherWeightsNotFound(_missing_message(family, str(path), cache_dir))
    try:
        import torch
        import transformers
    except ImportError as e:
        raise ImportError(f"the {family} teacher needs the transformers package "
                          "(pip install transformers==5.23.0)") from e
    model_cls = getattr(transformers, fam.model_class)
    try:
        model, info = model_cls.from_pretrained(source, local_files_only=True, cache_dir=cache_dir,
                                                output_loading_info=True, dtype=torch.float32)
    except OSError as e:
        raise TeacherWeightsNotFound(_missing_message(family, source, cache_dir)) from e
    missing = sorted(info.get("missing_keys", ()))
    mismatched = sorted(str(k) for k in info.get("mismatched_keys", ()))
    if missing or mismatched:
        raise CheckpointError(f"{family} checkpoint {source} does not initialise the whole {fam.model_class}: "
                              f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''} ({len(missing)}), "
                              f"wrong shape {mismatched[:8]} ({len(mismatched)})")
    return model.eval()


class HFTeacher(Teacher):
    """Patch-token features of a DINOv2 or CLIP vision transformer: [B, hidden, H/patch, W/patch]."""

    def __init__(self, family: str, source: Optional[Union[str, Path]] = None,
                 input_size: Optional[Sequence[int]] = None, cache_dir: Optional[Union[str, Path]] = None):
        model = load_hf_encoder(family, source, cache_dir)
        cfg = model.config
        patch = int(cfg.patch_size)
        size = round_to_multiple(DEFAULT_FRAME_SIZE, patch) if input_size is None else input_size
        size = check_input_size(size, patch)
        fam = FAMILIES[family]
        super().__init__(family, int(cfg.hidden_size), size, fam.mean, fam.std)
        self.patch_size = patch
        self.source = str(source) if source is not None else fam.default_source
        self.model = model
        self.use_post_layernorm = fam.post_layernorm
        self._freeze()

    @property
    def output_size(self) -> Tuple[int, int]:
        return self.input_size[0] // self.patch_size, self.input_size[1] // self.patch_size

    def _final_norm(self):
        norm = getattr(self.model, "post_layernorm", None)
        if norm is None and hasattr(self.model, "vision_model"):
            norm = self.model.vision_model.post_layernorm
        return norm

    def extract(self, x: Tensor) -> Tensor:  # x: [B, 3, *input_size] normalized -> [B, hidden, h', w']
        if self.name == "clip":
            tokens = self.model(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state
        else:
            tokens = self.model(pixel_values=x).last_hidden_state  # DINOv2 always interpolates
        h, w = self.output_size
        patches = tokens[:, -h * w:]  # prefix tokens (class, registers) come first
        if self.use_post_layernorm:
            patches = self._final_norm()(patches)
        return patches.transpose(1, 2).reshape(x.shape[0], -1, h, w)


__all__ = ["HFTeacher", "load_hf_encoder", "FAMILIES"]
