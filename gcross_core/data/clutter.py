"""Cluttered tabletops composed from labelled tabletop scenes: objects cut out of donor scenes by instance
id and set down on a base scene's table, touching each other and stacked, for instance segmentation to
learn from clutter (and to be tested on it).

:func:`compose_clutter` keeps the base scene (its table and its own objects) and adds donor objects until
the composite holds ``num_objects`` objects in all (the base's own count too). Every object

- turns by a random angle about z and drops until its lowest point rests on the table top (a high
  percentile of the table points' z) or, when stacked, on the highest points of the object beneath it;
- covers a footprint on a 2D occupancy grid (``cell_m``, 5 mm): footprints of objects on the table share
  no cell, lie over the table (its points, the grid closed over the gaps between them, not its bounding
  box), and a *touching* object lies within ``touch_gap_m`` (1 cm) of the one it was placed against;
- when *stacked*, lies wholly inside the footprint of a larger object (smaller on larger, one object on
  top of each) and rests on the lower one's points inside its own footprint, cell by cell.

With ``lean_fraction`` some objects lean: tilted towards a neighbour and set against it from the other
side (footprints still share no cell, so a leaning object never passes through its neighbour). With
``flat_fraction`` some objects are flattened: squashed along z to ``flat_height_m`` (a book or DVD case
lying flat is a few centimetres tall; the tabletop frames hold few such objects to learn from), their
top faces' colours kept and their normals turned as the squash turns the surfaces.

Table points under the footprint of an object set on the table are removed (``drop_hidden_table``): a
camera looking down would not see them, and real scenes have none there. Every object gets a fresh
instance id: the base's instances (its table's too, where the table has one, as prepared mOSD frames do)
are renumbered 0.., donor objects follow in placement order. Objects are cut out of single views: turned,
their unseen sides may face where a camera would be.
Everything random is drawn from the caller's generator: one seed, one composite.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from gcross_core.data.scene import PathLike, Scene, load_scene, write_scene
from gcross_core.errors import ConfigError, InputError

TABLE_CLASS_NAME = "table"
_TOUCH_TRIES = 5  # anchors and directions tried before an object goes anywhere free on the table


@dataclass(frozen=True)
class ClutterConfig:
    """``data.clutter`` of a segmentation run: training samples composed on the fly (off by default)."""

    enabled: bool = False
    objects: Tuple[int, int] = (8, 15)  # objects per composite, the base scene's own included
    stacked_fraction: float = 0.3  # share of the placed objects that try to go on top of another first
    probability: float = 1.0  # share of the training samples that are composites (the rest: the scene as is)
    lean_fraction: float = 0.0  # share of the placed objects tilted towards a neighbour they touch (leaning)
    flat_fraction: float = 0.0  # share of the placed objects squashed to 1.5-4 cm tall (flat objects)

    def __post_init__(self) -> None:
        lo, hi = self.objects
        if not 1 <= lo <= hi:
            raise ConfigError(f"clutter.objects {self.objects} must satisfy 1 <= min <= max")
        for name in ("stacked_fraction", "probability", "lean_fraction", "flat_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"clutter.{name} must lie in [0, 1], got {getattr(self, name)}")


@dataclass
class ClutterSummary:
    objects: int  # objects in the composite, the base scene's own included
    base_objects: int
    placed: int  # donor objects placed
    touching_pairs: List[Tuple[int, int]]  # instance ids (smaller first) whose footprints lie within touch_gap_m
    stacked_pairs: List[Tuple[int, int]]  # (lower, upper) instance ids
    table_z_m: float  # the table top the objects on it rest on
    cell_m: float
    grid_origin_xy: Tuple[float, float]  # footprint cell (i, j) spans origin + [i, i+1) * cell_m in x, y
    donors: Dict[int, str] = field(default_factory=dict)  # instance id -> donor scene name
    leaning_pairs: List[Tuple[int, int]] = field(default_factory=list)  # (leaning object, the one it leans to)
    flattened: List[int] = field(default_factory=list)  # instance ids of the objects squashed flat

    def to_dict(self) -> dict:
        out = {"objects": self.objects, "base_objects": self.base_objects, "placed": self.placed,
               "touching_pairs": [list(p) for p in self.touching_pairs],
               "stacked_pairs": [list(p) for p in self.stacked_pairs], "table_z_m": self.table_z_m}
        if self.leaning_pairs:
            out["leaning_pairs"] = [list(p) for p in self.leaning_pairs]
        if self.flattened:
            out["flattened"] = list(self.flattened)
        return out


@dataclass
class ClutterScene:
    """A composite in the scene folder's dtypes."""

    coord: np.ndarray  # [N, 3] float32 metres, z up
    color: np.ndarray  # [N, 3] uint8
    normal: np.ndarray  # [N, 3] float32
    segment: np.ndarray  # [N] int32 class index, -1 = unlabelled
    instance: np.ndarray  # [N] int32 instance id, -1 = none
    summary: ClutterSummary

    def as_scene(self, name: str, class_names: Optional[Sequence[str]] = None) -> Scene:
        return Scene(name, self.coord, self.color, self.normal, self.segment, self.instance,
                     class_names=tuple(class_names) if class_names is not None else None)


@dataclass
class _Piece:
    """One object cut out of a scene: points centred on its xy mean, lowest point at z = 0."""

    source: str
    coord: np.ndarray  # [M, 3] float64
    color: np.ndarray  # [M, 3]
    normal: np.ndarray  # [M, 3]
    segment: np.ndarray  # [M]


@dataclass
class _Placed:
    instance: int
    cells: np.ndarray  # [K, 2] int footprint cells
    top: Dict[Tuple[int, int], float]  # highest point z per footprint cell
    xy: np.ndarray  # [M, 2] its points' x, y (metres)
    level: int  # 0 = on the table
    below: Optional[int] = None  # instance id it rests on
    above: Optional[int] = None  # instance id resting on it


def table_class_of(class_names: Optional[Sequence[str]], default: int = 0) -> int:
    """Index of the class named ``table`` (``default`` when no names are known)."""
    if class_names is None:
        return default
    if TABLE_CLASS_NAME not in class_names:
        raise InputError(f"classes {list(class_names)[:6]} have no {TABLE_CLASS_NAME!r}: clutter needs a table")
    return list(class_names).index(TABLE_CLASS_NAME)


def object_ids(scene: Scene, table_class: int, min_points: int = 1) -> List[int]:
    """Instance ids of the scene's objects: instances whose points are mostly not table, with
    ``min_points`` points or more, in increasing order."""
    if scene.instance is None or scene.segment is None:
        return []
    inst = np.asarray(scene.instance)
    ids, counts = np.unique(inst[inst >= 0], return_counts=True)
    table = np.bincount(inst[(inst >= 0) & (np.asarray(scene.segment) == table_class)],
                        minlength=int(ids.max()) + 1 if len(ids) else 0)
    return [int(i) for i, c in zip(ids, counts) if c >= min_points and table[i] * 2 < c]


def _cut(scene: Scene, instance_id: int) -> _Piece:
    m = np.asarray(scene.instance) == instance_id
    coord = np.asarray(scene.coord, dtype=np.float64)[m]
    coord = coord - np.array([*coord[:, :2].mean(0), coord[:, 2].min()])
    return _Piece(scene.name, coord, np.asarray(scene.color)[m], np.asarray(scene.normal)[m],
                  np.asarray(scene.segment)[m])


def _rotate_z(a: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    out = a.copy()
    out[:, 0], out[:, 1] = c * a[:, 0] - s * a[:, 1], s * a[:, 0] + c * a[:, 1]
    return out


def _tilt(a: np.ndarray, angle: float, towards: np.ndarray) -> np.ndarray:
    """``a`` turned by ``angle`` about the horizontal axis perpendicular to the unit xy vector ``towards``,
    so that a point at height z moves z sin(angle) along ``towards`` (Rodrigues' formula)."""
    k = np.array([-towards[1], towards[0], 0.0])
    c, s = math.cos(angle), math.sin(angle)
    return a * c + np.cross(k, a) * s + np.outer(a @ k, k) * (1.0 - c)


def _flatten(local: np.ndarray, normal: np.ndarray, height: float) -> Tuple[np.ndarray, np.ndarray]:
    """A piece (lowest point at z 0) squashed along z to ``height``; unchanged where it is not taller. A
    surface scaled by s along z has its normals scaled by 1/s along z (the inverse transpose), normalised;
    zero normals stay zero."""
    top = float(local[:, 2].max())
    if top <= height:
        return local, normal
    s = height / top
    local = local.copy()
    local[:, 2] *= s
    n = normal * np.array([1.0, 1.0, 1.0 / s])
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return local, np.where(length > 0, n / np.maximum(length, 1e-12), 0.0)


class _Table:
    """The base scene's table on the footprint grid: which cells are table, which object owns a cell."""

    def __init__(self, table_xy: np.ndarray, cell_m: float, margin_m: float, close_m: float):
        self.cell_m = cell_m
        self.origin = table_xy.min(0) - margin_m
        cells = self.cells_of(table_xy)
        shape = tuple(int(v) for v in cells.max(0) + 1 + math.ceil(margin_m / cell_m))
        mask = np.zeros(shape, bool)
        mask[cells[:, 0], cells[:, 1]] = True
        # the table's points are ~1 cm apart: close the gaps between them, keep the outline
        r = max(1, math.ceil(close_m / cell_m))
        self.mask = ndimage.binary_closing(mask, structure=np.ones((2 * r + 1, 2 * r + 1), bool), border_value=0)
        self.owner = np.full(shape, -1, np.int64)

    def cells_of(self, xy: np.ndarray) -> np.ndarray:  # [M, 2] metres -> [M, 2] int64 cells
        return np.floor((xy - self.origin) / self.cell_m).astype(np.int64)

    def inside(self, cells: np.ndarray) -> bool:
        return bool(np.all((cells >= 0) & (cells < np.array(self.mask.shape))))

    def on_table_and_free(self, cells: np.ndarray) -> bool:
        return self.inside(cells) and bool(self.mask[cells[:, 0], cells[:, 1]].all()) \
            and bool((self.owner[cells[:, 0], cells[:, 1]] < 0).all())

    def neighbours(self, cells: np.ndarray, reach: int) -> List[int]:
        """Owners of cells within ``reach`` cells (Chebyshev) of ``cells``."""
        found = set()
        for dx in range(-reach, reach + 1):
            for dy in range(-reach, reach + 1):
                c = cells + (dx, dy)
                c = c[np.all((c >= 0) & (c < np.array(self.owner.shape)), axis=1)]
                found.update(int(o) for o in np.unique(self.owner[c[:, 0], c[:, 1]]) if o >= 0)
        return sorted(found)


def _closed(cells: np.ndarray, close_cells: int = 2) -> np.ndarray:
    """Footprint of points in ``cells`` ([M, 2], one row per point): their cells with the gaps between
    points (~1 cm apart in a fused scene) and holes closed; [K, 2] unique cells."""
    lo = cells.min(0) - close_cells
    size = cells.max(0) - lo + close_cells + 1
    mask = np.zeros(tuple(int(v) for v in size), bool)
    mask[cells[:, 0] - lo[0], cells[:, 1] - lo[1]] = True
    r = close_cells
    disk = np.add.outer(np.arange(-r, r + 1) ** 2, np.arange(-r, r + 1) ** 2) <= r * r
    mask = ndimage.binary_fill_holes(ndimage.binary_closing(mask, structure=disk) | mask)
    return np.argwhere(mask) + lo


def _tops(cells: np.ndarray, z: np.ndarray) -> Dict[Tuple[int, int], float]:
    """Highest z per cell of points in ``cells`` ([M, 2], one row per point)."""
    uniq, inv = np.unique(cells, axis=0, return_inverse=True)
    top = np.full(len(uniq), -np.inf)
    np.maximum.at(top, inv.reshape(-1), z)
    return {(int(a), int(b)): float(t) for (a, b), t in zip(uniq, top)}


def _keys(cells: np.ndarray) -> np.ndarray:
    return cells[:, 0] * (1 << 32) + cells[:, 1]


@dataclass
class _Spot:
    offset: np.ndarray  # [2] int cells
    below: Optional[int] = None  # instance id it rests on (None: the table)
    dz_m: float = 0.0  # lift above the table top (stacked)
    anchor: Optional[int] = None  # instance id of the object it was set against (touching)


def _stack_spot(fp: np.ndarray, point_cells: np.ndarray, z: np.ndarray, placed: Dict[int, _Placed],
                table_z: float, rng: np.random.Generator) -> Optional[_Spot]:
    """On top of a larger object with nothing on it yet, wholly inside its footprint, resting on its
    highest points under the new object's (cell by cell, a cell's neighbours included)."""
    lowers = [p for p in placed.values() if p.above is None and len(p.cells) > len(fp)]
    if not lowers:
        return None
    lower = lowers[int(rng.integers(len(lowers)))]
    inside = set(_keys(lower.cells).tolist())
    centre = lower.cells.mean(0) - fp.mean(0)
    spread = np.maximum(1, (np.ptp(lower.cells, 0) - np.ptp(fp, 0)) // 4)
    bottoms = {k: -v for k, v in _tops(point_cells, -z).items()}
    for _ in range(6):
        offset = np.round(centre + rng.integers(-spread, spread + 1)).astype(np.int64)
        if not all(k in inside for k in _keys(fp + offset).tolist()):
            continue
        lift = -np.inf
        for (i, j), bottom in bottoms.items():
            a, b = i + int(offset[0]), j + int(offset[1])
            near = [lower.top[(a + di, b + dj)] for di in (-1, 0, 1) for dj in (-1, 0, 1)
                    if (a + di, b + dj) in lower.top]
            if near:
                lift = max(lift, max(near) - table_z - bottom)
        if np.isfinite(lift):
            return _Spot(offset, lower.instance, float(max(lift, 0.0)))
    return None


def _gap_m(a_xy: np.ndarray, b_xy: np.ndarray) -> float:
    """Smallest xy distance between two point sets."""
    return float(cKDTree(a_xy).query(b_xy, k=1)[0].min())


def _touch_spot(fp: np.ndarray, local_xy: np.ndarray, table: _Table, placed: Dict[int, _Placed], reach: int,
                touch_gap_m: float, rng: np.random.Generator,
                direction: Optional[np.ndarray] = None) -> Optional[_Spot]:
    """Next to an object on the table: slid out from its centre along a random direction (or
    ``direction``) to the first position clear of it, then up to ``reach`` - 1 cells further; the points'
    gap must be <= touch_gap_m. The spot's ``below`` stays None; ``_Spot.anchor`` names the object touched."""
    anchors = [p for p in placed.values() if p.level == 0]
    if not anchors:
        return None
    anchor = anchors[int(rng.integers(len(anchors)))]
    if direction is None:
        angle = rng.uniform(-math.pi, math.pi)
        direction = np.array([math.cos(angle), math.sin(angle)])
    start = anchor.cells.mean(0) - fp.mean(0)
    limit = int(np.ptp(anchor.cells, 0).max() + np.ptp(fp, 0).max()) + 2
    for step in range(limit + 1):
        offset = np.round(start + step * direction).astype(np.int64)
        cand = fp + offset
        if not table.inside(cand):
            return None
        if (table.owner[cand[:, 0], cand[:, 1]] == anchor.instance).any():
            continue
        gap = int(rng.integers(reach))
        for extra in (gap, 0) if gap else (0,):
            offset = np.round(start + (step + extra) * direction).astype(np.int64)
            cand = fp + offset
            if table.on_table_and_free(cand) and anchor.instance in table.neighbours(cand, reach) \
                    and _gap_m(anchor.xy, local_xy + table.origin + offset * table.cell_m) <= touch_gap_m:
                return _Spot(offset, anchor=anchor.instance)
        return None
    return None


def _free_spot(fp: np.ndarray, table: _Table, rng: np.random.Generator) -> Optional[_Spot]:
    """Anywhere on the table where the footprint is free."""
    cells = np.argwhere(table.mask & (table.owner < 0))
    if not len(cells):
        return None
    offset = np.round(cells[int(rng.integers(len(cells)))] - fp.mean(0)).astype(np.int64)
    return _Spot(offset) if table.on_table_and_free(fp + offset) else None


def compose_clutter(base: Scene, donors: Sequence[Scene], rng: np.random.Generator,
                    num_objects: Tuple[int, int] = (8, 15), *, stacked_fraction: float = 0.3,
                    touch_fraction: float = 0.85, table_class: Optional[int] = None, cell_m: float = 0.005,
                    touch_gap_m: float = 0.01, table_percentile: float = 95.0, min_object_points: int = 20,
                    drop_hidden_table: bool = True, attempts_per_object: int = 30,
                    lean_fraction: float = 0.0, lean_deg: Tuple[float, float] = (10.0, 25.0),
                    flat_fraction: float = 0.0, flat_height_m: Tuple[float, float] = (0.015, 0.04)) -> ClutterScene:
    """A cluttered composite of ``base`` with objects of ``donors`` (module docstring).

    num_objects: the composite's object count is drawn uniformly from this range (base objects included);
    fewer come out only when the table has no room for more (``summary.objects`` says how many).
    stacked_fraction: share of the placed objects tried on top of a larger one first; touch_fraction:
    share of the rest set against an object already on the table (the others anywhere free on it).
    table_class: the table's class index (None: the class named ``table`` in ``base.class_names``, else 0).
    lean_fraction: share of the objects not tried for stacking that lean: tilted by ``lean_deg`` (uniform,
    degrees) towards an object on the table and slid against it from the opposite side, so that the side
    that tilts over meets it; one that finds no such spot is not placed in that attempt. At 0 (default)
    no random number is drawn for it, so composites made before leaning existed come out unchanged.
    flat_fraction: share of the placed objects taller than ``flat_height_m`` squashed along z to a height
    drawn from it (uniform, metres); normals follow the squash (scaled by its inverse along z, then
    normalised). At 0 (default) no random number is drawn for it either.
    Donors are indexed only where drawn, so a lazily loading sequence loads only the scenes used.
    """
    lo, hi = num_objects
    if not 1 <= lo <= hi:
        raise ValueError(f"num_objects {num_objects} must satisfy 1 <= min <= max")
    if base.coord is None or base.segment is None or base.instance is None:
        raise InputError(f"scene {base.name!r}: clutter needs points with segment and instance labels")
    if table_class is None:
        table_class = table_class_of(base.class_names)
    coord = np.asarray(base.coord, dtype=np.float64)
    segment = np.asarray(base.segment, dtype=np.int64)
    is_table = segment == table_class
    if is_table.sum() < 3:
        raise InputError(f"scene {base.name!r} has no table points (class {table_class})")
    table_z = float(np.percentile(coord[is_table, 2], table_percentile))
    # The grid reaches 0.3 m beyond the table's points (more than half a tabletop object) so that a
    # footprint near the edge is tested cell by cell, never clipped.
    table = _Table(coord[is_table, :2], cell_m, margin_m=0.3, close_m=0.015)
    reach = max(1, int(round(touch_gap_m / cell_m)))

    # the base's own instances, renumbered 0..
    inst_in = np.asarray(base.instance, dtype=np.int64)
    old_ids = np.unique(inst_in[inst_in >= 0])
    instance = np.full(len(inst_in), -1, np.int64)
    instance[inst_in >= 0] = np.searchsorted(old_ids, inst_in[inst_in >= 0])
    first_new = len(old_ids)
    placed: Dict[int, _Placed] = {}
    for old in object_ids(base, table_class):
        new = int(np.searchsorted(old_ids, old))
        m = instance == new
        point_cells = table.cells_of(coord[m, :2])
        fp = _closed(point_cells)
        fp = fp[np.all((fp >= 0) & (fp < np.array(table.owner.shape)), axis=1)]
        table.owner[fp[:, 0], fp[:, 1]] = new
        placed[new] = _Placed(new, fp, _tops(point_cells, coord[m, 2]), coord[m, :2], level=0)
    base_objects = len(placed)

    target = int(rng.integers(lo, hi + 1))
    cut: Dict[int, List[_Piece]] = {}
    pieces: List[Tuple[int, _Piece, np.ndarray, np.ndarray]] = []  # (instance id, piece, coord, normal)
    touching: set = set()
    stacked: List[Tuple[int, int]] = []
    leaning: List[Tuple[int, int]] = []
    flattened: List[int] = []
    donors_of: Dict[int, str] = {}
    failures, budget = 0, attempts_per_object * max(1, target - base_objects)
    while len(placed) < target and len(donors) and failures < budget:
        d = int(rng.integers(len(donors)))
        if d not in cut:
            donor = donors[d]
            cut[d] = [_cut(donor, i) for i in object_ids(donor, table_of(donor, table_class), min_object_points)]
        if not cut[d]:
            failures += 1
            continue
        piece = cut[d][int(rng.integers(len(cut[d])))]
        angle = float(rng.uniform(-math.pi, math.pi))
        local = _rotate_z(piece.coord, angle)
        local_cells = table.cells_of(local[:, :2] + table.origin)
        fp = _closed(local_cells)
        spot = None
        normal = _rotate_z(piece.normal.astype(np.float64), angle)
        flat = flat_fraction > 0 and rng.random() < flat_fraction
        if flat:
            local, normal = _flatten(local, normal, float(rng.uniform(*flat_height_m)))
        if rng.random() < stacked_fraction:
            spot = _stack_spot(fp, local_cells, local[:, 2], placed, table_z, rng)
        lean = spot is None and lean_fraction > 0 and rng.random() < lean_fraction
        if lean:
            heading = float(rng.uniform(-math.pi, math.pi))
            towards = np.array([math.cos(heading), math.sin(heading)])
            tilt = math.radians(float(rng.uniform(*lean_deg)))
            local = _tilt(local, tilt, towards)
            local -= np.array([*local[:, :2].mean(0), local[:, 2].min()])
            normal = _tilt(normal, tilt, towards)
            local_cells = table.cells_of(local[:, :2] + table.origin)
            fp = _closed(local_cells)
            for _ in range(_TOUCH_TRIES):  # slid out along -towards: the top leans back over the anchor
                spot = _touch_spot(fp, local[:, :2], table, placed, reach, touch_gap_m, rng, -towards)
                if spot is not None:
                    break
            if spot is None:
                failures += 1
                continue
        if spot is None and rng.random() < touch_fraction:
            for _ in range(_TOUCH_TRIES):
                spot = _touch_spot(fp, local[:, :2], table, placed, reach, touch_gap_m, rng)
                if spot is not None:
                    break
        if spot is None:
            spot = _free_spot(fp, table, rng)
        if spot is None:
            failures += 1
            continue
        world = local + np.array([*(table.origin + spot.offset * cell_m), table_z + spot.dz_m])
        point_cells = table.cells_of(world[:, :2])
        cells = np.unique(np.concatenate([fp + spot.offset, point_cells]), axis=0)
        if spot.below is None:
            if not table.on_table_and_free(cells):  # a point rounded into a cell next to the footprint
                failures += 1
                continue
        elif not np.isin(_keys(cells), _keys(placed[spot.below].cells)).all():
            failures += 1
            continue
        new = first_new + len(pieces)
        level = 0 if spot.below is None else placed[spot.below].level + 1
        if spot.below is None:
            for other in table.neighbours(cells, reach):
                if _gap_m(placed[other].xy, world[:, :2]) <= touch_gap_m:
                    touching.add((other, new))
            table.owner[cells[:, 0], cells[:, 1]] = new
        else:
            placed[spot.below].above = new
            stacked.append((spot.below, new))
        placed[new] = _Placed(new, cells, _tops(point_cells, world[:, 2]), world[:, :2], level, below=spot.below)
        donors_of[new] = piece.source
        if lean:
            leaning.append((new, spot.anchor))
        if flat:
            flattened.append(new)
        pieces.append((new, piece, world, normal))

    # base points, less the table points under objects set on the table; then the objects in placement order
    keep = np.ones(len(coord), bool)
    if drop_hidden_table and pieces:
        cells = table.cells_of(coord[:, :2])
        ok = np.flatnonzero(is_table & np.all((cells >= 0) & (cells < np.array(table.owner.shape)), axis=1))
        keep[ok[table.owner[cells[ok, 0], cells[ok, 1]] >= first_new]] = False
    coords, colors, normals = [coord[keep]], [np.asarray(base.color)[keep]], [np.asarray(base.normal)[keep]]
    segments, instances = [segment[keep]], [instance[keep]]
    for new, piece, world, normal in pieces:
        coords.append(world)
        colors.append(piece.color)
        normals.append(normal)
        segments.append(piece.segment)
        instances.append(np.full(len(world), new, np.int64))
    summary = ClutterSummary(objects=len(placed), base_objects=base_objects, placed=len(pieces),
                             touching_pairs=sorted(touching), stacked_pairs=stacked, table_z_m=table_z,
                             cell_m=cell_m, grid_origin_xy=(float(table.origin[0]), float(table.origin[1])),
                             donors=donors_of, leaning_pairs=leaning, flattened=flattened)
    color = np.clip(np.rint(np.concatenate(colors).astype(np.float64)), 0, 255).astype(np.uint8)
    return ClutterScene(np.concatenate(coords).astype(np.float32), color,
                        np.concatenate(normals).astype(np.float32), np.concatenate(segments).astype(np.int32),
                        np.concatenate(instances).astype(np.int32), summary)


def table_of(scene: Scene, default: int) -> int:
    """The table class of ``scene``: by name where it has class names, else ``default``."""
    return default if scene.class_names is None else table_class_of(scene.class_names, default)


def write_clutter_scenes(scene_dirs: Sequence[PathLike], out_dir: PathLike, num_scenes: int,
                         objects: Tuple[int, int] = (10, 15), seed: int = 0, *, label_file: str = "segment",
                         stacked_fraction: float = 0.3, overwrite: bool = False, tries: int = 10,
                         lean_fraction: float = 0.0, flat_fraction: float = 0.0) -> List[dict]:
    """Write ``num_scenes`` composites of the scenes in ``scene_dirs`` only (a clutter test set) as scene
    folders ``<out_dir>/clutter_<k>``; returns one summary per composite.

    Composite k takes scene k mod len(scene_dirs) as the base and the other scenes as donors, drawn from
    the generator seeded [seed, k, attempt]; an attempt with fewer than ``objects[0]`` objects (a small
    table) is redrawn, up to ``tries`` times.
    """
    if num_scenes < 1:
        raise InputError(f"num_scenes must be >= 1, got {num_scenes}")
    if not 1 <= objects[0] <= objects[1]:
        raise InputError(f"objects {tuple(objects)} must satisfy 1 <= min <= max")
    if not scene_dirs:
        raise InputError("no scene folders given")
    for name, value in (("stacked_fraction", stacked_fraction), ("lean_fraction", lean_fraction),
                        ("flat_fraction", flat_fraction)):
        if not 0.0 <= value <= 1.0:
            raise InputError(f"{name} must lie in [0, 1], got {value}")
    scenes = [load_scene(p, segment=label_file, frames=False) for p in scene_dirs]
    for path, scene in zip(scene_dirs, scenes):
        if scene.segment is None or scene.instance is None:
            raise InputError(f"scene folder {path} has no {label_file}.npy or no instance.npy")
        if scene.class_names != scenes[0].class_names:
            raise InputError(f"scene folder {path} names the classes {scene.class_names}, "
                             f"{scene_dirs[0]} names {scenes[0].class_names}")
    table_class = table_class_of(scenes[0].class_names)
    out_dir = Path(out_dir)
    summaries = []
    for k in range(num_scenes):
        b = k % len(scenes)
        donors = [s for j, s in enumerate(scenes) if j != b] or [scenes[b]]
        for attempt in range(tries):
            composite = compose_clutter(scenes[b], donors, np.random.default_rng([seed, k, attempt]), objects,
                                        stacked_fraction=stacked_fraction, table_class=table_class,
                                        lean_fraction=lean_fraction, flat_fraction=flat_fraction)
            if composite.summary.objects >= objects[0]:
                break
        else:
            raise InputError(f"scene folder {scene_dirs[b]}: its table holds {composite.summary.objects} objects "
                             f"after {tries} tries, fewer than {objects[0]}")
        name = f"clutter_{k:03d}"
        write_scene(composite.as_scene(name, scenes[b].class_names), out_dir / name, overwrite=overwrite)
        summaries.append({"name": name, "base": scenes[b].name, **composite.summary.to_dict(),
                          "donors": sorted(set(composite.summary.donors.values()))})
    return summaries
