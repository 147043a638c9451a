"""Live bag evaluation (``gcross-bag eval-live``): replay a bag into a running node, score the cloud it publishes.

Needs rclpy and the message packages; the scoring and the report are those of
:mod:`gcross_ros.bag.evaluate`.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np

from gcross_core.errors import InputError, LiveEvalError
from gcross_ros.bag.evaluate import default_radius_m, labels_for_classes, load_ground_truth
from gcross_ros.bag.format import BagTopics
from gcross_ros.bag.player import BagPlayer, rclpy_node
from gcross_ros.bag.reader import BagReader
from gcross_ros.bag.score import BagScore, LabelledMap, ReportSpec, score_and_report
from gcross_ros.msgs import codec

log = logging.getLogger(__name__)


def live_evaluate(bag_path, out_dir, node, cloud_topic: str = "/labelled_cloud", legend_topic: str = "/class_legend",
                  rate: float = 1.0, settle_s: float = 20.0, discovery_s: float = 30.0,
                  radius_m: Optional[float] = None, voxel_size_m: Optional[float] = None,
                  topics: BagTopics = BagTopics(), instances_topic: str = "/instances",
                  diagnostics_topic: str = "/diagnostics") -> BagScore:
    """Replay a bag into a running segmentation node and score the cloud it publishes.

    ``node`` is an rclpy node of the caller's (the caller owns rclpy.init/shutdown). The camera topics
    are replayed at ``rate``; afterwards the clouds on ``cloud_topic`` stamped at or after the last frame
    (the node's map then holds every frame) are followed until the node reports nothing left to segment
    (``segment_due.*`` all 0 on ``diagnostics_topic``, segment_scope priority; a node that does not report
    them: the first such cloud) or ``settle_s`` runs out, and the latest is scored exactly like
    ``evaluate_bag`` does, with
    class names from the node's transient-local ``class_legend`` (else the bag's). ``voxel_size_m`` (None
    or 0: the node's, from its legend) is the map's cell size in the report; the default label-transfer
    radius is twice the segmenter's grid from the legend (:func:`~gcross_ros.bag.evaluate.default_radius_m`).
    With an instance head the objects are ranked by the scores the node published with that cloud on
    ``instances_topic`` (its tracker's, as ``evaluate_bag`` ranks them), else by mean point confidence.
    """
    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import PointCloud2
    from std_msgs.msg import String
    from visualization_msgs.msg import MarkerArray

    from gcross_ros.msgs.markers import object_scores

    gt = load_ground_truth(bag_path, topics)
    clouds, legends = [], []
    node.create_subscription(PointCloud2, cloud_topic, lambda m: clouds.append((time.monotonic(), m)),
                             QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    instances = {}  # header stamp -> MarkerArray: the objects published with the cloud of that stamp
    node.create_subscription(MarkerArray, instances_topic,
                             lambda m: instances.__setitem__(codec.stamp_to_ns(m.markers[0].header.stamp), m)
                             if m.markers else None,
                             QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    diags = []  # (receive time, {segment_due.<tier>: voxels left}) of the node's diagnostics

    def on_diag(msg):
        if msg.status:
            diags.append((time.monotonic(), {kv.key: float(kv.value) for kv in msg.status[0].values
                                             if kv.key.startswith("segment_due.")}))

    node.create_subscription(DiagnosticArray, diagnostics_topic, on_diag, 10)
    node.create_subscription(String, legend_topic, legends.append,
                             QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                        durability=DurabilityPolicy.TRANSIENT_LOCAL))
    camera = [topics.color, topics.depth, topics.camera_info, topics.pose, topics.tf, topics.tf_static]
    with BagReader(bag_path) as bag:
        camera = [t for t in camera if t in bag.topics]
        # camera_info shares the image stamps and is tiny to read
        last_stamp_ns = max((t for _, _, t, _ in bag.messages([topics.camera_info])), default=0)
    player = BagPlayer(node, bag_path, rate=rate, topics=camera)
    needed = [topics.color, topics.depth, topics.camera_info]
    deadline = time.monotonic() + discovery_s
    while not player.wait_for_subscribers(0.0, needed) and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    if not player.wait_for_subscribers(0.0, needed):
        raise LiveEvalError(f"no subscriber on {needed} after {discovery_s} s: is the node running and remapped?")
    t_start = time.monotonic()
    done = threading.Event()
    thread = threading.Thread(target=lambda: (player.play_once(), done.set()), daemon=True)
    thread.start()
    while not done.is_set():
        rclpy.spin_once(node, timeout_sec=0.05)
    t_played = time.monotonic()
    chosen, converged = None, False
    while time.monotonic() < t_played + settle_s:
        rclpy.spin_once(node, timeout_sec=0.05)
        covering = [(t_recv, msg) for t_recv, msg in clouds if codec.stamp_to_ns(msg.header.stamp) >= last_stamp_ns]
        if not covering:
            continue
        chosen = covering[-1]
        t_diag, due = diags[-1] if diags else (0.0, {})
        if not due or (t_diag > chosen[0] and not any(due.values())):
            converged = bool(due)
            break
    if chosen is None:
        raise LiveEvalError(f"no cloud on {cloud_topic} covering the last frame arrived within {settle_s} s "
                            f"after playback ({len(clouds)} earlier clouds)")
    stamp = codec.stamp_to_ns(chosen[1].header.stamp)
    if codec.instance_ids(codec.decode_cloud(chosen[1])) is not None:
        wait_until = time.monotonic() + 2.0  # the objects follow their cloud
        while stamp not in instances and time.monotonic() < wait_until:
            rclpy.spin_once(node, timeout_sec=0.05)
    scores = object_scores(instances[stamp]) if stamp in instances else None
    names = gt.class_names
    legend = json.loads(legends[-1].data) if legends else {}
    if legend:
        names = [c["name"] for c in sorted(legend["classes"], key=lambda c: c["id"])]
    voxel_size_m = voxel_size_m or legend.get("voxel_size_m")
    if not voxel_size_m:
        raise InputError(f"no voxel_size_m given and none in the class legend on {legend_topic}: pass "
                         "--voxel-size-m (the node's voxel_size_m)")
    if not names:
        raise InputError(f"bag {bag_path} has no class names and no class legend arrived on {legend_topic}")
    points = codec.decode_cloud(chosen[1])
    coord, _, label = codec.split_labelled_points(points)
    confidence = points["confidence"].astype(np.float64) if "confidence" in (points.dtype.names or ()) else None
    stuff = json.loads(legends[-1].data).get("stuff_classes") if legends else None
    if codec.instance_ids(points) is not None and (stuff is None or gt.instance is None):
        log.warning("the cloud has objects but %s: no instance AP",
                    "the bag's ground truth has no instance ids" if gt.instance is None
                    else "no class legend naming the stuff classes arrived")
    gt_label = labels_for_classes(gt, names, bag_path)
    radius = radius_m if radius_m is not None else default_radius_m(legend.get("grid_size_m"), voxel_size_m)
    live = {"messages_published": player.published,
            "clouds_received": len(clouds), "playback_s": t_played - t_start,
            "cloud_after_playback_s": chosen[0] - t_played, "rate": rate,
            "segmentation_converged": converged}
    scored = LabelledMap(coord, label, instance=codec.instance_ids(points), confidence=confidence,
                         object_scores=scores)
    spec = ReportSpec(title=f"Live evaluation: {Path(bag_path).name}", radius_m=radius, cell_m=voxel_size_m,
                      settings={"bag": str(bag_path), "cloud_topic": cloud_topic, **live}, stuff_classes=stuff)
    return score_and_report(out_dir, scored, replace(gt, label=gt_label, class_names=names), names, spec)


def run_live_evaluation(bag_path, out_dir, cloud_topic: str = "/labelled_cloud",
                        legend_topic: str = "/class_legend", rate: float = 1.0, settle_s: float = 20.0,
                        radius_m: Optional[float] = None, voxel_size_m: Optional[float] = None) -> BagScore:
    """:func:`live_evaluate` on an evaluator node of its own (rclpy.init .. shutdown)."""
    with rclpy_node("gcross_bag_live_eval", "eval-live") as node:
        return live_evaluate(bag_path, out_dir, node, cloud_topic=cloud_topic, legend_topic=legend_topic,
                             rate=rate, settle_s=settle_s, radius_m=radius_m, voxel_size_m=voxel_size_m)
