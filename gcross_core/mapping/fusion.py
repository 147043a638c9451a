"""RGB-D frames -> voxel-hashed coloured point map, with per-voxel class probabilities.

Used by the ROS node (integrate on the image callback, segment on a worker thread) and offline to turn a
frames-only scene into points. The per-frame work runs in compiled kernels (``fusion_kernels``, numba), one
loop over the pixels instead of a dozen vectorised passes, without the GIL.

Per frame (``VoxelMap.integrate``):
  1. depth in float32 metres (millimetres are converted once where the image is read, never here); zero,
     NaN, inf and depth > max_depth_m are invalid and ignored;
  2. valid pixels back-projected as ``geometry.backproject_depth`` does and moved to the map frame by
     ``cam_to_map``, in float32;
  3. points -> integer voxel coordinates -> packed keys; a run of consecutive pixels in one voxel (the
     common case: neighbouring pixels mostly share a voxel) looks its voxel up once in a hash table of the
     frame's voxels; counts, position and colour sums are added up per frame voxel as the pixels pass;
  4. one normal per frame voxel from the depth image at the voxel's central pixel (``fusion_kernels._pixel_normals``):
     cross product of the image-space gradients (central differences of back-projected points, spanning
     about the voxel's footprint), oriented toward the camera; none where the window crosses an occlusion
     edge or invalid depth. On real Kinect frames these agree with PCA normals of the fused map as well
     as averaging a one-pixel-baseline normal over every pixel of the voxel does, at a fraction of the cost;
  5. merge into the map: voxels are identified by packed int64 keys (21 bits per axis); a hash table of
     rows (``fusion_kernels.VoxelIndex``) finds existing voxels, new ones are appended in key order (after
     eviction if the map would exceed ``max_voxels``) and entered into the table.

What a voxel holds:
  - position: running mean of the points that fell in it (``coords()``). The mean sits on the observed
    surface, not on the lattice, which keeps the sub-voxel geometry the segmentation network was trained
    on (its inputs are grid-sampled real points, not cell centres). Lattice centres: ``centers()``.
  - colour: running mean RGB over all its points, 0..255 (``colors()``).
  - normal: running sum of the unit normals of the frames that observed it, renormalised on read (= the
    renormalised running mean); zero while no frame gave it a normal (``normals()``).
  - count: number of points fused (``counts()``); last_seen: index of the last frame that observed it.
  - class probabilities: running mean over segmentation updates, p <- p + (q - p) / (n + 1) with n the
    number of earlier updates of that voxel, i.e. every update weighs the same. Unlike keeping the last
    label, a single noisy update cannot flip a voxel that several updates agreed on, and unlike summing
    log-probabilities it does not become overconfident and stays able to change its mind.
    ``labels()`` is the argmax, ``confidence()`` the fused probability of that class; voxels never
    segmented give -1 and 0.

Bounded memory: the map never holds more than ``max_voxels`` voxels. When a frame brings new voxels that
would not fit, voxels are evicted first: least recently seen first (smallest last_seen), ties by fewest
points fused; remaining ties are broken arbitrarily. To avoid evicting on every frame once full, eviction
frees ``evict_fraction * max_voxels`` extra slots. Voxels seen in the current frame are evicted only if the
frame alone brings more new voxels than fit; then the new voxels with the most points are kept. Each
eviction logs a warning with the count. Storage grows by doubling up to ``max_voxels`` voxels of
88 to 96 + 4 * num_classes bytes each (168 to 176 with 20 classes; 8 to 16 of them the row hash table, a
power of two of 4-byte slots at most half full), plus per-frame temporaries proportional to the image size.

Thread safety: every public method takes the map's lock for its reads and writes, so one thread may
integrate while another calls ``snapshot()`` / ``fuse_probabilities()``. ``integrate`` does the per-frame
work (steps 1-4) without the lock and holds it only for the merge. Accessors and ``snapshot()`` return
copies; separate accessor calls may straddle an ``integrate``, so use ``snapshot()`` for arrays that must
match row for row. Row indices are stable while nothing is evicted; eviction moves the last rows into the
evicted rows' places and bumps ``layout_version``. A worker that segments a snapshot passes it back to
``fuse_probabilities(..., snapshot=snap)``, which maps the rows through voxel keys if the layout changed
meanwhile (voxels evicted since the snapshot are skipped).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Optional, Tuple

import numpy as np

from gcross_core.errors import InputError
from gcross_core.geometry import is_valid_pose
from gcross_core.image import check_depth_m, check_intrinsics
from gcross_core.mapping.voxel_keys import KEY_OFFSET as _KEY_OFFSET, pack_keys, unpack_keys

if TYPE_CHECKING:
    from gcross_core.mapping.fusion_kernels import FrameGroups
    from gcross_core.mapping.label_votes import LabelVotes


def _kernels():
    """The compiled kernels (numba), imported when the first VoxelMap is built: importing this module, and
    what imports it (the data and model code), needs no numba."""
    from gcross_core.mapping import fusion_kernels

    return fusion_kernels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameStats:
    """What one ``integrate`` call did."""

    frame_index: int  # 0 for the first integrated frame
    valid_pixels: int  # depth pixels used (finite, > 0, <= max_depth_m, inside the key range)
    frame_voxels: int  # distinct voxels observed by this frame
    new_voxels: int  # voxels created by this frame
    evicted: int  # voxels removed to stay within max_voxels
    map_voxels: int  # voxels in the map after this frame


@dataclass(frozen=True)
class MapSnapshot:
    """Consistent copies of the map's arrays at one moment, safe to use on another thread."""

    keys: np.ndarray  # [N] int64 packed voxel keys (identify voxels across layout changes)
    coords: np.ndarray  # [N, 3] float32 running mean positions, metres, map frame
    colors: np.ndarray  # [N, 3] float32 RGB 0..255
    normals: np.ndarray  # [N, 3] float32 unit normals (zero where unknown)
    counts: np.ndarray  # [N] int64 points fused
    last_seen: np.ndarray  # [N] int64 frame index
    labels: Optional[np.ndarray]  # [N] int64 fused label, -1 if never segmented (None: not requested)
    confidence: Optional[np.ndarray]  # [N] float32 fused probability of the label, 0 if never segmented
    layout_version: int  # VoxelMap.layout_version when taken
    frame_index: int  # frames integrated when taken

    def __len__(self) -> int:
        return len(self.keys)


def _check_pose(cam_to_map: np.ndarray) -> np.ndarray:
    T = np.asarray(cam_to_map)
    if T.shape != (4, 4):
        raise InputError(f"cam_to_map has shape {T.shape}, expected [4, 4]")
    if not np.all(np.isfinite(T)):
        raise InputError("cam_to_map contains NaN or inf, expected a finite rigid transform")
    if not is_valid_pose(T):
        raise InputError("cam_to_map is not rigid: expected an orthonormal rotation with det +1 and last row "
                         f"0 0 0 1, got {np.round(T, 4).tolist()}")
    return T.astype(np.float64)


class VoxelMap:
    """Voxel-hashed coloured point map fused from RGB-D frames (see the module docstring for the rules).

    voxel_size_m: edge of a voxel in metres; max_voxels: hard bound on the number of voxels;
    num_classes: length of the probability vectors given to ``fuse_probabilities``;
    max_depth_m: depth beyond this is ignored (Kinect-class sensors are too noisy past ~5 m);
    evict_fraction: extra share of max_voxels freed when evicting, so eviction runs every few frames
    rather than on every frame once the map is full;
    normal_max_jump: second difference of depth, relative to depth, treated as an occlusion edge by the
    normal estimate (``fusion_kernels._pixel_normals``).
    """

    def __init__(self, voxel_size_m: float, max_voxels: int, num_classes: int, *, max_depth_m: float = 5.0,
                 evict_fraction: float = 0.05, normal_max_jump: float = 0.05):
        if not (np.isfinite(voxel_size_m) and voxel_size_m > 0):
            raise InputError(f"voxel_size_m must be a finite value > 0, got {voxel_size_m}")
        if int(max_voxels) != max_voxels or max_voxels < 1:
            raise InputError(f"max_voxels must be an integer >= 1, got {max_voxels}")
        if int(num_classes) != num_classes or num_classes < 1:
            raise InputError(f"num_classes must be an integer >= 1, got {num_classes}")
        if not max_depth_m > 0:
            raise InputError(f"max_depth_m must be > 0, got {max_depth_m}")
        if not 0 <= evict_fraction < 1:
            raise InputError(f"evict_fraction must be in [0, 1), got {evict_fraction}")
        self.voxel_size_m = float(voxel_size_m)
        self.max_voxels = int(max_voxels)
        self.num_classes = int(num_classes)
        self.max_depth_m = float(max_depth_m)
        self.evict_fraction = float(evict_fraction)
        self.normal_max_jump = float(normal_max_jump)
        self._lock = threading.RLock()
        self._n = 0
        self._frame_index = 0  # index the next integrated frame gets
        self._layout_version = 0
        self._evicted_total = 0
        self._frame_voxel_hint = 0  # voxels of the last frame grouped (sizes the next frame's table)
        self._index = _kernels().VoxelIndex(0)  # key -> row of the voxels in _keys[:_n]
        self._alloc(min(self.max_voxels, 1 << 16))

    # ------------------------------------------------------------------ storage

    def _alloc(self, capacity: int) -> None:
        old = getattr(self, "_cap", 0)
        n = self._n

        def grow(name, shape, dtype):
            buf = np.zeros((capacity,) + shape, dtype=dtype)
            if old:
                buf[:n] = getattr(self, name)[:n]
            setattr(self, name, buf)

        grow("_keys", (), np.int64)
        # One row per voxel so a merge gathers and scatters once: running mean position (map frame),
        # running mean RGB, running sum of unit normals (map frame).
        grow("_attr", (9,), np.float32)
        grow("_count", (), np.int64)
        grow("_last_seen", (), np.int64)
        grow("_prob", (self.num_classes,), np.float32)  # running mean class probabilities
        grow("_seg_count", (), np.int64)  # segmentation updates fused
        # argmax of _prob and its value (-1 and 0 before any update), kept up to date by the updates, so that
        # reading the labels does not scan [N, num_classes] probabilities (what a labelled cloud does often)
        grow("_label", (), np.int64)
        grow("_conf", (), np.float32)
        self._cap = capacity
        self._index.rebuild(self._keys, n, capacity)

    def _ensure_capacity(self, needed: int) -> None:
        if needed > self._cap:
            self._alloc(min(self.max_voxels, max(needed, 2 * self._cap)))

    _ARRAYS = ("_keys", "_attr", "_count", "_last_seen", "_prob", "_seg_count", "_label", "_conf")
    _MAX_NORMAL_BASELINE_PX = 8  # wider normal windows mostly reach neighbouring surfaces

    # ------------------------------------------------------------------ frame processing (no lock)

    def _frame_voxels(self, color_rgb: np.ndarray, depth: np.ndarray, K: np.ndarray,
                      cam_to_map: np.ndarray) -> FrameGroups:
        if not isinstance(color_rgb, np.ndarray) or color_rgb.dtype != np.uint8 or color_rgb.ndim != 3 \
                or color_rgb.shape[2] != 3:
            desc = f"{color_rgb.dtype} {color_rgb.shape}" if isinstance(color_rgb, np.ndarray) else type(color_rgb)
            raise InputError(f"color_rgb is {desc}, expected uint8 [H, W, 3] RGB")
        if not isinstance(depth, np.ndarray):
            raise InputError(f"depth is {type(depth)}, expected a numpy array")
        depth_m = check_depth_m(depth)
        h, w = depth_m.shape
        if color_rgb.shape[:2] != (h, w):
            raise InputError(f"depth image {w}x{h} does not match color {color_rgb.shape[1]}x{color_rgb.shape[0]}"
                             " (expected depth registered to color)")
        K = check_intrinsics(K)
        T = _check_pose(cam_to_map)
        fv = _kernels().group_frame(color_rgb, depth_m, K, T, self.voxel_size_m, self.max_depth_m,
                                    self._MAX_NORMAL_BASELINE_PX, self.normal_max_jump,
                                    expected_voxels=self._frame_voxel_hint)
        self._frame_voxel_hint = len(fv.keys)  # consecutive frames of one camera see about as many
        if fv.dropped:
            log.warning("fusion: %d points beyond the voxel key range (+-%.0f m) dropped",
                        fv.dropped, _KEY_OFFSET * self.voxel_size_m)
        return fv

    # ------------------------------------------------------------------ public API

    def integrate(self,
                  color_rgb: np.ndarray,  # [H, W, 3] uint8 RGB, registered to depth
                  depth: np.ndarray,  # [H, W] float32 metres; 0, NaN, inf = no reading
                  K: np.ndarray,  # [3, 3] depth (= color) intrinsics, pixels
                  cam_to_map: np.ndarray,  # [4, 4] rigid camera-to-map transform
                  ) -> FrameStats:
        """Fuse one RGB-D frame into the map; returns what it did.

        Raises ValueError (nothing fused) for a colour image that is not uint8 [H, W, 3], a depth image
        that is not float32 metres [H, W] of the colour image's size (uint16 millimetres included: convert
        them with ``gcross_core.image.depth_mm_to_m`` where the image is read), a non-pinhole or non-finite
        K, or a non-finite or non-rigid pose. A frame without valid depth is counted and changes nothing else.
        """
        fv = self._frame_voxels(color_rgb, depth, K, cam_to_map)
        with self._lock:
            return self._merge(fv)

    def integrate_labelled(self,
                           color_rgb: np.ndarray,  # [H, W, 3] uint8 RGB, registered to depth
                           depth: np.ndarray,  # [H, W] float32 metres; 0, NaN, inf = no reading
                           K: np.ndarray,  # [3, 3] depth (= color) intrinsics, pixels
                           cam_to_map: np.ndarray,  # [4, 4] rigid camera-to-map transform
                           votes: Dict[str, "LabelVotes"],  # name -> accumulator of that image's ids
                           images: Dict[str, np.ndarray],  # name -> [H, W] integer ids registered to depth
                           ) -> FrameStats:
        """:meth:`integrate` plus a vote per fused pixel: ``votes[name]`` counts, per voxel key, the ids of
        ``images[name]`` at the pixels that fell into the voxel (2D label / instance images -> 3D labels;
        :func:`fuse_labelled_frames`). The votes live outside the map, keyed by voxel key, so eviction
        and the map's own arrays are untouched.
        """
        for name, img in images.items():
            if np.asarray(img).shape != np.asarray(depth).shape[:2]:
                raise InputError(f"{name} image has shape {np.asarray(img).shape}, expected the depth image's "
                                 f"{np.asarray(depth).shape[:2]} (registered to depth)")
        fv = self._frame_voxels(color_rgb, depth, K, cam_to_map)
        inverse = fv.inverse() if images else None
        for name, img in images.items():
            votes[name].add(fv.keys, inverse, np.asarray(img).reshape(-1)[fv.pix])
        with self._lock:
            return self._merge(fv)

    def _lookup(self, keys: np.ndarray) -> np.ndarray:
        """Rows of the given keys [M] (-1 where absent). Caller holds the lock."""
        return self._index.lookup(self._keys, keys)

    def _merge(self, fv: FrameGroups) -> FrameStats:
        frame = self._frame_index
        self._frame_index += 1
        # Running means as (mean * old count + frame sum) / new count; normals are plain sums.
        new = self._index.merge(self._keys, fv, self._attr, self._count, self._last_seen, frame)
        # New voxels in key order, so rows (and ties in eviction) do not depend on the image's layout.
        new = new[np.argsort(fv.keys[new])]
        new_keys = fv.keys[new]
        new_counts = fv.counts[new]
        new_sums = fv.sums[new]
        evicted = 0
        if self._n + len(new_keys) > self.max_voxels:
            if len(new_keys) > self.max_voxels:
                # The frame alone does not fit: keep its best-observed new voxels, drop everything older.
                keep = np.sort(np.argsort(-new_counts, kind="stable")[: self.max_voxels])
                evicted = len(new_keys) - len(keep)
                new_keys, new_counts, new_sums = new_keys[keep], new_counts[keep], new_sums[keep]
                n_old = self._n
            else:
                n_old = self._n + len(new_keys) - (self.max_voxels - int(self.evict_fraction * self.max_voxels))
                n_old = min(max(n_old, self._n + len(new_keys) - self.max_voxels), self._n)
            evicted += n_old
            self._evict(n_old)
            log.warning("fusion: map full (max_voxels=%d), evicted %d voxels (least recently seen first)",
                        self.max_voxels, evicted)
            self._evicted_total += evicted

        m = len(new_keys)
        if m:
            self._ensure_capacity(self._n + m)
            s = slice(self._n, self._n + m)
            self._keys[s] = new_keys
            self._attr[s, :6] = new_sums[:, :6] / new_counts[:, None]
            self._attr[s, 6:] = new_sums[:, 6:]
            self._count[s] = new_counts
            self._last_seen[s] = frame
            self._prob[s] = 0
            self._seg_count[s] = 0
            self._label[s] = -1
            self._conf[s] = 0
            self._index.insert(self._keys, self._n, self._n + m)
            self._n += m
        return FrameStats(frame_index=frame, valid_pixels=len(fv.pix), frame_voxels=len(fv.keys),
                          new_voxels=m, evicted=evicted, map_voxels=self._n)

    def _evict(self, k: int) -> None:
        """Remove the k voxels first in (last_seen, count) order; the last remaining rows take their places.
        Caller holds the lock."""
        if k <= 0:
            return
        n = self._n
        if k >= n:
            drop = np.arange(n)
        else:
            # One int64 sort key: last_seen in the high bits, the count (saturated) in the low 32.
            order_key = (self._last_seen[:n] << 32) | np.minimum(self._count[:n], (1 << 32) - 1)
            drop = np.argpartition(order_key, k - 1)[:k]
        n_keep = n - len(drop)
        # The last rows that stay fill the holes below n_keep (both in row order): the work follows the
        # voxels evicted, not the map's size (compacting every array of a million rows was the largest cost of
        # fusion in a profile of the node).
        gone = np.zeros(n, dtype=bool)
        gone[drop] = True
        holes = np.flatnonzero(gone[:n_keep])
        movers = n_keep + np.flatnonzero(~gone[n_keep:])
        self._index.remove_and_move(self._keys, np.flatnonzero(gone), holes, movers)
        for name in self._ARRAYS:
            buf = getattr(self, name)
            buf[holes] = buf[movers]
        self._n = n_keep
        self._layout_version += 1

    def fuse_probabilities(self,
                           indices: np.ndarray,  # [M] int rows (of the map, or of `snapshot` when given)
                           probs: np.ndarray,  # [M, num_classes] class probabilities, rows sum to 1
                           snapshot: Optional[MapSnapshot] = None,
                           ) -> int:
        """Fuse one segmentation update: running mean of probabilities per voxel. Returns voxels updated.

        With ``snapshot``, ``indices`` are rows of that snapshot; voxels evicted since it was taken are
        skipped. Without it they are rows of the map now.
        """
        indices = np.asarray(indices)
        probs = np.asarray(probs)
        if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
            raise InputError(f"indices has shape {indices.shape} dtype {indices.dtype}, expected integer [M]")
        if probs.shape != (len(indices), self.num_classes):
            raise InputError(f"probs has shape {probs.shape}, expected [{len(indices)}, {self.num_classes}]")
        if not np.all(np.isfinite(probs)) or (probs < 0).any():
            raise InputError("probs contains NaN, inf or negative values, expected probabilities")
        if len(indices) and not np.allclose(probs.sum(1), 1.0, atol=1e-3):
            raise InputError("probs rows do not sum to 1, expected probabilities (apply softmax first)")
        if len(np.unique(indices)) != len(indices):
            raise InputError("indices contains duplicates, expected each voxel at most once per update")
        limit = len(snapshot) if snapshot is not None else None
        with self._lock:
            bound = limit if limit is not None else self._n
            if len(indices) and (indices.min() < 0 or indices.max() >= bound):
                raise InputError(f"indices out of range [0, {bound})")
            if snapshot is None or snapshot.layout_version == self._layout_version:
                rows = indices.astype(np.int64)  # rows are stable until an eviction
                q = probs
            else:
                rows = self._lookup(snapshot.keys[indices])
                ok = rows >= 0
                rows, q = rows[ok], probs[ok]
            n_prev = self._seg_count[rows]
            self._prob[rows] += ((q - self._prob[rows]) / (n_prev + 1)[:, None]).astype(np.float32)
            self._seg_count[rows] = n_prev + 1
            self._relabel_locked(rows)
            return len(rows)

    def _relabel_locked(self, rows) -> None:
        """Label and confidence of the given rows (a slice or indices) from their probabilities."""
        prob = self._prob[rows]
        segmented = self._seg_count[rows] > 0
        self._label[rows] = np.where(segmented, np.argmax(prob, axis=1), -1)
        self._conf[rows] = np.where(segmented, prob.max(axis=1, initial=0), 0)

    def snapshot(self, with_labels: bool = True) -> MapSnapshot:
        """Copies of all per-voxel arrays, taken under the lock (consistent with each other).

        ``with_labels=False`` skips the argmax over [N, num_classes] probabilities (and the time the lock
        is held for it) when the caller is about to segment the snapshot anyway.
        """
        with self._lock:
            n = self._n
            return MapSnapshot(keys=self._keys[:n].copy(), coords=self._attr[:n, 0:3].copy(),
                               colors=self._attr[:n, 3:6].copy(), normals=self._normals_locked(),
                               counts=self._count[:n].copy(), last_seen=self._last_seen[:n].copy(),
                               labels=self._label[:n].copy() if with_labels else None,
                               confidence=self._conf[:n].copy() if with_labels else None,
                               layout_version=self._layout_version, frame_index=self._frame_index)

    def _normals_locked(self) -> np.ndarray:
        return _kernels().unit_normals(self._attr, self._n)

    # ------------------------------------------------------------------ accessors (copies)

    def __len__(self) -> int:
        return self._n

    @property
    def layout_version(self) -> int:
        """Incremented whenever eviction renumbers rows."""
        return self._layout_version

    @property
    def frames_integrated(self) -> int:
        return self._frame_index

    @property
    def evicted_total(self) -> int:
        return self._evicted_total

    def _rows(self, name: str, columns: Optional[slice] = None) -> np.ndarray:
        """A copy of the map's rows of one of its arrays (``_ARRAYS``; ``columns`` of a 2D one), taken under
        the lock."""
        with self._lock:
            rows = getattr(self, name)[: self._n]
            return (rows if columns is None else rows[:, columns]).copy()

    def keys(self) -> np.ndarray:
        """[N] int64 packed voxel keys (``unpack_keys`` gives integer voxel coordinates)."""
        return self._rows("_keys")

    def coords(self) -> np.ndarray:
        """[N, 3] float32 running mean position of each voxel's points, metres, map frame."""
        return self._rows("_attr", slice(0, 3))

    def centers(self) -> np.ndarray:
        """[N, 3] float32 lattice centres of the voxels, metres, map frame."""
        return ((unpack_keys(self.keys()) + 0.5) * self.voxel_size_m).astype(np.float32)

    def colors(self) -> np.ndarray:
        """[N, 3] float32 running mean RGB, 0..255."""
        return self._rows("_attr", slice(3, 6))

    def normals(self) -> np.ndarray:
        """[N, 3] float32 unit normals, map frame (zero where no normal was ever estimated)."""
        with self._lock:
            return self._normals_locked()

    def counts(self) -> np.ndarray:
        """[N] int64 points fused into each voxel."""
        return self._rows("_count")

    def last_seen(self) -> np.ndarray:
        """[N] int64 index of the last frame that observed each voxel."""
        return self._rows("_last_seen")

    def probabilities(self) -> np.ndarray:
        """[N, num_classes] float32 fused class probabilities (all zero where never segmented)."""
        return self._rows("_prob")

    def labels(self) -> np.ndarray:
        """[N] int64 argmax of the fused probabilities, -1 where never segmented."""
        return self._rows("_label")

    def confidence(self) -> np.ndarray:
        """[N] float32 fused probability of ``labels()``, 0 where never segmented."""
        return self._rows("_conf")

    # ------------------------------------------------------------------ whole-map edits

    def clear(self) -> None:
        """Remove every voxel; frame indices keep counting, so snapshots taken before stay distinguishable."""
        with self._lock:
            self._n = 0
            self._index.rebuild(self._keys, 0, self._cap)
            self._layout_version += 1

    def export(self) -> Tuple[MapSnapshot, np.ndarray]:
        """A snapshot (without labels) and the fused probabilities [N, num_classes] of the same rows, taken
        under one lock: what :meth:`restore` takes back."""
        with self._lock:
            return self.snapshot(with_labels=False), self._prob[: self._n].copy()

    def restore(self,
                grid: np.ndarray,  # [N, 3] int integer voxel coordinates (floor(position / voxel_size_m))
                coords: np.ndarray,  # [N, 3] mean position, metres, map frame
                colors: np.ndarray,  # [N, 3] mean RGB 0..255
                normals: np.ndarray,  # [N, 3] unit normals (zero where unknown)
                counts: np.ndarray,  # [N] points fused into each voxel (>= 1)
                probabilities: np.ndarray,  # [N, num_classes] fused class probabilities (zero: never segmented)
                ) -> None:
        """Replace the map's content with saved voxels (``gcross_core.mapping.map_io.load_map``).

        The voxels count as seen before any frame to come (``last_seen`` -1), so a ``recent``-scope
        segmentation leaves the labelled ones alone until the camera observes them again.
        """
        n = len(grid)
        shapes = (("grid", grid, (n, 3)), ("coords", coords, (n, 3)), ("colors", colors, (n, 3)),
                  ("normals", normals, (n, 3)), ("counts", counts, (n,)),
                  ("probabilities", probabilities, (n, self.num_classes)))
        for name, arr, shape in shapes:
            if np.shape(arr) != shape:
                raise InputError(f"{name} has shape {np.shape(arr)}, expected {shape}")
        if n > self.max_voxels:
            raise InputError(f"{n} voxels do not fit max_voxels={self.max_voxels}")
        grid = np.asarray(grid, dtype=np.int64)
        if n and (grid.min() < -_KEY_OFFSET or grid.max() >= _KEY_OFFSET):
            raise InputError(f"grid coordinates lie outside +-{_KEY_OFFSET} voxels")
        keys = pack_keys(grid)
        if len(np.unique(keys)) != n:
            raise InputError("grid holds the same voxel more than once")
        counts = np.asarray(counts, dtype=np.int64)
        if n and counts.min() < 1:
            raise InputError("counts must be >= 1")
        with self._lock:
            self.clear()
            self._ensure_capacity(n)
            for name in self._ARRAYS:
                getattr(self, name)[:n] = 0
            self._keys[:n] = keys
            self._attr[:n, 0:3] = coords
            self._attr[:n, 3:6] = colors
            self._attr[:n, 6:9] = np.asarray(normals, np.float32) * counts[:, None]  # normals are kept as sums
            self._count[:n] = counts
            self._last_seen[:n] = -1
            self._prob[:n] = probabilities
            self._seg_count[:n] = (np.asarray(probabilities).sum(axis=1) > 0).astype(np.int64)
            self._relabel_locked(slice(0, n))
            self._index.rebuild(self._keys, n, self._cap)
            self._n = n
