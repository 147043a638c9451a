"""The rendered views the node publishes, next to the recorded frames of a bag, as one PNG.

After a bag has been fused and segmented (``gcross-bag eval --render-panel``, ``make demo``), the final
map is rendered exactly as the node renders it (:func:`gcross_core.mapping.model_view.render_view` with
the node's parameters: render_source, model_checkpoint, render_width x render_height, ...) at the
camera poses of ``views`` frames spread evenly over the bag (the middle of each of ``views`` equal parts).
One row per pose: recorded colour | recorded depth | rendered colour | rendered depth | rendered semantic
| rendered features (render_source gaussians). Both depth images share one colour scale per row.

Per pose it also measures the rendered colour against the recorded one (PSNR, dB) and the rendered depth
against the recorded depth (mean absolute error over pixels where both exist), for the configured
render_source and for the voxel splat, so the two can be compared. These are views the map was fused
from, not held-out views. Needs ``rosbags`` only, no ROS installation.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from gcross_core.errors import BagError, InputError
from gcross_ros.bag.format import BagFrame, BagTopics
from gcross_ros.bag.frames import iter_frames

log = logging.getLogger(__name__)

PANEL_FILE = "render_panel.png"


def panel_frame_indices(num_frames: int, views: int) -> List[int]:
    """Indices of ``views`` frames spread evenly over ``num_frames`` (the middle of each equal part)."""
    if num_frames < 1 or views < 1:
        raise InputError(f"need at least one frame and one view, got {num_frames} frames, {views} views")
    views = min(views, num_frames)
    return sorted({int((k + 0.5) * num_frames / views) for k in range(views)})


def _psnr(a: np.ndarray, b: np.ndarray) -> float:  # uint8 [H, W, 3] each
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)) / 255.0 ** 2
    return 10.0 * math.log10(1.0 / mse) if mse > 0 else float("inf")


def _depth_l1(rendered: np.ndarray, recorded: np.ndarray) -> Optional[float]:
    both = np.isfinite(rendered) & np.isfinite(recorded) & (recorded > 0)
    return float(np.abs(rendered[both] - recorded[both]).mean()) if both.any() else None


def write_render_panel(bag_path, snap, class_names: Sequence[str], node_params, out_png=None,
                       views: int = 3, num_frames: Optional[int] = None, topics: BagTopics = BagTopics()) -> Dict:
    """Render the map snapshot ``snap`` (of the bag's fused frames) at ``views`` of the bag's camera poses
    with the node's ``node_params`` (a :class:`gcross_ros.node.params.SegmentNodeParams`) and write the
    panel PNG. ``num_frames``: frames the map was fused from (the first ones of the bag; None: all of the
    bag's). Returns {"png": path, "render_source": ..., "views": [per-pose figures]}."""
    from gcross_core.evaluation.report import class_palette, save_image_panel_png
    from gcross_core.geometry import scale_intrinsics
    from gcross_core.mapping.model_view import ModelMapRenderer, render_view
    from gcross_core.model.api import GaussianCrossModel
    from gcross_core.train.logging import depth_to_rgb, resize_nearest

    p = node_params
    if num_frames is None:
        num_frames = sum(1 for _ in iter_frames(bag_path, topics))
    if num_frames < 1:
        raise BagError(f"bag {bag_path} has no complete RGB-D frames to render a panel at")
    wanted = set(panel_frame_indices(num_frames, views))
    frames: Dict[int, BagFrame] = {}
    first_stamp_ns = None
    model_renderer = None
    if p.render_source == "gaussians":
        model = GaussianCrossModel.from_checkpoint(p.model_checkpoint_path, p.device)
        model_renderer = ModelMapRenderer(model, p.max_render_gaussians, backend=p.render_backend,
                                          up=p.render_up_vector)
    for i, f in enumerate(iter_frames(bag_path, topics)):  # one frame in memory at a time, bar the chosen
        if i >= num_frames:
            break
        first_stamp_ns = f.stamp_ns if first_stamp_ns is None else first_stamp_ns
        if i in wanted:
            frames[i] = f
        if model_renderer is not None:  # the cameras the map was fused from give its up direction, as in the node
            model_renderer.observe_camera(f.cam_to_map)
    palette = class_palette(len(class_names))
    w, h = p.render_width, p.render_height
    rows, figures = [], []
    for i, f in sorted(frames.items()):
        K = scale_intrinsics(f.K, w / f.color.shape[1], h / f.color.shape[0])
        kw = dict(voxel_size_m=p.pipeline.voxel_size_m, max_gaussians=p.max_render_gaussians, device=p.device,
                  backend=p.render_backend)
        out = render_view(snap, f.cam_to_map, K, w, h, palette, model_renderer=model_renderer, **kw)
        splat = out if model_renderer is None else render_view(snap, f.cam_to_map, K, w, h, palette, **kw)
        color = resize_nearest(f.color, h, w)
        depth = resize_nearest(f.depth_m[..., None], h, w)[..., 0]
        depth = np.where(depth > 0, depth, np.nan).astype(np.float32)
        valid = np.isfinite(depth)
        max_depth = float(np.percentile(depth[valid], 99)) if valid.any() else None
        images = [("recorded colour", color), ("recorded depth", depth_to_rgb(np.nan_to_num(depth), max_depth)),
                  (f"rendered colour ({p.render_source})", out.color),
                  ("rendered depth", depth_to_rgb(np.nan_to_num(out.depth_m), max_depth)),
                  ("rendered semantic", out.semantic)]
        if hasattr(out, "features"):
            images.append(("rendered features (PCA)", out.features))
        t = (f.stamp_ns - first_stamp_ns) * 1e-9
        rows.append((f"frame {i} (t = {t:.1f} s)", images))
        figures.append({"frame": i, "stamp_ns": int(f.stamp_ns), "psnr_db": _psnr(out.color, color),
                        "depth_l1_m": _depth_l1(out.depth_m, depth), "coverage": float(np.isfinite(out.depth_m).mean()),
                        "voxels_psnr_db": _psnr(splat.color, color), "voxels_depth_l1_m": _depth_l1(splat.depth_m, depth)})
    out_png = Path(out_png) if out_png is not None else Path(PANEL_FILE)
    source = (f"GaussianCross model {Path(p.model_checkpoint_path).name}" if model_renderer is not None
              else "voxel splat")
    save_image_panel_png(out_png, rows, title=f"{Path(bag_path).name}: the node's rendered views ({source}) "
                                              "at recorded poses")
    for fig in figures:
        log.info("render panel frame %d: PSNR %.2f dB, depth L1 %s m (voxel splat: %.2f dB, %s m)", fig["frame"],
                 fig["psnr_db"], _fmt(fig["depth_l1_m"]), fig["voxels_psnr_db"], _fmt(fig["voxels_depth_l1_m"]))
    return {"png": str(out_png), "render_source": p.render_source,
            "model_checkpoint": p.model_checkpoint_path if model_renderer is not None else None, "views": figures}


def _fmt(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.3f}"
