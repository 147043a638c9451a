"""Convert a Pointcept SpUNet-v1m1 checkpoint (.pth) into a gcross encoder checkpoint (.safetensors).

Pointcept (and the released GaussianCross / PonderV2 / MSC weights built on it) saves
``{"state_dict": {...}, "epoch": ..., ...}`` with keys such as ``module.backbone.conv_input.0.weight``.
The conversion (``gcross_core.model.pointcept``) reads it without unpickling arbitrary objects
(``torch.load(weights_only=True)``), strips the ``module.`` / ``backbone.`` prefixes, infers the SpUNet
configuration from the tensor shapes (or checks the one given), and refuses to write anything if a key is
missing, unexpected or of the wrong shape.

    python training/import_pointcept.py model_best.pth encoder.safetensors
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gcross_core.cli import cli_main  # noqa: E402
from gcross_core.errors import ConfigError  # noqa: E402
from gcross_core.model.encoder import SpUNetConfig  # noqa: E402
from gcross_core.model.pointcept import POINTCEPT_INPUT_FEATURES, import_pointcept_checkpoint  # noqa: E402

logger = logging.getLogger("import_pointcept")


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Convert a Pointcept SpUNet-v1m1 checkpoint (.pth with 'state_dict', keys prefixed "
                    "'module.' and/or 'backbone.') into a gcross encoder checkpoint (.safetensors). "
                    "Loading never unpickles code (torch.load(weights_only=True)); any missing, unexpected "
                    "or mis-shaped backbone key stops the conversion. Keys outside 'backbone.' (heads of "
                    "the pretraining or segmentation model) are listed and not converted.")
    p.add_argument("src", type=Path, help="Pointcept checkpoint, e.g. model_best.pth")
    p.add_argument("dst", type=Path, help="output .safetensors file")
    p.add_argument("--encoder-config", type=str, default=None, metavar="JSON",
                   help="SpUNet config to check against, e.g. '{\"in_channels\": 6}' (unset fields take "
                        "gcross defaults); default: inferred from the tensor shapes")
    p.add_argument("--allow-partial", action="store_true",
                   help="accept a checkpoint that lacks some encoder keys (they keep their fresh "
                        "initialisation); unexpected or mis-shaped keys still fail")
    p.add_argument("--prefix", default="encoder",
                   help="namespace of the tensors in the output (default 'encoder', as in GaussianCross; "
                        "'' for none)")
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
    report = import_pointcept_checkpoint(args.src, args.dst, config, args.allow_partial, args.prefix)
    logger.info("wrote %s: %d tensors, SpUNet %s", args.dst, len(report.converted), report.config.to_dict())
    logger.info("note: Pointcept-trained encoders expect colour / 127.5 - 1 in [-1, 1] (metadata "
                "input_features=%s), gcross feeds RGB in 0..1", POINTCEPT_INPUT_FEATURES)
    if report.missing:
        logger.warning("%d encoder key(s) missing and left at initialisation: %s", len(report.missing),
                       report.missing)
    if report.outside_backbone:
        logger.info("%d key(s) outside 'backbone.' not converted: %s", len(report.outside_backbone),
                    report.outside_backbone)
    if args.verbose:
        for k in report.converted:
            logger.info("  %s", k)
    return 0


if __name__ == "__main__":
    sys.exit(main())
