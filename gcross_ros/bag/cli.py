"""``gcross-bag``: record scenes as ROS 2 bags, replay bags with rclpy, evaluate segmentation offline.

    gcross-bag record --scene DIR --out BAG [--storage sqlite3|mcap] [--every K] [--rate-hz HZ]
    gcross-bag play BAG [--rate R] [--loop] [--topics T ...] [--clock] [--wait-for-subscribers S]
    gcross-bag eval BAG --checkpoint CKPT --out DIR [--params-file YAML] [--radius-m R]
    gcross-bag eval-live BAG --out DIR [--cloud-topic T] [--rate R]   (with the node running)
    gcross-bag info BAG

``play`` and ``eval-live`` need rclpy and the message packages; the other commands do not.

``eval`` runs the node's processing offline through :class:`gcross_core.mapping.pipeline.SegmentationPipeline`
(the same VoxelMap fusion per frame and snapshot -> predict -> fuse_probabilities segmentation, with the
node's parameter defaults or a node parameter file), frame by frame with the segmentation period counted
in bag time, then scores the final labelled map against the bag's ground-truth cloud and writes a report
folder. ``eval-live`` replays the bag into a running node and scores the cloud it publishes the same way.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from gcross_ros.bag.io import BagError, BagReader, BagTopics, RecordConfig, iter_frames, read_ground_truth, record_scene
from gcross_core.errors import LiveEvalError

log = logging.getLogger("gcross_bag")


# ---------------------------------------------------------------- record

def _class_names_for(scene, choice: str) -> Optional[List[str]]:
    if choice == "none":
        return None
    if choice == "auto":
        names = getattr(scene, "class_names", None)
        return list(names) if names else None
    if Path(choice).is_file():
        return [line.strip() for line in Path(choice).read_text().splitlines() if line.strip()]
    from gcross_core.data import classes

    table = {"scannet20": "SCANNET20_CLASSES", "scannet200": "SCANNET200_CLASSES", "synthetic": "SYNTHETIC_CLASSES"}
    if choice not in table:
        raise ValueError(f"--classes {choice!r}: expected auto, none, {', '.join(table)} or a text file of names")
    return list(getattr(classes, table[choice]))


def cmd_record(args) -> int:
    try:
        from gcross_core.data import load_scene
    except ImportError as e:
        raise SystemExit(f"gcross-bag record needs gcross_core.data.load_scene: {e}")
    scene = load_scene(args.scene, segment=args.segment)
    cfg = RecordConfig(rate_hz=args.rate_hz, every=args.every, storage=args.storage)
    summary = record_scene(scene, args.out, cfg, class_names=_class_names_for(scene, args.classes),
                           max_frames=args.max_frames, progress=not args.quiet)
    log.info("wrote %s: %d frames (%dx%d), %d ground-truth points%s", summary.path, summary.frames_written,
             *summary.image_size, summary.gt_points,
             f", {summary.frames_skipped_invalid_pose} frames skipped (invalid pose)"
             if summary.frames_skipped_invalid_pose else "")
    return 0


# ---------------------------------------------------------------- info

def cmd_info(args) -> int:
    with BagReader(args.bag) as bag:
        print(f"bag {bag.path}: {bag.message_count} messages, "
              f"{(bag.end_time_ns - bag.start_time_ns) / 1e9:.2f} s")
        counts = bag.topic_counts
        for topic, msgtype in sorted(bag.topics.items()):
            print(f"  {topic:32s} {msgtype:32s} {counts.get(topic, 0)}")
        for k, v in sorted(bag.custom_data.items()):
            print(f"  custom_data {k}: {v[:120]}")
    return 0


# ---------------------------------------------------------------- play

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
            raise ValueError(f"rate must be >= 0 (0 = as fast as possible), got {rate}")
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
        from builtin_interfaces.msg import Time
        from rosgraph_msgs.msg import Clock

        self._clock_pub.publish(Clock(clock=Time(sec=int(t_ns // 10**9), nanosec=int(t_ns % 10**9))))


def cmd_play(args) -> int:
    try:
        import rclpy
    except ImportError as e:
        raise SystemExit(f"gcross-bag play needs rclpy (pip install ros-rclpy or source ROS 2): {e}")
    rclpy.init()
    node = rclpy.create_node("gcross_bag_player")
    try:
        player = BagPlayer(node, args.bag, rate=args.rate, topics=args.topics or None, clock=args.clock)
        if args.wait_for_subscribers > 0 and not player.wait_for_subscribers(args.wait_for_subscribers):
            node.get_logger().warning(f"not every topic had a subscriber after {args.wait_for_subscribers} s; "
                                      "playing anyway")
        while True:
            n = player.play_once()
            node.get_logger().info(f"published {n} messages from {args.bag}")
            if not args.loop:
                break
        # transient-local topics (/tf_static, ground truth) stay available to late subscribers a moment
        if args.linger > 0:
            end = time.monotonic() + args.linger
            while time.monotonic() < end:
                rclpy.spin_once(node, timeout_sec=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


# ---------------------------------------------------------------- eval

@dataclass(frozen=True)
class EvalConfig:
    radius_m: Optional[float] = None  # label-transfer radius; None = 2 * voxel_size_m (a voxel's mean
    # position sits within one voxel diagonal ~1.7 voxels of any point it absorbed)
    final_segment: bool = True  # segment once more after the last frame so every voxel is labelled
    device: str = "cpu"
    max_frames: Optional[int] = None


def pipeline_config_from_params(params_file: Optional[str] = None, overrides: Optional[dict] = None):
    """A PipelineConfig from the node's parameter defaults, a node parameter YAML and explicit overrides."""
    from gcross_core.mapping.pipeline import PipelineConfig

    from gcross_ros.node.params import SegmentNodeParams

    values = dict(SegmentNodeParams.defaults())
    if params_file:
        values.update(_read_params_file(params_file))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return PipelineConfig.from_values(values)


def _read_params_file(path) -> dict:
    """ros__parameters of the first node in a ROS 2 parameter YAML (or a flat mapping)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"parameter file {path} is not a mapping")
    for value in data.values():
        if isinstance(value, dict) and "ros__parameters" in value:
            return dict(value["ros__parameters"])
    return data


def _align_classes(gt_names: Optional[List[str]], model_names: List[str], bag) -> Optional[np.ndarray]:
    """Index map GT label -> model label, or None when both use the same order."""
    if gt_names is None:
        log.warning("bag %s has no class names; assuming the checkpoint's %d classes", bag, len(model_names))
        return None
    if list(gt_names) == list(model_names):
        return None
    missing = [n for n in gt_names if n not in model_names]
    if missing:
        raise ValueError(f"bag {bag} labels classes {missing} that checkpoint classes {model_names} lack")
    log.warning("bag %s orders its classes differently from the checkpoint; remapping by name", bag)
    return np.array([model_names.index(n) for n in gt_names], np.int64)


def load_ground_truth(bag_path, topics: BagTopics = BagTopics()):
    """The bag's GroundTruthCloud; BagError when it has none."""
    gt = read_ground_truth(bag_path, topics)
    if gt is None:
        raise BagError(f"bag {bag_path} has no ground-truth cloud on {topics.gt_cloud}; nothing to score")
    return gt


def labels_for_classes(gt, class_names: Sequence[str], bag_path="") -> np.ndarray:  # -> [N] int64
    """Ground-truth labels re-indexed to ``class_names`` (by name when the bag stores its class names)."""
    remap = _align_classes(gt.class_names, list(class_names), bag_path)
    if remap is None:
        return gt.label.copy()
    ok = (gt.label >= 0) & (gt.label < len(remap))
    return np.where(ok, remap[np.clip(gt.label, 0, len(remap) - 1)], -1)


def run_pipeline_on_bag(bag_path, segmenter, pipeline_config, config: EvalConfig = EvalConfig(),
                        topics: BagTopics = BagTopics(), progress: bool = False):
    """Feed a bag's frames through SegmentationPipeline as the node does -> (LabelledPoints, perf dict)."""
    from gcross_core.evaluation.map_score import latency_summary
    from gcross_core.mapping.pipeline import SegmentationPipeline

    pipe = SegmentationPipeline(segmenter, pipeline_config)
    frame_s, fusion_s, seg_s = [], [], []
    t_wall = time.perf_counter()
    frames = iter_frames(bag_path, topics)
    if progress:
        from tqdm import tqdm

        frames = tqdm(frames, desc="eval", unit="frame")
    for i, f in enumerate(frames):
        if config.max_frames is not None and i >= config.max_frames:
            break
        t0 = time.perf_counter()
        pipe.process_frame(f.color, f.depth_m, f.K, f.cam_to_map, f.stamp_ns / 1e9)
        t1 = time.perf_counter()
        stats = pipe.maybe_segment(f.stamp_ns / 1e9)
        t2 = time.perf_counter()
        fusion_s.append(t1 - t0)
        frame_s.append(t2 - t0)
        if stats is not None:
            seg_s.append(stats.seconds)
    if not frame_s:
        raise BagError(f"bag {bag_path} has no complete RGB-D frames")
    final_s = 0.0
    if config.final_segment:
        stats = pipe.segment()
        if stats is not None:
            seg_s.append(stats.seconds)
            final_s = stats.seconds
    wall = time.perf_counter() - t_wall
    processing = float(np.sum(frame_s)) + final_s
    n = len(frame_s)
    perf = {
        "frames": n,
        "frames_per_s": n / processing if processing > 0 else float("nan"),
        "frames_per_s_wall": n / wall if wall > 0 else float("nan"),
        "wall_s": wall,
        "frame_latency": latency_summary(frame_s),
        "fusion_latency": latency_summary(fusion_s),
        "segmentation_latency": latency_summary(seg_s),
        "segmentations": len(seg_s),
    }
    return pipe.labelled_points(), perf


def score_and_report(out_dir, map_coord, map_label, gt_coord, gt_label, class_names: Sequence[str],
                     radius_m: float, title: str, cell_m: float = 0.02, perf: Optional[dict] = None,
                     settings: Optional[dict] = None) -> dict:
    """Score a labelled map (offline pipeline or a cloud the live node published) and write the report.

    map_coord [M, 3], map_label [M] (-1 = unlabelled), gt_coord [N, 3], gt_label [N] (-1 = ignore), all
    in the map frame. Writes results.json, report.md, confusion.csv/png and topdown.png.
    """
    from gcross_core.evaluation.map_score import score_labelled_map
    from gcross_core.evaluation.report import save_topdown_png, write_metrics_report

    names = list(class_names)
    score = score_labelled_map(map_coord, map_label, gt_coord, gt_label, len(names), radius_m)
    m = score.metrics
    coverage = {"radius_m": float(radius_m), "gt_points": int(len(gt_coord)),
                "gt_points_scored": int(score.scored.sum()), "covered_fraction": score.coverage,
                "uncovered_points": score.uncovered_points,
                "covered_but_unlabelled_points": score.unlabelled_points, "map_points": int(len(map_coord))}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_topdown_png(out / "topdown.png", [("labelled map", map_coord, map_label), ("ground truth", gt_coord, gt_label)],
                     names, min_cell_m=cell_m)
    md = _eval_markdown(coverage, perf, settings or {})
    extra = {"coverage": coverage, **({"performance": perf} if perf else {}), "settings": settings or {}}
    paths = write_metrics_report(out, score.conf, m, names, title=title, extra_json=extra,
                                 extra_markdown=md + "\n![top-down: labelled map | ground truth](topdown.png)\n")
    return {"miou": m["miou"], "macc": m["macc"], "allacc": m["allacc"], "coverage": coverage,
            "performance": perf, "report_dir": str(out), "files": {k: str(v) for k, v in paths.items()}}


def evaluate_bag(bag_path, checkpoint, out_dir, pipeline_config=None, config: EvalConfig = EvalConfig(),
                 topics: BagTopics = BagTopics(), progress: bool = False) -> dict:
    """Run the node's pipeline over a bag, score the final map and write the report folder.

    ``checkpoint`` is a segmenter checkpoint path, or an object with ``class_names`` and
    ``predict(coord, color, normal, return_probs=True)`` like :class:`gcross_core.segmentation.segmenter.Segmenter`.
    """
    pipeline_config = pipeline_config or pipeline_config_from_params()
    gt = load_ground_truth(bag_path, topics)  # a bag without ground truth fails before the model loads
    if hasattr(checkpoint, "predict"):
        segmenter, checkpoint = checkpoint, type(checkpoint).__name__
    else:
        from gcross_core.segmentation.segmenter import Segmenter

        segmenter = Segmenter.from_checkpoint(checkpoint, device=config.device)
    names = list(segmenter.class_names)
    gt_label = labels_for_classes(gt, names, bag_path)
    pts, perf = run_pipeline_on_bag(bag_path, segmenter, pipeline_config, config, topics, progress)
    radius = config.radius_m if config.radius_m is not None else 2.0 * pipeline_config.voxel_size_m
    settings = {"bag": str(bag_path), "checkpoint": str(checkpoint), "final_segment": config.final_segment,
                **asdict(pipeline_config)}
    res = score_and_report(out_dir, pts.coord, pts.label, gt.coord, gt_label, names, radius,
                           title=f"Bag evaluation: {Path(bag_path).name}", cell_m=pipeline_config.voxel_size_m,
                           perf=perf, settings=settings)
    log.info("mIoU %.1f %% (mAcc %.1f %%, coverage %.1f %%) on %d frames at %.1f frames/s; report in %s",
             100 * res["miou"], 100 * res["macc"], 100 * res["coverage"]["covered_fraction"], perf["frames"],
             perf["frames_per_s"], out_dir)
    return res


def _eval_markdown(coverage: dict, perf: Optional[dict], settings: dict) -> str:
    def ms(d, k):
        return f"{d[k]:.1f}" if k in d else "n/a"

    lines = [
        "## Coverage",
        "",
        f"Ground-truth points take the label of the nearest map point within {coverage['radius_m']:.3f} m; "
        f"points with none are uncovered and count as misses of their class.",
        "",
        f"- map points (voxels): {coverage['map_points']}",
        f"- ground-truth points scored: {coverage['gt_points_scored']} of {coverage['gt_points']}",
        f"- covered: {100 * coverage['covered_fraction']:.1f} %, uncovered: {coverage['uncovered_points']}, "
        f"covered but never segmented: {coverage['covered_but_unlabelled_points']}",
        "",
    ]
    if perf:
        fl, sl = perf["frame_latency"], perf["segmentation_latency"]
        lines += [
            "## Speed",
            "",
            f"{perf['frames']} frames, {perf['frames_per_s']:.2f} frames/s of processing "
            f"({perf['frames_per_s_wall']:.2f} frames/s including bag decoding, {perf['wall_s']:.2f} s wall); "
            f"{perf['segmentations']} segmentations.",
            "",
            "| latency [ms] | p50 | p90 | p99 | max |",
            "|---|---:|---:|---:|---:|",
            f"| per frame (fusion + segmentation when due) | {ms(fl, 'p50_ms')} | {ms(fl, 'p90_ms')} | "
            f"{ms(fl, 'p99_ms')} | {ms(fl, 'max_ms')} |",
            f"| segmentation of the map | {ms(sl, 'p50_ms')} | {ms(sl, 'p90_ms')} | {ms(sl, 'p99_ms')} | "
            f"{ms(sl, 'max_ms')} |",
            "",
        ]
    if settings:
        lines += ["## Settings", ""] + [f"- {k}: `{v}`" for k, v in settings.items()] + [""]
    return "\n".join(lines)


def _cloud_labels(msg):
    from gcross_ros.bag.io import cloud_from_msg

    fields_ = cloud_from_msg(msg)
    coord = np.stack([fields_["x"], fields_["y"], fields_["z"]], axis=1).astype(np.float32)
    if "label" not in fields_:
        raise ValueError("the labelled cloud has no 'label' field")
    label = fields_["label"].astype(np.uint32).view(np.int32).astype(np.int64)
    return coord, label


def live_evaluate(bag_path, out_dir, node, cloud_topic: str = "/labelled_cloud", legend_topic: str = "/class_legend",
                  rate: float = 1.0, settle_s: float = 20.0, discovery_s: float = 30.0,
                  radius_m: Optional[float] = None, voxel_size_m: float = 0.02,
                  topics: BagTopics = BagTopics()) -> dict:
    """Replay a bag into a running segmentation node and score the cloud it publishes.

    ``node`` is an rclpy node of the caller's (the caller owns rclpy.init/shutdown). The camera topics
    are replayed at ``rate``; afterwards the first cloud on ``cloud_topic`` stamped at or after the last
    frame (the node's map then holds every frame) is scored exactly like ``evaluate_bag`` does, with
    class names from the node's transient-local ``class_legend`` (else the bag's).
    """
    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2
    from std_msgs.msg import String

    gt = load_ground_truth(bag_path, topics)
    clouds, legends = [], []
    node.create_subscription(PointCloud2, cloud_topic, lambda m: clouds.append((time.monotonic(), m)),
                             QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
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
    chosen = None
    while chosen is None and time.monotonic() < t_played + settle_s:
        rclpy.spin_once(node, timeout_sec=0.05)
        for t_recv, msg in clouds:
            stamp = int(msg.header.stamp.sec) * 10**9 + int(msg.header.stamp.nanosec)
            if stamp >= last_stamp_ns:
                chosen = (t_recv, msg)
                break
    if chosen is None:
        raise LiveEvalError(f"no cloud on {cloud_topic} covering the last frame arrived within {settle_s} s "
                           f"after playback ({len(clouds)} earlier clouds)")
    names = gt.class_names
    if legends:
        legend = json.loads(legends[-1].data)
        names = [c["name"] for c in sorted(legend["classes"], key=lambda c: c["id"])]
    if not names:
        raise ValueError(f"bag {bag_path} has no class names and no class legend arrived on {legend_topic}")
    coord, label = _cloud_labels(chosen[1])
    gt_label = labels_for_classes(gt, names, bag_path)
    radius = radius_m if radius_m is not None else 2.0 * voxel_size_m
    live = {"messages_published": player.published,
            "clouds_received": len(clouds), "playback_s": t_played - t_start,
            "cloud_after_playback_s": chosen[0] - t_played, "rate": rate}
    return score_and_report(out_dir, coord, label, gt.coord, gt_label, names, radius,
                            title=f"Live evaluation: {Path(bag_path).name}", cell_m=voxel_size_m,
                            settings={"bag": str(bag_path), "cloud_topic": cloud_topic, **live})


def cmd_eval_live(args) -> int:
    try:
        import rclpy
    except ImportError as e:
        raise SystemExit(f"gcross-bag eval-live needs rclpy: {e}")
    pipe_cfg = pipeline_config_from_params(args.params_file, {"voxel_size_m": args.voxel_size_m})
    rclpy.init()
    node = rclpy.create_node("gcross_bag_live_eval")
    try:
        res = live_evaluate(args.bag, args.out, node, cloud_topic=args.cloud_topic, legend_topic=args.legend_topic,
                            rate=args.rate, settle_s=args.settle_s, radius_m=args.radius_m,
                            voxel_size_m=pipe_cfg.voxel_size_m)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    print(json.dumps({"miou": res["miou"], "macc": res["macc"], "coverage": res["coverage"]["covered_fraction"],
                      "report": res["files"]["markdown"]}))
    return 0


def cmd_eval(args) -> int:
    pipe_cfg = pipeline_config_from_params(args.params_file, {"voxel_size_m": args.voxel_size_m,
                                                              "segment_period_s": args.segment_period_s,
                                                              "segment_scope": args.segment_scope})
    cfg = EvalConfig(radius_m=args.radius_m, final_segment=not args.no_final_segment, device=args.device,
                     max_frames=args.max_frames)
    res = evaluate_bag(args.bag, args.checkpoint, args.out, pipe_cfg, cfg, progress=not args.quiet)
    print(json.dumps({"miou": res["miou"], "macc": res["macc"], "frames_per_s": res["performance"]["frames_per_s"],
                      "coverage": res["coverage"]["covered_fraction"], "report": res["files"]["markdown"]}))
    return 0


# ---------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gcross-bag", description=__doc__.split("\n\n")[0])
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("record", help="write a scene folder's RGB-D frames and labelled cloud as a bag")
    r.add_argument("--scene", required=True, help="scene folder (Pointcept layout with frames/)")
    r.add_argument("--out", required=True, help="bag directory to create (must not exist)")
    r.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3")
    r.add_argument("--every", type=int, default=1, help="keep every K-th frame")
    r.add_argument("--rate-hz", type=float, default=10.0, help="stamp rate of the recorded frames")
    r.add_argument("--max-frames", type=int, default=None)
    r.add_argument("--segment", default=None, choices=("segment20", "segment200", "segment", "none"),
                   help="label file of the ground-truth cloud (default: segment20.npy, else segment.npy)")
    r.add_argument("--classes", default="auto",
                   help="class names stored in the bag: auto (from the scene), none, scannet20, scannet200, "
                        "synthetic, or a text file with one name per line")
    r.set_defaults(func=cmd_record)

    pl = sub.add_parser("play", help="publish a bag with rclpy at the recorded timing")
    pl.add_argument("bag")
    pl.add_argument("--rate", type=float, default=1.0, help="speed factor; 0 = as fast as possible")
    pl.add_argument("--loop", action="store_true")
    pl.add_argument("--topics", nargs="+", default=None, help="only these topics")
    pl.add_argument("--clock", action="store_true", help="also publish /clock in bag time")
    pl.add_argument("--wait-for-subscribers", type=float, default=0.0, metavar="S",
                    help="wait up to S seconds until every replayed topic has a subscriber")
    pl.add_argument("--linger", type=float, default=1.0,
                    help="seconds to stay up after the last message (latched topics for late subscribers)")
    pl.set_defaults(func=cmd_play)

    e = sub.add_parser("eval", help="run the node's fusion + segmentation over a bag and score it")
    e.add_argument("bag")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--out", required=True, help="report folder")
    e.add_argument("--params-file", default=None, help="node parameter YAML (config/segment.yaml)")
    e.add_argument("--voxel-size-m", type=float, default=None)
    e.add_argument("--segment-period-s", type=float, default=None)
    e.add_argument("--segment-scope", choices=("map", "recent"), default=None,
                   help="what each segmentation covers (node parameter segment_scope)")
    e.add_argument("--radius-m", type=float, default=None, help="label transfer radius (default 2 voxels)")
    e.add_argument("--device", default="cpu")
    e.add_argument("--max-frames", type=int, default=None)
    e.add_argument("--no-final-segment", action="store_true",
                   help="score the map as last segmented during the stream (the node's last cloud)")
    e.set_defaults(func=cmd_eval)

    lv = sub.add_parser("eval-live", help="replay a bag into a running node and score its labelled cloud")
    lv.add_argument("bag")
    lv.add_argument("--out", required=True, help="report folder")
    lv.add_argument("--cloud-topic", default="/labelled_cloud")
    lv.add_argument("--legend-topic", default="/class_legend")
    lv.add_argument("--rate", type=float, default=1.0)
    lv.add_argument("--settle-s", type=float, default=20.0,
                    help="how long to wait after playback for a cloud that covers the last frame")
    lv.add_argument("--params-file", default=None, help="the node's parameter YAML (for voxel_size_m)")
    lv.add_argument("--voxel-size-m", type=float, default=None)
    lv.add_argument("--radius-m", type=float, default=None)
    lv.set_defaults(func=cmd_eval_live)

    i = sub.add_parser("info", help="topics, counts and metadata of a bag")
    i.add_argument("bag")
    i.set_defaults(func=cmd_info)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from gcross_core.checkpoint import CheckpointError

    try:
        return args.func(args)
    except (BagError, CheckpointError, LiveEvalError, ValueError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
