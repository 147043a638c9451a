"""The end-to-end demo behind `make demo`.

synthetic room -> ROS 2 bag -> replay through the real `gcross_segment` node over DDS (live
evaluation) and through the same pipeline offline (bag evaluation) -> report folders. The offline report
also holds ``render_panel.png``: the views the node renders with ``render_source: gaussians`` (colour,
depth, semantic, features) of the final map at three recorded poses, next to the recorded frames.

It uses the small segmenter trained on synthetic rooms that ships with the package
(``gcross_core/assets/segmenter_synthetic.safetensors``) and the GaussianCross model of the same pretraining step
(``gcross_core/assets/gaussiancross_synthetic.safetensors``), both rebuilt by
``training/make_demo_checkpoint.sh``.
Where rclpy or DDS is unavailable, only the offline evaluation runs. The shipped segmenter has an
instance head, so each report also scores the map's objects (AP25 / AP50 / mAP next to mIoU) and the
top-down PNG draws their boxes; ``summary.json`` carries both.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from gcross_core.cli import cli_main
from gcross_core.errors import InputError

log = logging.getLogger("gcross.demo")

# The node subscribes to relative names; the bag carries them under /camera.
CAMERA_REMAPS = ("color/image_raw", "depth/image_raw", "color/camera_info", "pose")


def build_scene(out_dir: Path, seed: int, views: int, width: int, height: int):
    from gcross_core.data.scene import write_scene
    from gcross_core.data.synthetic import make_room

    scene = make_room(seed, num_views=views, width=width, height=height)
    write_scene(scene, out_dir, overwrite=True)  # the demo owns its output folder: a second run replaces it
    return scene


# segment_max_voxels sized for the shipped small segmenter (a segmentation of 200k voxels takes about a second
# on 2 CPU cores), as docs/node.md says to size it per model; the default (15000) is sized for a full-size SpUNet
DEMO_SEGMENT_MAX_VOXELS = 200_000


def _node_ros_args(checkpoint: Path) -> list:
    args = ["-p", f"checkpoint:={checkpoint}", "-p", f"segment_max_voxels:={DEMO_SEGMENT_MAX_VOXELS}"]
    for topic in CAMERA_REMAPS:
        args += ["-r", f"{topic}:=/camera/{topic}"]
    return args


def run_live(bag: Path, checkpoint: Path, params_file: Path, out_dir: Path, voxel_size_m: float):
    """Start the node as its own process, replay the bag into it and score what it publishes."""
    import rclpy

    from gcross_ros.bag.live_eval import live_evaluate

    from gcross_ros.node.process import start_node_process, stop_node_process

    # The demo's node and player talk on a DDS domain of their own (unless ROS_DOMAIN_ID is set), so that a
    # camera, a bag playing or a second demo on this machine cannot feed into its map.
    if "ROS_DOMAIN_ID" not in os.environ:
        os.environ["ROS_DOMAIN_ID"] = str(random.Random(os.getpid()).randint(1, 100))
        os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    proc, node_log = start_node_process(params_file, out_dir.parent / "segment_node.log", _node_ros_args(checkpoint))
    rclpy.init()
    node = rclpy.create_node("gcross_demo_player")
    try:
        return live_evaluate(bag, out_dir, node, rate=1.0, voxel_size_m=voxel_size_m)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        stop_node_process(proc, node_log, timeout_s=10)


def _instance_summary(result) -> dict:
    """Instance AP and object count of a BagScore (segmenters with an instance head), else nothing."""
    i = result.instance
    return {} if i is None else {"ap25": i.ap25, "ap50": i.ap50, "map": i.map, "objects": i.map_objects}


@cli_main("gcross_ros.demo")
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default ./demo_out)")
    p.add_argument("--checkpoint", type=Path, default=None, help="segmenter checkpoint (default: the shipped demo segmenter)")
    p.add_argument("--seed", type=int, default=1000, help="synthetic room seed (rooms used for training the "
                   "shipped checkpoint use seeds below 1000, so the default room is unseen)")
    p.add_argument("--views", type=int, default=30, help="RGB-D frames in the bag")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--offline-only", action="store_true", help="skip the live replay through the node")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from gcross_ros.bag.evaluate import (EvalConfig, assembly_config_from_params, evaluate_bag, node_params_from_file,
                                        pipeline_config_from_params)
    from gcross_ros.bag.format import RecordConfig
    from gcross_ros.bag.writer import record_scene

    t0 = time.perf_counter()
    if args.checkpoint is None:
        from gcross_core.segmentation.segmenter import DEMO_CHECKPOINT

        args.checkpoint = DEMO_CHECKPOINT
    if not args.checkpoint.is_file():
        raise InputError(f"checkpoint {args.checkpoint} not found (the shipped one is rebuilt by "
                         "training/make_demo_checkpoint.sh)")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    log.info("1/4 synthetic room (seed %d, %d views at %dx%d) -> %s", args.seed, args.views, args.width,
             args.height, out / "scene")
    scene = build_scene(out / "scene", args.seed, args.views, args.width, args.height)

    bag = out / "scene_bag"
    log.info("2/4 recording %s", bag)
    if bag.exists():
        import shutil

        shutil.rmtree(bag)
    record_scene(scene, bag, RecordConfig())

    params_file = Path(__file__).resolve().parent.parent / "config" / "segment.yaml"
    if not params_file.is_file():  # installed package: config lives in share/
        params_file = Path(sys.prefix) / "share" / "gcross_ros" / "config" / "segment.yaml"
    pipe_cfg = pipeline_config_from_params(str(params_file), {"segment_max_voxels": DEMO_SEGMENT_MAX_VOXELS})

    log.info("3/4 offline evaluation (the node's pipeline, frame by frame) and its rendered views")
    # the panel renders as the node does with render_source gaussians and the shipped GaussianCross model
    panel_params = node_params_from_file(str(params_file), {"checkpoint": str(args.checkpoint),
                                                            "render_source": "gaussians"})
    offline = evaluate_bag(bag, args.checkpoint, out / "report_offline", pipe_cfg, EvalConfig(), progress=True,
                           render_panel=panel_params, assembly_config=assembly_config_from_params(str(params_file)))
    summary = {"offline": {"miou": offline.miou, "macc": offline.macc,
                           "frames_per_s": offline.performance["frames_per_s"],
                           "report": offline.markdown,
                           "render_panel": offline.render_panel["png"],
                           "rendered_views": [{k: v[k] for k in ("frame", "psnr_db", "depth_l1_m", "voxels_psnr_db",
                                                                 "voxels_depth_l1_m")}
                                              for v in offline.render_panel["views"]],
                           **_instance_summary(offline)}}

    live = None
    if not args.offline_only:
        try:
            import rclpy  # noqa: F401
        except ImportError as e:
            log.warning("4/4 live replay skipped: rclpy unavailable (%s)", e)
        else:
            log.info("4/4 live replay through the gcross_segment node over DDS")
            try:
                live = run_live(bag, args.checkpoint, params_file, out / "report_live", pipe_cfg.voxel_size_m)
            except Exception as e:  # the offline report stands; say why live did not
                log.warning("live replay failed: %s (node log: %s)", e, out / "segment_node.log")
    if live is not None:
        summary["live"] = {"miou": live.miou, "macc": live.macc, "report": live.markdown,
                           **_instance_summary(live)}
        summary["live_minus_offline_miou"] = live.miou - offline.miou
    summary["wall_s"] = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"\nReport: {offline.markdown}\nRendered views: {offline.render_panel['png']}"
          + (f"\nLive report: {live.markdown}" if live else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
