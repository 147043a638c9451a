"""Read gcross RGB-D bags (layout in :mod:`gcross_ros.bag.format`) with ``rosbags``; nothing imports rclpy.
Raw messages and the ground-truth cloud here; frames come through the frame assembly
(:mod:`gcross_ros.bag.frames`: ``iter_frames``, ``read_bag``).

Whatever ``rosbags`` (or the sqlite/mcap storage under it) raises while opening, reading or decoding a
bag becomes a :class:`~gcross_core.errors.BagError` naming the bag; so does content the codec rejects
(an unsupported encoding, a frame whose sizes disagree). Errors of this package's own code are left
as they are.
"""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from gcross_core.errors import BagError, InputError
from gcross_ros.bag.format import CLASS_NAMES_KEY, BagTopics, GroundTruthCloud
from gcross_ros.msgs import codec
from gcross_ros.msgs import rosbags_msgs as rb

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _storage_errors(path: Path, doing: str):
    """Around calls into rosbags only: anything they raise means the bag cannot be read."""
    try:
        yield
    except BagError:
        raise
    except Exception as e:  # noqa: BLE001 - rosbags raises its own classes and lets sqlite/mcap/CDR errors through
        raise BagError(f"bag {path} is corrupt, truncated or unreadable ({doing}): {type(e).__name__}: {e}") from e


@contextlib.contextmanager
def _content_errors(path: Path, doing: str):
    """Around decoding: content the codec rejects is a bad bag, named as such."""
    try:
        yield
    except InputError as e:
        if isinstance(e, BagError):
            raise
        raise BagError(f"bag {path}: {doing}: {e}") from e


class BagReader:
    """Read raw CDR messages of a bag; storage failures become a :class:`BagError` naming the bag."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"bag {self.path} does not exist")
        from rosbags.rosbag2 import Reader

        with _storage_errors(self.path, "opening"):
            self._reader = Reader(self.path)
            self._reader.open()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    @property
    def topics(self) -> Dict[str, str]:
        """topic -> message type."""
        return {c.topic: c.msgtype for c in self._reader.connections}

    @property
    def topic_counts(self) -> Dict[str, int]:
        """topic -> message count from the metadata."""
        counts: Dict[str, int] = {}
        for c in self._reader.connections:
            counts[c.topic] = counts.get(c.topic, 0) + int(c.msgcount)
        return counts

    def qos(self, topic: str):
        """Offered QoS profiles recorded for ``topic`` (rosbags Qos tuples, possibly empty)."""
        for c in self._reader.connections:
            if c.topic == topic:
                return list(getattr(c.ext, "offered_qos_profiles", []) or [])
        return []

    @property
    def message_count(self) -> int:
        return int(self._reader.message_count)

    @property
    def start_time_ns(self) -> int:
        return int(self._reader.start_time)

    @property
    def end_time_ns(self) -> int:
        return int(self._reader.end_time)

    @property
    def custom_data(self) -> Dict[str, str]:
        meta = getattr(self._reader.storage, "metadata", None)
        return dict(getattr(meta, "custom", None) or {})

    @property
    def class_names(self) -> Optional[List[str]]:
        raw = self.custom_data.get(CLASS_NAMES_KEY)
        if raw is None:
            return None
        try:
            names = json.loads(raw)
        except json.JSONDecodeError as e:
            raise BagError(f"bag {self.path}: metadata {CLASS_NAMES_KEY} is not JSON ({e})") from e
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BagError(f"bag {self.path}: metadata {CLASS_NAMES_KEY} is not a list of names")
        return names

    def messages(self, topics: Optional[Sequence[str]] = None,
                 ) -> Iterator[Tuple[str, str, int, bytes]]:
        """(topic, msgtype, receive time ns, raw CDR) in time order.

        After a complete pass over all topics the count is checked against the metadata, so a bag
        whose data file lost its tail is reported instead of silently yielding fewer messages.
        """
        conns = [c for c in self._reader.connections if topics is None or c.topic in topics]
        if topics is not None and not conns:
            return
        expected = sum(int(c.msgcount) for c in conns)
        n = 0
        with _storage_errors(self.path, "reading messages"):
            for conn, t_ns, raw in self._reader.messages(connections=conns):
                n += 1
                yield conn.topic, conn.msgtype, int(t_ns), bytes(raw)
        if n != expected:
            raise BagError(f"bag {self.path} is truncated: its metadata lists {expected} messages on "
                           f"{sorted({c.topic for c in conns})} but only {n} could be read")

    def deserialize(self, raw: bytes, msgtype: str, topic: str = ""):
        with _storage_errors(self.path, f"decoding a {msgtype} on {topic or '?'}"):
            return rb.deserialize(raw, msgtype)


def read_ground_truth(path, topics: BagTopics = BagTopics()) -> Optional[GroundTruthCloud]:
    """The labelled ground-truth cloud of a bag, or None when the bag has none."""
    with BagReader(path) as bag:
        if topics.gt_cloud not in bag.topics:
            return None
        for topic, msgtype, _, raw in bag.messages([topics.gt_cloud]):
            msg = bag.deserialize(raw, msgtype, topic)
            with _content_errors(bag.path, f"ground-truth cloud on {topic}"):
                points = codec.decode_cloud(msg)
                coord, color, label = codec.split_labelled_points(points)
                ids = codec.instance_ids(points)
            return GroundTruthCloud(coord, color, label, bag.class_names, codec.stamp_to_ns(msg.header.stamp),
                                    instance=None if ids is None else ids - 1)
    return None
