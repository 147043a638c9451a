"""Convert a Pointcept SpUNet-v1m1 checkpoint (.pth) into a gcross checkpoint (.safetensors).

Pointcept (and the released GaussianCross weights built on it) saves ``{"state_dict": {...}, "epoch": ...,
"optimizer": ..., "scheduler": ...}`` with keys such as ``module.backbone.conv_input.0.weight``. The
conversion (``gcross_core.interop.pointcept``) reads it without running pickled code, recognises a pretrained
backbone, a DefaultSegmentor (backbone with its ``final`` classifier), a DefaultSegmentorV2 (backbone +
``seg_head``) or a PointGroup (``seg_head`` + offset ``bias_head``: a segmenter with an instance head), infers
the SpUNet configuration from the tensor shapes, and refuses to write anything if a key is missing, unexpected
or of the wrong shape. Backbones become ``encoder`` checkpoints (for ``finetune.py --pretrained``), segmentors
``segmenter`` checkpoints (for the node, ``evaluate.py`` and ``gcross-bag eval``); both record the colour
range and voxel lattice Pointcept fed the model.

    python training/import_pointcept.py model_last.pth gaussiancross_backbone.safetensors
    python training/import_pointcept.py model_best.pth scannet20.safetensors --classes scannet20
    python training/import_pointcept.py pointgroup_best.pth insseg.safetensors --classes scannet20
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from gcross_core.cli import cli_main
from gcross_core.data.classes import read_class_names
from gcross_core.data.grid import CENTER_SHIFT, GRID_LATTICES
from gcross_core.errors import ConfigError
from gcross_core.model.encoder import SpUNetConfig
from gcross_core.model.features import COLOR_RANGES, RGB_MINUS1_1_NORMAL, InputConvention
from gcross_core.interop.pointcept import import_pointcept_checkpoint

logger = logging.getLogger("import_pointcept")


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Convert a Pointcept SpUNet-v1m1 checkpoint (.pth: pretrained backbone, DefaultSegmentor or "
                    "DefaultSegmentorV2 / linear probe, PointGroup) into a gcross checkpoint (.safetensors): an "
                    "encoder for finetune.py --pretrained, or a segmenter (with an instance head from "
                    "PointGroup) for the node, evaluate.py and gcross-bag eval. No pickled code runs "
                    "(optimizer/scheduler state is read as inert placeholders); any missing, unexpected or "
                    "mis-shaped backbone key stops the conversion. Keys outside the backbone and its heads "
                    "(pretraining decoders) are listed and not converted.")
    p.add_argument("src", type=Path, help="Pointcept checkpoint, e.g. model_last.pth / model_best.pth")
    p.add_argument("dst", type=Path, help="output .safetensors file")
    p.add_argument("--classes", default=None, metavar="SET|FILE",
                   help="class names of a segmentor's classifier, in its output order: scannet20, scannet200, "
                        "s3dis (the Pointcept dataset presets) or a text file with one name per line; required "
                        "for segmentors (Pointcept checkpoints do not store them), refused for backbones")
    p.add_argument("--input-features", choices=sorted(COLOR_RANGES), default=RGB_MINUS1_1_NORMAL,
                   help="colour range the model was trained on: rgb_minus1_1_normal (colour / 127.5 - 1; "
                        "Pointcept < 1.6 and the released GaussianCross weights, the default) or rgb01_normal "
                        "(colour / 255; Pointcept >= 1.6)")
    p.add_argument("--grid-lattice", choices=GRID_LATTICES, default=CENTER_SHIFT,
                   help="voxel lattice the model was trained on (default center_shift: Pointcept's CenterShift "
                        "before GridSample)")
    p.add_argument("--grid-size", type=float, default=0.02, metavar="M",
                   help="GridSample grid_size of the source config in metres (default 0.02, as in the ScanNet "
                        "and S3DIS configs)")
    p.add_argument("--backbone-only", action="store_true",
                   help="write a segmentor's backbone as an encoder checkpoint (its classifier is dropped), "
                        "e.g. to fine-tune it on another class set")
    p.add_argument("--stuff-classes", default=None, metavar="A,B",
                   help="PointGroup only: comma-separated classes that are never instanced (default: wall and "
                        "floor where the classes have them, as PointGroup on ScanNet; '' for none)")
    p.add_argument("--encoder-config", type=str, default=None, metavar="JSON",
                   help="SpUNet config to check against, e.g. '{\"in_channels\": 6}' (unset fields take "
                        "gcross defaults); default: inferred from the tensor shapes")
    p.add_argument("--allow-partial", action="store_true",
                   help="accept a checkpoint that lacks some encoder keys (they keep their fresh "
                        "initialisation); unexpected or mis-shaped keys still fail")
    p.add_argument("--prefix", default="encoder",
                   help="namespace of an encoder output's tensors (default 'encoder'; '' for none); segmenter "
                        "outputs always use 'encoder' and 'seg_head'")
    p.add_argument("-v", "--verbose", action="store_true", help="list every converted key")
    return p.parse_args(argv)


@cli_main("import_pointcept.py")
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = None
    if args.encoder_config:
        try:
            config = SpUNetConfig.from_dict(json.loads(args.encoder_config))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise ConfigError(f"--encoder-config: {e}") from e
    class_names = read_class_names(args.classes) if args.classes is not None else None
    convention = InputConvention(args.input_features, args.grid_lattice)
    report = import_pointcept_checkpoint(args.src, args.dst, config, args.allow_partial, args.prefix,
                                         class_names=class_names, convention=convention,
                                         grid_size_m=args.grid_size, backbone_only=args.backbone_only,
                                         stuff_classes=(None if args.stuff_classes is None else
                                                        [c for c in args.stuff_classes.split(",") if c]))
    logger.info("wrote %s: %s checkpoint from a Pointcept %s, %d encoder tensors, SpUNet %s", args.dst,
                report.kind, report.layout, len(report.converted), report.config.to_dict())
    if report.class_names:
        logger.info("classes (%d): %s", len(report.class_names), ", ".join(report.class_names))
    if report.layout == "PointGroup":
        logger.info("instance head from bias_head; classes never instanced: %s",
                    ", ".join(report.stuff_classes) or "none")
    logger.info("input convention recorded: input_features=%s, grid_lattice=%s, grid_size_m=%g",
                convention.input_features, convention.grid_lattice, args.grid_size)
    if report.missing:
        logger.warning("%d encoder key(s) missing and left at initialisation: %s", len(report.missing),
                       report.missing)
    if report.outside_backbone:
        logger.info("%d key(s) not converted: %s", len(report.outside_backbone), report.outside_backbone)
    if args.verbose:
        for k in report.converted:
            logger.info("  %s", k)
    return 0


if __name__ == "__main__":
    sys.exit(main())
