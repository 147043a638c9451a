"""The diagnostics status: which level a report gets, and why."""
import pytest

pytest.importorskip("diagnostic_msgs")
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402

from gcross_ros.node.health import diagnostics_msg  # noqa: E402

pytestmark = pytest.mark.ros


def _status(report, previous, ratio=0.05):
    msg = diagnostics_msg(report, "node: pipeline", "map", previous, None, ratio).status[0]
    return msg.level, msg.message, {kv.key: kv.value for kv in msg.values}


def _level(name):
    return getattr(DiagnosticStatus, name)


def test_lost_frames_above_the_ratio_warn():
    base = {"frames_in": 100, "frames_fused": 100, "frames_dropped": 0, "frames_lost": 2}
    level, message, values = _status({**base, "frames_in": 110, "frames_fused": 110, "frames_lost": 5}, base)
    assert level == _level("WARN") and "3 of 13 color frames lost" in message and values["frames_lost"] == "5"
    # under the ratio: OK
    level, _, _ = _status({**base, "frames_in": 200, "frames_fused": 200, "frames_lost": 4}, base)
    assert level == _level("OK")
    # nothing new lost: OK even though frames were lost before
    assert _status(dict(base, frames_in=110, frames_fused=110), base)[0] == _level("OK")


def test_errors_outrank_losses_and_drops():
    base = {"frames_in": 10, "frames_fused": 10, "frames_dropped": 0, "frames_lost": 0}
    now = {**base, "frames_in": 11, "frames_lost": 5, "frames_dropped": 1, "render_errors": 1}
    assert _status(now, base)[0] == _level("ERROR")
    now.pop("render_errors")
    now["frames_lost"] = 0
    assert _status(now, base)[:2] == (_level("WARN"), "frames dropped since the last report (see dropped.*)")
    assert _status({"frames_dropped": 0}, {})[:2] == (_level("WARN"), "no frame fused yet")
