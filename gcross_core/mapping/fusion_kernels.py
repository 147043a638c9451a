"""Compiled kernels of ``VoxelMap.integrate``: pixels -> frame voxels, the map's key -> row hash index, and
the running-mean merge; and of the passes over a whole map that run on every segmentation (unit normals,
the schedule's changed-since-labelled test). numba, compiled on first use and cached on disk; every
kernel releases the GIL.

Each kernel does in one loop what the vectorised NumPy version did in a dozen passes over the frame, and
keeps that version's arithmetic (the same float32 operations in the same order, float64 sums added point by
point in image order), so the map it builds is the same to the bit. tests/core/mapping/test_fusion_kernels.py
checks it against a plain NumPy reference.

Hash tables are open addressing with linear probing (Knuth, TAOCP vol. 3, 6.4, algorithm L), indexed by
Fibonacci hashing of the packed key (the top bits of key * 2^64 / golden ratio; same section), kept at
most half full.
"""
from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from gcross_core.mapping.voxel_keys import KEY_BITS, KEY_OFFSET


_FIB = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio
_EMPTY = -1  # a free slot of a hash table
_MIN_TABLE_BITS = 4


def table_bits(capacity: int) -> int:
    """log2 of the smallest power-of-two table at most half full with ``capacity`` entries."""
    return max(_MIN_TABLE_BITS, int(2 * max(capacity, 1) - 1).bit_length())


@numba.njit(inline="always")
def _slot(key, shift):
    return np.int64((np.uint64(key) * _FIB) >> np.uint64(shift))


# ---------------------------------------------------------------- frame: pixels -> voxels

class FrameGroups(NamedTuple):
    """The distinct voxels one frame observed, in order of first appearance in the image."""

    keys: np.ndarray  # [U] int64 packed voxel keys
    counts: np.ndarray  # [U] int64 points per voxel
    sums: np.ndarray  # [U, 9] float64: position sum (map frame), RGB sum, unit normal (map frame; 0: none)
    pix: np.ndarray  # [M] int32 flat pixel index of every fused point, image order
    run_start: np.ndarray  # [R] int32 first point of each run of consecutive points in one voxel
    run_voxel: np.ndarray  # [R] int32 voxel (row of keys) of each run
    dropped: int  # valid points outside the key range

    def inverse(self) -> np.ndarray:
        """[M] int64 voxel (row of keys) of every fused point."""
        run_len = np.diff(np.append(self.run_start, len(self.pix)))
        return np.repeat(self.run_voxel.astype(np.int64), run_len)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _row_keys(depth_row, us, vf, fx, fy, cx, cy, max_depth, Rv, tv, keys, xs, ys):
    """Keys of one image row (-1: no valid depth, -2: outside the key range) and camera x, y [W] float32.

    Branch-free so that it vectorises (column numbers come as floats ``us`` [W]: AVX2 has no vector int64
    -> float conversion); backproject_depth's float32 arithmetic, then the rigid transform pre-divided by
    the voxel size.
    """
    lo = np.float32(-KEY_OFFSET)
    hi = np.float32(KEY_OFFSET - 1)
    end = np.float32(KEY_OFFSET)
    r00, r01, r02, r10, r11, r12 = Rv[0, 0], Rv[0, 1], Rv[0, 2], Rv[1, 0], Rv[1, 1], Rv[1, 2]
    r20, r21, r22, t0, t1, t2 = Rv[2, 0], Rv[2, 1], Rv[2, 2], tv[0], tv[1], tv[2]
    yc = vf - cy
    for col in range(len(depth_row)):
        z = depth_row[col]
        x = (us[col] - cx) * z / fx
        y = yc * z / fy
        g0 = x * r00 + y * r01 + z * r02 + t0
        g1 = x * r10 + y * r11 + z * r12 + t1
        g2 = x * r20 + y * r21 + z * r22 + t2
        valid = (z > 0) & (z <= max_depth)  # NaN fails both, inf the second
        inside = (g0 >= lo) & (g0 < end) & (g1 >= lo) & (g1 < end) & (g2 >= lo) & (g2 < end)
        # Clamped so that the int32 conversion is defined everywhere; only keys inside the range are used.
        f0 = np.floor(min(max(g0, lo), hi))
        f1 = np.floor(min(max(g1, lo), hi))
        f2 = np.floor(min(max(g2, lo), hi))
        k = (((np.int64(np.int32(f0)) + KEY_OFFSET) << (2 * KEY_BITS))
             | ((np.int64(np.int32(f1)) + KEY_OFFSET) << KEY_BITS)
             | (np.int64(np.int32(f2)) + KEY_OFFSET))
        keys[col] = k if valid & inside else -1 - np.int64(valid)
        xs[col] = x
        ys[col] = y


@numba.njit(inline="always")
def _find_or_add(k, shift, mask, table, keys, counts, runs_of, sums, nv):
    """Row of key k in the frame's table, or nv after entering it as a new, zeroed voxel nv."""
    s = _slot(k, shift)
    while True:
        v = table[s]
        if v == _EMPTY:
            table[s] = nv
            keys[nv] = k
            counts[nv] = 0
            runs_of[nv] = 0
            for j in range(9):
                sums[nv, j] = 0.0
            return nv
        if keys[v] == k:
            return v
        s = (s + 1) & mask


@numba.njit(inline="always")
def _close_run(counts, sums, v, c, sx, sy, sz, sr, sg, sb):
    """Add a run's point count and its sums (position, colour) to voxel v."""
    counts[v] += c
    sums[v, 0] += sx
    sums[v, 1] += sy
    sums[v, 2] += sz
    sums[v, 3] += sr
    sums[v, 4] += sg
    sums[v, 5] += sb


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _group_pixels(depth, color, fx, fy, cx, cy, max_depth, Rv, tv, bits):
    """Valid pixels -> voxel keys -> per-voxel sums, a row at a time: keys first (``_row_keys``), then one
    scalar pass that groups them. Returns dropped = -1 (and nothing else) when the frame has more than
    2^(bits - 1) voxels: the caller tries again with a larger table. (Growing the table here instead would
    make numba count references to it on every pixel, which costs more than the whole grouping.)

    Point i is the i-th valid pixel in image order, as in ``backproject_depth``. A run of consecutive
    points in one voxel is summed in registers and looks its voxel up once.
    """
    h, w = depth.shape
    n = h * w
    # int32 (pixel and point indices of one image): half the memory traffic of int64.
    pix = np.empty(n, np.int32)
    run_start = np.empty(n, np.int32)
    run_voxel = np.empty(n, np.int32)
    # Per voxel, sized for the worst case (one voxel per pixel); only the pages used are touched.
    keys = np.empty(n, np.int64)
    counts = np.empty(n, np.int64)
    sums = np.empty((n, 9), np.float64)
    runs_of = np.empty(n, np.int64)
    table = np.full(np.int64(1) << bits, _EMPTY, np.int32)
    shift = 64 - bits
    mask = (np.int64(1) << bits) - 1
    row_keys = np.empty(w, np.int64)
    # The previous row's keys and voxels: a run whose voxel also holds the pixel above its first point (most
    # runs: a voxel spans several rows) takes that voxel without probing the table.
    above_keys = np.full(w, -1, np.int64)
    above_v = np.empty(w, np.int32)
    row_v = np.empty(w, np.int32)
    row_x = np.empty(w, np.float32)
    row_y = np.empty(w, np.float32)
    us = np.arange(w).astype(np.float32)
    m = 0
    nr = 0
    nv = 0
    dropped = 0
    key = np.int64(-1)
    v = np.int64(-1)
    c = 0
    sx = sy = sz = 0.0
    sr = sg = sb = 0
    for row in range(h):
        _row_keys(depth[row], us, np.float32(row), fx, fy, cx, cy, max_depth, Rv, tv, row_keys, row_x, row_y)
        for col in range(w):
            k = row_keys[col]
            if k < 0:
                dropped += k == -2
                continue
            if k != key:
                if c:  # close the run of voxel v
                    _close_run(counts, sums, v, c, sx, sy, sz, sr, sg, sb)
                key = k
                if above_keys[col] == k:
                    v = above_v[col]
                else:
                    v = _find_or_add(k, shift, mask, table, keys, counts, runs_of, sums, nv)
                    if v == nv:
                        nv += 1
                        if 2 * nv > len(table):  # more voxels than the table holds half full: start again
                            return keys[:0], counts[:0], sums[:0], keys[:0], pix[:0], run_start[:0], run_voxel[:0], -1
                run_start[nr] = m
                run_voxel[nr] = v
                runs_of[v] += 1
                nr += 1
                c = 0
                sx = sy = sz = 0.0
                sr = sg = sb = 0
            row_v[col] = v
            pix[m] = row * w + col
            c += 1
            sx += row_x[col]
            sy += row_y[col]
            sz += depth[row, col]
            sr += color[row, col, 0]
            sg += color[row, col, 1]
            sb += color[row, col, 2]
            m += 1
        above_keys, row_keys = row_keys, above_keys
        above_v, row_v = row_v, above_v
    if c:
        _close_run(counts, sums, v, c, sx, sy, sz, sr, sg, sb)
    # A central point of each voxel: the middle point of its middle run (runs in image order).
    rep = np.empty(nv, np.int64)
    seen = np.zeros(nv, np.int64)
    for r in range(nr):
        v = run_voxel[r]
        if seen[v] == (runs_of[v] - 1) // 2:
            end = run_start[r + 1] if r + 1 < nr else m
            rep[v] = pix[run_start[r] + (end - run_start[r]) // 2]
        seen[v] += 1
    return keys[:nv], counts[:nv], sums[:nv], rep, pix[:m], run_start[:nr], run_voxel[:nr], dropped


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _pixel_normals(flat, w, h, pixels, ks, fx, fy, cx, cy, max_jump, out, ok):
    """Camera-frame unit normals at the given pixels with half-widths ks, float32: into out [N, 3] where
    ok [N] is True, oriented toward the camera.

    n = (P(v+k, u) - P(v-k, u)) x (P(v, u+k) - P(v, u-k)) with P the back-projected point: the cross
    product of the image-space gradients (the sign is checked against the viewing ray). No normal where a
    sample falls outside the image or is invalid, or where a second difference z(+k) - 2 z(0) + z(-k)
    exceeds ``max_jump`` times the depth: an occlusion edge in the window. The tests check it against a
    plain NumPy version (tests/core/mapping/reference_normals.py).

    Two loops: the five depth samples of every pixel are gathered first, with addresses known up front so
    that the loads overlap, then the arithmetic runs without branches.
    """
    n = len(pixels)
    z = np.empty((5, n), np.float32)  # centre, left, right, up, down
    uvk = np.empty((3, n), np.float32)
    inside = np.empty(n, np.bool_)
    for i in range(n):
        p = pixels[i]
        k = ks[i]
        v = p // w
        u = p - v * w
        inside[i] = (u >= k) & (u < w - k) & (v >= k) & (v < h - k)
        k = k if inside[i] else 0  # rejected below; k = 0 keeps the reads inside the image
        z[0, i], z[1, i], z[2, i] = flat[p], flat[p - k], flat[p + k]
        z[3, i], z[4, i] = flat[p - k * w], flat[p + k * w]
        uvk[0, i], uvk[1, i], uvk[2, i] = np.float32(u), np.float32(v), np.float32(k)
    two = np.float32(2)
    for i in range(n):
        zc, zl, zr, zu, zd = z[0, i], z[1, i], z[2, i], z[3, i], z[4, i]
        # All five samples valid: the smallest is > 0 and their sum is finite (NaN, inf fail either test).
        good = inside[i] & (min(min(zc, zl), min(min(zr, zu), zd)) > 0) & np.isfinite(zc + zl + zr + zu + zd)
        lim = max_jump * zc
        good &= (abs(zr - two * zc + zl) <= lim) & (abs(zd - two * zc + zu) <= lim)
        xc = (uvk[0, i] - cx) / fx
        yc = (uvk[1, i] - cy) / fy
        kx = uvk[2, i] / fx
        ky = uvk[2, i] / fy
        az = zr - zl
        ax = (xc + kx) * zr - (xc - kx) * zl
        ay = yc * az
        bz = zd - zu
        bx = xc * bz
        by = (yc + ky) * zd - (yc - ky) * zu
        nx = by * az - bz * ay
        ny = bz * ax - bx * az
        nz = bx * ay - by * ax
        norm = np.sqrt(nx * nx + ny * ny + nz * nz)
        good &= norm > 0
        scale = np.float32(np.copysign(np.float32(1), -(nx * xc + ny * yc + nz))) / norm  # toward the camera
        ok[i] = good
        out[i, 0] = nx * scale
        out[i, 1] = ny * scale
        out[i, 2] = nz * scale


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _finish_voxels(depth, rep, counts, sums, fx, fy, cx, cy, baseline_scale, max_baseline, max_jump, R, t):
    """Normals at the voxels' central pixels, then camera -> map frame for the position and normal sums.

    The central differences span about the voxel's footprint in the image, k = clip(round(baseline_scale
    / z), 1, max_baseline) pixels each side, so the normal describes the surface at the voxel's scale and
    pixel noise averages out; a voxel without a normal at k > 1 (an occlusion edge in the window) retries
    k = 1. One normal per voxel and frame, instead of one per pixel, keeps this off the per-pixel path.
    """
    h, w = depth.shape
    flat = depth.reshape(-1)
    nv = len(rep)
    ks = np.empty(nv, np.int64)
    for i in range(nv):
        ks[i] = np.int64(min(max(np.rint(baseline_scale / np.float64(flat[rep[i]])), 1.0), max_baseline))
    normal = np.empty((nv, 3), np.float32)
    ok = np.empty(nv, np.bool_)
    _pixel_normals(flat, w, h, rep, ks, fx, fy, cx, cy, max_jump, normal, ok)
    retry = np.flatnonzero(~ok & (ks > 1))
    if len(retry):
        normal1 = np.empty((len(retry), 3), np.float32)
        ok1 = np.empty(len(retry), np.bool_)
        _pixel_normals(flat, w, h, rep[retry], np.ones(len(retry), np.int64), fx, fy, cx, cy, max_jump,
                       normal1, ok1)
        for j in range(len(retry)):
            normal[retry[j]] = normal1[j]
            ok[retry[j]] = ok1[j]
    for i in range(nv):
        if ok[i]:
            n0, n1, n2 = np.float64(normal[i, 0]), np.float64(normal[i, 1]), np.float64(normal[i, 2])
            for j in range(3):
                sums[i, 6 + j] = n0 * R[j, 0] + n1 * R[j, 1] + n2 * R[j, 2]
        # Sums of R p + t over c points = R (sum of p) + c t.
        p0, p1, p2 = sums[i, 0], sums[i, 1], sums[i, 2]
        c = np.float64(counts[i])
        for j in range(3):
            sums[i, j] = (p0 * R[j, 0] + p1 * R[j, 1] + p2 * R[j, 2]) + c * t[j]


def group_frame(color_rgb: np.ndarray,  # [H, W, 3] uint8 RGB registered to depth
                depth_m: np.ndarray,  # [H, W] float32 metres
                K: np.ndarray,  # [3, 3] float64 intrinsics
                cam_to_map: np.ndarray,  # [4, 4] float64 rigid transform
                voxel_size_m: float, max_depth_m: float, max_baseline_px: int, normal_max_jump: float,
                expected_voxels: int = 0,
                ) -> FrameGroups:
    """The frame's voxels with their point counts, sums and one normal each (see ``fusion``'s module doc).

    expected_voxels: about how many voxels the frame holds (the previous frame's count; 0: unknown). It
    sizes the frame's hash table: a table that fits the cache is probed faster; a frame with more voxels
    is grouped again with a larger one.
    """
    assert depth_m.dtype == np.float32 and depth_m.ndim == 2, f"depth_m {depth_m.dtype} {depth_m.shape}"
    assert color_rgb.shape == depth_m.shape + (3,), f"color {color_rgb.shape} vs depth {depth_m.shape}"
    depth_m = np.ascontiguousarray(depth_m)
    color_rgb = np.ascontiguousarray(color_rgb)
    K32 = K.astype(np.float32)
    fx, fy, cx, cy = K32[0, 0], K32[1, 1], K32[0, 2], K32[1, 2]
    inv_vs = 1.0 / voxel_size_m
    Rv = (cam_to_map[:3, :3] * inv_vs).astype(np.float32)
    tv = (cam_to_map[:3, 3] * inv_vs).astype(np.float32)
    h, w = depth_m.shape
    # Room for half again the expected voxels, or without an expectation for 1 voxel per 4 pixels (a 640x480
    # frame at 2 cm and Kinect range has 1 per 10 to 15); more voxels retry with up to one voxel per pixel.
    bits = table_bits(max(3 * expected_voxels // 2 if expected_voxels > 0 else h * w // 4, 1))
    while True:
        keys, counts, sums, rep, pix, run_start, run_voxel, dropped = _group_pixels(
            depth_m, color_rgb, fx, fy, cx, cy, np.float32(max_depth_m), Rv, tv, bits)
        if dropped >= 0:
            break
        bits = min(bits + 2, table_bits(h * w))
    f = 0.5 * (K[0, 0] + K[1, 1])
    R = np.ascontiguousarray(cam_to_map[:3, :3], dtype=np.float64)
    t = np.ascontiguousarray(cam_to_map[:3, 3], dtype=np.float64)
    _finish_voxels(depth_m, rep, counts, sums, fx, fy, cx, cy, float(0.5 * voxel_size_m * f),
                   float(max_baseline_px), np.float32(normal_max_jump), R, t)
    return FrameGroups(keys, counts, sums, pix, run_start, run_voxel, int(dropped))


# ---------------------------------------------------------------- map: key -> row index and merge

@numba.njit(nogil=True, cache=True, error_model="numpy")
def _index_insert(table, shift, keys, start, stop):
    """Enter rows start..stop-1 of keys (absent from the table of 2^(64 - shift) slots) into it."""
    mask = len(table) - 1
    for r in range(start, stop):
        s = _slot(keys[r], shift)
        while table[s] != _EMPTY:
            s = (s + 1) & mask
        table[s] = r


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _index_lookup(table, shift, keys, query, out):
    mask = len(table) - 1
    for i in range(len(query)):
        q = query[i]
        s = _slot(q, shift)
        out[i] = _EMPTY
        while True:
            r = table[s]
            if r == _EMPTY:
                break
            if keys[r] == q:
                out[i] = r
                break
            s = (s + 1) & mask


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _index_remove_and_move(table, shift, keys, drop, holes, movers):
    """Remove rows ``drop`` from the table, then renumber rows ``movers`` to ``holes`` (keys unchanged).

    Removal is deletion from a linear-probing table (Knuth, TAOCP vol. 3, 6.4, algorithm R): the entries
    after the freed slot that could no longer be reached from their home slot move back into it.
    """
    mask = len(table) - 1
    for d in drop:
        i = _slot(keys[d], shift)
        while table[i] != d:
            i = (i + 1) & mask
        j = i
        while True:
            table[i] = _EMPTY
            while True:
                j = (j + 1) & mask
                r = table[j]
                if r == _EMPTY:
                    break
                home = _slot(keys[r], shift)
                # the entry at j stays if its home lies cyclically in (i, j]
                if (i < home <= j) if i <= j else (i < home or home <= j):
                    continue
                break
            if table[j] == _EMPTY:
                break
            table[i] = table[j]
            i = j
    for t in range(len(movers)):
        m = movers[t]
        i = _slot(keys[m], shift)
        while table[i] != m:
            i = (i + 1) & mask
        table[i] = holes[t]


class VoxelIndex:
    """Row of each voxel key in an array of keys ``keys[:n]``; rows grow at the end, and eviction fills
    its holes with the last rows (:meth:`remove_and_move`).

    A hash table of row numbers, at most half full; the keys themselves stay in the caller's array.
    """

    def __init__(self, capacity: int):
        self.table = np.full(1 << table_bits(capacity), _EMPTY, np.int32)  # rows < 2^31: 4 bytes a slot

    def rebuild(self, keys: np.ndarray, n: int, capacity: int) -> None:
        """Index rows 0..n-1 of keys anew, with room for ``capacity`` rows (after eviction, growth, restore)."""
        size = 1 << table_bits(capacity)
        if size != len(self.table):
            self.table = np.full(size, _EMPTY, np.int32)
        else:
            self.table.fill(_EMPTY)
        _index_insert(self.table, self._shift(), keys, 0, n)

    def remove_and_move(self, keys: np.ndarray, drop: np.ndarray, holes: np.ndarray, movers: np.ndarray) -> None:
        """Forget rows ``drop`` [k], then index rows ``movers`` under the row numbers ``holes`` (the caller
        moves their data there next); ``keys`` still holds every row's key as before."""
        _index_remove_and_move(self.table, self._shift(), keys, np.asarray(drop, np.int64),
                               np.asarray(holes, np.int64), np.asarray(movers, np.int64))

    def insert(self, keys: np.ndarray, start: int, stop: int) -> None:
        """Index the rows start..stop-1 just appended to keys (their keys absent so far)."""
        assert 2 * stop <= len(self.table), f"{stop} rows overfill a table of {len(self.table)}: rebuild first"
        _index_insert(self.table, self._shift(), keys, start, stop)

    def merge(self, map_keys: np.ndarray, frame: FrameGroups, attr: np.ndarray, count: np.ndarray,
              last_seen: np.ndarray, frame_index: int) -> np.ndarray:
        """Fold the frame's voxels present in the map into their rows (see ``_merge_frame``); returns the
        indices [A] int64 of the frame's voxels absent from the map, in the frame's order."""
        absent = np.empty(len(frame.keys), np.int64)
        n = _merge_frame(self.table, self._shift(), map_keys, frame.keys, frame.counts, frame.sums, attr, count,
                         last_seen, frame_index, absent)
        return absent[:n]

    def lookup(self, keys: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Rows [Q] int64 of the query keys [Q] int64, -1 where absent."""
        out = np.empty(len(query), np.int64)
        _index_lookup(self.table, self._shift(), keys, np.ascontiguousarray(query, dtype=np.int64), out)
        return out

    def _shift(self) -> int:
        return 64 - (len(self.table).bit_length() - 1)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _merge_frame(table, shift, map_keys, keys, counts, sums, attr, count, last_seen, frame, absent):
    """Fold a frame's sums into the map rows of its voxels (found in the map's index): running means of
    position and colour as (mean * old count + frame sum) / new count in float64, normals as plain sums;
    count and last_seen. Writes the frame voxels absent from the map to ``absent`` and returns how many.

    Three passes instead of one loop per voxel: the map's arrays are far larger than the cache, so each
    voxel's table slot, key and row are cache misses; in a pass whose iterations do not depend on each
    other the processor has many of them in flight at once, where one loop would wait for them in turn.
    """
    n = len(keys)
    mask = len(table) - 1
    slots = np.empty(n, np.int64)
    rows = np.empty(n, np.int64)
    for i in range(n):  # 1. the first slot of each voxel and the row it holds
        s = _slot(keys[i], shift)
        slots[i] = s
        rows[i] = table[s]
    for i in range(n):  # 2. that row's key: a match (the common case), or probe on
        r = rows[i]
        if r != _EMPTY and map_keys[r] != keys[i]:
            q = keys[i]
            s = slots[i]
            while True:
                s = (s + 1) & mask
                r = table[s]
                if r == _EMPTY or map_keys[r] == q:
                    break
            rows[i] = r
    n_absent = 0
    for i in range(n):  # 3. merge
        r = rows[i]
        if r == _EMPTY:
            absent[n_absent] = i
            n_absent += 1
            continue
        old = count[r]
        total = old + counts[i]
        fo = np.float64(old)
        ft = np.float64(total)
        for j in range(6):
            attr[r, j] = np.float32((np.float64(attr[r, j]) * fo + sums[i, j]) / ft)
        for j in range(6, 9):
            attr[r, j] = np.float32(np.float64(attr[r, j]) + sums[i, j])
        count[r] = total
        last_seen[r] = frame
    return n_absent


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _unit_normals(attr, n, out):
    for i in range(n):
        x, y, z = attr[i, 6], attr[i, 7], attr[i, 8]
        norm = np.sqrt(x * x + y * y + z * z)
        if norm > np.float32(1e-6):
            out[i, 0], out[i, 1], out[i, 2] = x / norm, y / norm, z / norm
        else:
            out[i, 0] = out[i, 1] = out[i, 2] = np.float32(0)


def unit_normals(attr: np.ndarray, n: int) -> np.ndarray:
    """[n, 3] float32 unit normals from the normal sums in ``attr[:n, 6:9]``; zero where a sum is (about) zero."""
    out = np.empty((n, 3), np.float32)
    _unit_normals(attr, n, out)
    return out


@numba.njit(nogil=True, cache=True, error_model="numpy")
def changed_since_recorded(labels, rows, colors, normals, then_colors, then_normals, color_tolerance, min_cos, out):
    """The segmentation schedule's test (``schedule.LabelLedger.changed``) over a whole map snapshot:
    out[i] where voxel i is labelled, has a ledger row, and its colour moved by more than
    ``color_tolerance`` in some channel or (both normals known) its normal's cosine fell below ``min_cos``."""
    for i in range(len(labels)):
        r = rows[i]
        if labels[i] < 0 or r < 0:
            out[i] = False
            continue
        moved = max(abs(colors[i, 0] - then_colors[r, 0]), abs(colors[i, 1] - then_colors[r, 1]),
                    abs(colors[i, 2] - then_colors[r, 2])) > color_tolerance
        n0, n1, n2 = normals[i, 0], normals[i, 1], normals[i, 2]
        m0, m1, m2 = then_normals[r, 0], then_normals[r, 1], then_normals[r, 2]
        both = (abs(n0) + abs(n1) + abs(n2) > 0) and (abs(m0) + abs(m1) + abs(m2) > 0)
        out[i] = moved or (both and n0 * m0 + n1 * m1 + n2 * m2 < min_cos)
