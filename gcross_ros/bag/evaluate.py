"""Offline bag evaluation (``gcross-bag eval``): the node's processing over a bag, scored against its ground truth.

Runs the node's processing through :class:`gcross_core.mapping.pipeline.SegmentationPipeline` (the same
VoxelMap fusion per frame and snapshot -> predict -> fuse_probabilities segmentation, with the node's
parameter defaults or a node parameter file), frame by frame with the segmentation period counted in
bag time, then scores the final labelled map against the bag's ground-truth cloud and writes a report
folder. Needs ``rosbags`` only, no ROS installation.

With a segmenter that has an instance head and a bag whose ground truth carries instance ids, the
report also gives instance AP25 / AP50 / mAP of the map's objects
(:func:`gcross_core.evaluation.map_score.score_map_instances`) next to mIoU, and the top-down PNG draws
each object's box.
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


def object_boxes(coord: np.ndarray, label: np.ndarray, instance: np.ndarray, none: int):
    """(boxes [P, 2, 3] min/max corners, majority class [P]) of the objects in a labelled cloud; ``none``
    is the id that means no object (0 in a map, -1 in ground truth)."""
    from gcross_core.evaluation.map_score import map_objects

    _, indices, classes, _ = map_objects(label, None, instance, none=none)
    coord = np.asarray(coord, np.float32)
    boxes = np.array([[coord[i].min(0), coord[i].max(0)] for i in indices], np.float32).reshape(-1, 2, 3)
    return boxes, classes


def score_and_report(out_dir, map_coord, map_label, gt_coord, gt_label, class_names: Sequence[str],
                     radius_m: float, title: str, cell_m: float = 0.02, perf: Optional[dict] = None,
                     settings: Optional[dict] = None, render_panel: Optional[dict] = None, map_instance=None,
                     map_confidence=None, gt_instance=None, stuff_classes: Optional[Sequence[str]] = None,
                     object_scores=None) -> dict:
    """Score a labelled map (offline pipeline or a cloud the live node published) and write the report.

    map_coord [M, 3], map_label [M] (-1 = unlabelled), gt_coord [N, 3], gt_label [N] (-1 = ignore), all
    in the map frame. Writes results.json, report.md, confusion.csv/png and topdown.png. With
    ``map_instance`` [M] (0 = none), ``gt_instance`` [N] (-1 = none) and ``stuff_classes`` (the classes
    not instanced) the map's objects are scored too (AP; ranked by ``object_scores``, id -> score, where
    it names an object, else by the mean ``map_confidence`` [M] of its points) and their boxes drawn.
    """
    from gcross_core.evaluation.map_score import score_labelled_map, score_map_instances
    from gcross_core.evaluation.report import save_topdown_png, write_metrics_report
    from gcross_core.segmentation.instance import thing_mask

    names = list(class_names)
    score = score_labelled_map(map_coord, map_label, gt_coord, gt_label, len(names), radius_m)
    instance = None
    map_panel = ("labelled map", map_coord, map_label)
    gt_panel = ("ground truth", gt_coord, gt_label)
    if map_instance is not None and gt_instance is not None and stuff_classes is not None:
        thing = thing_mask(names, stuff_classes)
        instance = score_map_instances(map_coord, map_label, map_confidence, map_instance, gt_coord, gt_label,
                                       gt_instance, names, thing, radius_m, object_scores=object_scores)
        boxes, classes = object_boxes(map_coord, map_label, map_instance, none=0)
        keep = (classes >= 0) & thing[np.clip(classes, 0, None)]
        map_panel = ("labelled map, objects", map_coord, map_label, (boxes[keep], classes[keep]))
        boxes, classes = object_boxes(gt_coord, gt_label, gt_instance, none=-1)
        keep = (classes >= 0) & thing[np.clip(classes, 0, None)]
        gt_panel = ("ground truth, objects", gt_coord, gt_label, (boxes[keep], classes[keep]))
    m = score.metrics
    coverage = {"radius_m": float(radius_m), "gt_points": int(len(gt_coord)),
                "gt_points_scored": int(score.scored.sum()), "covered_fraction": score.coverage,
                "uncovered_points": score.uncovered_points,
                "covered_but_unlabelled_points": score.unlabelled_points, "map_points": int(len(map_coord))}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_topdown_png(out / "topdown.png", [map_panel, gt_panel], names, min_cell_m=cell_m)
    md = _eval_markdown(coverage, perf, settings or {})
    md += "\n![top-down: labelled map | ground truth](topdown.png)\n"
    if render_panel is not None:
        md += "\n" + _panel_markdown(render_panel, out)
    extra = {"coverage": coverage, **({"performance": perf} if perf else {}), "settings": settings or {},
             **({"render_panel": render_panel} if render_panel is not None else {})}
    paths = write_metrics_report(out, score.conf, m, names, title=title, extra_json=extra, extra_markdown=md,
                                 instance=instance)
    if render_panel is not None:
        paths["render_panel"] = render_panel["png"]
    res = {"miou": m.miou, "macc": m.macc, "allacc": m.allacc, "coverage": coverage,
           "performance": perf, "render_panel": render_panel, "report_dir": str(out),
           "files": {k: str(v) for k, v in paths.items()}}
    if instance is not None:
        res.update({"ap25": instance.ap25, "ap50": instance.ap50, "map": instance.map,
                    "objects": instance.map_objects})
    return res


def _panel_markdown(panel: dict, out_dir: Path) -> str:
    def num(x, fmt):
        return "n/a" if x is None else format(x, fmt)

    src = panel["render_source"] + (f" (`{panel['model_checkpoint']}`)" if panel.get("model_checkpoint") else "")
    lines = ["## Rendered views", "",
             f"The final map rendered as the node renders it (render_source {src}) at recorded camera poses, "
             "next to the recorded frame. These poses are among the fused frames (not held out).", "",
             "| frame | PSNR [dB] | depth L1 [m] | covered | voxel splat PSNR [dB] | voxel splat depth L1 [m] |",
             "|---:|---:|---:|---:|---:|---:|"]
    for v in panel["views"]:
        lines.append(f"| {v['frame']} | {num(v['psnr_db'], '.2f')} | {num(v['depth_l1_m'], '.3f')} | "
                     f"{100 * v['coverage']:.0f} % | {num(v['voxels_psnr_db'], '.2f')} | "
                     f"{num(v['voxels_depth_l1_m'], '.3f')} |")
    try:
        rel = Path(panel["png"]).resolve().relative_to(Path(out_dir).resolve())
    except ValueError:
        rel = Path(panel["png"])
    lines += ["", f"![rendered views: recorded | rendered colour, depth, semantic, features]({rel})", ""]
    return "\n".join(lines)


def evaluate_bag(bag_path, checkpoint, out_dir, pipeline_config=None, config: EvalConfig = EvalConfig(),
                 topics: BagTopics = BagTopics(), progress: bool = False, render_panel=None,
                 assembly_config=None) -> dict:
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
            return {"miou": None, "macc": None, "coverage": None, "performance": perf, "render_panel": panel,
                    "report_dir": str(out_dir), "files": {"render_panel": panel["png"]}}
    radius = config.radius_m if config.radius_m is not None else default_radius_m(
        getattr(segmenter, "grid_size_m", None), pipeline_config.voxel_size_m)
    settings = {"bag": str(bag_path), "checkpoint": str(checkpoint), "final_segment": config.final_segment,
                **asdict(pipeline_config)}
    instance_config = getattr(segmenter, "instance_config", None)
    res = score_and_report(out_dir, pts.coord, pts.label, gt.coord, gt_label, names, radius,
                           title=f"Bag evaluation: {Path(bag_path).name}", cell_m=pipeline_config.voxel_size_m,
                           perf=perf, settings=settings, render_panel=panel, map_instance=pts.instance,
                           map_confidence=pts.confidence, gt_instance=gt.instance,
                           stuff_classes=instance_config.stuff_classes if instance_config is not None else None,
                           object_scores={o.object_id: o.score for o in pipe.objects()})
    log.info("mIoU %.1f %% (mAcc %.1f %%, coverage %.1f %%) on %d frames at %.1f frames/s; report in %s",
             100 * res["miou"], 100 * res["macc"], 100 * res["coverage"]["covered_fraction"], perf["frames"],
             perf["frames_per_s"], out_dir)
    if "ap50" in res:
        log.info("instances: %d objects in the map; AP25 %.1f %%, AP50 %.1f %%, mAP %.1f %%", res["objects"],
                 100 * res["ap25"], 100 * res["ap50"], 100 * res["map"])
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
