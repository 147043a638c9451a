"""The frame assembler driven by scripted streams: every counter checked exactly against the script."""
from dataclasses import dataclass

import numpy as np
import pytest

from gcross_core.errors import InputError, MalformedMessageError
from gcross_core.mapping.arrivals import ArrivalCounter
from gcross_core.mapping.assembly import (INTEGRATION_PAUSED, MALFORMED_IMAGE, NO_CAMERA_INFO, NO_DEPTH, NO_POSE,
                                          NO_VALID_DEPTH, RATE_LIMITED, SIZE_MISMATCH, TIME_JUMP_RESET, AssemblyConfig,
                                          FrameAssembler)

S = 1_000_000_000
H, W = 6, 8
K = np.array([[10.0, 0, 4], [0, 10.0, 3], [0, 0, 1]])


@dataclass
class Msg:
    """A stand-in camera message: the test decoder reads these fields."""
    stamp_ns: int
    depth_mm: int = 1500
    width: int = W
    malformed: bool = False


class Decoder:
    def color_rgb(self, m):
        if m.malformed:
            raise MalformedMessageError("color image data holds 3 bytes, expected 144")
        return np.full((H, m.width, 3), 100, np.uint8)

    def depth_m(self, m):
        return np.full((H, m.width), m.depth_mm / 1000.0, np.float32)

    def camera(self, m):
        if m.width <= 0:
            raise InputError("camera_info has size 0x6")
        return K, m.width, H

    def frame_id(self, m):
        return "cam"


def pose(x):
    T = np.eye(4)
    T[0, 3] = x
    return T


class Run:
    """Feeds a script of frames and keeps the assembler's output."""

    def __init__(self, config=AssemblyConfig(), sequences=True):
        self.asm = FrameAssembler(Decoder(), config)
        self.sequences = sequences
        self.seq = 0
        self.fused = []
        self.drops = []
        self.jumps = []

    def _take(self, out):
        for f in out.frames:
            self.asm.fused(f)
            self.fused.append(f.stamp_ns)
        self.drops += out.drops
        if out.time_jump:
            self.jumps.append(out.time_jump)
        acc = self.asm.account()
        assert acc.frames_in == acc.frames_fused + acc.frames_dropped + acc.frames_waiting

    def frame(self, t_s, stamp_s=None, deliver_color=True, depth=True, info=True, with_pose=True, **msg):
        """One camera frame published at wall time t_s (stamp = t_s unless given)."""
        stamp = int(round((t_s if stamp_s is None else stamp_s) * S))
        self.seq += 1
        if with_pose:
            self.asm.add_pose(stamp, pose(stamp_s or t_s))
        if depth:
            self._take(self.asm.add_depth(Msg(stamp, **msg), stamp, t_s))
        if info:
            self._take(self.asm.add_camera_info(Msg(stamp, **msg), stamp, t_s))
        if deliver_color:
            self._take(self.asm.add_color(Msg(stamp, **msg), stamp, t_s, sent_ns=int(round(t_s * S)),
                                          sequence=self.seq if self.sequences else None, publisher="camera"))
        self._take(self.asm.poll(t_s))

    def reasons(self):
        return [d.reason for d in self.drops]


@pytest.mark.parametrize("rate_hz", [5.0, 10.0])
@pytest.mark.parametrize("sequences", [True, False])
def test_a_steady_stream_fuses_every_frame(rate_hz, sequences):
    run = Run(sequences=sequences)
    for i in range(150):
        run.frame(i / rate_hz)
    acc = run.asm.account()
    assert (acc.frames_in, acc.frames_fused, acc.frames_dropped, acc.frames_waiting) == (150, 150, 0, 0)
    assert acc.arrivals.lost == 0 and acc.arrivals.pauses == 0 and acc.arrivals.stamp_jumps == 0
    assert acc.arrivals.exact == sequences


@pytest.mark.parametrize("sequences", [True, False])
def test_messages_lost_at_known_places_are_counted_exactly(sequences):
    never = {17, 40, 41, 42, 90, 91}
    run = Run(sequences=sequences)
    for i in range(150):
        run.frame(i / 10.0, deliver_color=i not in never)
    acc = run.asm.account()
    assert acc.frames_in == 144 and acc.frames_fused == 144
    assert acc.arrivals.lost == len(never)
    assert acc.unmatched == {"depth": 6, "camera_info": 6}  # their partners arrived and waited in vain


def test_pauses_are_paused_seconds_not_losses():
    run = Run(sequences=False)
    t = 0.0
    for stretch in range(3):
        for _ in range(50):
            run.frame(t)
            t += 0.2
        t += 3.0  # the source stops for 3 s
    acc = run.asm.account()
    assert acc.frames_fused == 150 and acc.arrivals.lost == 0
    assert acc.arrivals.pauses == 2
    assert acc.arrivals.paused_s == pytest.approx(2 * 3.0, abs=1e-6)


def test_a_forward_stamp_jump_is_a_jump_not_a_loss():
    run = Run(sequences=False)
    for i in range(60):
        run.frame(i * 0.1, stamp_s=i * 0.1 + (30.0 if i >= 30 else 0.0))
    acc = run.asm.account()
    assert acc.frames_fused == 60 and acc.arrivals.lost == 0 and acc.arrivals.pauses == 0
    assert acc.arrivals.stamp_jumps == 1


def test_stamps_jumping_back_restart_the_assembly():
    run = Run()
    for i in range(20):
        run.frame(i * 0.1, stamp_s=100 + i * 0.1)
    # a frame waits for a pose that never comes, then the bag starts again 30 s earlier
    run.frame(2.0, stamp_s=102.0, with_pose=False)
    assert run.asm.waiting_for_pose == 1
    for i in range(20):
        run.frame(2.1 + i * 0.1, stamp_s=72 + i * 0.1)
    acc = run.asm.account()
    assert len(run.jumps) == 1 and run.jumps[0].frames_cleared == 1
    assert run.jumps[0].jump_ns == pytest.approx(30.0 * S, abs=1)
    assert acc.dropped == {TIME_JUMP_RESET: 1} and acc.frames_fused == 40
    assert acc.arrivals.lost == 0 and acc.arrivals.stamp_jumps == 1
    assert acc.time_jumps == 1


def test_a_burst_with_losses_is_counted_exactly_by_sequence_numbers():
    """200 frames in one second, stamped as they are published; 189 never reach the callback."""
    run = Run()
    for i in range(10):  # a 10 Hz lead-in
        run.frame(i * 0.1)
    received = set(range(0, 200, 18))
    for i in range(200):
        run.frame(1.0 + i * 0.005, deliver_color=i in received)
    for i in range(10):
        run.frame(2.1 + i * 0.1)
    acc = run.asm.account()
    assert acc.frames_in == 10 + len(received) + 10 == acc.frames_fused
    assert acc.arrivals.lost == 200 - len(received)
    assert acc.arrivals.exact


def test_missing_poses_wait_then_drop_with_one_reason():
    cfg = AssemblyConfig(pose_wait_s=0.5)
    run = Run(cfg)
    for i in range(30):
        run.frame(i * 0.1, with_pose=not 10 <= i < 15)  # five frames whose pose never comes
    acc = run.asm.account()
    # the poses around them are more than pose_tolerance_s away: nothing to interpolate from
    assert acc.dropped == {NO_POSE: 5} and acc.frames_fused == 25
    assert sorted(d.stamp_ns for d in run.drops) == [int(round(i * 0.1 * S)) for i in range(10, 15)]


def test_a_late_pose_releases_the_waiting_frame():
    run = Run()
    run.frame(0.0)
    run.frame(0.1, with_pose=False)
    assert run.asm.waiting_for_pose == 1 and run.asm.account().frames_waiting == 1
    run.asm.add_pose(int(0.1 * S), pose(0.1))
    run._take(run.asm.poll(0.3))
    assert run.fused == [0, int(0.1 * S)]
    np.testing.assert_allclose(run.asm.account().frames_fused, 2)


def test_waiting_frames_are_bounded():
    run = Run(AssemblyConfig(max_waiting_frames=4, pose_wait_s=100.0))
    for i in range(10):
        run.frame(i * 0.1, with_pose=False)
    acc = run.asm.account()
    assert acc.dropped == {NO_POSE: 6} and acc.frames_waiting == 4


def test_each_bad_frame_gets_its_one_reason():
    run = Run()
    run.frame(0.0)
    run.frame(0.1, depth=False)
    run.frame(0.2, info=False)
    run.frame(0.3, depth_mm=0)
    run.frame(0.4, malformed=True)
    run.frame(0.5)
    run.frame(0.6)
    run._take(run.asm.flush())
    acc = run.asm.account()
    assert acc.dropped == {NO_DEPTH: 1, NO_CAMERA_INFO: 1, NO_VALID_DEPTH: 1, MALFORMED_IMAGE: 1}
    assert acc.frames_fused == 3 and acc.frames_waiting == 0
    assert all(f"{t:.3f} s" in d.message for d, t in zip(run.drops, (0.1, 0.2, 0.3, 0.4)))


def test_camera_info_of_another_size_is_a_size_mismatch():
    asm = FrameAssembler(Decoder())
    asm.add_pose(0, pose(0))
    asm.add_depth(Msg(0), 0, 0.0)
    info = Msg(0)
    info.width = W + 2
    asm.add_camera_info(info, 0, 0.0)
    asm.decoder = _WideInfo()
    out = asm.add_color(Msg(0), 0, 0.0)
    assert [d.reason for d in out.drops] == [SIZE_MISMATCH]
    assert "camera_info 10x6 does not match color 8x6" in out.drops[0].message


class _WideInfo(Decoder):
    def camera(self, m):
        return K, m.width, H


def test_frames_the_caller_does_not_fuse_are_counted_by_its_reason():
    asm = FrameAssembler(Decoder())
    asm.add_pose(0, pose(0))
    for add in (asm.add_depth, asm.add_camera_info):
        add(Msg(0), 0, 0.0)
    (frame,) = asm.add_color(Msg(0), 0, 0.0).frames
    assert frame.depth_m.dtype == np.float32 and frame.depth_m[0, 0] == pytest.approx(1.5)
    assert asm.account().frames_waiting == 1  # handed out, not yet reported
    asm.drop(frame, INTEGRATION_PAUSED)
    acc = asm.account()
    assert acc.frames_waiting == 0 and acc.dropped == {INTEGRATION_PAUSED: 1}


def test_depth_nan_and_inf_become_zero_metres():
    class NanDepth(Decoder):
        def depth_m(self, m):
            d = np.full((H, W), 2.0, np.float32)
            d[0, :3] = [np.nan, np.inf, -np.inf]
            return d

    asm = FrameAssembler(NanDepth())
    asm.add_pose(0, pose(0))
    asm.add_depth(Msg(0), 0, 0.0)
    asm.add_camera_info(Msg(0), 0, 0.0)
    (frame,) = asm.add_color(Msg(0), 0, 0.0).frames
    assert (frame.depth_m[0, :3] == 0).all() and frame.depth_m[1, 1] == 2.0


def test_a_pose_that_is_not_rigid_is_refused_and_counted():
    asm = FrameAssembler(Decoder())
    with pytest.raises(InputError, match="pose at 1.000 s ignored"):
        asm.add_pose(S, np.full((4, 4), np.nan))
    assert asm.account().poses_ignored == 1


def test_arrivals_without_publish_times_use_the_stamp_clock():
    c = ArrivalCounter()
    lost = [c.add(t * S // 10) for t in (0, 1, 2, 3, 4, 7, 8, 12, 13)]  # 10 Hz, 2 and 3 missing
    assert lost == [0, 0, 0, 0, 0, 2, 0, 3, 0]
    assert c.report().lost == 5 and not c.report().exact
    jitter = ArrivalCounter()
    for t_ms in (0, 90, 210, 300, 395, 510, 600):  # +-20 % jitter loses nothing
        assert jitter.add(t_ms * 1_000_000) == 0


def test_a_restarted_publisher_is_not_a_loss():
    c = ArrivalCounter()
    for seq in (3, 4, 5, 1, 2, 4):
        c.add(seq * S, sequence=seq, publisher="p")
    r = c.report()
    assert r.lost == 1 and r.unseen_before_first == 2  # 3 is its first: 1 and 2 were never seen


def test_a_frame_newer_than_every_pose_waits_for_the_next_one_to_interpolate():
    run = Run(AssemblyConfig(pose_tolerance_s=0.2, pose_wait_s=1.0))
    run.asm.add_pose(0, pose(0.0))
    run.frame(0.1, with_pose=False)  # the previous pose is within tolerance, but a newer one may come
    assert run.fused == [] and run.asm.waiting_for_pose == 1
    run.asm.add_pose(int(0.2 * S), pose(2.0))
    out = run.asm.poll(0.15)
    np.testing.assert_allclose(out.frames[0].cam_to_map[0, 3], 1.0)  # halfway between 0 and 2
    run._take(out)
    run.frame(0.3, with_pose=False)
    run._take(run.asm.poll(1.5))  # no newer pose within pose_wait_s: the nearest within tolerance
    assert run.fused == [int(0.1 * S), int(0.3 * S)]


def test_the_frame_rate_policy_skips_frames_by_stamp_and_counts_them():
    run = Run(AssemblyConfig(max_frame_rate_hz=15.0))
    for i in range(90):  # 3 s of a 30 Hz camera
        run.frame(i / 30.0)
    acc = run.asm.account()
    assert acc.frames_in == 90 and acc.frames_fused == 45 and acc.dropped == {RATE_LIMITED: 45}
    assert all(b - a == pytest.approx(S / 15, abs=2) for a, b in zip(run.fused, run.fused[1:]))
    assert acc.arrivals.lost == 0  # skipped by policy, not lost
    slow = Run(AssemblyConfig(max_frame_rate_hz=15.0))
    for i in range(30):  # a 10 Hz camera is below the cap: every frame
        slow.frame(i / 10.0)
    assert slow.asm.account().frames_fused == 30
    every = Run(AssemblyConfig(max_frame_rate_hz=0.0))
    for i in range(30):
        every.frame(i / 30.0)
    assert every.asm.account().frames_fused == 30
    with pytest.raises(InputError, match="max_frame_rate_hz"):
        AssemblyConfig(max_frame_rate_hz=-1.0)
