"""Frame assembly: the one path from camera messages to RGB-D frames ready to fuse, with an exact account.

The node, ``gcross-bag eval``, ``gcross-bag export`` and the tests all assemble frames here, so a bag
evaluation runs what the robot runs. ROS-free: messages are opaque payloads read through a
:class:`FrameDecoder` (``gcross_ros.msgs.camera`` decodes rclpy and rosbags messages alike).

For every colour image (the frame is counted by its colour image):

1. **Arrival** (:class:`~gcross_core.mapping.arrivals.ArrivalCounter`): messages lost before this one,
   pauses and stamp jumps of the colour stream.
2. **Stamp synchronisation** (:class:`~gcross_core.mapping.sync.ApproximateTimeSync`): colour, depth and
   camera_info whose stamps spread at most ``sync_slop_s``. A colour image left without partners is
   dropped as ``no_depth``, ``no_camera_info`` or ``unmatched``; one whose stamp does not advance as
   ``out_of_order``.
3. **Time-jump policy**: stamps more than ``time_jump_reset_s`` behind their predecessor (a bag played
   again, a simulator reset) clear the synchroniser, the frames waiting for a pose (``time_jump``) and
   the poses stamped after the new time; the caller decides about the map.
4. **Decoding and checks**, one reason each: ``unsupported_encoding``, ``malformed_image``,
   ``size_mismatch``, ``invalid_camera_info``, ``no_valid_depth``. Depth becomes float32 metres here,
   once (0 = no reading; NaN and inf become 0); nothing downstream accepts millimetres.
5. **Pose**: from the pose buffer (poses added with :meth:`FrameAssembler.add_pose`, interpolated
   between two within ``pose_tolerance_s``; a frame newer than every pose waits for the next one rather
   than take the previous one, and only when its wait runs out takes the nearest within tolerance) or a
   caller's lookup (TF). A frame waits at most
   ``pose_wait_s`` of the caller's clock (the node: wall time; a bag: its log time) and at most
   ``max_waiting_frames`` frames wait; then it is dropped as ``no_pose``.

The account (:meth:`FrameAssembler.account`) always satisfies
``frames_in = frames_fused + frames_dropped + frames_waiting``: the caller reports each frame it was
handed as fused (:meth:`~FrameAssembler.fused`) or dropped with a reason of its own
(:meth:`~FrameAssembler.drop`, e.g. ``fusion_error``, ``integration_paused``).
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Deque, Dict, List, Optional, Protocol, Tuple

import numpy as np

from gcross_core.config import described
from gcross_core.errors import InputError, MalformedMessageError
from gcross_core.image import has_valid_depth
from gcross_core.mapping.arrivals import ArrivalCounter
from gcross_core.mapping.sync import (OUT_OF_ORDER, POSE_MISSING, POSE_OK, TIME_JUMP, ApproximateTimeSync,
                                      PoseBuffer, PoseLookup)

COLOR, DEPTH, INFO = 0, 1, 2
STREAMS = ("color", "depth", "camera_info")

# Drop reasons: the keys of FrameAccount.dropped (and of the node's dropped.* diagnostics).
UNSUPPORTED_ENCODING = "unsupported_encoding"
MALFORMED_IMAGE = "malformed_image"
SIZE_MISMATCH = "size_mismatch"
NO_VALID_DEPTH = "no_valid_depth"
INVALID_CAMERA_INFO = "invalid_camera_info"
NO_CAMERA_INFO = "no_camera_info"
NO_DEPTH = "no_depth"
UNMATCHED = "unmatched"
NO_POSE = "no_pose"
OUT_OF_ORDER_STAMP = "out_of_order"
TIME_JUMP_RESET = "time_jump"
FUSION_ERROR = "fusion_error"  # reported by the caller
FUSION_BACKLOG = "fusion_backlog"  # reported by the caller (the node: pushed out of a full fusion queue)
INTEGRATION_PAUSED = "integration_paused"  # reported by the caller (the node's ~/pause_integration)
NOT_USED = "not_used"  # reported by the caller (a bag tool that stops early or keeps every k-th frame)
RATE_LIMITED = "rate_limited"  # closer to the previous frame taken than max_frame_rate_hz allows
EXPECTED_DROPS = (INTEGRATION_PAUSED, NOT_USED, RATE_LIMITED)  # asked for: not a sign of trouble


# max_depth_m is one node parameter that both this config and the pipeline's (PipelineConfig) take
MAX_DEPTH_M = 5.0
MAX_DEPTH_M_DESCRIPTION = ("Depth readings beyond this are ignored (structured-light noise grows with the square of "
                           "the range); a frame with none within it is dropped (no_valid_depth).")


@dataclass(frozen=True)
class AssemblyConfig:
    """How frames are assembled; the node declares each field as a parameter of the same name."""

    sync_slop_s: float = described(0.02, "Largest stamp spread of a synchronized color/depth/camera_info set.")
    queue_size: int = described(10, "Messages kept per input stream while waiting for partners.")
    pose_tolerance_s: float = described(0.05, "pose_source topic: largest gap between an image stamp and a pose stamp "
                                              "used for it (bracketing poses are interpolated).")
    pose_wait_s: float = described(1.0, "How long a synchronized frame waits for its pose before it is dropped "
                                        "('no_pose'); generous because a busy node may handle the pose late. A frame "
                                        "newer than every pose waits for the next one (to interpolate) within this "
                                        "time.")
    max_waiting_frames: int = described(30, "At most this many frames wait for their pose (each holds its images); the "
                                            "oldest is dropped ('no_pose') beyond it.")
    pose_buffer_size: int = described(2000, "Poses kept for lookups (at 100 Hz: 20 s).")
    max_depth_m: float = described(MAX_DEPTH_M, MAX_DEPTH_M_DESCRIPTION)
    time_jump_reset_s: float = described(1.0, "Stamps this far behind their predecessor mean time restarted (a bag "
                                              "played again): the synchronizer, the waiting frames and later poses "
                                              "are cleared.")
    camera_frame: str = described("", "Camera optical frame; empty: the frame_id of the color images. Used for TF "
                                      "lookups and as the frame of the rendered images.")
    max_frame_rate_hz: float = described(15.0, "Frame-rate policy: a synchronized frame stamped less than 0.9 / "
                                               "max_frame_rate_hz after the previous frame taken is dropped before "
                                               "decoding ('rate_limited', an expected drop); a 30 Hz camera is fused "
                                               "at 15 Hz. 0: every frame.")

    def __post_init__(self):
        for name in ("sync_slop_s", "pose_tolerance_s"):
            if not getattr(self, name) >= 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("pose_wait_s", "max_depth_m", "time_jump_reset_s"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("queue_size", "max_waiting_frames"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.pose_buffer_size < 2:
            raise InputError(f"pose_buffer_size must be >= 2, got {self.pose_buffer_size}")
        if not self.max_frame_rate_hz >= 0:
            raise InputError(f"max_frame_rate_hz must be >= 0 (0: every frame), got {self.max_frame_rate_hz}")


class FrameDecoder(Protocol):
    """Reads the payloads handed to :class:`FrameAssembler`. Raises :class:`InputError` for content it
    cannot read (:class:`MalformedMessageError` for a message whose sizes disagree with its data)."""

    def color_rgb(self, msg) -> np.ndarray: ...  # [H, W, 3] uint8 RGB

    def depth_m(self, msg) -> np.ndarray: ...  # [H, W] depth in metres (any float or uint16-mm source converted)

    def camera(self, msg) -> Tuple[np.ndarray, int, int]: ...  # (K [3, 3], width, height)

    def frame_id(self, msg) -> str: ...


PoseSource = Callable[[int, str], PoseLookup]  # (stamp_ns, frame_id) -> PoseLookup (POSE_WAIT: may still come)


@dataclass(frozen=True)
class AssembledFrame:
    """A synchronised, decoded and checked RGB-D frame with its camera pose."""

    stamp_ns: int
    frame_id: str
    color_rgb: np.ndarray  # [H, W, 3] uint8
    depth_m: np.ndarray  # [H, W] float32 metres, 0 = no reading
    K: np.ndarray  # [3, 3]
    cam_to_map: Optional[np.ndarray]  # [4, 4]; None only while the frame waits for its pose
    received_s: float  # the caller's clock when the set completed

    @property
    def width(self) -> int:
        return int(self.color_rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.color_rgb.shape[0])


@dataclass(frozen=True)
class Drop:
    reason: str
    stamp_ns: int
    message: str  # for a (throttled) warning: names the frame and what was expected


@dataclass(frozen=True)
class TimeJump:
    stream: str
    stamp_ns: int
    jump_ns: int  # how far stamps went back
    frames_cleared: int  # frames that were waiting for a pose
    poses_cleared: int


@dataclass
class Assembled:
    """What one call produced: frames ready to fuse, frames dropped, and a time jump if one happened."""

    frames: List[AssembledFrame] = field(default_factory=list)
    drops: List[Drop] = field(default_factory=list)
    time_jump: Optional[TimeJump] = None

    def extend(self, other: "Assembled") -> "Assembled":
        self.frames += other.frames
        self.drops += other.drops
        self.time_jump = other.time_jump or self.time_jump
        return self


@dataclass(frozen=True)
class FrameAccount:
    """The assembler's account; ``frames_in == frames_fused + frames_dropped + frames_waiting`` always."""

    frames_in: int  # colour images received
    frames_fused: int
    frames_dropped: int
    frames_waiting: int  # in the synchroniser, waiting for a pose, or handed out and not yet reported
    dropped: Dict[str, int]  # reason -> colour frames
    unmatched: Dict[str, int]  # depth / camera_info messages without a colour partner
    poses_in: int
    poses_ignored: int
    time_jumps: int
    arrivals: Any  # ArrivalReport of the colour stream

    def as_dict(self) -> Dict[str, float]:
        """Flat keys for diagnostics and reports."""
        out: Dict[str, float] = {"frames_in": self.frames_in, "frames_fused": self.frames_fused,
                                 "frames_dropped": self.frames_dropped, "frames_waiting": self.frames_waiting,
                                 "frames_lost": self.arrivals.lost, "poses_in": self.poses_in,
                                 "poses_ignored": self.poses_ignored, "time_jumps": self.time_jumps}
        out.update({f"dropped.{k}": v for k, v in sorted(self.dropped.items())})
        out.update({f"unmatched.{k}": v for k, v in sorted(self.unmatched.items())})
        out.update(self.arrivals.as_dict("arrivals."))
        return out


class FrameAssembler:
    """Camera messages in, :class:`AssembledFrame` out (see the module docstring). Not thread-safe except
    :meth:`add_pose`, which may run on another thread than the rest."""

    def __init__(self, decoder: FrameDecoder, config: AssemblyConfig = AssemblyConfig(),
                 pose_source: Optional[PoseSource] = None):
        self.decoder = decoder
        self.config = config
        jump_ns = int(config.time_jump_reset_s * 1e9)
        self._sync = ApproximateTimeSync(3, int(config.sync_slop_s * 1e9), config.queue_size, reset_jump_ns=jump_ns)
        self.poses = PoseBuffer(int(config.pose_tolerance_s * 1e9), capacity=config.pose_buffer_size,
                                reset_jump_ns=jump_ns)
        self._pose_source = pose_source
        self._waiting: Deque[AssembledFrame] = deque()
        self.arrivals = ArrivalCounter()
        self._in = 0
        self._fused = 0
        self._dropped: Counter = Counter()
        self._unmatched: Counter = Counter()
        self._poses_in = 0
        self._poses_ignored = 0
        self._time_jumps = 0
        self._last_taken_ns: Optional[int] = None  # stamp of the latest frame the rate policy let through

    # ------------------------------------------------------------------ inputs

    def add_color(self, msg, stamp_ns: int, now_s: float, sent_ns: Optional[int] = None,
                  sequence: Optional[int] = None, publisher=None) -> Assembled:
        """A colour image. ``sent_ns``, ``sequence`` and ``publisher`` (DDS message info, or a bag's log
        time as ``sent_ns``) make the loss account exact (:mod:`gcross_core.mapping.arrivals`)."""
        self._in += 1
        self.arrivals.add(stamp_ns, sent_ns, sequence, publisher)
        return self._offer(COLOR, msg, stamp_ns, now_s)

    def add_depth(self, msg, stamp_ns: int, now_s: float) -> Assembled:
        return self._offer(DEPTH, msg, stamp_ns, now_s)

    def add_camera_info(self, msg, stamp_ns: int, now_s: float) -> Assembled:
        return self._offer(INFO, msg, stamp_ns, now_s)

    def add_pose(self, stamp_ns: int, cam_to_map: np.ndarray) -> Optional[int]:
        """A camera-to-map pose. Returns how far pose stamps jumped back when this one cleared the buffer.
        Raises InputError (counted as ignored) for a pose that is not a finite rigid transform."""
        self._poses_in += 1
        try:
            return self.poses.add(stamp_ns, cam_to_map)
        except InputError as e:
            self._poses_ignored += 1
            raise InputError(f"pose at {stamp_ns * 1e-9:.3f} s ignored: {e}") from None

    def ignore_pose(self) -> None:
        """Count a pose the caller rejected (e.g. in the wrong frame)."""
        self._poses_in += 1
        self._poses_ignored += 1

    def poll(self, now_s: float) -> Assembled:
        """Frames whose pose has arrived, and frames that waited too long (call it periodically)."""
        out = Assembled()
        waiting, self._waiting = self._waiting, deque()
        for frame in waiting:
            self._resolve(frame, now_s, out)
        return out

    def flush(self) -> Assembled:
        """End of input (a bag's last message): frames still waiting for partners or a pose are dropped."""
        out = self.poll(float("inf"))
        for d in self._sync.drain():
            if d.stream == COLOR:
                self._drop_unmatched(out, d.stamp_ns, d.missing)
            else:
                self._unmatched[STREAMS[d.stream]] += 1
        return out

    # ------------------------------------------------------------------ outcome of handed-out frames

    def fused(self, frame: AssembledFrame) -> None:
        self._fused += 1

    def drop(self, frame: AssembledFrame, reason: str, message: str = "") -> Drop:
        """A handed-out frame the caller did not fuse (``fusion_error``, ``integration_paused``, ...)."""
        self._dropped[reason] += 1
        return Drop(reason, frame.stamp_ns, message or f"frame at {frame.stamp_ns * 1e-9:.3f} s dropped: {reason}")

    # ------------------------------------------------------------------ account

    @property
    def waiting_for_pose(self) -> int:
        return len(self._waiting)

    def account(self) -> FrameAccount:
        dropped = sum(self._dropped.values())
        return FrameAccount(frames_in=self._in, frames_fused=self._fused, frames_dropped=dropped,
                            frames_waiting=self._in - self._fused - dropped, dropped=dict(self._dropped),
                            unmatched=dict(self._unmatched), poses_in=self._poses_in,
                            poses_ignored=self._poses_ignored, time_jumps=self._time_jumps,
                            arrivals=self.arrivals.report())

    # ------------------------------------------------------------------ internals

    def _offer(self, stream: int, msg, stamp_ns: int, now_s: float) -> Assembled:
        out = Assembled()
        result = self._sync.add(stream, int(stamp_ns), msg)
        if result.time_jump_ns is not None:
            self._on_time_jump(stream, int(stamp_ns), result.time_jump_ns, out)
        for d in result.dropped:
            if d.stream != COLOR:
                self._unmatched[STREAMS[d.stream]] += 1
            elif d.reason == TIME_JUMP:
                self._add_drop(out, TIME_JUMP_RESET, d.stamp_ns, "")
            elif d.reason == OUT_OF_ORDER:
                self._add_drop(out, OUT_OF_ORDER_STAMP, d.stamp_ns,
                               f"color image at {d.stamp_ns * 1e-9:.3f} s dropped: its stamp is not newer than the "
                               "previous one (out-of-order or repeated stamps)")
            else:
                self._drop_unmatched(out, d.stamp_ns, d.missing)
        for (color, depth, info), stamps in zip(result.matched, result.matched_stamps):
            if self._rate_limited(stamps[COLOR]):
                self._add_drop(out, RATE_LIMITED, stamps[COLOR], "")
                continue
            frame = self._decode(stamps[COLOR], color, depth, info, now_s, out)
            if frame is not None:
                self._resolve(frame, now_s, out)
        return out

    def _rate_limited(self, stamp_ns: int) -> bool:
        """The frame-rate policy: too close after the previous frame taken (``max_frame_rate_hz``)."""
        rate = self.config.max_frame_rate_hz
        if rate > 0 and self._last_taken_ns is not None and 0 <= stamp_ns - self._last_taken_ns < 0.9e9 / rate:
            return True
        self._last_taken_ns = int(stamp_ns)
        return False

    def _drop_unmatched(self, out: Assembled, stamp_ns: int, missing) -> None:
        t, slop = stamp_ns * 1e-9, self.config.sync_slop_s
        if INFO in missing:
            self._add_drop(out, NO_CAMERA_INFO, stamp_ns, f"color image at {t:.3f} s dropped: no camera_info within "
                                                          f"sync_slop_s={slop:g} s (is color/camera_info published?)")
        elif DEPTH in missing:
            self._add_drop(out, NO_DEPTH, stamp_ns, f"color image at {t:.3f} s dropped: no depth image within "
                                                    f"sync_slop_s={slop:g} s (is depth/image_raw published?)")
        else:
            self._add_drop(out, UNMATCHED, stamp_ns, f"color image at {t:.3f} s dropped: depth and camera_info "
                                                     f"stamps spread more than sync_slop_s={slop:g} s around it")

    def _add_drop(self, out: Assembled, reason: str, stamp_ns: int, message: str) -> None:
        self._dropped[reason] += 1
        out.drops.append(Drop(reason, stamp_ns, message))

    def _on_time_jump(self, stream: int, stamp_ns: int, jump_ns: int, out: Assembled) -> None:
        waiting = len(self._waiting)
        for frame in self._waiting:
            self._add_drop(out, TIME_JUMP_RESET, frame.stamp_ns, "")
        self._waiting.clear()
        # poses of the previous run stamped after the new time would be interpolated into the new run
        stale = self.poses.discard_after(stamp_ns + int(self.config.time_jump_reset_s * 1e9))
        self._time_jumps += 1
        out.time_jump = TimeJump(STREAMS[stream], stamp_ns, jump_ns, waiting, stale)

    def _decode(self, stamp: int, color, depth, info, now_s: float, out: Assembled) -> Optional[AssembledFrame]:
        d, t = self.decoder, stamp * 1e-9

        def reason(e: InputError) -> str:
            return MALFORMED_IMAGE if isinstance(e, MalformedMessageError) else UNSUPPORTED_ENCODING

        try:
            rgb = d.color_rgb(color)
        except InputError as e:
            return self._add_drop(out, reason(e), stamp, f"color image at {t:.3f} s dropped: {e}")
        try:
            depth_m = d.depth_m(depth)
        except InputError as e:
            return self._add_drop(out, reason(e), stamp, f"depth image at {t:.3f} s dropped: {e}")
        h, w = rgb.shape[:2]
        if depth_m.shape != (h, w):
            return self._add_drop(out, SIZE_MISMATCH, stamp, f"frame at {t:.3f} s dropped: depth image "
                                  f"{depth_m.shape[1]}x{depth_m.shape[0]} does not match color {w}x{h} "
                                  "(depth must be registered to color)")
        try:
            K, info_w, info_h = d.camera(info)
        except InputError as e:
            return self._add_drop(out, INVALID_CAMERA_INFO, stamp, f"frame at {t:.3f} s dropped: {e}")
        if (info_w, info_h) != (w, h):
            return self._add_drop(out, SIZE_MISMATCH, stamp, f"frame at {t:.3f} s dropped: camera_info "
                                  f"{info_w}x{info_h} does not match color {w}x{h}")
        depth_m = to_metres(depth_m)
        max_d = self.config.max_depth_m
        if not has_valid_depth(depth_m, max_d):
            return self._add_drop(out, NO_VALID_DEPTH, stamp, f"frame at {t:.3f} s dropped: no depth pixel is "
                                  f"valid (all zero, NaN, inf or beyond max_depth_m={max_d:g})")
        frame_id = self.config.camera_frame or d.frame_id(color)
        return AssembledFrame(stamp, frame_id, rgb, depth_m, np.asarray(K, np.float64), None, float(now_s))

    def _resolve(self, frame: AssembledFrame, now_s: float, out: Assembled) -> None:
        expired = now_s - frame.received_s > self.config.pose_wait_s
        if self._pose_source is not None:
            lookup = self._pose_source(frame.stamp_ns, frame.frame_id)
        else:  # a frame newer than every pose waits for the next one, to interpolate; at the end, the nearest
            lookup = self.poses.lookup(frame.stamp_ns, wait_for_newer=not expired)
        if lookup.status == POSE_OK:
            out.frames.append(replace(frame, cam_to_map=np.asarray(lookup.cam_to_map, np.float64)))
            return
        if lookup.status == POSE_MISSING or expired:
            self._drop_no_pose(frame, out)
            return
        self._waiting.append(frame)
        while len(self._waiting) > self.config.max_waiting_frames:
            self._drop_no_pose(self._waiting.popleft(), out)

    def _drop_no_pose(self, frame: AssembledFrame, out: Assembled) -> None:
        self._add_drop(out, NO_POSE, frame.stamp_ns, f"frame at {frame.stamp_ns * 1e-9:.3f} s dropped: no pose "
                       f"for its stamp within pose_tolerance_s={self.config.pose_tolerance_s:g} s after waiting "
                       f"up to pose_wait_s={self.config.pose_wait_s:g} s")


def to_metres(depth: np.ndarray) -> np.ndarray:  # [H, W] float metres -> [H, W] float32 metres, 0 = no reading
    """Depth in float32 metres with 0 as the only "no reading" (32FC1 may also say it with NaN or inf)."""
    depth = np.asarray(depth)
    if depth.dtype.kind != "f":
        raise InputError(f"depth has dtype {depth.dtype}, expected float metres (convert millimetres where the "
                         "image is read: gcross_core.image.depth_mm_to_m)")
    return np.nan_to_num(depth.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
