"""Evaluation report files: results JSON, Markdown tables, confusion matrix CSV/PNG, top-down map PNG.

Shared by ``training/evaluate.py`` and ``gcross-bag eval`` so both write the same layout. matplotlib
is imported lazily (Agg backend) so importing this module stays cheap and display-free.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from gcross_core.evaluation.instance_metrics import InstanceMetrics, instance_metrics_markdown
from gcross_core.evaluation.metrics import SegmentationMetrics
from gcross_core.files import atomic_path

# ScanNet-style first colours, then a deterministic golden-ratio hue walk for any further classes.
_BASE_PALETTE = np.array([
    [174, 199, 232], [152, 223, 138], [31, 119, 180], [255, 187, 120], [188, 189, 34],
    [140, 86, 75], [255, 152, 150], [214, 39, 40], [197, 176, 213], [148, 103, 189],
    [196, 156, 148], [23, 190, 207], [247, 182, 210], [219, 219, 141], [255, 127, 14],
    [158, 218, 229], [44, 160, 44], [112, 128, 144], [227, 119, 194], [82, 84, 163],
], dtype=np.uint8)
UNLABELLED_COLOR = np.array([0, 0, 0], dtype=np.uint8)


def class_palette(num_classes: int) -> np.ndarray:  # -> [K, 3] uint8
    """A fixed colour per class index; the same everywhere (report PNGs, rendered/semantic)."""
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    if num_classes <= len(_BASE_PALETTE):
        return _BASE_PALETTE[:num_classes].copy()
    import colorsys

    extra = []
    for i in range(num_classes - len(_BASE_PALETTE)):
        h = (0.13 + i * 0.618033988749895) % 1.0
        s = 0.55 + 0.35 * ((i * 7) % 3) / 2
        r, g, b = colorsys.hsv_to_rgb(h, s, 0.9)
        extra.append([int(255 * r), int(255 * g), int(255 * b)])
    return np.concatenate([_BASE_PALETTE, np.array(extra, dtype=np.uint8)], axis=0)


def colorize_labels(labels: np.ndarray,  # [N] int, -1 (or any out-of-range value) = unlabelled
                    num_classes: int) -> np.ndarray:  # -> [N, 3] uint8
    labels = np.asarray(labels)
    pal = class_palette(num_classes)
    ok = (labels >= 0) & (labels < num_classes)
    out = np.broadcast_to(UNLABELLED_COLOR, labels.shape + (3,)).copy()
    out[ok] = pal[labels[ok]]
    return out


def to_jsonable(obj):
    """numpy scalars/arrays -> Python; NaN/inf -> None (strict JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path, obj) -> Path:
    """Write strict JSON atomically (a reader never sees half a file)."""
    path = Path(path)
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def metrics_to_dict(metrics: SegmentationMetrics, class_names: Sequence[str]) -> Dict[str, object]:
    """Segmentation metrics -> a JSON-ready dict keyed by class name (the results.json layout)."""
    k = len(class_names)
    if len(metrics.iou) != k:
        raise ValueError(f"metrics have {len(metrics.iou)} classes, class_names has {k}")
    per_class = {}
    for i, name in enumerate(class_names):
        per_class[name] = {"iou": metrics.iou[i], "acc": metrics.acc[i],
                           "present": bool(metrics.present[i]),
                           "gt_count": int(metrics.gt_count[i]), "pred_count": int(metrics.pred_count[i])}
    return to_jsonable({"miou": metrics.miou, "macc": metrics.macc, "allacc": metrics.allacc,
                        "num_present_classes": int(np.sum(metrics.present)), "per_class": per_class})


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100.0 * x:.1f}"


def metrics_markdown(metrics: SegmentationMetrics, class_names: Sequence[str]) -> str:
    """Summary line and a per-class table (percent). Classes without ground truth show n/a."""
    lines = [
        "| mIoU | mAcc | allAcc | classes with ground truth |",
        "|---:|---:|---:|---:|",
        f"| {_pct(metrics.miou)} | {_pct(metrics.macc)} | {_pct(metrics.allacc)} | "
        f"{int(np.sum(metrics.present))} / {len(class_names)} |",
        "",
        "| class | IoU | Acc | GT points | predicted points |",
        "|---|---:|---:|---:|---:|",
    ]
    for i, name in enumerate(class_names):
        lines.append(f"| {name} | {_pct(float(metrics.iou[i]))} | {_pct(float(metrics.acc[i]))} | "
                     f"{int(metrics.gt_count[i])} | {int(metrics.pred_count[i])} |")
    lines.append("")
    lines.append("mIoU and mAcc average over the classes that have ground-truth points; the others show n/a.")
    return "\n".join(lines) + "\n"


def save_confusion_csv(path,
                       conf: np.ndarray,  # [K, K] or [K, K + 1] (last column = no prediction)
                       class_names: Sequence[str]) -> Path:
    conf = np.asarray(conf)
    k = len(class_names)
    if conf.ndim != 2 or conf.shape[0] != k or conf.shape[1] not in (k, k + 1):
        raise ValueError(f"confusion matrix {conf.shape} does not fit {k} class names")
    cols = list(class_names) + (["<no label>"] if conf.shape[1] == k + 1 else [])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write("gt\\pred," + ",".join(_csv_cell(c) for c in cols) + "\n")
        for name, row in zip(class_names, conf):
            f.write(_csv_cell(name) + "," + ",".join(str(int(v)) for v in row) + "\n")
    return path


def _csv_cell(s: str) -> str:
    return '"' + s.replace('"', '""') + '"' if any(c in s for c in ',"\n') else s


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_confusion_png(path,
                       conf: np.ndarray,  # [K, K] or [K, K + 1]
                       class_names: Sequence[str],
                       title: str = "Confusion matrix (row-normalised)") -> Path:
    """Heat map of row-normalised counts (each row = one ground-truth class sums to 1)."""
    conf = np.asarray(conf, dtype=np.float64)
    k = len(class_names)
    if conf.ndim != 2 or conf.shape[0] != k or conf.shape[1] not in (k, k + 1):
        raise ValueError(f"confusion matrix {conf.shape} does not fit {k} class names")
    cols = list(class_names) + (["<no label>"] if conf.shape[1] == k + 1 else [])
    rows = conf.sum(axis=1, keepdims=True)
    norm = np.divide(conf, rows, out=np.zeros_like(conf), where=rows > 0)
    plt = _pyplot()
    size = max(4.0, 0.35 * len(cols) + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    im = ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols, rotation=90, fontsize=7)
    ax.set_yticks(range(k))
    ax.set_yticklabels(class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    if len(cols) <= 25:
        for i in range(k):
            for j in range(len(cols)):
                if conf[i, j] > 0:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=5,
                            color="white" if norm[i, j] < 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save_figure(fig, path, dpi=120)


def _save_figure(fig, path, dpi: int) -> Path:
    """Lay out, write (creating the folder) and close a matplotlib figure."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)
    return path


def topdown_raster(coord: np.ndarray,  # [N, 3] metres
                   labels: np.ndarray,  # [N] int, -1 = unlabelled
                   lo: np.ndarray,  # [2] x, y of the lower-left corner, metres
                   cell_m: float,
                   shape: Tuple[int, int],  # (rows, cols)
                   fill_cells: float = 0.0,
                   ) -> np.ndarray:  # [rows, cols] int64: label of the highest point per cell, -2 = empty
    """What a camera looking straight down sees: per x-y cell, the label of the highest point.

    ``fill_cells`` > 0 closes pinholes: empty cells within that many cells of a filled one copy it.
    """
    rows, cols = shape
    out = np.full(rows * cols, -2, np.int64)
    if len(coord) == 0:
        return out.reshape(rows, cols)
    ij = np.floor((coord[:, :2] - lo) / cell_m).astype(np.int64)
    ok = (ij[:, 0] >= 0) & (ij[:, 0] < cols) & (ij[:, 1] >= 0) & (ij[:, 1] < rows)
    cell = (ij[ok, 1] * cols + ij[ok, 0])
    order = np.argsort(-coord[ok, 2], kind="stable")  # highest first: np.unique keeps first occurrences
    first_cell, first = np.unique(cell[order], return_index=True)
    out[first_cell] = np.asarray(labels)[ok][order][first]
    out = out.reshape(rows, cols)
    if fill_cells > 0 and (out != -2).any() and (out == -2).any():
        # points sparser than the raster leave pinholes; an empty cell takes its nearest filled cell's
        # label when that is at most fill_cells away
        from scipy.ndimage import distance_transform_edt

        dist, (ii, jj) = distance_transform_edt(out == -2, return_indices=True)
        near = (out == -2) & (dist <= fill_cells)
        out[near] = out[ii[near], jj[near]]
    return out


def save_topdown_png(path,
                     panels: Sequence[tuple],  # (title, coord [N, 3] m, labels [N] int[, boxes]) per panel
                     class_names: Sequence[str],
                     max_cells: int = 400,
                     min_cell_m: float = 0.01,
                     fill_cells: float = 1.5) -> Path:
    """Side-by-side top-down views coloured by class (highest point per cell wins).

    All panels share one x-y raster (``max_cells`` cells along the longer side, never finer than
    ``min_cell_m``: pass the point spacing, e.g. the voxel size, or a sparse map shows as dots)
    so the labelled map and the ground truth line up cell for cell; pinholes up to ``fill_cells`` wide
    are closed (see :func:`topdown_raster`). Unlabelled points are dark grey, empty cells white. A legend lists the classes that occur in any panel.
    An optional fourth panel entry ``(boxes [P, 2, 3] min/max corners, classes [P])`` draws each object's
    axis-aligned box outline in its class colour (instance segmentation).
    """
    if not panels:
        raise ValueError("save_topdown_png needs at least one panel")
    k = len(class_names)
    prepared = []
    for panel in panels:
        title, coord, labels = panel[:3]
        boxes = panel[3] if len(panel) > 3 else None
        coord = np.asarray(coord, dtype=np.float64)
        labels = np.asarray(labels)
        if coord.ndim != 2 or coord.shape[1] != 3 or labels.shape != (coord.shape[0],):
            raise ValueError(f"panel {title!r}: coord {coord.shape} must be [N, 3] and labels {labels.shape} [N]")
        prepared.append((title, coord, labels, boxes))
    nonempty = [c for _, c, _, _ in prepared if len(c)]
    lo = np.min([c[:, :2].min(0) for c in nonempty], axis=0) if nonempty else np.zeros(2)
    hi = np.max([c[:, :2].max(0) for c in nonempty], axis=0) if nonempty else np.ones(2)
    cell = max(float(np.max(hi - lo)) / max_cells, float(min_cell_m))
    shape = (int(np.ceil((hi[1] - lo[1]) / cell)) + 1, int(np.ceil((hi[0] - lo[0]) / cell)) + 1)
    pal = np.concatenate([class_palette(k), [[64, 64, 64], [255, 255, 255]]]).astype(np.uint8)
    plt = _pyplot()
    width = 5.0 * len(prepared) + 1.5
    fig, axes = plt.subplots(1, len(prepared), figsize=(width, 5.0), squeeze=False)
    used = set()
    extent = (lo[0], lo[0] + shape[1] * cell, lo[1], lo[1] + shape[0] * cell)
    from matplotlib.patches import Patch, Rectangle

    for ax, (title, coord, labels, boxes) in zip(axes[0], prepared):
        raster = topdown_raster(coord, labels, lo, cell, shape, fill_cells=fill_cells)
        idx = np.where((raster >= 0) & (raster < k), raster, np.where(raster == -2, k + 1, k))
        ax.imshow(pal[idx], origin="lower", extent=extent, interpolation="nearest")
        if boxes is not None:
            corners, box_classes = np.asarray(boxes[0], np.float64), np.asarray(boxes[1])
            for (b_lo, b_hi), c in zip(corners, box_classes):
                # black under the class colour: visible on the object's own colour
                for colour, width in (("black", 2.2), (pal[int(c) % k] / 255.0, 1.2)):
                    ax.add_patch(Rectangle((b_lo[0], b_lo[1]), b_hi[0] - b_lo[0], b_hi[1] - b_lo[1], fill=False,
                                           edgecolor=colour, linewidth=width))
        ax.set_title(title)
        ax.set_xlabel("x [m]")
        ax.set_ylabel("y [m]")
        used.update(int(v) for v in np.unique(labels) if 0 <= v < k)

    handles = [Patch(color=pal[i] / 255.0, label=class_names[i]) for i in sorted(used)]
    if any((np.asarray(lab) < 0).any() for _, _, lab, _ in prepared):
        handles.append(Patch(color=pal[k] / 255.0, label="unlabelled"))
    if handles:
        fig.legend(handles=handles, loc="center right", fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, 1.0 - 1.5 / width, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_metrics_report(out_dir,
                         conf: np.ndarray,  # [K, K] or [K, K + 1]
                         metrics: SegmentationMetrics,
                         class_names: Sequence[str],
                         title: str = "Segmentation evaluation",
                         extra_json: Optional[Mapping] = None,
                         extra_markdown: str = "",
                         instance: Optional[InstanceMetrics] = None) -> Dict[str, Path]:
    """Write results.json, report.md, confusion.csv and confusion.png into ``out_dir``; ``instance``
    (:meth:`~gcross_core.evaluation.instance_metrics.InstanceAccumulator.metrics`) adds the AP table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {"metrics": metrics_to_dict(metrics, class_names), "class_names": list(class_names),
               "confusion_matrix": np.asarray(conf).tolist(), **(extra_json or {})}
    if instance is not None:
        results["instance"] = instance.to_dict()
    paths = {
        "json": write_json(out / "results.json", results),
        "csv": save_confusion_csv(out / "confusion.csv", conf, class_names),
        "confusion_png": save_confusion_png(out / "confusion.png", conf, class_names),
    }
    md = [f"# {title}", "", metrics_markdown(metrics, class_names)]
    if instance is not None:
        md += [instance_metrics_markdown(instance)]
    if extra_markdown:
        md += [extra_markdown.rstrip() + "\n"]
    md += ["![confusion matrix](confusion.png)", ""]
    (out / "report.md").write_text("\n".join(md))
    paths["markdown"] = out / "report.md"
    return paths


def save_image_panel_png(path,
                         rows: Sequence[Tuple[str, Sequence[Tuple[str, np.ndarray]]]],  # (row title, [(column title, [H, W, 3] uint8)])
                         title: str = "") -> Path:
    """Images in a titled grid, one row per entry (e.g. one camera pose: the recorded frame next to the
    rendered views). Column titles are written above each image, row titles on the left."""
    if not rows or not rows[0][1]:
        raise ValueError("save_image_panel_png needs at least one row with one image")
    ncols = max(len(images) for _, images in rows)
    h, w = rows[0][1][0][1].shape[:2]
    plt = _pyplot()
    cell = 2.6
    fig, axes = plt.subplots(len(rows), ncols, figsize=(cell * ncols * w / max(h, 1) * 0.8 + 0.6, cell * len(rows) + 0.6),
                             squeeze=False)
    for i, (row_title, images) in enumerate(rows):
        for j in range(ncols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(images):
                ax.axis("off")
                continue
            name, image = images[j]
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"panel image {name!r} has shape {image.shape} dtype {image.dtype}, "
                                 "expected [H, W, 3] uint8")
            ax.imshow(image, interpolation="nearest")
            ax.set_title(name, fontsize=8)
            if j == 0:
                ax.set_ylabel(row_title, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save_figure(fig, path, dpi=110)
