"""Labelled (or unlabelled) RGB-D frames -> scene folders with points, labels and instances.

    python training/prepare_frames.py --scenes DIR --out DIR [--classes table,object] \
        [--up cameras|plane|x,y,z] [--voxel-size 0.01] [--every 1] [--overwrite]

``--scenes`` is one scene or a folder of scenes (searched recursively; the relative paths are kept under
``--out``), each with frames in the SensReader layout (``<scene>/frames/color, depth, pose, intrinsic``)
and, for labels, ``frames/label/<i>.png`` (0 = unlabelled) plus optional ``frames/instance/<i>.png``
(0 = none). Label ids are mapped to classes by ``--classes`` (``table,object``: id 1 -> table, id 2 ->
object; ``3:table,7:object`` for other ids); an id not named there is an error. Without ``--classes``
the label images are ignored (unlabelled scenes for pretraining). ``--up``: how z is made up
(``gcross_core.data.gravity``): ``plane`` (the dominant plane, e.g. a table, faces the cameras),
``cameras`` (mean camera down over the sequence) or a given up vector in world coordinates.
Finished scenes are skipped unless ``--overwrite``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from gcross_core.cli import cli_main
from gcross_core.data.gravity import parse_up
from gcross_core.mapping.labelled_frames import (LabelledFramesConfig, parse_class_map,
                                              prepare_labelled_scenes)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", type=Path, required=True, help="a scene with frames/, or a folder of such scenes")
    ap.add_argument("--out", type=Path, required=True, help="output root for the scene folders")
    ap.add_argument("--classes", default=None,
                    help="class map of the label ids: 'table,object' (ids 1, 2, ...) or '3:table,7:object'; "
                         "omit to ignore label images")
    ap.add_argument("--up", default=LabelledFramesConfig.up, help="cameras | plane | x,y,z (default plane)")
    ap.add_argument("--voxel-size", type=float, default=LabelledFramesConfig.voxel_size_m,
                    help="fusion voxel in metres (default 0.01)")
    ap.add_argument("--every", type=int, default=1, help="fuse every k-th frame")
    ap.add_argument("--max-depth", type=float, default=LabelledFramesConfig.max_depth_m, help="metres")
    ap.add_argument("--only", nargs="*", default=None, help="only these scene folder names")
    ap.add_argument("--overwrite", action="store_true", help="redo scenes whose output folder exists")
    return ap.parse_args(argv)


@cli_main("prepare_frames.py")
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parse_up(args.up)  # bad values fail before any work
    class_map = parse_class_map(args.classes) if args.classes else None
    cfg = LabelledFramesConfig(voxel_size_m=args.voxel_size, every=args.every, up=args.up,
                               max_depth_m=args.max_depth)
    done = prepare_labelled_scenes(args.scenes, args.out, class_map, cfg, overwrite=args.overwrite,
                                   scenes=args.only)
    print(json.dumps({"written": len(done), "points": sum(d["points"] for d in done),
                      "labelled_points": sum(d["labelled_points"] for d in done)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
