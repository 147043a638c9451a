"""The node's worker threads: a job runs again after a pause, and stop ends the loop."""
import threading

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
