"""Offline bag evaluation (``gcross-bag eval``): the node's processing over a bag, scored against its ground truth.

Runs the node's processing through :class:`gcross_core.mapping.pipeline.SegmentationPipeline` (the same
VoxelMap fusion per frame and snapshot -> predict -> fuse_probabilities segmentation, with the node's
parameter defaults or a node parameter file), frame by frame with the segmentation period counted in
bag time, then scores the final labelled map against the bag's ground-truth cloud and writes a report
folder. Needs ``rosbags`` only, no ROS installation.

With a segmenter that has an instance head and a bag whose ground truth carries instance ids, the
report also gives instance AP25 / AP50 / mAP of the map's objects
(:func:`gcross_core.evaluation.map_score.score_map_instances`) next to mIoU, and the top-down PNG draws
each object's box. Scoring and the report folder are :mod:`gcross_ros.bag.score`'s.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from gcross_core.config import read_yaml
from gcross_core.errors import BagError, ConfigError, InputError
from gcross_ros.bag.format import BagTopics
from gcross_ros.bag.reader import read_ground_truth
from gcross_ros.bag.score import BagScore, LabelledMap, ReportSpec, score_and_report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    radius_m: Optional[float] = None  # label-transfer radius; None: default_radius_m (2 x the segmenter's grid)
    final_segment: bool = True  # segment the whole map once more after the last frame: every voxel labelled
    device: str = "cpu"
    max_frames: Optional[int] = None


def _node_params(params_file: Optional[str], overrides: Optional[dict]):
    """SegmentNodeParams from the node's defaults, a node parameter YAML and explicit overrides (None: not
    given); an unusable value of the file is a ConfigError naming the file."""
    from gcross_ros.node.params import SegmentNodeParams

    values = dict(SegmentNodeParams.defaults())
    if params_file:
        values.update(_read_params_file(params_file))
        try:
            SegmentNodeParams.from_dict(values)
        except InputError as e:
            raise ConfigError(f"parameter file {params_file}: {e}") from e
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return SegmentNodeParams.from_dict(values)


def pipeline_config_from_params(params_file: Optional[str] = None, overrides: Optional[dict] = None):
    """A PipelineConfig from the node's parameter defaults, a node parameter YAML and explicit overrides."""
    return _node_params(params_file, overrides).pipeline


def assembly_config_from_params(params_file: Optional[str] = None, overrides: Optional[dict] = None):
    """The node's frame-assembly settings (AssemblyConfig) from its parameter defaults, a node parameter YAML
    and explicit overrides: a bag is assembled as the node would assemble its messages."""
    return _node_params(params_file, overrides).assembly


def node_params_from_file(params_file: Optional[str] = None, overrides: Optional[dict] = None):
    """The node's SegmentNodeParams (validated) from its defaults, a node parameter YAML and overrides."""
    return _node_params(params_file, overrides).validate()


def _read_params_file(path) -> dict:
    """ros__parameters of the first node in a ROS 2 parameter YAML (or a flat mapping)."""
    data = read_yaml(path, "parameter file")
    for value in data.values():
        if isinstance(value, dict) and "ros__parameters" in value:
            return dict(value["ros__parameters"])
    return data


def default_radius_m(grid_size_m: Optional[float], voxel_size_m: float) -> float:
    """The label-transfer radius of map scoring: twice the segmenter's grid (a cell's mean position lies
    within a cell diagonal, ~1.7 cells, of any point it absorbed), so that mapping finer does not change the
    scoring rule; twice the map's voxel where the grid is not known."""
    return 2.0 * float(grid_size_m or voxel_size_m)


def _align_classes(gt_names: Optional[List[str]], model_names: List[str], bag) -> Optional[np.ndarray]:
    """Index map GT label -> model label, or None when both use the same order."""
    if gt_names is None:
        log.warning("bag %s has no class names; assuming the checkpoint's %d classes", bag, len(model_names))
        return None
    if list(gt_names) == list(model_names):
        return None
    missing = [n for n in gt_names if n not in model_names]
    if missing:
        raise InputError(f"bag {bag} labels classes {missing} that checkpoint classes {model_names} lack")
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
                        topics: BagTopics = BagTopics(), progress: bool = False, pipeline=None,
                        assembly_config=None):
    """Feed a bag's frames through the node's frame assembly and SegmentationPipeline as the node does ->
    (LabelledPoints, perf dict). ``assembly_config``: an AssemblyConfig (default: the node's defaults).
    Pass ``pipeline`` (a SegmentationPipeline) to keep its map afterwards. The perf dict carries the
    assembly's account (``frames``: frames_in = frames_fused + frames_dropped + frames_waiting, dropped by
    reason, messages skipped because they could not be decoded)."""
    from gcross_core.evaluation.map_score import latency_summary
    from gcross_core.mapping.assembly import FUSION_ERROR, NOT_USED, AssemblyConfig
    from gcross_core.mapping.pipeline import SegmentationPipeline
    from gcross_ros.bag.frames import BagFrames, gcross_topic_roles
    from gcross_ros.bag.reader import BagReader

    pipe = pipeline if pipeline is not None else SegmentationPipeline(segmenter, pipeline_config)
    frame_s, fusion_s, seg_s = [], [], []
    t_wall = time.perf_counter()
    with BagReader(bag_path) as bag:
        source = BagFrames(bag, gcross_topic_roles(bag, topics), assembly_config or AssemblyConfig())
        frames = source
        if progress:
            from tqdm import tqdm

            frames = tqdm(frames, desc="eval", unit="frame")
        for f in frames:
            if config.max_frames is not None and len(frame_s) >= config.max_frames:
                source.assembler.drop(f, NOT_USED)
                break
            t0 = time.perf_counter()
            try:
                pipe.process_frame(f.color_rgb, f.depth_m, f.K, f.cam_to_map, f.stamp_ns / 1e9)
            except ValueError as e:
                source.assembler.drop(f, FUSION_ERROR)
                log.warning("bag %s: frame at %.3f s dropped: %s", bag_path, f.stamp_ns * 1e-9, e)
                continue
            source.used(f)
            t1 = time.perf_counter()
            stats = pipe.maybe_segment(f.stamp_ns / 1e9)
            t2 = time.perf_counter()
            fusion_s.append(t1 - t0)
            frame_s.append(t2 - t0)
            if stats is not None:
                seg_s.append(stats.seconds)
        account = source.summary()
    if not frame_s:
        raise BagError(f"bag {bag_path} has no usable RGB-D frames: {source.describe()}")
    if account["messages_skipped"]:
        log.warning("bag %s: %d messages could not be decoded and were skipped (listed in results.json)", bag_path,
                    account["messages_skipped"])
    final_s = 0.0
    if config.final_segment:
        stats = pipe.segment(force=True, scope="map")  # every voxel, whatever the stream's budget left
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
        "assembly": account,
    }
    return pipe.labelled_points(), perf


def evaluate_bag(bag_path, checkpoint, out_dir, pipeline_config=None, config: EvalConfig = EvalConfig(),
                 topics: BagTopics = BagTopics(), progress: bool = False, render_panel=None,
                 assembly_config=None) -> BagScore:
    """Run the node's pipeline over a bag, score the final map and write the report folder.

    ``checkpoint`` is a segmenter checkpoint path, or an object with ``class_names``, ``grid_size_m`` (used
    when the pipeline's voxel_size_m is 0) and ``predict(coord, color, normal, return_probs=True)`` like
    :class:`gcross_core.segmentation.segmenter.Segmenter`.
    ``assembly_config``: how frames are assembled (default: the node's defaults, :func:`assembly_config_from_params`).
    ``render_panel``: the node's parameters (:class:`gcross_ros.node.params.SegmentNodeParams`) to render
    the final map with at three recorded poses (``render_panel.png``, see
    :mod:`gcross_ros.bag.render_panel`); with it, a bag without ground truth still gets its panel (and
    no scores).
    """
    from gcross_core.mapping.pipeline import SegmentationPipeline

    pipeline_config = pipeline_config or pipeline_config_from_params()
    if render_panel is None:
        gt = load_ground_truth(bag_path, topics)  # a bag without ground truth fails before the model loads
    else:
        gt = read_ground_truth(bag_path, topics)
        if gt is None:
            log.warning("bag %s has no ground-truth cloud on %s: rendering the panel without scores", bag_path,
                        topics.gt_cloud)
    if hasattr(checkpoint, "predict"):
        segmenter, checkpoint = checkpoint, type(checkpoint).__name__
    else:
        from gcross_core.segmentation.segmenter import Segmenter

        segmenter = Segmenter.from_checkpoint(checkpoint, device=config.device)
    names = list(segmenter.class_names)
    gt_label = labels_for_classes(gt, names, bag_path) if gt is not None else None
    pipeline_config = pipeline_config.with_segmenter_grid(segmenter)
    pipe = SegmentationPipeline(segmenter, pipeline_config)
    pts, perf = run_pipeline_on_bag(bag_path, segmenter, pipeline_config, config, topics, progress, pipeline=pipe,
                                    assembly_config=assembly_config or assembly_config_from_params())
    panel = None
    if render_panel is not None:
        from gcross_ros.bag.render_panel import PANEL_FILE, write_render_panel

        # the panel renders the map at the voxel size it was fused at (voxel_size_m 0: the segmenter's grid)
        panel_params = replace(render_panel, pipeline=replace(render_panel.pipeline,
                                                              voxel_size_m=pipeline_config.voxel_size_m))
        panel = write_render_panel(bag_path, pipe.map.snapshot(), names, panel_params, Path(out_dir) / PANEL_FILE,
                                   num_frames=perf["frames"], topics=topics)
        if gt is None:
            from gcross_core.evaluation.report import write_json

            write_json(Path(out_dir) / "results.json", {"render_panel": panel, "performance": perf})
            return BagScore(report_dir=str(out_dir), files={"render_panel": str(panel["png"])}, performance=perf,
                            render_panel=panel)
    radius = config.radius_m if config.radius_m is not None else default_radius_m(
        getattr(segmenter, "grid_size_m", None), pipeline_config.voxel_size_m)
    settings = {"bag": str(bag_path), "checkpoint": str(checkpoint), "final_segment": config.final_segment,
                **asdict(pipeline_config)}
    instance_config = getattr(segmenter, "instance_config", None)
    scored = LabelledMap(pts.coord, pts.label, instance=pts.instance, confidence=pts.confidence,
                         object_scores={o.object_id: o.score for o in pipe.objects()})
    spec = ReportSpec(title=f"Bag evaluation: {Path(bag_path).name}", radius_m=radius,
                      cell_m=pipeline_config.voxel_size_m, settings=settings,
                      stuff_classes=instance_config.stuff_classes if instance_config is not None else None)
    res = score_and_report(out_dir, scored, replace(gt, label=gt_label, class_names=names), names, spec, perf=perf,
                           render_panel=panel)
    log.info("mIoU %.1f %% (mAcc %.1f %%, coverage %.1f %%) on %d frames at %.1f frames/s; report in %s",
             100 * res.miou, 100 * res.macc, 100 * res.coverage.covered_fraction, perf["frames"],
             perf["frames_per_s"], out_dir)
    if res.instance is not None:
        log.info("instances: %d objects in the map; AP25 %.1f %%, AP50 %.1f %%, mAP %.1f %%",
                 res.instance.map_objects, 100 * res.instance.ap25, 100 * res.instance.ap50, 100 * res.instance.map)
    return res
