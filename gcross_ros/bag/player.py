"""Replay a bag's raw CDR messages on an rclpy node at the recorded timing (``gcross-bag play``).

The only bag module that uses rclpy; it is imported inside the functions, so that the rest of
:mod:`gcross_ros.bag` (and :func:`wall_target`) works without ROS.
"""
from __future__ import annotations

import contextlib
import importlib
import threading
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

from gcross_core.errors import BagError, InputError
from gcross_ros.bag.reader import BagReader


def _rclpy_qos(profiles, default_depth: int = 10):
    """rclpy QoSProfile from the offered QoS rosbags read from the bag (reliable/volatile if none)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=default_depth,
                     reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
    if profiles:
        p = profiles[0]
        qos.depth = max(int(p.depth), 1)
        if p.reliability.name == "BEST_EFFORT":
            qos.reliability = ReliabilityPolicy.BEST_EFFORT
        if p.durability.name == "TRANSIENT_LOCAL":
            qos.durability = DurabilityPolicy.TRANSIENT_LOCAL
    return qos


def message_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> the rclpy message class (ImportError if the package is missing)."""
    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


def wall_target(t_bag_ns: int, bag_start_ns: int, wall_start: float, rate: float) -> float:
    """Wall time (time.monotonic scale) at which a message recorded at ``t_bag_ns`` is due."""
    if rate <= 0:
        return wall_start  # as fast as possible
    return wall_start + (t_bag_ns - bag_start_ns) / 1e9 / rate


class BagPlayer:
    """Publish a bag's raw CDR messages on an rclpy node at the recorded timing.

    Messages are published as serialized bytes (``Publisher.publish(bytes)``), so what goes on the
    wire is exactly what was recorded. Topics whose message package is not importable (tf2_msgs is
    not on PyPI) are skipped with a notice. ``clock=True`` also publishes /clock (bag time) for nodes
    running with ``use_sim_time``.
    """

    def __init__(self, node, bag_path, rate: float = 1.0, topics: Optional[Sequence[str]] = None,
                 clock: bool = False):
        if rate < 0:
            raise InputError(f"rate must be >= 0 (0 = as fast as possible), got {rate}")
        self.node = node
        self.bag_path = Path(bag_path)
        self.rate = float(rate)
        self.publishers = {}
        self.skipped_topics: Dict[str, str] = {}
        with BagReader(self.bag_path) as bag:
            avail = bag.topics
            wanted = list(avail) if not topics else list(topics)
            unknown = [t for t in wanted if t not in avail]
            if unknown:
                raise BagError(f"bag {self.bag_path} has no topics {unknown} (has {sorted(avail)})")
            for topic in wanted:
                try:
                    cls = message_class(avail[topic])
                except (ImportError, AttributeError, ValueError) as e:
                    self.skipped_topics[topic] = f"{avail[topic]} not importable ({e})"
                    continue
                self.publishers[topic] = node.create_publisher(cls, topic, _rclpy_qos(bag.qos(topic)))
        for topic, why in self.skipped_topics.items():
            node.get_logger().warning(f"not replaying {topic}: {why}")
        self._clock_pub = None
        if clock:
            from rclpy.qos import QoSProfile
            from rosgraph_msgs.msg import Clock

            self._clock_pub = node.create_publisher(Clock, "/clock", QoSProfile(depth=1))
        self.published = 0

    def wait_for_subscribers(self, timeout_s: float, topics: Optional[Sequence[str]] = None) -> bool:
        """Wait until every (given) replayed topic has at least one subscriber; False on timeout."""
        names = [t for t in (topics or self.publishers) if t in self.publishers]
        deadline = time.monotonic() + timeout_s
        while True:
            if all(self.publishers[t].get_subscription_count() > 0 for t in names):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(0.05, max(deadline - time.monotonic(), 0.0)))

    def play_once(self, stop: Optional[threading.Event] = None) -> int:
        """Publish every message once at the recorded timing; returns the number published."""
        n = 0
        with BagReader(self.bag_path) as bag:
            bag_start = None
            wall_start = time.monotonic()
            for topic, _, t_ns, raw in bag.messages(list(self.publishers)):
                if stop is not None and stop.is_set():
                    break
                if bag_start is None:
                    bag_start = t_ns
                delay = wall_target(t_ns, bag_start, wall_start, self.rate) - time.monotonic()
                if delay > 0:
                    if stop is not None:
                        if stop.wait(delay):
                            break
                    else:
                        time.sleep(delay)
                if self._clock_pub is not None:
                    self._publish_clock(t_ns)
                self.publishers[topic].publish(raw)
                n += 1
        self.published += n
        return n

    def _publish_clock(self, t_ns: int) -> None:
        from rosgraph_msgs.msg import Clock

        from gcross_ros.msgs.rclpy_msgs import ns_to_stamp

        self._clock_pub.publish(Clock(clock=ns_to_stamp(t_ns)))


@contextlib.contextmanager
def rclpy_node(name: str, command: str):
    """A node of the tool's own between rclpy.init and shutdown; a clear exit when rclpy is missing."""
    try:
        import rclpy
    except ImportError as e:
        raise SystemExit(f"gcross-bag {command} needs rclpy (pip install ros-rclpy or source ROS 2): {e}")
    rclpy.init()
    node = rclpy.create_node(name)
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def play_bag(bag_path, rate: float = 1.0, topics: Optional[Sequence[str]] = None, clock: bool = False,
             loop: bool = False, wait_for_subscribers_s: float = 0.0, linger_s: float = 1.0) -> int:
    """Play a bag on a node of its own, ``loop`` until Ctrl-C; returns 0."""
    import rclpy

    with rclpy_node("gcross_bag_player", "play") as node:
        try:
            player = BagPlayer(node, bag_path, rate=rate, topics=topics or None, clock=clock)
            if wait_for_subscribers_s > 0 and not player.wait_for_subscribers(wait_for_subscribers_s):
                node.get_logger().warning(f"not every topic had a subscriber after {wait_for_subscribers_s} s; "
                                          "playing anyway")
            while True:
                n = player.play_once()
                node.get_logger().info(f"published {n} messages from {bag_path}")
                if not loop:
                    break
            # transient-local topics (/tf_static, ground truth) stay available to late subscribers a moment
            if linger_s > 0:
                end = time.monotonic() + linger_s
                while time.monotonic() < end:
                    rclpy.spin_once(node, timeout_sec=0.1)
        except KeyboardInterrupt:
            pass
    return 0
