"""Class lists and label maps of the ScanNet benchmarks, S3DIS and the synthetic rooms.

ScanNet annotates each object with a free-text raw category; ``scannetv2-labels.combined.tsv`` maps every
raw category to an NYU40 id (column ``nyu40id``) and to a ScanNet label id (column ``id``).

- ScanNet20 (the 20-class benchmark) keeps 20 NYU40 ids, in the order Pointcept trains and reports them.
- ScanNet200 keeps 200 ScanNet label ids (the ``id`` column, 1..1191, *not* NYU40 ids; the two id spaces
  overlap numerically and must never be mixed).

Everything else maps to -1 (ignored by losses and metrics).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import numpy as np

from gcross_core.errors import InputError, reading

IGNORE_INDEX = -1

# (NYU40 id, name) in Pointcept's ScanNet20 order; name spelling follows the ScanNet benchmark except for
# Pointcept's "refridgerator", which is spelled correctly here.
_SCANNET20 = (
    (1, "wall"), (2, "floor"), (3, "cabinet"), (4, "bed"), (5, "chair"), (6, "sofa"), (7, "table"),
    (8, "door"), (9, "window"), (10, "bookshelf"), (11, "picture"), (12, "counter"), (14, "desk"),
    (16, "curtain"), (24, "refrigerator"), (28, "shower curtain"), (33, "toilet"), (34, "sink"),
    (36, "bathtub"), (39, "otherfurniture"),
)
SCANNET20_CLASSES: Tuple[str, ...] = tuple(name for _, name in _SCANNET20)
SCANNET20_NYU40_IDS: Tuple[int, ...] = tuple(i for i, _ in _SCANNET20)

# The ScanNet200 benchmark: class names and their ScanNet label ids (tsv column ``id``), index-aligned.
SCANNET200_CLASSES: Tuple[str, ...] = (
    "wall", "chair", "floor", "table", "door", "couch", "cabinet", "shelf", "desk", "office chair",
    "bed", "pillow", "sink", "picture", "window", "toilet", "bookshelf", "monitor", "curtain", "book",
    "armchair", "coffee table", "box", "refrigerator", "lamp", "kitchen cabinet", "towel", "clothes", "tv",
    "nightstand", "counter", "dresser", "stool", "cushion", "plant", "ceiling", "bathtub", "end table",
    "dining table", "keyboard", "bag", "backpack", "toilet paper", "printer", "tv stand", "whiteboard",
    "blanket", "shower curtain", "trash can", "closet", "stairs", "microwave", "stove", "shoe",
    "computer tower", "bottle", "bin", "ottoman", "bench", "board", "washing machine", "mirror", "copier",
    "basket", "sofa chair", "file cabinet", "fan", "laptop", "shower", "paper", "person",
    "paper towel dispenser", "oven", "blinds", "rack", "plate", "blackboard", "piano", "suitcase", "rail",
    "radiator", "recycling bin", "container", "wardrobe", "soap dispenser", "telephone", "bucket", "clock",
    "stand", "light", "laundry basket", "pipe", "clothes dryer", "guitar", "toilet paper holder", "seat",
    "speaker", "column", "bicycle", "ladder", "bathroom stall", "shower wall", "cup", "jacket",
    "storage bin", "coffee maker", "dishwasher", "paper towel roll", "machine", "mat", "windowsill", "bar",
    "toaster", "bulletin board", "ironing board", "fireplace", "soap dish", "kitchen counter", "doorframe",
    "toilet paper dispenser", "mini fridge", "fire extinguisher", "ball", "hat", "shower curtain rod",
    "water cooler", "paper cutter", "tray", "shower door", "pillar", "ledge", "toaster oven", "mouse",
    "toilet seat cover dispenser", "furniture", "cart", "storage container", "scale", "tissue box",
    "light switch", "crate", "power outlet", "decoration", "sign", "projector", "closet door",
    "vacuum cleaner", "candle", "plunger", "stuffed animal", "headphones", "dish rack", "broom",
    "guitar case", "range hood", "dustpan", "hair dryer", "water bottle", "handicap bar", "purse", "vent",
    "shower floor", "water pitcher", "mailbox", "bowl", "paper bag", "alarm clock", "music stand",
    "projector screen", "divider", "laundry detergent", "bathroom counter", "object", "bathroom vanity",
    "closet wall", "laundry hamper", "bathroom stall door", "ceiling light", "trash bin", "dumbbell",
    "stair rail", "tube", "bathroom cabinet", "cd case", "closet rod", "coffee kettle", "structure",
    "shower head", "keyboard piano", "case of water bottles", "coat rack", "storage organizer",
    "folded chair", "fire alarm", "power strip", "calendar", "poster", "potted plant", "luggage", "mattress",
)
SCANNET200_IDS: Tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 21, 22, 23, 24, 26, 27, 28, 29, 31, 32,
    33, 34, 35, 36, 38, 39, 40, 41, 42, 44, 45, 46, 47, 48, 49, 50, 51, 52, 54, 55, 56, 57, 58, 59, 62, 63,
    64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 82, 84, 86, 87, 88, 89, 90, 93, 95,
    96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 110, 112, 115, 116, 118, 120, 121, 122, 125,
    128, 130, 131, 132, 134, 136, 138, 139, 140, 141, 145, 148, 154, 155, 156, 157, 159, 161, 163, 165, 166,
    168, 169, 170, 177, 180, 185, 188, 191, 193, 195, 202, 208, 213, 214, 221, 229, 230, 232, 233, 242, 250,
    261, 264, 276, 283, 286, 300, 304, 312, 323, 325, 331, 342, 356, 370, 392, 395, 399, 408, 417, 488, 540,
    562, 570, 572, 581, 609, 748, 776, 1156, 1163, 1164, 1165, 1166, 1167, 1168, 1169, 1170, 1171, 1172,
    1173, 1174, 1175, 1176, 1178, 1179, 1180, 1181, 1182, 1183, 1184, 1185, 1186, 1187, 1188, 1189, 1190,
    1191,
)

# Synthetic rooms use a subset of the ScanNet20 names, so a model fine-tuned on them speaks the same
# vocabulary; SYNTHETIC_TO_SCANNET20 gives each synthetic index its ScanNet20 index.
SYNTHETIC_CLASSES: Tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "desk",
)
SYNTHETIC_TO_SCANNET20: Tuple[int, ...] = tuple(SCANNET20_CLASSES.index(n) for n in SYNTHETIC_CLASSES)

# S3DIS (Stanford Large-Scale 3D Indoor Spaces): the 13 classes in Pointcept's order (segment.npy ids 0..12)
S3DIS_CLASSES: Tuple[str, ...] = (
    "ceiling", "floor", "wall", "beam", "column", "window", "door", "table", "chair", "sofa", "bookcase",
    "board", "clutter",
)
# Real tabletop frames (mOSD-style labels: 1 = table, 2 = object on it).
TABLETOP_CLASSES: Tuple[str, ...] = ("table", "object")

# Names the class lists go by on the command line and in scene folders.
CLASS_SETS: Dict[str, Tuple[str, ...]] = {
    "scannet20": SCANNET20_CLASSES,
    "scannet200": SCANNET200_CLASSES,
    "synthetic": SYNTHETIC_CLASSES,
    "s3dis": S3DIS_CLASSES,
    "tabletop": TABLETOP_CLASSES,
}


def lookup_table(ids: Tuple[int, ...], size: int) -> np.ndarray:
    """[size] int64 array mapping a raw id to its position in ``ids`` (IGNORE_INDEX elsewhere)."""
    table = np.full(size, IGNORE_INDEX, dtype=np.int64)
    table[np.asarray(ids)] = np.arange(len(ids))
    return table


def map_ids(raw: np.ndarray, ids: Tuple[int, ...]) -> np.ndarray:
    """Raw ids [N] (NYU40 or ScanNet label ids, any int dtype, <= 0 = unlabelled) -> class index [N] int64."""
    raw = np.asarray(raw).astype(np.int64)
    table = lookup_table(ids, max(int(raw.max(initial=0)), max(ids)) + 1)
    return np.where(raw >= 0, table[np.clip(raw, 0, None)], IGNORE_INDEX)


def nyu40_to_scannet20(nyu40: np.ndarray) -> np.ndarray:
    """NYU40 ids [N] -> ScanNet20 class index [N] (-1 for the other 20 NYU40 classes and for 0)."""
    return map_ids(nyu40, SCANNET20_NYU40_IDS)


def scannet_id_to_scannet200(label_id: np.ndarray) -> np.ndarray:
    """ScanNet label ids (tsv ``id`` column) [N] -> ScanNet200 class index [N] (-1 outside the 200)."""
    return map_ids(label_id, SCANNET200_IDS)


def class_names_for(name_or_names) -> Tuple[str, ...]:
    """A class list by set name (``scannet20``, ``scannet200``, ``s3dis``, ``synthetic``) or a sequence of names."""
    if isinstance(name_or_names, str):
        if name_or_names not in CLASS_SETS:
            raise InputError(f"unknown class set {name_or_names!r}: expected one of {sorted(CLASS_SETS)}")
        return CLASS_SETS[name_or_names]
    names = tuple(str(n) for n in name_or_names)
    if not names or len(set(names)) != len(names):
        raise InputError(f"class names must be non-empty and unique, got {names}")
    return names


def read_class_names(spec: str) -> Tuple[str, ...]:
    """A class list from the command line: a set name (``scannet20``, ``scannet200``, ``s3dis``,
    ``synthetic``) or a text file with one class name per line, in the classifier's order."""
    if spec in CLASS_SETS:
        return CLASS_SETS[spec]
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"classes {spec!r} is neither a class set {sorted(CLASS_SETS)} nor a file of class names")
    with reading(path, "a text file of class names, one a line"):
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    try:
        return class_names_for(names)
    except InputError as e:
        raise InputError(f"class file {path}: {e}") from e
