"""Approximate-time synchronizer and pose buffer (pure Python; message_filters cross-check where it exists)."""
import math

import numpy as np
import pytest

from gcross_core.geometry import pose_from_quat, quat_from_pose
from gcross_core.mapping.sync import (OUT_OF_ORDER, POSE_MISSING, POSE_OK, POSE_WAIT, QUEUE_OVERFLOW, TIME_JUMP,
                             UNMATCHED, ApproximateTimeSync, PoseBuffer, interpolate_pose)

MS = 1_000_000
COLOR, DEPTH, INFO = 0, 1, 2


def _feed(sync, events):
    """events: (stream, stamp_ns). Returns (matched stamp tuples, drops)."""
    matched, dropped = [], []
    for stream, stamp in events:
        r = sync.add(stream, stamp, (stream, stamp))
        for payloads, stamps in zip(r.matched, r.matched_stamps):
            assert tuple(p[1] for p in payloads) == stamps
            assert [p[0] for p in payloads] == [0, 1, 2][:sync.num_streams]
        matched += r.matched_stamps
        dropped += r.dropped
    return matched, dropped


def _frames(stamps_ms, streams=(COLOR, DEPTH, INFO), jitter_ms=None):
    events = []
    for i, t in enumerate(stamps_ms):
        for s in streams:
            dt = 0 if jitter_ms is None else jitter_ms[i][s]
            events.append((s, int((t + dt) * MS)))
    return events


def test_exact_and_jittered_stamps_are_grouped_by_frame():
    sync = ApproximateTimeSync(3, slop_ns=10 * MS, queue_size=5)
    rng = np.random.default_rng(0)
    jitter = rng.uniform(-4, 4, (6, 3))
    matched, dropped = _feed(sync, _frames([100 * i for i in range(6)], jitter_ms=jitter))
    assert len(matched) == 6 and not dropped
    for i, stamps in enumerate(matched):
        assert all(abs(s / MS - 100 * i) <= 4 for s in stamps)
        assert max(stamps) - min(stamps) <= 10 * MS
    assert sync.counts["emitted"] == 6
    assert all(sync.pending(s) == 0 for s in range(3))


def test_closest_partner_is_chosen_and_the_other_dropped():
    sync = ApproximateTimeSync(2, slop_ns=10 * MS, queue_size=5)
    matched, dropped = _feed(sync, [(DEPTH, 95 * MS), (DEPTH, 104 * MS), (COLOR, 100 * MS)])
    assert matched == [(100 * MS, 104 * MS)]
    assert [(d.stream, d.stamp_ns, d.reason) for d in dropped] == [(DEPTH, 95 * MS, UNMATCHED)]


def test_frame_without_camera_info_is_dropped_and_says_why():
    sync = ApproximateTimeSync(3, slop_ns=5 * MS, queue_size=5)
    events = _frames([0, 100]) + [(COLOR, 200 * MS), (DEPTH, 200 * MS)] + _frames([300])
    matched, dropped = _feed(sync, events)
    assert [m[0] // MS for m in matched] == [0, 100, 300]
    assert sorted((d.stream, d.stamp_ns // MS, d.reason, d.missing) for d in dropped) == [
        (COLOR, 200, UNMATCHED, (INFO,)), (DEPTH, 200, UNMATCHED, (INFO,))]


def test_queue_overflow_when_a_stream_is_silent():
    sync = ApproximateTimeSync(3, slop_ns=5 * MS, queue_size=3)
    matched, dropped = _feed(sync, _frames([100 * i for i in range(5)], streams=(COLOR, DEPTH)))
    assert not matched
    color_drops = [d for d in dropped if d.stream == COLOR]
    assert [d.stamp_ns // MS for d in color_drops] == [0, 100]
    assert all(d.reason == QUEUE_OVERFLOW and d.missing == (INFO,) for d in color_drops)
    assert sync.pending(COLOR) == 3
    assert sync.counts[(QUEUE_OVERFLOW, COLOR)] == 2


def test_out_of_order_stamps_are_dropped_and_counted():
    sync = ApproximateTimeSync(3, slop_ns=5 * MS, queue_size=5)
    events = _frames([0, 100, 200]) + _frames([150]) + _frames([300])
    matched, dropped = _feed(sync, events)
    assert [m[0] // MS for m in matched] == [0, 100, 200, 300]
    assert [(d.stamp_ns // MS, d.reason) for d in dropped] == [(150, OUT_OF_ORDER)] * 3
    assert sum(v for k, v in sync.counts.items() if k[0] == OUT_OF_ORDER) == 3


def test_duplicate_stamp_is_out_of_order():
    sync = ApproximateTimeSync(2, slop_ns=5 * MS, queue_size=5)
    matched, dropped = _feed(sync, [(COLOR, 10), (COLOR, 10), (DEPTH, 10)])
    assert matched == [(10, 10)] and [d.reason for d in dropped] == [OUT_OF_ORDER]


def test_a_lagging_stream_is_still_matched():
    """Depth arrives two frames late; the queues bridge the delay."""
    sync = ApproximateTimeSync(3, slop_ns=5 * MS, queue_size=4)
    events = []
    stamps = [100 * i for i in range(8)]
    for i, t in enumerate(stamps):
        events += [(COLOR, t * MS), (INFO, t * MS)]
        if i >= 2:
            events.append((DEPTH, stamps[i - 2] * MS))
    events += [(DEPTH, stamps[-2] * MS), (DEPTH, stamps[-1] * MS)]
    matched, dropped = _feed(sync, events)
    assert [m[0] // MS for m in matched] == stamps and not dropped


def test_time_jump_back_resets_instead_of_dropping_forever():
    sync = ApproximateTimeSync(3, slop_ns=5 * MS, queue_size=5, reset_jump_ns=1000 * MS)
    events = _frames([5000, 5100]) + [(COLOR, 5200 * MS)] + _frames([0, 100])
    matched, dropped = _feed(sync, events)
    assert [m[0] // MS for m in matched] == [5000, 5100, 0, 100]
    assert [(d.stamp_ns // MS, d.reason) for d in dropped] == [(5200, TIME_JUMP)]
    assert sync.counts["reset"] == 1
    sync = ApproximateTimeSync(3, slop_ns=5 * MS, queue_size=5, reset_jump_ns=1000 * MS)
    _feed(sync, _frames([5000]))
    assert sync.add(COLOR, 900 * MS, None).time_jump_ns == 4100 * MS  # the caller learns how far time went back
    assert sync.add(DEPTH, 900 * MS, None).time_jump_ns is None


def test_random_arrival_orders_keep_invariants():
    """Whatever the arrival order: sets within slop, newer than the last set, every message accounted once."""
    rng = np.random.default_rng(1)
    for trial in range(30):
        slop = 8 * MS
        sync = ApproximateTimeSync(3, slop_ns=slop, queue_size=int(rng.integers(1, 6)))
        events = []
        for i in range(20):
            for s in range(3):
                if rng.random() < 0.85:
                    events.append((s, int((100 * i + rng.uniform(-5, 5)) * MS)))
        # local shuffles: each message may arrive up to ~2 frames late
        keys = [e[1] + rng.uniform(0, 250) * MS for e in events]
        events = [events[k] for k in np.argsort(keys)]
        matched, dropped = _feed(sync, events)
        for a, b in zip(matched, matched[1:]):
            assert min(b) > max(a) - slop
            assert all(y > x for x, y in zip(a, b))
        for m in matched:
            assert max(m) - min(m) <= slop
        pending = sum(sync.pending(s) for s in range(3))
        assert 3 * len(matched) + len(dropped) + pending == len(events)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="num_streams"):
        ApproximateTimeSync(1, 0, 1)
    with pytest.raises(ValueError, match="queue_size"):
        ApproximateTimeSync(2, 0, 0)
    with pytest.raises(ValueError, match="stream 3"):
        ApproximateTimeSync(3, 0, 1).add(3, 0, None)


def test_matches_message_filters():
    """Where ROS provides message_filters, its ApproximateTimeSynchronizer emits the same sets."""
    mf = pytest.importorskip("message_filters")
    from std_msgs.msg import Header

    from gcross_ros.msgs.rclpy_msgs import ns_to_stamp

    class Msg:
        def __init__(self, stream, ns):
            self.stream, self.header = stream, Header(stamp=ns_to_stamp(ns))

    rng = np.random.default_rng(3)
    for trial in range(10):
        slop_s, queue = 0.01, 5
        inputs = [mf.SimpleFilter() for _ in range(3)]
        theirs = []
        ref = mf.ApproximateTimeSynchronizer(inputs, queue, slop_s)
        ref.registerCallback(lambda *msgs: theirs.append(tuple(
            m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in msgs)))
        ours = ApproximateTimeSync(3, slop_ns=int(slop_s * 1e9), queue_size=queue)
        got = []
        # frames 100 ms apart, jitter well inside the slop, some messages lost, streams interleaved
        # within a frame in random order (the regime both implementations are specified for)
        for i in range(30):
            order = rng.permutation(3)
            for s in order:
                if rng.random() < 0.2:
                    continue
                ns = int((1.0 + 0.1 * i + rng.uniform(-0.003, 0.003)) * 1e9)
                inputs[s].signalMessage(Msg(s, ns))
                got += ours.add(int(s), ns, None).matched_stamps
        assert got == theirs and len(got) > 5


# ---------------------------------------------------------------- pose buffer

def _pose(x, yaw_deg):
    half = math.radians(yaw_deg) / 2
    return pose_from_quat([x, 0.0, 1.0], [math.cos(half), 0.0, 0.0, math.sin(half)])


def test_pose_lookup_exact_interpolated_nearest_missing_and_wait():
    buf = PoseBuffer(tolerance_ns=60 * MS)
    buf.add(200 * MS, _pose(2.0, 90))
    buf.add(100 * MS, _pose(1.0, 0))  # late arrival is placed in order
    buf.add(400 * MS, _pose(4.0, 0))
    assert buf.newest_stamp_ns == 400 * MS

    exact = buf.lookup(100 * MS)
    assert exact.status == POSE_OK
    np.testing.assert_allclose(exact.cam_to_map, _pose(1.0, 0))

    mid = buf.lookup(150 * MS)
    assert mid.status == POSE_OK
    np.testing.assert_allclose(mid.cam_to_map, _pose(1.5, 45), atol=1e-9)

    near = buf.lookup(240 * MS)  # 40 ms after 200, 160 ms before 400: nearest, no interpolation
    np.testing.assert_allclose(near.cam_to_map, _pose(2.0, 90))

    assert buf.lookup(300 * MS).status == POSE_MISSING  # 100 ms from both neighbours
    assert buf.lookup(0).status == POSE_MISSING
    assert buf.lookup(450 * MS).status == POSE_OK  # newest within tolerance
    assert buf.lookup(600 * MS).status == POSE_WAIT  # a pose for it may still come
    assert PoseBuffer(10).lookup(0).status == POSE_WAIT


def test_pose_buffer_capacity_and_validation():
    buf = PoseBuffer(tolerance_ns=0, capacity=3)
    for i in range(5):
        buf.add(i, _pose(float(i), 0))
    assert len(buf) == 3
    assert buf.lookup(0).status == POSE_MISSING and buf.lookup(4).status == POSE_OK
    with pytest.raises(ValueError, match="rigid"):
        buf.add(9, np.full((4, 4), np.nan))


def test_interpolate_pose_takes_the_short_way():
    a, b = _pose(0.0, 170), _pose(2.0, -170)
    mid = interpolate_pose(a, b, 0.5)
    _, q = quat_from_pose(mid)
    yaw = math.degrees(2 * math.atan2(q[3], q[0])) % 360
    assert abs(yaw - 180) < 1e-6
    np.testing.assert_allclose(mid[:3, 3], [1.0, 0.0, 1.0])
    np.testing.assert_allclose(interpolate_pose(a, b, 0.0), a, atol=1e-12)
    np.testing.assert_allclose(interpolate_pose(a, b, 1.0), b, atol=1e-12)


def test_pose_buffer_clears_when_its_stamps_jump_back_and_discards_a_previous_run():
    buf = PoseBuffer(tolerance_ns=60 * MS, reset_jump_ns=1000 * MS)
    for t in (30_000, 30_100, 30_200):
        assert buf.add(t * MS, _pose(5.0, 0)) is None
    assert buf.add(29_500 * MS, _pose(5.0, 0)) is None  # a late pose, not a restart
    assert buf.add(100 * MS, _pose(1.0, 0)) == 30_100 * MS  # the bag starts again
    assert len(buf) == 1 and buf.lookup(30_100 * MS).status == POSE_WAIT  # old poses are gone
    np.testing.assert_allclose(buf.lookup(100 * MS).cam_to_map, _pose(1.0, 0))

    keep = PoseBuffer(tolerance_ns=60 * MS)  # never clears by itself
    for t in (100, 200, 30_000, 30_100):
        keep.add(t * MS, _pose(float(t), 0))
    assert keep.discard_after(1_200 * MS) == 2 and len(keep) == 2 and keep.newest_stamp_ns == 200 * MS
