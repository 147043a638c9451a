"""Record the input convention (colour range, voxel lattice) in a gcross checkpoint that lacks it.

Every tool refuses a checkpoint whose metadata does not say how its encoder input was built
(``input_features``, ``grid_lattice``). Checkpoints written by gcross before those keys existed were all
trained on ``rgb01_normal`` and the ``min_corner`` lattice, the defaults here. The file is rewritten
atomically with the same tensors; a value it already records is only changed with ``--force``.

    python training/stamp_convention.py runs/old/segmenter.safetensors
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from gcross_core.checkpoint import read_header, stamp_header
from gcross_core.cli import cli_main
from gcross_core.data.grid import GRID_LATTICES, MIN_CORNER
from gcross_core.errors import CheckpointError
from gcross_core.model.features import COLOR_RANGES, RGB01_NORMAL, InputConvention

logger = logging.getLogger("stamp_convention")


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Write input_features / grid_lattice into a gcross checkpoint's "
                                            "metadata (same tensors, atomic rewrite).")
    p.add_argument("checkpoint", type=Path, help=".safetensors checkpoint to stamp in place")
    p.add_argument("--input-features", choices=sorted(COLOR_RANGES), default=RGB01_NORMAL,
                   help="colour range the model was trained on (default rgb01_normal: colour / 255)")
    p.add_argument("--grid-lattice", choices=GRID_LATTICES, default=MIN_CORNER,
                   help="voxel lattice the model was trained on (default min_corner)")
    p.add_argument("--force", action="store_true", help="replace values the checkpoint already records")
    return p.parse_args(argv)


@cli_main("stamp_convention.py")
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    wanted = InputConvention(args.input_features, args.grid_lattice).header_fields()
    header = read_header(args.checkpoint)
    clash = {k: getattr(header, k) for k, v in wanted.items() if getattr(header, k) not in (None, v)}
    if clash and not args.force:
        raise CheckpointError(f"checkpoint {args.checkpoint} already records {clash}; --force replaces it")
    stamp_header(args.checkpoint, **wanted)
    logger.info("stamped %s: %s", args.checkpoint, wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
