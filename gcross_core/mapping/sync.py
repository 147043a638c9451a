"""Approximate-time synchronization of several streams and a pose buffer, without ROS types.

Both work on integer nanosecond stamps and opaque payloads, so they are unit-testable without ROS and
reusable offline (bag replay). :mod:`gcross_core.mapping.assembly` puts them together.

``ApproximateTimeSync`` follows the semantics of message_filters' ApproximateTimeSynchronizer: every
stream keeps at most ``queue_size`` messages; when a message arrives, the synchronizer looks for one
message on every other stream whose stamp lies within ``slop`` of it such that the whole set spans at
most ``slop``, preferring the closest stamps, and emits that set. In addition (as the ROS 1 policy does)
it never emits a set older than one already emitted: messages older than an emitted set are dropped as
unmatched, and a message whose stamp does not advance past its stream's previous one is dropped as out
of order. Every drop is reported with the streams that had no partner for it, so that a caller can say
*why* a frame was lost (e.g. "no camera_info within slop").
"""
from __future__ import annotations

import bisect
import itertools
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

import numpy as np

from gcross_core.errors import InputError
from gcross_core.geometry import is_valid_pose, pose_from_quat, quat_from_pose

OUT_OF_ORDER = "out of order"
UNMATCHED = "unmatched"
QUEUE_OVERFLOW = "queue overflow"
TIME_JUMP = "time jump"


@dataclass(frozen=True)
class Drop:
    """One message the synchronizer gave up on."""

    stream: int  # index of the stream it came from
    stamp_ns: int
    reason: str  # OUT_OF_ORDER, UNMATCHED, QUEUE_OVERFLOW or TIME_JUMP
    missing: Tuple[int, ...] = ()  # streams that held no message within slop of it when it was dropped


@dataclass
class SyncResult:
    """What one :meth:`ApproximateTimeSync.add` call produced."""

    matched: List[Tuple[Any, ...]] = field(default_factory=list)  # one payload per stream, per emitted set
    matched_stamps: List[Tuple[int, ...]] = field(default_factory=list)
    dropped: List[Drop] = field(default_factory=list)
    time_jump_ns: Optional[int] = None  # how far time jumped back when this message reset the synchronizer


class ApproximateTimeSync:
    """Group messages of ``num_streams`` streams whose stamps agree within ``slop_ns``."""

    def __init__(self, num_streams: int, slop_ns: int, queue_size: int, reset_jump_ns: Optional[int] = None):
        """
        Args:
            num_streams: number of streams (>= 2).
            slop_ns: largest spread of stamps within one emitted set.
            queue_size: messages kept per stream while waiting for partners (>= 1).
            reset_jump_ns: a stamp this far *behind* its stream's previous one is taken as a restart of
                time (a bag played again, a simulator reset): all queues are cleared instead of dropping
                the message. None: never reset.
        """
        if num_streams < 2:
            raise ValueError(f"num_streams must be >= 2, got {num_streams}")
        if slop_ns < 0:
            raise InputError(f"slop_ns must be >= 0, got {slop_ns}")
        if queue_size < 1:
            raise InputError(f"queue_size must be >= 1, got {queue_size}")
        self.num_streams = num_streams
        self.slop_ns = int(slop_ns)
        self.queue_size = int(queue_size)
        self.reset_jump_ns = reset_jump_ns
        self.counts: Counter = Counter()  # "emitted", "reset" and (reason, stream) drop counts
        self.reset()

    def reset(self) -> None:
        """Forget all queued messages and stamp history."""
        # per stream: stamps (sorted ascending) and payloads, kept parallel
        self._stamps: List[List[int]] = [[] for _ in range(self.num_streams)]
        self._payloads: List[List[Any]] = [[] for _ in range(self.num_streams)]
        self._last_stamp: List[Optional[int]] = [None] * self.num_streams

    def pending(self, stream: int) -> int:
        return len(self._stamps[stream])

    def _missing_for(self, stream: int, stamp_ns: int) -> Tuple[int, ...]:
        missing = []
        for j in range(self.num_streams):
            if j == stream:
                continue
            stamps = self._stamps[j]
            k = bisect.bisect_left(stamps, stamp_ns - self.slop_ns)
            if k == len(stamps) or stamps[k] > stamp_ns + self.slop_ns:
                missing.append(j)
        return tuple(missing)

    def _drop(self, result: SyncResult, stream: int, index: int, reason: str) -> None:
        stamp = self._stamps[stream].pop(index)
        self._payloads[stream].pop(index)
        drop = Drop(stream, stamp, reason, self._missing_for(stream, stamp))
        result.dropped.append(drop)
        self.counts[(reason, stream)] += 1

    def add(self, stream: int, stamp_ns: int, payload: Any) -> SyncResult:
        """Offer one message; returns the sets it completed and the messages dropped on the way."""
        if not 0 <= stream < self.num_streams:
            raise ValueError(f"stream {stream} out of range 0..{self.num_streams - 1}")
        stamp_ns = int(stamp_ns)
        result = SyncResult()
        last = self._last_stamp[stream]
        if last is not None and stamp_ns <= last:
            if self.reset_jump_ns is not None and last - stamp_ns >= self.reset_jump_ns:
                for j in range(self.num_streams):
                    while self._stamps[j]:
                        self._drop(result, j, 0, TIME_JUMP)
                self._last_stamp = [None] * self.num_streams
                self.counts["reset"] += 1
                result.time_jump_ns = last - stamp_ns
            else:
                result.dropped.append(Drop(stream, stamp_ns, OUT_OF_ORDER))
                self.counts[(OUT_OF_ORDER, stream)] += 1
                return result
        self._last_stamp[stream] = stamp_ns
        self._stamps[stream].append(stamp_ns)
        self._payloads[stream].append(payload)
        while len(self._stamps[stream]) > self.queue_size:
            self._drop(result, stream, 0, QUEUE_OVERFLOW)

        match = self._find_set(stream, stamp_ns)
        if match is None:
            return result
        payloads = tuple(self._payloads[j][k] for j, k in enumerate(match))
        stamps = tuple(self._stamps[j][k] for j, k in enumerate(match))
        for j, k in enumerate(match):
            self._stamps[j].pop(k)
            self._payloads[j].pop(k)
        # Nothing older than an emitted set may be emitted later: such messages can only wait forever.
        oldest = min(stamps)
        stale = [(j, s) for j in range(self.num_streams) for s in self._stamps[j] if s < oldest]
        # partners are judged before any of the stale messages leave, so each names what it lacked
        missing = [self._missing_for(j, s) for j, s in stale]
        for (j, s), miss in zip(stale, missing):
            self._stamps[j].pop(0)
            self._payloads[j].pop(0)
            result.dropped.append(Drop(j, s, UNMATCHED, miss))
            self.counts[(UNMATCHED, j)] += 1
        result.matched.append(payloads)
        result.matched_stamps.append(stamps)
        self.counts["emitted"] += 1
        return result

    def drain(self) -> List[Drop]:
        """Give up on every queued message (the end of the input): one UNMATCHED drop each, in stamp order,
        each naming the streams that had no partner for it."""
        drops = []
        while any(self._stamps):
            j = min((j for j in range(self.num_streams) if self._stamps[j]), key=lambda j: self._stamps[j][0])
            stamp = self._stamps[j][0]
            drops.append(Drop(j, stamp, UNMATCHED, self._missing_for(j, stamp)))
            self._stamps[j].pop(0)
            self._payloads[j].pop(0)
            self.counts[(UNMATCHED, j)] += 1
        return drops

    def _find_set(self, stream: int, stamp_ns: int) -> Optional[Tuple[int, ...]]:
        """Queue indices (one per stream) of the closest set containing the new message, or None."""
        candidates = []
        for j in range(self.num_streams):
            if j == stream:
                candidates.append([len(self._stamps[j]) - 1])
                continue
            near = [(abs(s - stamp_ns), k) for k, s in enumerate(self._stamps[j]) if abs(s - stamp_ns) <= self.slop_ns]
            if not near:
                return None
            candidates.append([k for _, k in sorted(near)])
        for combo in itertools.product(*candidates):
            stamps = [self._stamps[j][k] for j, k in enumerate(combo)]
            if max(stamps) - min(stamps) <= self.slop_ns:
                return combo
        return None


# ---------------------------------------------------------------- poses

POSE_OK = "ok"
POSE_WAIT = "wait"  # no pose yet, but one may still arrive for this stamp
POSE_MISSING = "missing"  # the history around the stamp is known and has no usable pose


@dataclass(frozen=True)
class PoseLookup:
    status: str  # POSE_OK, POSE_WAIT or POSE_MISSING
    cam_to_map: Optional[np.ndarray] = None  # [4, 4] when status is POSE_OK


def _slerp(q0: np.ndarray, q1: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation of unit quaternions (w, x, y, z), shortest arc."""
    dot = float(np.dot(q0, q1))
    if dot < 0.0:
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly parallel: sin(theta) ~ 0, linear interpolation is exact enough
        q = q0 + t * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(dot)
    return (np.sin((1 - t) * theta) * q0 + np.sin(t * theta) * q1) / np.sin(theta)


def interpolate_pose(T0: np.ndarray, T1: np.ndarray, t: float) -> np.ndarray:
    """Pose a fraction ``t`` in [0, 1] of the way from T0 to T1 (lerp translation, slerp rotation)."""
    p0, q0 = quat_from_pose(T0)
    p1, q1 = quat_from_pose(T1)
    return pose_from_quat(p0 + t * (p1 - p0), _slerp(q0, q1, t))


class PoseBuffer:
    """Recent camera-to-map poses by stamp; answers "where was the camera at stamp t?".

    A stamp bracketed by two poses, each within ``tolerance_ns`` of it, gets the interpolated pose;
    otherwise the nearest pose within tolerance; otherwise none. A stamp newer than every pose (beyond
    tolerance) is told to wait, since the pose stream may lag the images.
    """

    def __init__(self, tolerance_ns: int, capacity: int = 2000, reset_jump_ns: Optional[int] = None):
        """``reset_jump_ns``: a pose stamped this far behind the newest one means time restarted (a bag
        played again): the buffer is cleared before the pose goes in, so poses of the previous run are
        never interpolated with the new ones. None: never clear."""
        if tolerance_ns < 0:
            raise InputError(f"tolerance_ns must be >= 0, got {tolerance_ns}")
        if capacity < 2:
            raise InputError(f"capacity must be >= 2, got {capacity}")
        self.tolerance_ns = int(tolerance_ns)
        self.capacity = int(capacity)
        self.reset_jump_ns = reset_jump_ns
        self._stamps: List[int] = []
        self._poses: List[np.ndarray] = []
        self._lock = threading.Lock()  # poses may be added on another thread than the one looking up

    def __len__(self) -> int:
        return len(self._stamps)

    @property
    def newest_stamp_ns(self) -> Optional[int]:
        with self._lock:
            return self._stamps[-1] if self._stamps else None

    def clear(self) -> None:
        with self._lock:
            self._stamps.clear()
            self._poses.clear()

    def discard_after(self, stamp_ns: int) -> int:
        """Drop the poses stamped after ``stamp_ns`` (a previous run's, after time jumped back); returns how many."""
        with self._lock:
            k = bisect.bisect_right(self._stamps, int(stamp_ns))
            dropped = len(self._stamps) - k
            del self._stamps[k:], self._poses[k:]
            return dropped

    def add(self, stamp_ns: int, cam_to_map: np.ndarray) -> Optional[int]:
        """Insert a pose (late poses are placed in stamp order; a repeated stamp replaces the old pose).

        Returns how far time jumped back (ns) when this pose cleared the buffer (``reset_jump_ns``), else None.
        """
        cam_to_map = np.asarray(cam_to_map, dtype=np.float64)
        if not is_valid_pose(cam_to_map):
            raise InputError(f"cam_to_map is not a finite rigid 4x4 transform: {cam_to_map.tolist()}")
        stamp_ns = int(stamp_ns)
        jump = None
        with self._lock:
            if (self.reset_jump_ns is not None and self._stamps
                    and self._stamps[-1] - stamp_ns >= self.reset_jump_ns):
                jump = self._stamps[-1] - stamp_ns
                self._stamps.clear()
                self._poses.clear()
            k = bisect.bisect_left(self._stamps, stamp_ns)
            if k < len(self._stamps) and self._stamps[k] == stamp_ns:
                self._poses[k] = cam_to_map
                return jump
            self._stamps.insert(k, stamp_ns)
            self._poses.insert(k, cam_to_map)
            if len(self._stamps) > self.capacity:
                del self._stamps[0], self._poses[0]
        return jump

    def lookup(self, stamp_ns: int, wait_for_newer: bool = False) -> PoseLookup:
        """The pose at ``stamp_ns``. ``wait_for_newer``: a stamp after the newest pose waits for the next one
        (to be interpolated) instead of taking the newest pose within tolerance."""
        with self._lock:
            return self._lookup(int(stamp_ns), wait_for_newer)

    def _lookup(self, stamp_ns: int, wait_for_newer: bool = False) -> PoseLookup:
        stamps, tol = self._stamps, self.tolerance_ns
        if not stamps:
            return PoseLookup(POSE_WAIT)
        k = bisect.bisect_left(stamps, stamp_ns)
        if k < len(stamps) and stamps[k] == stamp_ns:
            return PoseLookup(POSE_OK, self._poses[k].copy())
        before = k - 1 if k > 0 else None
        after = k if k < len(stamps) else None
        if after is None and wait_for_newer:
            return PoseLookup(POSE_WAIT)
        near_before = before is not None and stamp_ns - stamps[before] <= tol
        near_after = after is not None and stamps[after] - stamp_ns <= tol
        if near_before and near_after:
            t = (stamp_ns - stamps[before]) / (stamps[after] - stamps[before])
            return PoseLookup(POSE_OK, interpolate_pose(self._poses[before], self._poses[after], t))
        if near_before or near_after:
            return PoseLookup(POSE_OK, self._poses[before if near_before else after].copy())
        if after is None:
            return PoseLookup(POSE_WAIT)
        return PoseLookup(POSE_MISSING)
