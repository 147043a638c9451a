"""The node's worker threads: a job runs again after a pause, and stop ends the loop."""
import os
import sys
import threading

import pytest

from gcross_ros.node.workers import Workers


def test_a_job_runs_after_each_pause_until_stopped():
    ran = threading.Semaphore(0)
    workers = Workers("test")
    workers.start("job", ran.release, pause_s=0.01)
    for _ in range(3):
        assert ran.acquire(timeout=5.0)
    workers.stop(timeout_s=5.0)
    assert workers.stopping.is_set()
    assert all(not t.is_alive() for t in workers._threads)
    while ran.acquire(blocking=False):  # runs already under way when stop was called
        pass
    assert not ran.acquire(timeout=0.1)  # none after the loop ended


def test_a_changed_pause_applies_to_the_wait_under_way():
    ran = threading.Semaphore(0)
    workers = Workers("test")
    workers.start("job", ran.release, pause_s=1000.0)
    assert not ran.acquire(timeout=0.3)  # waiting out the long pause
    workers.set_pause("job", 0.01)  # shortened: the wait ends at once
    assert ran.acquire(timeout=5.0) and ran.acquire(timeout=5.0)
    assert workers.pause_s("job") == 0.01
    workers.set_pause("job", 1000.0)  # lengthened: after at most the run under way, no more runs
    ran.acquire(timeout=0.2)
    while ran.acquire(blocking=False):
        pass
    assert not ran.acquire(timeout=0.3)
    workers.stop(timeout_s=5.0)
    assert all(not t.is_alive() for t in workers._threads)  # stop ends a long wait too


def test_a_worker_name_is_started_once():
    workers = Workers("test")
    workers.start("job", lambda: None, pause_s=1000.0)
    try:
        with pytest.raises(ValueError, match="already running"):
            workers.start("job", lambda: None, pause_s=1.0)
    finally:
        workers.stop(timeout_s=5.0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="threads have a niceness of their own on Linux")
def test_a_background_worker_runs_at_a_lower_priority_than_the_rest_of_the_process():
    niceness = {}
    done = {name: threading.Event() for name in ("background", "foreground")}

    def job(name):
        niceness.setdefault(name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        done[name].set()

    base = os.getpriority(os.PRIO_PROCESS, 0)
    workers = Workers("test")
    workers.start("background", lambda: job("background"), pause_s=0.01, nice=4)
    workers.start("foreground", lambda: job("foreground"), pause_s=0.01)
    try:
        assert all(event.wait(5.0) for event in done.values())
    finally:
        workers.stop(timeout_s=5.0)
    assert niceness == {"background": min(19, base + 4), "foreground": base}
    assert os.getpriority(os.PRIO_PROCESS, 0) == base  # the process (its main thread) keeps its priority


def test_a_full_frame_queue_pushes_out_its_oldest_item_and_counts_it_finished():
    from gcross_ros.node.workers import FrameQueue

    queue = FrameQueue(2)
    assert queue.put("a") is None and queue.put("b") is None
    assert queue.put("c") == "a"  # full: the oldest goes, the caller accounts for it
    assert len(queue) == 2 and not queue.wait_idle(0.01)  # b and c are not done yet
    assert queue.take(0.01) == "b"
    queue.done()
    assert queue.drain() == ["c"] and len(queue) == 0
    assert queue.wait_idle(0.01)  # done, pushed out or drained: nothing unfinished
    assert queue.take(0.01) is None
    with pytest.raises(ValueError):
        FrameQueue(0)


def test_a_consumer_takes_every_item_in_order_and_survives_a_failing_job():
    from gcross_ros.node.workers import FrameQueue

    queue, seen = FrameQueue(10), []

    def job(item):
        seen.append(item)
        if item == 2:
            raise RuntimeError("a job that fails")

    workers = Workers("test")
    workers.consume("consumer", queue, job)
    try:
        for i in range(5):
            queue.put(i)
        assert queue.wait_idle(5.0)
    finally:
        workers.stop(timeout_s=5.0)
    assert seen == [0, 1, 2, 3, 4]
