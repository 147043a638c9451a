"""VoxelMap's compiled per-frame path against a plain NumPy reference of the same rules.

The reference groups points with np.unique, sums with np.bincount, finds each voxel's central pixel by
walking its runs, takes normals from reference_normals.pixel_normals and keeps the map in a dict; eviction follows
the documented order. Frames: a room corner with a box seen from several poses, with invalid pixels,
several voxel sizes, a map bound small enough to evict, label votes, and points beyond the key range.
"""
import logging

import numpy as np
import pytest

from gcross_core.mapping.label_votes import LabelVotes
from gcross_core.mapping.fusion import VoxelMap
from gcross_core.mapping.voxel_keys import pack_keys
from reference_normals import pixel_normals

W, H = 80, 60
K = np.array([[60.0, 0, W / 2 - 0.5], [0, 60.0, H / 2 - 0.5], [0, 0, 1]])
KEY_OFFSET = 1 << 20


def look_at(eye, target):
    fwd = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    T = np.eye(4)
    T[:3, :3] = np.stack([right, np.cross(fwd, right), fwd], axis=1)
    T[:3, 3] = eye
    return T


def render(T, rng):
    """Depth [H, W] float32 of the floor z = 0, the walls x = 0 and y = 0 and a box, with noise and holes;
    colour [H, W, 3] uint8 with a checker pattern."""
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
    d = rays @ T[:3, :3].T
    o = T[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.full(len(d), np.inf)
        for axis in range(3):  # the planes x = 0, y = 0, z = 0
            ta = -o[axis] / d[:, axis]
            t = np.where((ta > 0) & (ta < t), ta, t)
        lo, hi = np.array([0.8, 0.6, 0.0]), np.array([1.4, 1.1, 0.7])
        t0, t1 = (lo - o) / d, (hi - o) / d
        near = np.max(np.minimum(t0, t1), axis=1)
        far = np.min(np.maximum(t0, t1), axis=1)
    box = (near <= far) & (near > 0) & (near < t)
    t = np.where(box, near, t)
    hit = o + t[:, None] * d
    checker = (np.floor(hit / 0.1).sum(axis=1) % 2)[:, None]
    color = np.where(box[:, None], [180, 90, 30], [200, 200, 190]) * (0.7 + 0.3 * checker)
    depth = (t * (1 + 0.003 * rng.standard_normal(len(t)))).astype(np.float32)
    depth[rng.random(len(t)) < 0.05] = 0
    depth[rng.random(len(t)) < 0.01] = np.nan
    return depth.reshape(H, W), np.clip(color, 0, 255).astype(np.uint8).reshape(H, W, 3)


def frames(n=6, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        a = 0.35 * k
        eye = np.array([2.6 + 0.3 * np.cos(a), 2.2 + 0.4 * np.sin(a), 1.3 + 0.05 * k])
        T = look_at(eye, np.array([0.9, 0.7, 0.3]))
        depth, color = render(T, rng)
        out.append((color, depth, T))
    return out


class ReferenceMap:
    """The map's rules written out plainly (slow): one frame at a time, a dict from key to row."""

    def __init__(self, voxel_size_m, max_voxels, max_depth_m=5.0, evict_fraction=0.05, max_jump=0.05):
        self.vs, self.max_voxels, self.max_depth = voxel_size_m, max_voxels, max_depth_m
        self.evict_fraction, self.max_jump = evict_fraction, max_jump
        self.keys = np.empty(0, np.int64)
        self.attr = np.empty((0, 9), np.float32)  # mean position, mean RGB, normal sum
        self.count = np.empty(0, np.int64)
        self.last_seen = np.empty(0, np.int64)
        self.frame = 0
        self.dropped = 0

    def frame_voxels(self, color, depth, K_, T):
        flat = depth.reshape(-1)
        with np.errstate(invalid="ignore"):
            pix = np.flatnonzero((flat > 0) & (flat <= np.float32(self.max_depth)))
        K32 = K_.astype(np.float32)
        z = flat[pix]
        x = (((pix % W).astype(np.float32) - K32[0, 2]) * z) / K32[0, 0]
        y = (((pix // W).astype(np.float32) - K32[1, 2]) * z) / K32[1, 1]
        Rv = (T[:3, :3] / self.vs).astype(np.float32)
        tv = (T[:3, 3] / self.vs).astype(np.float32)
        g = np.stack([x * Rv[i, 0] + y * Rv[i, 1] + z * Rv[i, 2] + tv[i] for i in range(3)], axis=1)
        inside = np.all((g >= -KEY_OFFSET) & (g < KEY_OFFSET), axis=1)
        self.dropped = int((~inside).sum())
        pix, x, y, z, g = pix[inside], x[inside], y[inside], z[inside], g[inside]
        point_keys = pack_keys(np.floor(g).astype(np.int64))
        keys, inverse = np.unique(point_keys, return_inverse=True)
        u = len(keys)
        counts = np.bincount(inverse, minlength=u)
        sums = np.zeros((u, 9))
        rgb = color.reshape(-1, 3)[pix]
        for i, values in enumerate((x, y, z, rgb[:, 0], rgb[:, 1], rgb[:, 2])):
            sums[:, i] = np.bincount(inverse, values.astype(np.float64), u)
        # Central pixel: the middle point of the voxel's middle run of consecutive points.
        runs = [[] for _ in range(u)]
        start = 0
        for i in range(1, len(pix) + 1):
            if i == len(pix) or inverse[i] != inverse[start]:
                runs[inverse[start]].append((start, i - start))
                start = i
        rep = np.array([pix[r[(len(r) - 1) // 2][0] + r[(len(r) - 1) // 2][1] // 2] for r in runs], np.int64)
        f = 0.5 * (K_[0, 0] + K_[1, 1])
        k = np.clip(np.round(0.5 * self.vs * f / flat[rep].astype(np.float64)), 1, 8).astype(np.int64)
        n = pixel_normals(depth, K_, rep, k, self.max_jump)
        retry = (k > 1) & ~n.any(axis=1)
        n[retry] = pixel_normals(depth, K_, rep[retry], 1, self.max_jump)
        R, t = T[:3, :3], T[:3, 3]
        sums[:, 0:3] = sums[:, 0:3] @ R.T + counts[:, None] * t
        sums[:, 6:9] = n.astype(np.float64) @ R.T
        return keys, counts, sums, inverse, pix

    def integrate(self, color, depth, K_, T):
        keys, counts, sums, inverse, pix = self.frame_voxels(color, depth, K_, T)
        frame, self.frame = self.frame, self.frame + 1
        row_of = {k: r for r, k in enumerate(self.keys.tolist())}
        new = []
        for i, key in enumerate(keys.tolist()):
            r = row_of.get(key)
            if r is None:
                new.append(i)
                continue
            old, total = self.count[r], self.count[r] + counts[i]
            a = self.attr[r].astype(np.float64)
            a[:6] = (a[:6] * old + sums[i, :6]) / total
            a[6:] += sums[i, 6:]
            self.attr[r], self.count[r], self.last_seen[r] = a, total, frame
        new = np.array(new, np.int64)  # keys are sorted, so new voxels come in key order
        evicted = 0
        if len(self.keys) + len(new) > self.max_voxels:
            if len(new) > self.max_voxels:
                keep = np.sort(np.argsort(-counts[new], kind="stable")[: self.max_voxels])
                evicted = len(new) - len(keep)
                new = new[keep]
                n_drop = len(self.keys)
            else:
                n_drop = len(self.keys) + len(new) - (self.max_voxels - int(self.evict_fraction * self.max_voxels))
                n_drop = min(max(n_drop, len(self.keys) + len(new) - self.max_voxels), len(self.keys))
            evicted += n_drop
            if n_drop == 0:
                n_drop = len(self.keys)  # nothing to keep apart: drop nothing below
            order_key = (self.last_seen << 32) | np.minimum(self.count, (1 << 32) - 1)
            gone = np.zeros(len(self.keys), bool)
            gone[np.argpartition(order_key, n_drop - 1)[:n_drop] if n_drop < len(self.keys) else slice(None)] = True
            # the last rows that stay move into the evicted rows' places, in row order
            n_keep = len(self.keys) - int(gone.sum())
            holes, movers = np.flatnonzero(gone[:n_keep]), n_keep + np.flatnonzero(~gone[n_keep:])
            for name in ("keys", "attr", "count", "last_seen"):
                arr = getattr(self, name)
                arr[holes] = arr[movers]
                setattr(self, name, arr[:n_keep])
        if len(new):
            attr = np.concatenate([sums[new, :6] / counts[new, None], sums[new, 6:]], axis=1).astype(np.float32)
            self.keys = np.concatenate([self.keys, keys[new]])
            self.attr = np.concatenate([self.attr, attr])
            self.count = np.concatenate([self.count, counts[new]])
            self.last_seen = np.concatenate([self.last_seen, np.full(len(new), frame)])
        return keys, inverse, pix, len(new), evicted


def assert_same_map(vm, ref):
    np.testing.assert_array_equal(vm.keys(), ref.keys)  # same voxels in the same rows
    np.testing.assert_array_equal(vm.counts(), ref.count)
    np.testing.assert_array_equal(vm.last_seen(), ref.last_seen)
    np.testing.assert_allclose(vm.coords(), ref.attr[:, 0:3], rtol=0, atol=1e-5)
    np.testing.assert_allclose(vm.colors(), ref.attr[:, 3:6], rtol=0, atol=1e-3)
    s = ref.attr[:, 6:9]
    norm = np.linalg.norm(s, axis=1, keepdims=True)
    np.testing.assert_allclose(vm.normals(), np.where(norm > 1e-6, s / np.maximum(norm, 1e-6), 0), atol=1e-5)


@pytest.mark.parametrize("voxel_size_m, max_voxels", [
    (0.1, 100_000),  # voxels span several pixel rows (runs); no eviction
    (0.04, 2_500),  # evicts every few frames
    (0.004, 3_000),  # ~1 voxel per pixel: the frame's hash table is sized again, and frames alone overflow
])
def test_map_matches_the_plain_reference(voxel_size_m, max_voxels):
    vm = VoxelMap(voxel_size_m, max_voxels, num_classes=2)
    ref = ReferenceMap(voxel_size_m, max_voxels)
    evictions = 0
    for color, depth, T in frames():
        stats = vm.integrate(color, depth, K, T)
        keys, _, pix, new, evicted = ref.integrate(color, depth, K, T)
        assert (stats.valid_pixels, stats.frame_voxels, stats.new_voxels, stats.evicted) \
            == (len(pix), len(keys), new, evicted)
        assert stats.map_voxels == len(vm) == len(ref.keys) <= max_voxels
        evictions += evicted > 0
        assert_same_map(vm, ref)
    assert (evictions > 0) == (max_voxels < 100_000)
    assert np.linalg.norm(vm.normals(), axis=1).mean() > 0.5  # most voxels have a normal to compare


def test_label_votes_follow_the_points_of_each_voxel():
    vm = VoxelMap(0.1, 100_000, num_classes=2)
    ref = ReferenceMap(0.1, 100_000)
    votes = {"label": LabelVotes("label")}
    counted = {}
    rng = np.random.default_rng(5)
    for color, depth, T in frames(4):
        ids = rng.integers(0, 4, (H, W))
        vm.integrate_labelled(color, depth, K, T, votes, {"label": ids})
        keys, inverse, pix, _, _ = ref.integrate(color, depth, K, T)
        for key, label in zip(keys[inverse].tolist(), ids.reshape(-1)[pix].tolist()):
            if label:
                counted.setdefault(key, np.zeros(4, np.int64))[label] += 1
    expected = np.array([np.argmax(counted[k]) if k in counted else -1 for k in vm.keys().tolist()])
    np.testing.assert_array_equal(votes["label"].majority(vm.keys()), expected)
    assert (expected > 0).mean() > 0.5


def test_points_beyond_the_key_range_are_dropped_and_counted(caplog):
    # 10 um voxels: the key range is +-10.5 m, so the floor near a camera at x = y = 12 m falls outside.
    T = look_at(np.array([12.0, 12.0, 1.5]), np.array([0.0, 0.0, 0.5]))
    depth, color = render(T, np.random.default_rng(2))
    vm = VoxelMap(1e-5, 1_000_000, num_classes=1, max_depth_m=25.0)
    ref = ReferenceMap(1e-5, 1_000_000, max_depth_m=25.0)
    with caplog.at_level(logging.WARNING, logger="gcross_core.mapping.fusion"):
        stats = vm.integrate(color, depth, K, T)
    keys, _, pix, _, _ = ref.integrate(color, depth, K, T)
    assert 0 < ref.dropped < np.isfinite(depth).sum() and stats.valid_pixels == len(pix)
    assert any(f"{ref.dropped} points beyond the voxel key range" in r.message for r in caplog.records)
    np.testing.assert_array_equal(np.sort(vm.keys()), keys)


def test_restored_and_cleared_maps_find_their_voxels():
    (color, depth, T), = frames(1)
    vm = VoxelMap(0.04, 100_000, num_classes=2)
    vm.integrate(color, depth, K, T)
    snap, probs = vm.export()
    from gcross_core.mapping.voxel_keys import unpack_keys
    back = VoxelMap(0.04, 100_000, num_classes=2)
    back.restore(unpack_keys(snap.keys), snap.coords, snap.colors, snap.normals, snap.counts, probs)
    stats = back.integrate(color, depth, K, T)
    assert stats.new_voxels == 0 and len(back) == len(vm)
    np.testing.assert_array_equal(back.counts(), 2 * snap.counts)
    back.clear()
    assert back.integrate(color, depth, K, T).new_voxels == len(vm)


def test_warm_up_compiles_every_kernel_the_map_and_the_schedule_use():
    from gcross_core.mapping import fusion_kernels as fk
    from gcross_core.mapping.pipeline import warm_up_kernels

    warm_up_kernels()
    for kernel in (fk._group_pixels, fk._finish_voxels, fk._merge_frame, fk._index_insert, fk._index_lookup,
                   fk._index_remove_and_move, fk._unit_normals, fk.changed_since_recorded):
        assert kernel.signatures, f"{kernel.__name__} was not compiled by warm_up_kernels"
