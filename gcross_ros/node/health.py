"""The node's health: counters and timings, throttled warnings, and the diagnostics status built from them."""
from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Dict

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from gcross_core.mapping.assembly import EXPECTED_DROPS


class Stats:
    """Counters and timings shared by the callback and worker threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counts: Counter = Counter()
        self.dropped: Counter = Counter()
        self.timings: Dict[str, float] = {}
        self._fusion_ms: list = []
        self._fusion_cpu_ms: list = []

    def inc(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def drop(self, reason: str) -> None:
        with self._lock:
            self.dropped[reason] += 1

    def fusion_time(self, ms: float, cpu_ms: float) -> None:
        """Wall time of one frame's fusion, and the CPU time its thread spent (less under contention)."""
        with self._lock:
            self._fusion_ms.append(ms)
            self._fusion_cpu_ms.append(cpu_ms)
            self.timings["fusion_ms_last"] = ms

    def timing(self, key: str, value: float) -> None:
        with self._lock:
            self.timings[key] = value

    def report(self) -> Dict[str, float]:
        """Everything as one flat dict; the fusion mean covers the time since the previous report."""
        with self._lock:
            out: Dict[str, float] = dict(self.counts)
            out["frames_dropped"] = sum(self.dropped.values())
            out.update({f"dropped.{k}": v for k, v in sorted(self.dropped.items())})
            out.update(self.timings)
            if self._fusion_ms:
                out["fusion_ms_mean"] = float(np.mean(self._fusion_ms))
                out["fusion_cpu_ms_mean"] = float(np.mean(self._fusion_cpu_ms))
            self._fusion_ms, self._fusion_cpu_ms = [], []
            return out


class ThrottledWarnings:
    """At most one warning per kind per period, saying how many were held back in between."""

    def __init__(self, logger, period_s: float):
        self._logger, self.period_s = logger, period_s
        self._last: Dict[str, float] = {}
        self._held: Counter = Counter()
        self._lock = threading.Lock()

    def warn(self, kind: str, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(kind, -np.inf) < self.period_s:
                self._held[kind] += 1
                return
            held, self._held[kind] = self._held[kind], 0
            self._last[kind] = now
        suffix = f" ({held} more like this in the last {self.period_s:g} s)" if held else ""
        self._logger.warning(message + suffix)


def diagnostics_msg(report: Dict[str, float], name: str, hardware_id: str, previous: Dict[str, float],
                    stamp, lost_warn_ratio: float = 0.05) -> DiagnosticArray:
    """One DiagnosticStatus of the pipeline; every report entry becomes a key/value.

    Level: ERROR on segmentation/render errors; WARN when frames were dropped since the ``previous``
    report (but for ~/pause_integration), when more than ``lost_warn_ratio`` of the color frames sent since
    then never reached the node (``frames_lost``, see gcross_core.mapping.arrivals), or when no frame
    was fused yet; else OK.
    """
    def since(key):
        return report.get(key, 0) - previous.get(key, 0)

    errors = report.get("segmentation_errors", 0) + report.get("render_errors", 0)
    lost, received = since("frames_lost"), since("frames_in")
    level, message = DiagnosticStatus.OK, "fusing"
    if errors:
        level, message = DiagnosticStatus.ERROR, f"{errors:g} segmentation/render errors (see log)"
    elif lost > 0 and lost > lost_warn_ratio * (lost + received):
        level = DiagnosticStatus.WARN
        message = (f"{lost:g} of {lost + received:g} color frames lost before reaching the node since the last "
                   "report (see lost.*; a deeper input queue or reliable QoS helps, see docs/node.md)")
    elif since("frames_dropped") - sum(since(f"dropped.{r}") for r in EXPECTED_DROPS) > 0:  # pauses, rate policy
        level, message = DiagnosticStatus.WARN, "frames dropped since the last report (see dropped.*)"
    elif not report.get("frames_fused"):
        level, message = DiagnosticStatus.WARN, "no frame fused yet"
    status = DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                              values=[KeyValue(key=k, value=f"{v:g}" if isinstance(v, float) else str(v))
                                      for k, v in sorted(report.items())])
    msg = DiagnosticArray(status=[status])
    msg.header.stamp = stamp
    return msg
