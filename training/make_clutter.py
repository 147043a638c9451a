"""Write cluttered tabletop scenes composed from given labelled tabletop scenes (``gcross_core.data.clutter``):
a clutter test set, written once.

    python training/make_clutter.py --scenes data/mosd/test --out data/mosd_clutter --num-scenes 20 \\
        --objects 10 15 --seed 0

Each ``--scenes`` entry is a scene folder or a folder of scene folders (with coord.npy, segment.npy and
instance.npy, e.g. from prepare_frames.py). Composite k keeps scene k mod S (its table and its objects)
and sets objects of the other given scenes, and only those, on its table: touching each other (gaps of
0-1 cm) and some stacked, min..max objects in all. Written as ``<out>/clutter_<k>`` (points and labels, no
frames); prints a JSON summary. The same arguments write the same scenes.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from gcross_core.cli import cli_main
from gcross_core.data.clutter import ClutterConfig, write_clutter_scenes
from gcross_core.segmentation.dataset import list_scenes


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", type=Path, nargs="+", required=True,
                    help="scene folders, or folders of scene folders")
    ap.add_argument("--out", type=Path, required=True, help="output root for the composite scene folders")
    ap.add_argument("--num-scenes", type=int, default=20)
    ap.add_argument("--objects", type=int, nargs=2, default=(10, 15), metavar=("MIN", "MAX"),
                    help="objects per composite, the base scene's own included")
    ap.add_argument("--stacked-fraction", type=float, default=ClutterConfig.stacked_fraction,
                    help="share of the added objects tried on top of a larger one first")
    ap.add_argument("--lean-fraction", type=float, default=ClutterConfig.lean_fraction,
                    help="share of the other objects tilted 10-25 degrees towards a neighbour they touch (0: none)")
    ap.add_argument("--flat-fraction", type=float, default=ClutterConfig.flat_fraction,
                    help="share of the added objects squashed to 1.5-4 cm tall, like a book lying flat (0: none)")
    ap.add_argument("--label-file", default="segment", help="the label file: segment | segment20 | segment200")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true", help="replace composite folders that exist")
    return ap.parse_args(argv)


@cli_main("make_clutter.py")
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    scene_dirs = [p for root in args.scenes
                  for p in ([root] if (root / "coord.npy").is_file() else list_scenes(root))]
    done = write_clutter_scenes(scene_dirs, args.out, args.num_scenes, tuple(args.objects), args.seed,
                                label_file=args.label_file, stacked_fraction=args.stacked_fraction,
                                lean_fraction=args.lean_fraction, flat_fraction=args.flat_fraction,
                                overwrite=args.overwrite)
    print(json.dumps({"written": len(done), "from_scenes": len(scene_dirs),
                      "objects": sum(d["objects"] for d in done),
                      "touching_pairs": sum(len(d["touching_pairs"]) for d in done),
                      "stacked_pairs": sum(len(d["stacked_pairs"]) for d in done),
                      "leaning_pairs": sum(len(d.get("leaning_pairs", [])) for d in done),
                      "flattened": sum(len(d.get("flattened", [])) for d in done), "scenes": done}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
