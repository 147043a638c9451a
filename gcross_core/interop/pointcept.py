"""Pointcept SpUNet-v1m1 checkpoints (.pth) -> gcross checkpoints (.safetensors).

Pointcept's ``CheckpointSaver`` (and the released GaussianCross weights built on it) saves
``{"epoch", "state_dict", "optimizer", "scheduler", "scaler", "best_metric_value"}``; the state dict's keys
carry ``module.`` under DataParallel/DDP. Three layouts are recognised (:func:`detect_layout`):

- ``backbone``: a pretrained encoder, ``backbone.*`` beside whatever the pretraining model adds (its
  decoders and heads are listed, not converted), or a bare SpUNet state dict -> an ``encoder`` checkpoint for
  ``training/finetune.py --pretrained``;
- ``DefaultSegmentor``: ``backbone.*`` with its own 1x1 ``final`` classifier (SpUNet ``num_classes`` > 0)
  -> a ``segmenter`` checkpoint whose linear head is ``final`` (a 1x1x1 submanifold convolution is a
  per-voxel linear map; note spconv >= 2.1 multiplies by the weight's memory viewed as [in, out], not by the
  [out, 1, 1, 1, in] tensor reshaped to [out, in], and the head reproduces what spconv computes);
- ``DefaultSegmentorV2`` (linear probing, ``freeze_backbone``): ``backbone.*`` (``num_classes=0``) plus
  ``seg_head`` Linear(96, C) -> a ``segmenter`` checkpoint with that head;
- ``PointGroup`` (PG-v1m1, the paper's instance segmentation): ``backbone.*``, ``seg_head`` and the offset
  branch ``bias_head`` (Linear, BatchNorm1d(eps 1e-3), ReLU, Linear(C, 3)) -> a ``segmenter`` checkpoint
  with an instance head (:class:`~gcross_core.segmentation.instance.OffsetHead`, the same layers). The
  head's BatchNorm uses eps 1e-5, so the import adds the difference to the running variance: inference
  computes exactly what PointGroup's branch computes. Grouping is gcross's
  (:func:`~gcross_core.segmentation.instance.group_instances`, radius 1.5 grid cells as PointGroup's
  ``cluster_thresh``), not PointGroup's ball-query BFS; stuff classes default to wall and floor where the
  classes have them (PointGroup's ``segment_ignore_index`` on ScanNet).

The file is read by :func:`gcross_core.interop.pth.read_pth` (no pickled code runs; optimizer and scheduler
state become inert placeholders). The SpUNet configuration is inferred from the tensor shapes (or checked
against a given one) and any missing, unexpected or mis-shaped key stops the import before anything is
written. Every output records ``kind`` and the input convention Pointcept fed the model
(:class:`~gcross_core.model.features.InputConvention`): ``CenterShift(apply_z=True)`` before
``GridSample`` (the ``center_shift`` lattice) and ``NormalizeColor``, colour / 127.5 - 1 before Pointcept
1.6 and in the GaussianCross release, colour / 255 from Pointcept 1.6 on. ``training/import_pointcept.py``
is its command line.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from gcross_core.checkpoint import ENCODER_KIND, SEGMENTER_KIND, CheckpointHeader, prefixed, save_checkpoint
from gcross_core.errors import CheckpointError, PointceptImportError
from gcross_core.model.encoder import SpUNet, SpUNetConfig
from gcross_core.model.features import POINTCEPT_CONVENTION, EncoderInput, InputConvention
from gcross_core.interop.pth import Inert, UnreadableTensor, read_pth
from gcross_core.segmentation.instance import InstanceConfig, OffsetHead
from gcross_core.segmentation.model import SegmentationModel, save_segmenter

BACKBONE = "backbone"
SEGMENTOR = "DefaultSegmentor"
SEGMENTOR_V2 = "DefaultSegmentorV2"
POINTGROUP = "PointGroup"
HEAD_KEYS = ("seg_head.weight", "seg_head.bias")  # DefaultSegmentorV2 / PointGroup semantic head
OFFSET_PREFIX = "bias_head."  # PointGroup's offset branch: Linear 0, BatchNorm1d 1, ReLU 2, Linear 3
POINTGROUP_BN_EPS = 1e-3  # PointGroup's norm_fn for bias_head
STUFF_IF_PRESENT = ("wall", "floor")  # PointGroup's segment_ignore_index (-1, 0, 1) on ScanNet: wall, floor


@dataclass
class ImportReport:
    config: SpUNetConfig  # of the backbone as stored (num_classes > 0 for a DefaultSegmentor)
    layout: str = BACKBONE  # BACKBONE | SEGMENTOR | SEGMENTOR_V2 | POINTGROUP
    kind: str = ENCODER_KIND  # kind of the checkpoint written
    class_names: List[str] = field(default_factory=list)  # segmenter outputs
    stuff_classes: List[str] = field(default_factory=list)  # PointGroup: classes never instanced
    converted: List[str] = field(default_factory=list)  # encoder keys written
    missing: List[str] = field(default_factory=list)  # encoder keys absent from the checkpoint
    unexpected: List[str] = field(default_factory=list)  # backbone keys the encoder does not have
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)  # key, got, want
    outside_backbone: List[str] = field(default_factory=list)  # keys beside `backbone.` (heads), not converted


def load_pointcept_checkpoint(path) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Read a Pointcept .pth: (state dict with its original key names, other top-level entries).

    Raises PointceptImportError when there is no state dict, or naming the key of any entry that is not
    a readable tensor.
    """
    try:
        obj = read_pth(path)
    except CheckpointError as e:
        raise PointceptImportError(str(e)) from e
    if not isinstance(obj, dict):
        raise PointceptImportError(f"{path}: expected a dict, got {obj!r:.80}")
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            state, extra = obj[key], {k: v for k, v in obj.items() if k != key}
            break
    else:
        state, extra = obj, {}
    if not state:
        raise PointceptImportError(f"{path}: no state dict of tensors found (top-level keys {sorted(obj)[:10]})")
    for k, v in state.items():
        if isinstance(v, UnreadableTensor):
            raise PointceptImportError(f"{path}: state dict entry {k!r} cannot be read: {v.reason}")
        if not isinstance(v, torch.Tensor):
            what = v.target if isinstance(v, Inert) else type(v).__name__
            raise PointceptImportError(f"{path}: state dict entry {k!r} is a {what}, not a tensor "
                                       f"(no state dict of tensors found)")
    return dict(state), extra


def split_backbone(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Strip ``module.`` (DataParallel/DDP) and ``backbone.`` (Pointcept segmentor/pretrainer) prefixes.

    If any key lives under ``backbone.``, only those keys are the encoder and the others (decoders,
    segmentation heads, projection heads) are returned by name; otherwise every key is the encoder.
    """
    stripped = _strip_module(state)
    if any(k.startswith("backbone.") for k in stripped):
        backbone = {k[len("backbone."):]: v for k, v in stripped.items() if k.startswith("backbone.")}
        others = sorted(k for k in stripped if not k.startswith("backbone."))
        return backbone, others
    return stripped, []


def _strip_module(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        while k.startswith("module."):
            k = k[len("module."):]
        out[k] = v
    return out


def detect_layout(state: Dict[str, torch.Tensor]) -> str:
    """BACKBONE, SEGMENTOR (backbone with ``final``), SEGMENTOR_V2 (``seg_head`` Linear) or POINTGROUP
    (``seg_head`` and ``bias_head``) for a state dict."""
    stripped = _strip_module(state)
    backbone, _ = split_backbone(state)
    head = [k for k in HEAD_KEYS if k in stripped]
    if head:
        if len(head) != 2 or stripped["seg_head.weight"].ndim != 2:
            raise PointceptImportError(f"seg_head is not a Linear layer (found {head} with shapes "
                                       f"{[tuple(stripped[k].shape) for k in head]})")
        if "final.weight" in backbone:
            raise PointceptImportError("the checkpoint has both a backbone 'final' classifier and a 'seg_head'; "
                                       "expected one of DefaultSegmentor / DefaultSegmentorV2")
        return POINTGROUP if any(k.startswith(OFFSET_PREFIX) for k in stripped) else SEGMENTOR_V2
    return SEGMENTOR if "final.weight" in backbone else BACKBONE


def infer_spunet_config(state: Dict[str, torch.Tensor]) -> SpUNetConfig:
    """Read channels and block counts off the tensor shapes (spconv 2.2+ weights: [out, k, k, k, in])."""
    def weight(key: str) -> torch.Tensor:
        if key not in state:
            raise PointceptImportError(f"cannot infer the SpUNet layout: key {key!r} is missing")
        w = state[key]
        if w.ndim != 5:
            raise PointceptImportError(f"{key} has shape {tuple(w.shape)}, expected a 5-d spconv weight "
                                       "[out, k, k, k, in]")
        return w

    stem = weight("conv_input.0.weight")
    stages = sorted({int(m.group(1)) for k in state for m in [re.match(r"down\.(\d+)\.", k)] if m})
    if not stages or stages != list(range(len(stages))):
        raise PointceptImportError(f"cannot infer the SpUNet layout: down stages found {stages}")
    n = len(stages)

    def blocks(prefix: str) -> int:
        return len({m.group(1) for k in state for m in [re.match(rf"{prefix}\.block(\d+)\.", k)] if m})

    enc_ch = [int(weight(f"down.{s}.0.weight").shape[0]) for s in range(n)]
    dec_ch = [int(weight(f"up.{s}.0.weight").shape[0]) for s in range(n)]  # width of decoder stage s
    enc_layers = [blocks(f"enc.{s}") for s in range(n)]
    dec_layers = [blocks(f"dec.{s}") for s in range(n)]
    # config order: encoder stages 0..n-1, then decoder stages from the coarsest (n-1) back to 0
    channels = tuple(enc_ch + dec_ch[::-1])
    layers = tuple(enc_layers + dec_layers[::-1])
    num_classes = int(state["final.weight"].shape[0]) if "final.weight" in state else 0
    return SpUNetConfig(in_channels=int(stem.shape[-1]), base_channels=int(stem.shape[0]),
                        channels=channels, layers=layers, num_classes=num_classes)


def _layout_hint(got: Tuple[int, ...], want: Tuple[int, ...]) -> str:
    if len(got) == 5 and sorted(got) == sorted(want) and got != want:
        return " (same sizes in another order: written by spconv < 2.2? re-save it with spconv >= 2.2)"
    return ""


def convert_state_dict(state: Dict[str, torch.Tensor], config: Optional[SpUNetConfig] = None,
                       allow_partial: bool = False) -> Tuple[Dict[str, torch.Tensor], ImportReport]:
    """Map a Pointcept state dict's backbone onto SpUNet(config); raises PointceptImportError listing every
    problem. The tensors keep the backbone's ``final`` classifier when it has one."""
    backbone, others = split_backbone(state)
    cfg = config or infer_spunet_config(backbone)
    model = SpUNet(cfg)
    expected = model.state_dict()
    report = ImportReport(config=cfg, outside_backbone=others)
    report.missing = [k for k in expected if k not in backbone]
    report.unexpected = sorted(k for k in backbone if k not in expected)
    report.mismatched = [(k, tuple(backbone[k].shape), tuple(v.shape)) for k, v in expected.items()
                         if k in backbone and tuple(backbone[k].shape) != tuple(v.shape)]
    problems = []
    if report.unexpected:
        problems.append(f"{len(report.unexpected)} unexpected key(s): {report.unexpected}")
    if report.mismatched:
        problems.append(f"{len(report.mismatched)} shape mismatch(es): " + "; ".join(
            f"{k} has {g}, expected {w}{_layout_hint(g, w)}" for k, g, w in report.mismatched))
    if report.missing and not allow_partial:
        problems.append(f"{len(report.missing)} missing key(s): {report.missing}")
    if problems:
        raise PointceptImportError(f"checkpoint does not match SpUNet({cfg}): " + " | ".join(problems))
    tensors = {}
    for k, v in expected.items():
        if k in backbone:
            t = backbone[k]
            tensors[k] = t.float() if t.is_floating_point() else t
            report.converted.append(k)
    # final check: the converted tensors load into the module the metadata describes
    model.load_state_dict(tensors, strict=not allow_partial)
    return tensors, report


def _classifier(state: Dict[str, torch.Tensor], tensors: Dict[str, torch.Tensor], layout: str,
                report: ImportReport) -> Tuple[torch.Tensor, torch.Tensor]:
    """The segmenter's linear head (weight [C, D], bias [C]); takes ``final.*`` out of ``tensors``."""
    if layout == SEGMENTOR:
        if "final.weight" not in tensors or "final.bias" not in tensors:
            raise PointceptImportError("the backbone's 'final' classifier lacks its weight or bias")
        w, b = tensors.pop("final.weight"), tensors.pop("final.bias")
        report.converted = [k for k in report.converted if not k.startswith("final.")]
        # [C, 1, 1, 1, D], but spconv (>= 2.1) computes a 1x1x1 convolution as
        # features @ weight.view(D, C): that matrix, transposed, is the equivalent Linear weight [C, D]
        return w.reshape(w.shape[-1], w.shape[0]).t().contiguous(), b
    stripped = _strip_module(state)
    w, b = stripped["seg_head.weight"].float(), stripped["seg_head.bias"].float()
    report.outside_backbone = [k for k in report.outside_backbone if k not in HEAD_KEYS]
    return w, b


def _offset_head(state: Dict[str, torch.Tensor], report: ImportReport, channels: int) -> Dict[str, torch.Tensor]:
    """PointGroup's ``bias_head`` as an :class:`OffsetHead` state dict (its BatchNorm eps folded into the
    running variance); every problem is a PointceptImportError naming the key."""
    stripped = _strip_module(state)
    given = {k[len(OFFSET_PREFIX):]: v for k, v in stripped.items() if k.startswith(OFFSET_PREFIX)}
    head = OffsetHead(channels)
    want = {k[len("mlp."):]: v for k, v in head.state_dict().items()}
    problems = [f"{OFFSET_PREFIX}{k} missing" for k in want if k not in given]
    problems += [f"{OFFSET_PREFIX}{k} unexpected" for k in given if k not in want]
    problems += [f"{OFFSET_PREFIX}{k} has {tuple(given[k].shape)}, expected {tuple(v.shape)}"
                 for k, v in want.items() if k in given and tuple(given[k].shape) != tuple(v.shape)]
    if problems:
        raise PointceptImportError(f"bias_head is not PointGroup's Linear({channels}, {channels}) - BatchNorm1d - "
                                   f"ReLU - Linear({channels}, 3): " + "; ".join(problems))
    out = {f"mlp.{k}": (v.float() if v.is_floating_point() else v).clone() for k, v in given.items()}
    out["mlp.1.running_var"] += POINTGROUP_BN_EPS - head.mlp[1].eps  # (var + 1e-3) as var' + eps
    report.outside_backbone = [k for k in report.outside_backbone if not k.startswith(OFFSET_PREFIX)]
    return out


def import_pointcept_checkpoint(src, dst, config: Optional[SpUNetConfig] = None, allow_partial: bool = False,
                                prefix: str = "encoder", class_names: Optional[Sequence[str]] = None,
                                convention: InputConvention = POINTCEPT_CONVENTION, grid_size_m: float = 0.02,
                                backbone_only: bool = False,
                                stuff_classes: Optional[Sequence[str]] = None) -> ImportReport:
    """Convert ``src`` (.pth) into ``dst`` (.safetensors) as described in the module docstring.

    ``class_names``: required for a segmentor (one per output of its classifier), refused for a backbone.
    ``convention`` and ``grid_size_m``: what the source model was fed (Pointcept's configs: 0.02 m).
    ``prefix``: namespace of an encoder output's tensors ('' for none; segmenters use ``encoder``).
    ``backbone_only``: write a segmentor's backbone as an encoder checkpoint (classifier dropped).
    ``stuff_classes``: PointGroup only, the classes never instanced (default: wall and floor where present).
    """
    if not grid_size_m > 0:
        raise PointceptImportError(f"grid_size_m must be > 0, got {grid_size_m}")
    state, extra = load_pointcept_checkpoint(src)
    layout = detect_layout(state)
    tensors, report = convert_state_dict(state, config, allow_partial)
    report.layout = layout
    epoch = extra.get("epoch")
    source = {"format": "pointcept", "layout": layout, "file": Path(src).name,
              "epoch": int(epoch) if isinstance(epoch, (int, np.integer)) and not isinstance(epoch, bool) else None}
    if layout == BACKBONE or backbone_only:
        if class_names is not None:
            raise PointceptImportError(f"{src} is imported as a backbone ({layout}): there is no classifier "
                                       f"whose classes to name")
        enc_cfg = report.config
        if layout == SEGMENTOR:
            _classifier(state, tensors, layout, report)  # drop `final`
            report.outside_backbone = report.outside_backbone + ["backbone.final.weight", "backbone.final.bias"]
            enc_cfg = SpUNetConfig.from_dict({**enc_cfg.to_dict(), "num_classes": 0})
        header = CheckpointHeader(kind=ENCODER_KIND, encoder_config=enc_cfg.to_dict(), encoder_prefix=prefix,
                                  **EncoderInput(grid_size_m, convention).header_fields(),
                                  extra={"model": "spunet", "source": source, "missing_keys": report.missing,
                                         "not_converted_keys": report.outside_backbone})
        save_checkpoint(dst, prefixed(tensors, prefix) if prefix else tensors, header)
        return report

    weight, bias = _classifier(state, tensors, layout, report)
    if class_names is None:
        raise PointceptImportError(f"{src} is a {layout} with a {weight.shape[0]}-class classifier: give its "
                                   f"class names (--classes scannet20|scannet200|s3dis|FILE); they are not "
                                   f"stored in Pointcept checkpoints")
    if len(class_names) != weight.shape[0]:
        raise PointceptImportError(f"{len(class_names)} class names given for the {weight.shape[0]}-class "
                                   f"classifier of {src} ({layout})")
    enc_cfg = SpUNetConfig.from_dict({**report.config.to_dict(), "num_classes": 0})
    if stuff_classes is not None and layout != POINTGROUP:
        raise PointceptImportError(f"{src} is a {layout} without an offset head: stuff classes only apply to "
                                   f"PointGroup checkpoints")
    model = SegmentationModel(enc_cfg, int(weight.shape[0]), instance_head=layout == POINTGROUP)
    if tuple(weight.shape) != tuple(model.seg_head.weight.shape) or tuple(bias.shape) != (weight.shape[0],):
        raise PointceptImportError(f"classifier weight {tuple(weight.shape)} / bias {tuple(bias.shape)} do not fit "
                                   f"a Linear({model.encoder.out_channels}, {weight.shape[0]}) on this backbone")
    model.encoder.load_state_dict(tensors, strict=not allow_partial)
    model.seg_head.load_state_dict({"weight": weight, "bias": bias})
    instance = None
    if layout == POINTGROUP:
        model.offset_head.load_state_dict(_offset_head(state, report, model.encoder.out_channels))
        stuff = tuple(stuff_classes) if stuff_classes is not None else tuple(
            c for c in STUFF_IF_PRESENT if c in class_names)
        unknown = [c for c in stuff if c not in class_names]
        if unknown:
            raise PointceptImportError(f"stuff classes {unknown} are not among the classifier's classes "
                                       f"{list(class_names)}")
        # PointGroup: cluster_thresh 1.5 voxels, cluster_propose_points 100
        instance = InstanceConfig(stuff_classes=stuff, cluster_radius_m=1.5 * grid_size_m,
                                  min_points=100).resolved("", class_names)
    report.kind, report.class_names = SEGMENTER_KIND, list(class_names)
    report.stuff_classes = list(instance.stuff_classes) if instance is not None else []
    save_segmenter(dst, model, list(class_names), grid_size_m, convention=convention, instance=instance,
                   extra={"model": "spunet", "source": source, "missing_keys": report.missing,
                          "not_converted_keys": report.outside_backbone})
    return report


__all__ = ["BACKBONE", "SEGMENTOR", "SEGMENTOR_V2", "POINTGROUP", "ImportReport", "load_pointcept_checkpoint",
           "split_backbone", "detect_layout", "infer_spunet_config", "convert_state_dict",
           "import_pointcept_checkpoint"]
