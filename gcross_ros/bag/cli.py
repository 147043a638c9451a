"""``gcross-bag``: record scenes as ROS 2 bags, replay bags with rclpy, evaluate segmentation offline or live.

    gcross-bag record --scene DIR --out BAG [--storage sqlite3|mcap] [--every K] [--rate-hz HZ] [--compressed jpeg|png]
    gcross-bag play BAG [--rate R] [--loop] [--topics T ...] [--clock] [--wait-for-subscribers S]
    gcross-bag eval BAG --checkpoint CKPT --out DIR [--params-file YAML] [--radius-m R] [--render-panel]
                    [--color-topic T] [--depth-topic T] [--camera-info-topic T] [--pose-topic T]
    gcross-bag eval-live BAG --out DIR [--cloud-topic T] [--rate R]   (with the node running)
    gcross-bag export BAG --out SCENE [--every N] [--color-topic T ...]   (bag -> frames-only scene folder)
    gcross-bag info BAG

``play`` and ``eval-live`` need rclpy and the message packages; the other commands do not. Each command
is one call into :mod:`gcross_ros.bag` (writer, player, evaluate, live_eval, reader).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import List, Optional, Sequence

from gcross_core.cli import cli_main
from gcross_core.errors import InputError
from gcross_ros.bag.evaluate import (EvalConfig, assembly_config_from_params, evaluate_bag, node_params_from_file,
                                    pipeline_config_from_params)
from gcross_ros.bag.format import BagTopics, RecordConfig
from gcross_ros.bag.live_eval import run_live_evaluation
from gcross_ros.bag.player import play_bag
from gcross_ros.bag.reader import BagReader
from gcross_ros.bag.writer import record_scene

log = logging.getLogger("gcross_bag")


# ---------------------------------------------------------------- record

def _class_names_for(scene, choice: str) -> Optional[List[str]]:
    if choice == "none":
        return None
    if choice == "auto":
        names = getattr(scene, "class_names", None)
        return list(names) if names else None
    from gcross_core.data import classes

    if Path(choice).is_file():
        return list(classes.read_class_names(choice))

    table = {"scannet20": "SCANNET20_CLASSES", "scannet200": "SCANNET200_CLASSES", "synthetic": "SYNTHETIC_CLASSES"}
    if choice not in table:
        raise InputError(f"--classes {choice!r}: expected auto, none, {', '.join(table)} or a text file of names")
    return list(getattr(classes, table[choice]))


def cmd_record(args) -> int:
    from gcross_core.data import load_scene  # torch comes with it: imported for this command only

    scene = load_scene(args.scene, segment=args.segment)
    cfg = RecordConfig(rate_hz=args.rate_hz, every=args.every, storage=args.storage, compressed=args.compressed or "")
    summary = record_scene(scene, args.out, cfg, class_names=_class_names_for(scene, args.classes),
                           max_frames=args.max_frames, progress=not args.quiet)
    log.info("wrote %s: %d frames (%dx%d), %d ground-truth points%s", summary.path, summary.frames_written,
             *summary.image_size, summary.gt_points,
             f", {summary.frames_skipped_invalid_pose} frames skipped (invalid pose)"
             if summary.frames_skipped_invalid_pose else "")
    return 0


# ---------------------------------------------------------------- export

def cmd_export(args) -> int:
    from gcross_core.mapping.fusion_cache import FusionSettings
    from gcross_ros.bag.export import ExportConfig, export_bag

    fusion = None if args.no_fuse else FusionSettings(args.fuse_voxel_size_m, 1, args.fuse_max_depth_m)
    cfg = ExportConfig(color_topic=args.color_topic, depth_topic=args.depth_topic,
                       camera_info_topic=args.camera_info_topic, pose_topic=args.pose_topic,
                       map_frame=args.map_frame, every=args.every, max_frames=args.max_frames, slop_s=args.slop_s,
                       pose_tolerance_s=args.pose_tolerance_s, color_format=args.color_format, fusion=fusion)
    s = export_bag(args.bag, args.out, cfg)
    print(json.dumps({"scene": str(s.out), "frames": s.frames_written, "image_size": list(s.image_size),
                      "topics": s.topics, "frames_without_pose": s.frames_without_pose,
                      "images_unmatched": s.messages_unmatched,
                      "messages_skipped": s.messages_skipped, "fused_points": s.fused_points,
                      "fuse_seconds": round(s.fuse_seconds, 2)}))
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


# ---------------------------------------------------------------- play, eval, eval-live

def cmd_play(args) -> int:
    return play_bag(args.bag, rate=args.rate, topics=args.topics, clock=args.clock, loop=args.loop,
                    wait_for_subscribers_s=args.wait_for_subscribers, linger_s=args.linger)


def cmd_eval(args) -> int:
    pipe_cfg = pipeline_config_from_params(args.params_file, {"voxel_size_m": args.voxel_size_m,
                                                              "segment_period_s": args.segment_period_s,
                                                              "segment_scope": args.segment_scope,
                                                              "segment_max_voxels": args.segment_max_voxels})
    cfg = EvalConfig(radius_m=args.radius_m, final_segment=not args.no_final_segment, device=args.device,
                     max_frames=args.max_frames)
    panel = None
    if args.render_panel:
        panel = node_params_from_file(args.params_file, {
            "voxel_size_m": args.voxel_size_m, "device": args.device, "render_source": args.render_source,
            "model_checkpoint": args.model_checkpoint, "checkpoint": args.checkpoint})
    given = {role: getattr(args, f"{role}_topic") for role in ("color", "depth", "camera_info", "pose")}
    topics = replace(BagTopics(), **{role: t for role, t in given.items() if t})
    res = evaluate_bag(args.bag, args.checkpoint, args.out, pipe_cfg, cfg, topics=topics, progress=not args.quiet,
                       render_panel=panel, assembly_config=assembly_config_from_params(args.params_file))
    frames = res.performance["assembly"]
    summary = {"miou": res.miou, "macc": res.macc, "frames_per_s": res.performance["frames_per_s"],
               "frames_in": frames["frames_in"], "frames_fused": frames["frames_fused"],
               "frames_dropped": frames["frames_dropped"], "messages_skipped": frames["messages_skipped"],
               "coverage": res.coverage.covered_fraction if res.coverage else None, "report": res.markdown}
    if panel is not None:
        summary["render_panel"] = res.render_panel["png"]
    print(json.dumps(summary))
    return 0


def cmd_eval_live(args) -> int:
    voxel_size_m = pipeline_config_from_params(args.params_file, {"voxel_size_m": args.voxel_size_m}).voxel_size_m
    res = run_live_evaluation(args.bag, args.out, cloud_topic=args.cloud_topic, legend_topic=args.legend_topic,
                              rate=args.rate, settle_s=args.settle_s, radius_m=args.radius_m,
                              voxel_size_m=voxel_size_m)
    print(json.dumps({"miou": res.miou, "macc": res.macc, "coverage": res.coverage.covered_fraction,
                      "report": res.markdown}))
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
    r.add_argument("--compressed", choices=("jpeg", "png"), default=None,
                   help="record the images as image_transport publishes them compressed: colour as JPEG or PNG on "
                        "<colour topic>/compressed, depth as compressedDepth (16-bit PNG of mm) on "
                        "<depth topic>/compressedDepth (default: raw sensor_msgs/Image)")
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
    e.add_argument("--voxel-size-m", type=float, default=None,
                   help="the map's voxel (default: the params file's voxel_size_m; 0: half the segmenter's grid)")
    e.add_argument("--segment-period-s", type=float, default=None)
    e.add_argument("--segment-scope", choices=("priority", "recent", "map"), default=None,
                   help="what each segmentation covers (node parameter segment_scope)")
    e.add_argument("--segment-max-voxels", type=int, default=None,
                   help="segment_scope priority: voxels given to the encoder per segmentation (node parameter)")
    e.add_argument("--radius-m", type=float, default=None, help="label transfer radius (default: twice the segmenter's grid)")
    e.add_argument("--device", default="cpu")
    e.add_argument("--max-frames", type=int, default=None)
    e.add_argument("--no-final-segment", action="store_true",
                   help="score the map as last segmented during the stream (the node's last cloud)")
    e.add_argument("--color-topic", default=None,
                   help="colour images, raw (sensor_msgs/Image) or compressed (CompressedImage, JPEG/PNG), told by "
                        "the message type (default: /camera/color/image_raw, else that topic + /compressed)")
    e.add_argument("--depth-topic", default=None,
                   help="depth images registered to colour, raw (16UC1 mm, 32FC1 m) or compressedDepth (default: "
                        "/camera/depth/image_raw, else that topic + /compressedDepth)")
    e.add_argument("--camera-info-topic", default=None, help="default: /camera/color/camera_info")
    e.add_argument("--pose-topic", default=None,
                   help="geometry_msgs/PoseStamped camera-to-map (default: /camera/pose, else /tf)")
    e.add_argument("--render-panel", action="store_true",
                   help="also write render_panel.png: the node's rendered views (colour, depth, semantic, "
                        "features) of the final map at three recorded poses next to the recorded frames; a bag "
                        "without ground truth then gets the panel only")
    e.add_argument("--render-source", choices=("gaussians", "voxels"), default="gaussians",
                   help="what the panel renders (default gaussians: the GaussianCross model's Gaussians)")
    e.add_argument("--model-checkpoint", default=None,
                   help="GaussianCross pretraining checkpoint for --render-source gaussians (default: the "
                        "params file's model_checkpoint, else the bundled demo model)")
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
    lv.add_argument("--voxel-size-m", type=float, default=None,
                    help="the node's map voxel (default: from its class legend)")
    lv.add_argument("--radius-m", type=float, default=None,
                    help="label transfer radius (default: twice the segmenter's grid, from the class legend)")
    lv.set_defaults(func=cmd_eval_live)

    x = sub.add_parser("export", help="write a bag's RGB-D frames as a frames-only scene folder (SensReader "
                                      "layout) and cache its fused points, for pretraining / adaptation")
    x.add_argument("bag")
    x.add_argument("--out", required=True, help="scene folder to create (frames/ and fused/ go inside)")
    x.add_argument("--every", type=int, default=1, help="keep every N-th synchronised frame")
    x.add_argument("--max-frames", type=int, default=None)
    x.add_argument("--color-topic", default=None, help="default: found by driver name (color/image_raw, ...)")
    x.add_argument("--depth-topic", default=None,
                   help="default: aligned_depth_to_color, depth_to_rgb, depth_registered, then depth/image_raw")
    x.add_argument("--camera-info-topic", default=None, help="default: <colour namespace>/camera_info")
    x.add_argument("--pose-topic", default=None,
                   help="geometry_msgs/PoseStamped camera-to-map; default: the only PoseStamped topic, else /tf")
    x.add_argument("--map-frame", default="map", help="TF frame of the poses (with /tf)")
    x.add_argument("--slop-s", type=float, default=0.02, help="largest colour/depth stamp difference")
    x.add_argument("--pose-tolerance-s", type=float, default=0.1, help="largest image/pose stamp difference")
    x.add_argument("--color-format", choices=("jpg", "png"), default="jpg")
    x.add_argument("--fuse-voxel-size-m", type=float, default=0.02,
                   help="voxel size of the cached fused points (match data.pipeline.fuse_voxel_size_m)")
    x.add_argument("--fuse-max-depth-m", type=float, default=5.0, help="depth beyond this is not fused")
    x.add_argument("--no-fuse", action="store_true", help="write the frames only (fused on first use)")
    x.set_defaults(func=cmd_export)

    i = sub.add_parser("info", help="topics, counts and metadata of a bag")
    i.add_argument("bag")
    i.set_defaults(func=cmd_info)
    return p


@cli_main("gcross-bag")
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
