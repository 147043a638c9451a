"""Write procedural rooms (``gcross_core.data.synthetic``) as scene folders with exact RGB-D frames.

    python training/make_synthetic.py --out data/synthetic --rooms 4 --views 8 --seed 0 --width 160 --height 120

Room ``k`` is ``make_room(seed + k)`` and goes to ``<out>/synthetic_<seed + k>``: coord, color, normal,
segment (SYNTHETIC_CLASSES, names in class_names.json), segment20 (the same labels as ScanNet20
indices), instance, and ``frames/`` in the SensReader layout (lossless PNG color, uint16 mm depth).
Existing rooms are kept unless ``--overwrite``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from gcross_core.cli import cli_main
from gcross_core.data.synthetic import RoomConfig, write_rooms
from gcross_core.errors import InputError


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    d = RoomConfig()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rooms", type=int, default=4)
    ap.add_argument("--views", type=int, default=d.num_views, help="RGB-D frames per room")
    ap.add_argument("--seed", type=int, default=0, help="room k uses seed + k")
    ap.add_argument("--width", type=int, default=d.width)
    ap.add_argument("--height", type=int, default=d.height)
    ap.add_argument("--points", type=int, default=d.num_points, help="surface points per room")
    ap.add_argument("--ceiling", action="store_true", help="close the rooms with a ceiling (label -1)")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args(argv)


@cli_main("make_synthetic.py")
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.rooms < 1 or args.views < 1:
        raise InputError(f"--rooms and --views must be >= 1, got {args.rooms} and {args.views}")
    cfg = RoomConfig(num_points=args.points, num_views=args.views, width=args.width, height=args.height,
                     ceiling=args.ceiling)
    write_rooms(args.out, args.rooms, args.seed, cfg, overwrite=args.overwrite, progress=not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
