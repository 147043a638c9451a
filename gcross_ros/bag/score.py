"""A labelled map scored against a bag's ground-truth cloud, and the report folder it writes.

:func:`score_and_report` is shared by ``gcross-bag eval`` (the offline pipeline's map,
:mod:`gcross_ros.bag.evaluate`) and ``gcross-bag eval-live`` (the cloud the node published,
:mod:`gcross_ros.bag.live_eval`); it returns a :class:`BagScore`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from gcross_core.evaluation.instance_metrics import InstanceMetrics
from gcross_core.evaluation.metrics import SegmentationMetrics
from gcross_ros.bag.format import GroundTruthCloud


@dataclass(frozen=True)
class LabelledMap:
    """A labelled map to score, in the map frame: the offline pipeline's or a cloud the node published."""

    coord: np.ndarray  # [M, 3] metres
    label: np.ndarray  # [M] int, -1 = never segmented
    instance: Optional[np.ndarray] = None  # [M] int object id, 0 = none (segmenters with an instance head)
    confidence: Optional[np.ndarray] = None  # [M] float; an object's mean ranks it where object_scores lacks it
    object_scores: Optional[Mapping[int, float]] = None  # object id -> score (the tracker's)


@dataclass(frozen=True)
class ReportSpec:
    """How a map is scored and reported."""

    title: str  # heading of report.md
    radius_m: float  # label-transfer radius (see gcross_core.evaluation.map_score)
    cell_m: float = 0.02  # finest cell of the top-down PNG: the map's voxel size
    settings: Mapping[str, Any] = field(default_factory=dict)  # listed in report.md and results.json
    # classes that are not instanced; None: no instance AP even where map and ground truth carry objects
    stuff_classes: Optional[Sequence[str]] = None


@dataclass(frozen=True)
class Coverage:
    """How much of the ground truth the map reaches (results.json ``coverage``)."""

    radius_m: float
    gt_points: int
    gt_points_scored: int  # ground-truth points labelled with one of the classes
    covered_fraction: float  # of the scored points, those with a map point within radius_m
    uncovered_points: int
    covered_but_unlabelled_points: int  # nearest map point never segmented
    map_points: int

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BagScore:
    """What a bag evaluation measured and wrote. ``metrics`` and ``coverage`` are None for a bag without
    ground truth (render panel only); ``instance`` is None without objects to score."""

    report_dir: str
    files: Dict[str, str]  # kind (markdown, json, confusion_csv, ..., render_panel) -> path
    metrics: Optional[SegmentationMetrics] = None
    coverage: Optional[Coverage] = None
    instance: Optional[InstanceMetrics] = None
    performance: Optional[dict] = None  # gcross_ros.bag.evaluate.run_pipeline_on_bag's perf; None when live
    render_panel: Optional[dict] = None  # gcross_ros.bag.render_panel.write_render_panel's summary

    @property
    def miou(self) -> Optional[float]:
        return None if self.metrics is None else self.metrics.miou

    @property
    def macc(self) -> Optional[float]:
        return None if self.metrics is None else self.metrics.macc

    @property
    def allacc(self) -> Optional[float]:
        return None if self.metrics is None else self.metrics.allacc

    @property
    def markdown(self) -> Optional[str]:
        """report.md (absent for a bag without ground truth)."""
        return self.files.get("markdown")

    def to_dict(self) -> Dict[str, Any]:
        """A flat summary: miou, macc, allacc, coverage, performance, render_panel, report_dir, files and,
        with objects, ap25, ap50, map and objects (the map's object count)."""
        out = {"miou": self.miou, "macc": self.macc, "allacc": self.allacc,
               "coverage": None if self.coverage is None else self.coverage.to_dict(),
               "performance": self.performance, "render_panel": self.render_panel, "report_dir": self.report_dir,
               "files": dict(self.files)}
        if self.instance is not None:
            out.update({"ap25": self.instance.ap25, "ap50": self.instance.ap50, "map": self.instance.map,
                        "objects": self.instance.map_objects})
        return out


def score_and_report(out_dir, scored: LabelledMap, gt: GroundTruthCloud, class_names: Sequence[str],
                     spec: ReportSpec, perf: Optional[dict] = None,
                     render_panel: Optional[dict] = None) -> BagScore:
    """Score a labelled map against ground truth whose labels index ``class_names`` (see
    :func:`gcross_ros.bag.evaluate.labels_for_classes`) and write results.json, report.md,
    confusion.csv/png and topdown.png into ``out_dir``.

    Where the map and the ground truth both carry object ids and ``spec.stuff_classes`` is given, the
    map's objects are scored too (AP) and their boxes drawn.
    """
    from gcross_core.evaluation.map_score import score_labelled_map, score_map_instances
    from gcross_core.evaluation.report import save_topdown_png, write_metrics_report
    from gcross_core.segmentation.instance import thing_mask

    names = list(class_names)
    radius_m = spec.radius_m
    score = score_labelled_map(scored.coord, scored.label, gt.coord, gt.label, len(names), radius_m)
    instance = None
    map_panel = ("labelled map", scored.coord, scored.label)
    gt_panel = ("ground truth", gt.coord, gt.label)
    if scored.instance is not None and gt.instance is not None and spec.stuff_classes is not None:
        thing = thing_mask(names, spec.stuff_classes)
        instance = score_map_instances(scored.coord, scored.label, scored.confidence, scored.instance, gt.coord,
                                       gt.label, gt.instance, names, thing, radius_m,
                                       object_scores=scored.object_scores)
        boxes, classes = object_boxes(scored.coord, scored.label, scored.instance, none=0)
        keep = (classes >= 0) & thing[np.clip(classes, 0, None)]
        map_panel = ("labelled map, objects", scored.coord, scored.label, (boxes[keep], classes[keep]))
        boxes, classes = object_boxes(gt.coord, gt.label, gt.instance, none=-1)
        keep = (classes >= 0) & thing[np.clip(classes, 0, None)]
        gt_panel = ("ground truth, objects", gt.coord, gt.label, (boxes[keep], classes[keep]))
    coverage = Coverage(radius_m=float(radius_m), gt_points=int(len(gt.coord)),
                        gt_points_scored=int(score.scored.sum()), covered_fraction=score.coverage,
                        uncovered_points=score.uncovered_points,
                        covered_but_unlabelled_points=score.unlabelled_points, map_points=int(len(scored.coord)))
    settings = dict(spec.settings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_topdown_png(out / "topdown.png", [map_panel, gt_panel], names, min_cell_m=spec.cell_m)
    md = _eval_markdown(coverage, perf, settings)
    md += "\n![top-down: labelled map | ground truth](topdown.png)\n"
    if render_panel is not None:
        md += "\n" + _panel_markdown(render_panel, out)
    extra = {"coverage": coverage.to_dict(), **({"performance": perf} if perf else {}), "settings": settings,
             **({"render_panel": render_panel} if render_panel is not None else {})}
    paths = write_metrics_report(out, score.conf, score.metrics, names, title=spec.title, extra_json=extra,
                                 extra_markdown=md, instance=instance)
    files = {k: str(v) for k, v in paths.items()}
    if render_panel is not None:
        files["render_panel"] = str(render_panel["png"])
    return BagScore(report_dir=str(out), files=files, metrics=score.metrics, coverage=coverage, instance=instance,
                    performance=perf, render_panel=render_panel)


def object_boxes(coord: np.ndarray, label: np.ndarray, instance: np.ndarray, none: int):
    """(boxes [P, 2, 3] min/max corners, majority class [P]) of the objects in a labelled cloud; ``none``
    is the id that means no object (0 in a map, -1 in ground truth)."""
    from gcross_core.evaluation.map_score import map_objects

    _, indices, classes, _ = map_objects(label, None, instance, none=none)
    coord = np.asarray(coord, np.float32)
    boxes = np.array([[coord[i].min(0), coord[i].max(0)] for i in indices], np.float32).reshape(-1, 2, 3)
    return boxes, classes


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


def _eval_markdown(coverage: Coverage, perf: Optional[dict], settings: dict) -> str:
    def ms(d, k):
        return f"{d[k]:.1f}" if k in d else "n/a"

    lines = [
        "## Coverage",
        "",
        f"Ground-truth points take the label of the nearest map point within {coverage.radius_m:.3f} m; "
        f"points with none are uncovered and count as misses of their class.",
        "",
        f"- map points (voxels): {coverage.map_points}",
        f"- ground-truth points scored: {coverage.gt_points_scored} of {coverage.gt_points}",
        f"- covered: {100 * coverage.covered_fraction:.1f} %, uncovered: {coverage.uncovered_points}, "
        f"covered but never segmented: {coverage.covered_but_unlabelled_points}",
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
