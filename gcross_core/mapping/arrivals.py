"""What a periodic input stream lost before it reached us, told apart from pauses and stamp jumps.

A camera stream is judged by the messages that arrive: a message that never reached the callback
(dropped by the transport, or overwritten in a keep-last queue while the callback was busy) leaves no
trace but a hole. Two ways to see the hole, the first exact:

- **Publication sequence numbers** (DDS gives every sample of a writer a number; rclpy hands it to a
  callback that takes a ``MessageInfo``): a jump from n to n + k on one publisher means k - 1 messages
  of that publisher never arrived. Exact, whatever the rate, bursts included.
- **Stamps** (bags, middlewares without sequence numbers): the stream's period is the median of the
  last ``window`` gaps between messages (robust to a few losses, unlike the minimum, which a burst of
  close stamps collapses); a gap of more than 1.5 periods and at most ``pause_periods`` periods counts
  ``round(gap / period) - 1`` lost messages.

Neither counts these as losses:

- a **pause**: a gap longer than ``pause_periods`` periods (the source stopped publishing, a bag was
  paused); it is added to ``paused_s``. With publish times (``sent_ns``: the DDS source timestamp, or a
  bag's log time) gaps are measured on that clock, so a pause shows as a pause even when stamps run on.
- a **stamp jump**: stamps going back (a bag played again: ``stamp_jumps``, the estimate restarts), or
  stamps advancing much more than publish time did (a simulator or driver clock jump forward).

What cannot be seen, and so is never counted: messages lost after the last one received (until another
arrives), and, without sequence numbers, messages lost before the first one received. With sequence
numbers the messages a publisher sent before the first one received are counted separately as
``unseen_before_first`` (they may have been published before this subscription existed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Hashable, List, Optional

import numpy as np

JUMP_S = 1.0  # stamps this far ahead of (or behind) the publish clock: a jump, not a gap


@dataclass(frozen=True)
class ArrivalReport:
    received: int  # messages that reached the callback
    lost: int  # best count of messages that never reached it (exact when ``exact``)
    exact: bool  # lost comes from publication sequence numbers
    lost_by_sequence: int
    lost_by_stamps: int  # the stamp estimate (kept with sequence numbers too, for comparison)
    unseen_before_first: int  # sequence numbers below each publisher's first received one
    paused_s: float  # time with no data beyond ``pause_periods`` periods
    pauses: int
    stamp_jumps: int

    def as_dict(self, prefix: str = "") -> Dict[str, float]:
        return {f"{prefix}{k}": (int(v) if isinstance(v, bool) else v) for k, v in self.__dict__.items()}


class ArrivalCounter:
    """Accounts one stream's arrivals (see the module docstring)."""

    def __init__(self, window: int = 15, pause_periods: float = 4.0):
        if window < 3:
            raise ValueError(f"window must be >= 3, got {window}")
        if not pause_periods > 1.5:
            raise ValueError(f"pause_periods must be > 1.5, got {pause_periods}")
        self.window = int(window)
        self.pause_periods = float(pause_periods)
        self.received = 0
        self.lost_by_sequence = 0
        self.lost_by_stamps = 0
        self.unseen_before_first = 0
        self.paused_ns = 0
        self.pauses = 0
        self.stamp_jumps = 0
        self._sequences: Dict[Hashable, int] = {}  # publisher -> last sequence number received
        self._restart()

    def _restart(self) -> None:
        self._last_stamp: Optional[int] = None
        self._last_sent: Optional[int] = None
        self._gaps: List[int] = []

    @property
    def period_ns(self) -> Optional[float]:
        """The stream's period as estimated now (median of recent gaps), None before three messages."""
        return float(np.median(self._gaps)) if len(self._gaps) >= 2 else None

    def add(self, stamp_ns: int, sent_ns: Optional[int] = None, sequence: Optional[int] = None,
            publisher: Hashable = None) -> int:
        """Account one received message; returns the messages found lost just before it.

        ``sent_ns``: when it was published (DDS source timestamp, or a bag's log time), None: stamps only.
        ``sequence``: its publication sequence number on ``publisher`` (any hashable id), None: unknown.
        """
        self.received += 1
        lost_seq = self._by_sequence(int(sequence), publisher) if sequence is not None else None
        lost_stamps = self._by_stamps(int(stamp_ns), None if sent_ns is None else int(sent_ns))
        return lost_seq if lost_seq is not None else lost_stamps

    def _by_sequence(self, sequence: int, publisher: Hashable) -> int:
        last = self._sequences.get(publisher)
        self._sequences[publisher] = sequence
        if last is None or sequence <= last:  # a new publisher, or one that restarted its numbering
            self.unseen_before_first += max(0, sequence - 1)
            return 0
        lost = sequence - last - 1
        self.lost_by_sequence += lost
        return lost

    def _by_stamps(self, stamp_ns: int, sent_ns: Optional[int]) -> int:
        last_stamp, last_sent = self._last_stamp, self._last_sent
        self._last_stamp, self._last_sent = stamp_ns, sent_ns
        if last_stamp is None:
            return 0
        d_stamp = stamp_ns - last_stamp
        if d_stamp <= 0:  # back in time (a bag played again) or a repeated stamp: start the estimate over
            if -d_stamp >= JUMP_S * 1e9:
                self.stamp_jumps += 1
            self._restart()
            self._last_stamp, self._last_sent = stamp_ns, sent_ns
            return 0
        gap = d_stamp
        if sent_ns is not None and last_sent is not None:
            gap = max(sent_ns - last_sent, 0)
            if d_stamp - gap >= JUMP_S * 1e9:  # stamps ran ahead of the clock they were published on
                self.stamp_jumps += 1
                return 0
        period = self.period_ns
        self._gaps.append(gap)
        del self._gaps[:-self.window]
        if period is None or period <= 0:
            return 0
        if gap > self.pause_periods * period:
            self.pauses += 1
            self.paused_ns += int(gap - period)
            return 0
        if gap > 1.5 * period:
            lost = int(round(gap / period)) - 1
            self.lost_by_stamps += lost
            return lost
        return 0

    def report(self) -> ArrivalReport:
        exact = bool(self._sequences)
        return ArrivalReport(received=self.received,
                             lost=self.lost_by_sequence if exact else self.lost_by_stamps, exact=exact,
                             lost_by_sequence=self.lost_by_sequence, lost_by_stamps=self.lost_by_stamps,
                             unseen_before_first=self.unseen_before_first, paused_s=self.paused_ns * 1e-9,
                             pauses=self.pauses, stamp_jumps=self.stamp_jumps)
