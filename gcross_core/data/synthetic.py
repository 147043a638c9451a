"""Procedural indoor rooms with exact RGB-D views: the embedded data for demos and tests.

A room is a set of oriented boxes (yaw about +z only): floor, four walls, an optional ceiling, a door,
windows and pictures set 2 cm proud of the walls, and furniture built from boxes (tables with chairs,
desks, cabinets, beds, sofas, bookshelves). Each box carries a class from ``SYNTHETIC_CLASSES`` and an
object id. World frame: z up, floor at z = 0, the room spans [0, size_x] x [0, size_y].

Color is a function of the surface point alone (class base color, per-object jitter, a class pattern,
smooth sinusoidal variation, fine hashed grain, and baked Lambertian shading from a fixed direction), so
the sampled points and the rendered pixels agree exactly. Points are sampled uniformly on the visible box
faces (faces outside the room or inside another box are dropped). Views are ray cast against the boxes:
depth is the exact camera z of the first hit (0 where a ray leaves the room), color the albedo there.

Everything is drawn from generators seeded by ``seed``: the same seed gives the same room and views.
:func:`write_rooms` writes rooms as scene folders (``training/make_synthetic.py`` is its command line).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
from tqdm import tqdm

from gcross_core.data.classes import SYNTHETIC_CLASSES, SYNTHETIC_TO_SCANNET20
from gcross_core.data.frames import Frame, FrameList
from gcross_core.data.scene import Scene, write_scene
from gcross_core.errors import InputError

log = logging.getLogger(__name__)

_C = {name: i for i, name in enumerate(SYNTHETIC_CLASSES)}
IGNORE = -1  # the ceiling is not a ScanNet20 class

# Base albedo per class (RGB 0..255), far apart so that color alone nearly separates the classes.
_BASE_COLOR = {
    "wall": (205, 198, 180), "floor": (150, 105, 62), "cabinet": (80, 110, 160), "bed": (200, 55, 60),
    "chair": (60, 155, 70), "sofa": (125, 65, 165), "table": (185, 145, 60), "door": (105, 65, 40),
    "window": (150, 205, 240), "bookshelf": (35, 115, 115), "picture": (240, 200, 45), "desk": (225, 125, 175),
}
_CEILING_COLOR = (235, 235, 235)
_LIGHT_DIR = np.array([0.3, 0.5, 0.81]) / np.linalg.norm([0.3, 0.5, 0.81])


@dataclass(frozen=True)
class RoomConfig:
    num_points: int = 40_000  # surface samples; fewer if the visible area is small
    num_views: int = 8
    width: int = 160  # rendered image size, pixels
    height: int = 120
    hfov_deg: float = 70.0  # horizontal field of view of the rendered camera
    ceiling: bool = False  # without it, rays above the walls leave the room: depth 0 (invalid)
    room_size_m: Tuple[float, float] = (3.5, 6.5)  # range of the floor's side lengths
    room_height_m: Tuple[float, float] = (2.5, 3.0)
    num_furniture: Tuple[int, int] = (3, 6)  # pieces against the walls (plus, usually, a table with chairs)
    color_jitter: float = 18.0  # per-object shift of the class color (0..255 units)
    texture_amplitude: float = 22.0  # amplitude of the smooth color variation
    grain_amplitude: float = 6.0  # amplitude of the 1 cm hashed grain


@dataclass
class _Boxes:
    center: np.ndarray  # [B, 3]
    half: np.ndarray  # [B, 3] half extents along the box axes
    yaw: np.ndarray  # [B] rotation about +z, radians
    label: np.ndarray  # [B] index into SYNTHETIC_CLASSES, -1 = ceiling
    instance: np.ndarray  # [B] object id (parts of one piece of furniture share it)
    color: np.ndarray  # [B, 3] per-object base color
    tex: np.ndarray  # [B, 3, 4] three sinusoids: direction * frequency (3) and phase (1)

    @property
    def rot(self) -> np.ndarray:  # [B, 3, 3] box-to-world rotation
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        R = np.zeros((len(self.yaw), 3, 3))
        R[:, 0, 0], R[:, 0, 1], R[:, 1, 0], R[:, 1, 1], R[:, 2, 2] = c, -s, s, c, 1.0
        return R


def _rot2(yaw: float, xy: np.ndarray) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.stack([c * xy[..., 0] - s * xy[..., 1], s * xy[..., 0] + c * xy[..., 1]], -1)


# ----------------------------------------------------------------------------------------------------
# furniture: lists of (label, center_local [3], size [3]) with the origin at the footprint centre on the
# floor, +y the "front"; returns parts and the footprint (w, d)

def _legs(w, d, h, t=0.05):
    return [((sx * (w / 2 - t / 2), sy * (d / 2 - t / 2), h / 2), (t, t, h)) for sx in (-1, 1) for sy in (-1, 1)]


def _table(rng):
    w, d, h = rng.uniform(1.0, 1.8), rng.uniform(0.7, 1.0), rng.uniform(0.70, 0.78)
    parts = [((0, 0, h - 0.02), (w, d, 0.04))] + _legs(w, d, h - 0.04)
    return "table", parts, (w, d)


def _desk(rng):
    w, d, h = rng.uniform(1.0, 1.5), rng.uniform(0.55, 0.7), 0.75
    parts = [((0, 0, h - 0.02), (w, d, 0.04)),
             ((-w / 2 + 0.015, 0, (h - 0.04) / 2), (0.03, d, h - 0.04)),
             ((w / 2 - 0.015, 0, (h - 0.04) / 2), (0.03, d, h - 0.04)),
             ((w / 2 - 0.25, 0, 0.45), (0.4, d - 0.05, 0.5))]
    return "desk", parts, (w, d)


def _chair(rng):
    w, seat = rng.uniform(0.42, 0.5), rng.uniform(0.43, 0.47)
    parts = [((0, 0, seat - 0.025), (w, w, 0.05))] + _legs(w, w, seat - 0.05, 0.04)
    parts.append(((0, -w / 2 + 0.02, seat + 0.22), (w, 0.04, 0.44)))
    return "chair", parts, (w, w)


def _cabinet(rng):
    w, d, h = rng.uniform(0.6, 1.2), rng.uniform(0.4, 0.6), rng.uniform(0.8, 2.0)
    return "cabinet", [((0, 0, h / 2), (w, d, h))], (w, d)


def _bed(rng):
    w, L, h = rng.uniform(1.0, 1.8), rng.uniform(1.95, 2.1), rng.uniform(0.4, 0.55)
    parts = [((0, 0.03, h / 2), (w, L - 0.06, h)), ((0, -L / 2 + 0.03, 0.5), (w + 0.04, 0.06, 1.0))]
    return "bed", parts, (w, L)


def _sofa(rng):
    w, d, seat = rng.uniform(1.6, 2.2), rng.uniform(0.8, 0.95), 0.42
    parts = [((0, 0.1, seat / 2), (w - 0.4, d - 0.2, seat)),
             ((0, -d / 2 + 0.1, 0.4), (w, 0.2, 0.8)),
             ((-w / 2 + 0.1, 0.1, 0.3), (0.2, d - 0.2, 0.6)),
             ((w / 2 - 0.1, 0.1, 0.3), (0.2, d - 0.2, 0.6))]
    return "sofa", parts, (w, d)


def _bookshelf(rng):
    w, d, h = rng.uniform(0.8, 1.2), rng.uniform(0.3, 0.36), rng.uniform(1.6, 2.0)
    t = 0.03
    parts = [((-w / 2 + t / 2, 0, h / 2), (t, d, h)), ((w / 2 - t / 2, 0, h / 2), (t, d, h)),
             ((0, -d / 2 + 0.01, h / 2), (w - 2 * t, 0.02, h))]
    n_shelves = int(rng.integers(4, 6))
    for k in range(n_shelves + 1):
        z = t / 2 + k * (h - t) / n_shelves
        parts.append(((0, 0.01, z), (w - 2 * t, d - 0.02, t)))
    return "bookshelf", parts, (w, d)


_AGAINST_WALL = (_desk, _cabinet, _bed, _sofa, _bookshelf)


class _Builder:
    def __init__(self, rng: np.random.Generator, cfg: RoomConfig):
        self.rng, self.cfg = rng, cfg
        self.rows: List[tuple] = []  # (center, size, yaw, label, instance)
        self.footprints: List[Tuple[np.ndarray, np.ndarray]] = []  # axis-aligned (lo, hi) in the floor plane
        self.next_instance = 0

    def new_instance(self) -> int:
        self.next_instance += 1
        return self.next_instance - 1

    def add(self, center, size, yaw, label, instance):
        self.rows.append((np.asarray(center, float), np.asarray(size, float), float(yaw), label, instance))

    @staticmethod
    def footprint(xy, w, d, yaw):
        corners = _rot2(yaw, np.array([[sx * w / 2, sy * d / 2] for sx in (-1, 1) for sy in (-1, 1)])) + xy
        return corners.min(0), corners.max(0)

    def free(self, lo, hi, gap) -> bool:
        """Footprint (lo, hi) lies in the room and keeps ``gap`` metres from every placed footprint."""
        if lo[0] < -1e-9 or lo[1] < -1e-9 or hi[0] > self.sx + 1e-9 or hi[1] > self.sy + 1e-9:
            return False
        return all(np.any(hi + gap <= flo) or np.any(lo - gap >= fhi) for flo, fhi in self.footprints)

    def place(self, made, xy, yaw, gap=0.05) -> bool:
        label, parts, (w, d) = made
        lo, hi = self.footprint(xy, w, d, yaw)
        if not self.free(lo, hi, gap):
            return False
        self.footprints.append((lo, hi))
        inst = self.new_instance()
        for c, size in parts:
            c = np.asarray(c, float)
            self.add(np.r_[_rot2(yaw, c[:2]) + xy, c[2]], size, yaw, _C[label], inst)
        return True

    def build(self) -> _Boxes:
        rng, cfg = self.rng, self.cfg
        sx, sy = rng.uniform(*cfg.room_size_m, size=2)
        H = rng.uniform(*cfg.room_height_m)
        self.sx, self.sy, self.H = sx, sy, H
        t = 0.1  # wall, floor and ceiling thickness
        self.add((sx / 2, sy / 2, -t / 2), (sx + 2 * t, sy + 2 * t, t), 0, _C["floor"], self.new_instance())
        if cfg.ceiling:
            self.add((sx / 2, sy / 2, H + t / 2), (sx + 2 * t, sy + 2 * t, t), 0, IGNORE, self.new_instance())
        # walls: (inner-face position along the normal axis, axis, inward direction, length)
        walls = [(0.0, 0, +1, sy), (sx, 0, -1, sy), (0.0, 1, +1, sx), (sy, 1, -1, sx)]
        for pos, axis, inward, length in walls:
            c = [sx / 2, sy / 2, H / 2]
            c[axis] = pos - inward * t / 2
            size = [length + 2 * t, length + 2 * t, H]
            size[axis] = t
            self.add(c, size, 0, _C["wall"], self.new_instance())
        self._wall_items(walls)
        self._furniture(walls)
        return self._finish()

    def _wall_items(self, walls):
        rng = self.rng
        items = [("door", 0.9, 2.05, 0.0)]
        items += [("window", rng.uniform(0.9, 1.5), rng.uniform(0.9, 1.3), 0.9) for _ in range(rng.integers(1, 3))]
        items += [("picture", rng.uniform(0.4, 0.8), rng.uniform(0.3, 0.6), rng.uniform(1.3, 1.6))
                  for _ in range(rng.integers(1, 3))]
        used = {k: [] for k in range(4)}
        for name, w, h, z0 in items:
            for _ in range(20):
                k = int(rng.integers(4))
                pos, axis, inward, length = walls[k]
                if length < w + 0.4:
                    continue
                s = rng.uniform(0.2 + w / 2, length - 0.2 - w / 2)
                if any(abs(s - s2) < (w + w2) / 2 + 0.1 for s2, w2 in used[k]):
                    continue
                used[k].append((s, w))
                other = 1 - axis
                c = [0.0, 0.0, min(z0, self.H - h - 0.05) + h / 2]
                c[axis] = pos  # 2 cm proud of the wall, its back half inside it
                c[other] = s
                size = [0.0, 0.0, h]
                size[axis], size[other] = 0.04, w
                self.add(c, size, 0, _C[name], self.new_instance())
                if name == "door":  # keep the floor in front of the door clear
                    lo, hi = [0, 0], [0, 0]
                    lo[axis], hi[axis] = sorted((pos, pos + inward * 1.0))
                    lo[other], hi[other] = s - w / 2, s + w / 2
                    self.footprints.append((np.array(lo), np.array(hi)))
                break

    def _furniture(self, walls):
        rng = self.rng
        n = int(rng.integers(self.cfg.num_furniture[0], self.cfg.num_furniture[1] + 1))
        # yaw that turns local -y (the back) toward each wall
        wall_yaw = [-math.pi / 2, math.pi / 2, 0.0, math.pi]
        # the table group first: it needs the most free floor
        if rng.random() < 0.85:
            for _ in range(25):
                xy = rng.uniform([0.8, 0.8], [self.sx - 0.8, self.sy - 0.8])
                if self._table_group(xy, float(rng.integers(4)) * math.pi / 2 + rng.uniform(-0.2, 0.2)):
                    break
        for _ in range(n):
            for _ in range(25):
                k = int(rng.integers(4))
                pos, axis, inward, length = walls[k]
                made = _AGAINST_WALL[int(rng.integers(len(_AGAINST_WALL)))](rng)
                w, d = made[2]
                if length < w + 0.1:
                    continue
                xy = [0.0, 0.0]
                xy[axis] = pos + inward * (d / 2 + 0.01)
                xy[1 - axis] = rng.uniform(w / 2 + 0.05, length - w / 2 - 0.05)
                if self.place(made, np.array(xy), wall_yaw[k]):
                    break

    def _table_group(self, xy, yaw) -> bool:
        made = _table(self.rng)
        tw, td = made[2]
        # the table needs room for its chairs: test a footprint grown by a chair's depth first
        lo, hi = self.footprint(xy, tw + 1.2, td + 1.2, yaw)
        if not self.free(lo, hi, 0.0) or not self.place(made, xy, yaw):
            return False
        for side in range(4):
            if self.rng.random() < 0.3:
                continue
            ang = yaw + side * math.pi / 2
            dist = (td if side % 2 == 0 else tw) / 2 + 0.28
            cxy = xy + dist * np.array([math.sin(ang), -math.cos(ang)])
            # the chair's front (+y) faces the table centre
            cyaw = math.atan2(xy[1] - cxy[1], xy[0] - cxy[0]) - math.pi / 2
            self.place(_chair(self.rng), cxy, cyaw, gap=0.02)
        return True

    def _finish(self) -> _Boxes:
        rng, cfg = self.rng, self.cfg
        center = np.array([r[0] for r in self.rows])
        half = np.array([r[1] for r in self.rows]) / 2
        yaw = np.array([r[2] for r in self.rows])
        label = np.array([r[3] for r in self.rows], dtype=np.int64)
        instance = np.array([r[4] for r in self.rows], dtype=np.int64)
        n_obj = int(instance.max()) + 1
        obj_jitter = rng.uniform(-cfg.color_jitter, cfg.color_jitter, size=(n_obj, 3))
        base = np.array([_BASE_COLOR[SYNTHETIC_CLASSES[k]] if k >= 0 else _CEILING_COLOR for k in label], float)
        color = np.clip(base + obj_jitter[instance], 0, 255)
        dirs = rng.normal(size=(n_obj, 3, 3))
        dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
        freq = rng.uniform(1.0, 6.0, size=(n_obj, 3, 1))  # cycles per metre
        phase = rng.uniform(0, 2 * math.pi, size=(n_obj, 3, 1))
        tex = np.concatenate([2 * math.pi * dirs * freq, phase], -1)[instance]
        return _Boxes(center, half, yaw, label, instance, color, tex)


# ----------------------------------------------------------------------------------------------------
# appearance, sampling, ray casting

def _albedo(boxes: _Boxes, cfg: RoomConfig,
            box_id: np.ndarray,  # [M] int
            p_world: np.ndarray,  # [M, 3]
            n_world: np.ndarray,  # [M, 3] unit normals
            ) -> np.ndarray:  # [M, 3] float 0..255
    R = boxes.rot[box_id]
    q = np.einsum("mji,mj->mi", R, p_world - boxes.center[box_id])  # box-local coordinates
    tex = boxes.tex[box_id]
    wave = np.sin(np.einsum("mkj,mj->mk", tex[..., :3], q) + tex[..., 3]).sum(1) / 3
    label = boxes.label[box_id]
    pattern = np.zeros(len(box_id))
    floor = label == _C["floor"]
    pattern[floor] = ((np.floor(q[floor, 0] / 0.5) + np.floor(q[floor, 1] / 0.5)) % 2 - 0.5) * 30
    shelf = label == _C["bookshelf"]
    pattern[shelf] = np.sin(q[shelf, 0] * 2 * math.pi / 0.06) * 14  # a row of book spines
    # The grain ignores the coordinate along the face normal: it is exactly +-half on sampled points but
    # carries rounding error on ray hits, and a cell boundary there would make the two disagree.
    in_face = 1 - np.abs(np.rint(np.einsum("mji,mj->mi", R, n_world))).astype(np.int64)
    cell = np.floor(q / 0.01).astype(np.int64) * in_face
    h = (cell[:, 0] * 73856093) ^ (cell[:, 1] * 19349663) ^ (cell[:, 2] * 83492791) ^ (box_id * 2654435761)
    grain = ((h & 0xFFFF) / 0xFFFF - 0.5) * 2 * cfg.grain_amplitude
    c = boxes.color[box_id] + (cfg.texture_amplitude * wave + pattern + grain)[:, None]
    shade = 0.78 + 0.22 * np.abs(n_world @ _LIGHT_DIR)  # two-sided so vertical and horizontal faces differ
    return np.clip(c * shade[:, None], 0, 255)


def _inside_any(boxes: _Boxes, p: np.ndarray, own: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """[M] bool: point lies inside or on another box (closed, grown by eps)."""
    R = boxes.rot
    out = np.zeros(len(p), dtype=bool)
    for b in range(len(boxes.center)):
        q = (p - boxes.center[b]) @ R[b]
        inside = np.all(np.abs(q) <= boxes.half[b] + eps, axis=1) & (own != b)
        out |= inside
    return out


def _sample_surfaces(boxes: _Boxes, room: Tuple[float, float, float], n_points: int, rng: np.random.Generator):
    sx, sy, H = room
    R = boxes.rot
    faces = []  # (box, axis, sign, area)
    for b in range(len(boxes.center)):
        for axis in range(3):
            for sign in (-1.0, 1.0):
                c = boxes.center[b] + R[b][:, axis] * sign * boxes.half[b][axis]
                # faces whose centre is well outside the room (outer wall sides, under the floor) are never seen
                if np.any(c < -0.05) or np.any(c > np.array([sx, sy, H]) + 0.05):
                    continue
                u, v = [k for k in range(3) if k != axis]
                faces.append((b, axis, sign, 4 * boxes.half[b][u] * boxes.half[b][v]))
    area = np.array([f[3] for f in faces])
    counts = rng.poisson(area * (1.3 * n_points / area.sum()))
    pts, nrm, owner = [], [], []
    for (b, axis, sign, _), k in zip(faces, counts):
        if k == 0:
            continue
        u, v = [a for a in range(3) if a != axis]
        local = np.zeros((k, 3))
        local[:, axis] = sign * boxes.half[b][axis]
        local[:, u] = rng.uniform(-1, 1, k) * boxes.half[b][u]
        local[:, v] = rng.uniform(-1, 1, k) * boxes.half[b][v]
        pts.append(boxes.center[b] + local @ R[b].T)
        nrm.append(np.repeat((R[b][:, axis] * sign)[None], k, 0))
        owner.append(np.full(k, b))
    p, n, own = np.concatenate(pts), np.concatenate(nrm), np.concatenate(owner)
    tol = 1e-6
    keep = np.all((p >= [-tol, -tol, -tol]) & (p <= [sx + tol, sy + tol, H + tol]), axis=1)
    keep &= ~_inside_any(boxes, p, own)
    p, n, own = p[keep], n[keep], own[keep]
    if len(p) > n_points:
        sel = np.sort(rng.choice(len(p), n_points, replace=False))
        p, n, own = p[sel], n[sel], own[sel]
    return p, n, own


def _slab_t(lo: np.ndarray, hi: np.ndarray, d_axes) -> np.ndarray:
    """Entry parameter of rays into boxes (inf on a miss) from per-axis slab bounds lo/hi (box frame)."""
    tmin = tmax = None
    for a, da in enumerate(d_axes):
        inv = 1.0 / np.where(np.abs(da) < 1e-12, da.dtype.type(1e-12), da)  # rays parallel to a slab stay finite
        ta, tb = lo[:, a:a + 1] * inv, hi[:, a:a + 1] * inv
        near, far = np.minimum(ta, tb), np.maximum(ta, tb)
        tmin = near if tmin is None else np.maximum(tmin, near, out=tmin)
        tmax = far if tmax is None else np.minimum(tmax, far, out=tmax)
    return np.where((tmax >= tmin) & (tmin > 1e-6), tmin, np.inf)


def raycast(boxes: _Boxes, origin: np.ndarray,  # [3]
            dirs: np.ndarray,  # [P, 3] world ray directions (need not be unit)
            chunk: int = 8192) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First hit of each ray: (t [P] ray parameter, inf on a miss; box [P] int, -1 on a miss;
    normal [P, 3] world unit normal of the face hit).

    The box each ray hits first is found in float32 over all boxes; its entry parameter is then
    recomputed in float64 for that one box, so depths are exact to float64 rounding.
    """
    R = boxes.rot
    c, s = np.cos(boxes.yaw)[:, None], np.sin(boxes.yaw)[:, None]
    o = origin - boxes.center
    o_l = np.stack([c[:, 0] * o[:, 0] + s[:, 0] * o[:, 1], -s[:, 0] * o[:, 0] + c[:, 0] * o[:, 1], o[:, 2]], 1)
    lo, hi = -boxes.half - o_l, boxes.half - o_l  # [B, 3] slab bounds relative to the origin
    lo32, hi32, c32, s32 = (a.astype(np.float32) for a in (lo, hi, c, s))
    P = len(dirs)
    box_best = np.full(P, -1, dtype=np.int64)
    dirs32 = dirs.astype(np.float32)
    for start in range(0, P, chunk):
        d = dirs32[start:start + chunk]
        # yaw-only rotations: the box-frame z of every ray is its world z
        d_axes = (c32 * d[:, 0] + s32 * d[:, 1], -s32 * d[:, 0] + c32 * d[:, 1],
                  np.broadcast_to(d[:, 2], (len(c32), len(d))))
        t = _slab_t(lo32, hi32, d_axes)  # [B, p]
        b = np.argmin(t, axis=0)
        box_best[start:start + chunk] = np.where(np.isfinite(t[b, np.arange(len(d))]), b, -1)
    ok = box_best >= 0
    t_best = np.full(P, np.inf)
    b = box_best[ok]
    d = dirs[ok]
    d_axes = (c[b, 0] * d[:, 0] + s[b, 0] * d[:, 1], -s[b, 0] * d[:, 0] + c[b, 0] * d[:, 1], d[:, 2])
    t_exact = _slab_t(lo[b], hi[b], [da[:, None] for da in d_axes])[:, 0]
    # a float32 grazing hit that float64 calls a miss falls back to a miss
    t_best[ok] = t_exact
    box_best[ok & ~np.isfinite(t_best)] = -1
    normal = np.zeros((P, 3))
    ok = box_best >= 0
    b = box_best[ok]
    q = np.einsum("mji,mj->mi", R[b], origin + t_best[ok, None] * dirs[ok] - boxes.center[b])
    ratio = np.abs(q) / boxes.half[b]
    axis = np.argmax(ratio, axis=1)
    n_local = np.zeros_like(q)
    n_local[np.arange(len(b)), axis] = np.sign(q[np.arange(len(b)), axis])
    normal[ok] = np.einsum("mij,mj->mi", R[b], n_local)
    return t_best, box_best, normal


def look_at(position: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[4, 4] cam_to_world of an OpenCV camera at ``position`` looking at ``target``, world up = +z."""
    z = target - position
    z = z / np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    if np.linalg.norm(x) < 1e-6:  # looking straight up or down
        x = np.array([1.0, 0.0, 0.0])
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, y, z, position
    return T


def _intrinsics(cfg: RoomConfig) -> np.ndarray:
    f = 0.5 * cfg.width / math.tan(math.radians(cfg.hfov_deg) / 2)
    return np.array([[f, 0, (cfg.width - 1) / 2], [0, f, (cfg.height - 1) / 2], [0, 0, 1.0]])


def render_view(boxes: _Boxes, cfg: RoomConfig, K: np.ndarray, cam_to_world: np.ndarray):
    """(color [H, W, 3] uint8, depth_m [H, W] float32 camera z, 0 on a miss, box id [H, W] -1 on a miss)."""
    v, u = np.mgrid[0:cfg.height, 0:cfg.width].astype(np.float64)
    d_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
    dirs = d_cam @ cam_to_world[:3, :3].T  # camera z = 1 per unit ray parameter: t is the depth
    origin = cam_to_world[:3, 3]
    t, box, normal = raycast(boxes, origin, dirs)
    ok = box >= 0
    color = np.zeros((len(t), 3))
    color[ok] = _albedo(boxes, cfg, box[ok], origin + t[ok, None] * dirs[ok], normal[ok])
    depth = np.where(ok, t, 0.0)
    shape = (cfg.height, cfg.width)
    return (np.rint(color).astype(np.uint8).reshape(*shape, 3), depth.astype(np.float32).reshape(shape),
            box.reshape(shape))


def _camera_poses(boxes: _Boxes, room, cfg: RoomConfig, rng: np.random.Generator) -> List[np.ndarray]:
    sx, sy, H = room
    furniture = np.flatnonzero(~np.isin(boxes.label, [_C["wall"], _C["floor"], IGNORE, _C["door"],
                                                      _C["window"], _C["picture"]]))
    poses = []
    for k in range(cfg.num_views):
        for _ in range(200):
            pos = np.array([rng.uniform(0.4, sx - 0.4), rng.uniform(0.4, sy - 0.4),
                            rng.uniform(1.2, min(1.7, H - 0.3))])
            q = np.einsum("bji,bj->bi", boxes.rot, pos - boxes.center)
            if not np.any(np.all(np.abs(q) <= boxes.half + 0.25, axis=1)):
                break
        if len(furniture) and rng.random() < 0.8:
            target = boxes.center[rng.choice(furniture)] + rng.normal(0, 0.2, 3)
        else:
            target = np.array([rng.uniform(0, sx), rng.uniform(0, sy), rng.uniform(0.3, 1.2)])
        if np.linalg.norm(target[:2] - pos[:2]) < 0.5:  # too steep: look across the room instead
            target = np.array([sx - pos[0], sy - pos[1], 0.6])
        poses.append(look_at(pos, target))
    return poses


def make_room(seed: int = 0, cfg: Optional[RoomConfig] = None, **overrides) -> Scene:
    """A procedural room as a Scene: points with normals, labels (``segment`` indexes
    SYNTHETIC_CLASSES, ``extra['segment20']`` the same labels as ScanNet20 indices), instance ids, and
    ``cfg.num_views`` exact RGB-D frames. ``overrides`` replace fields of ``cfg`` (e.g. num_views=4)."""
    cfg = replace(cfg or RoomConfig(), **overrides)
    if cfg.num_points < 1 or cfg.num_views < 0 or cfg.width < 1 or cfg.height < 1:
        raise InputError(f"make_room: num_points, width, height must be >= 1 and num_views >= 0, got {cfg}")
    # separate streams, so that e.g. a different point count leaves the layout and the cameras alone
    rng_layout, rng_points, rng_views = (np.random.default_rng([seed, k]) for k in range(3))
    builder = _Builder(rng_layout, cfg)
    boxes = builder.build()
    room = (builder.sx, builder.sy, builder.H)
    p, n, own = _sample_surfaces(boxes, room, cfg.num_points, rng_points)
    color = _albedo(boxes, cfg, own, p, n)
    label = boxes.label[own]
    seg20 = np.where(label >= 0, np.asarray(SYNTHETIC_TO_SCANNET20)[np.clip(label, 0, None)], IGNORE)
    K = _intrinsics(cfg)
    frames = []
    for k, T in enumerate(_camera_poses(boxes, room, cfg, rng_views)):
        rgb, depth, _ = render_view(boxes, cfg, K, T)
        frames.append(Frame(rgb, depth, K, K.copy(), T, frame_id=str(k)))
    return Scene(name=f"synthetic_{seed:04d}", coord=p.astype(np.float32), color=color.astype(np.float32),
                 normal=n.astype(np.float32), segment=label, instance=boxes.instance[own],
                 frames=FrameList(frames), class_names=SYNTHETIC_CLASSES, extra={"segment20": seg20})


def room_boxes(seed: int = 0, cfg: Optional[RoomConfig] = None, **overrides):
    """The boxes of ``make_room(seed, cfg, **overrides)`` as (center [B, 3], half [B, 3], yaw [B], label [B])
    (for tests and visualisation)."""
    cfg = replace(cfg or RoomConfig(), **overrides)
    b = _Builder(np.random.default_rng([seed, 0]), cfg).build()
    return b.center, b.half, b.yaw, b.label


def write_rooms(out: Union[str, Path], rooms: int, seed: int = 0, cfg: Optional[RoomConfig] = None,
                overwrite: bool = False, progress: bool = True) -> int:
    """Write ``make_room(seed + k, cfg)`` for k < ``rooms`` to ``<out>/synthetic_<seed + k>`` (4 digits):
    points, labels (``segment`` and ``segment20``), instance and lossless PNG frames. Existing room
    folders are kept unless ``overwrite``; returns the number of rooms written."""
    out = Path(out)
    t0 = time.perf_counter()
    written = 0
    for k in tqdm(range(rooms), desc="rooms", unit="room", disable=not progress):
        room_seed = seed + k
        out_dir = out / f"synthetic_{room_seed:04d}"
        if out_dir.exists() and not overwrite:
            log.info("%s exists; kept", out_dir)
            continue
        write_scene(make_room(room_seed, cfg), out_dir, color_format="png", overwrite=overwrite)
        written += 1
    log.info("wrote %d rooms to %s in %.1f s", written, out, time.perf_counter() - t0)
    return written
