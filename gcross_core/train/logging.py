"""What a run writes while it trains: TensorBoard scalars and images, ``metrics.jsonl`` (one JSON line
per logged step, easy to read back in scripts and tests), PNG panels in ``images/``, and the tqdm
progress bar. Only the main process creates a :class:`RunLogger`; other ranks get a disabled one.

Also the small image helpers the panels are made of: PSNR, depth colouring and feature PCA.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import torch

from gcross_core.errors import reading

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------
# image helpers


def psnr(pred: torch.Tensor,  # [..., 3] in 0..1
         target: torch.Tensor,  # [..., 3] in 0..1, same shape
         mask: Optional[torch.Tensor] = None,  # [...] bool, pixels to score (default all)
         ) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for images in 0..1 (peak 1)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred has shape {tuple(pred.shape)}, target {tuple(target.shape)}: expected equal")
    err = (pred.detach().float().clamp(0, 1) - target.detach().float()) ** 2
    if mask is not None:
        if mask.shape != pred.shape[:-1]:
            raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(pred.shape[:-1])}")
        err = err[mask]
    mse = err.mean() if err.numel() else err.new_tensor(float("nan"))
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] float in 0..1 -> uint8."""
    return (np.clip(np.nan_to_num(image), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def depth_to_rgb(depth_m: np.ndarray,  # [H, W] metres, 0 = invalid
                 max_depth_m: Optional[float] = None) -> np.ndarray:
    """Colour a depth map (turbo-like ramp, near = blue, far = red; invalid pixels black) -> [H, W, 3] uint8."""
    if depth_m.ndim != 2:
        raise ValueError(f"depth_m has shape {depth_m.shape}, expected [H, W]")
    valid = np.isfinite(depth_m) & (depth_m > 0)
    if max_depth_m is None:
        max_depth_m = float(np.percentile(depth_m[valid], 99)) if valid.any() else 1.0
    t = np.clip(depth_m / max(max_depth_m, 1e-6), 0.0, 1.0)
    # piecewise-linear blue -> cyan -> yellow -> red, enough to read structure without matplotlib
    r = np.clip(1.5 - np.abs(4.0 * t - 3.0), 0, 1)
    g = np.clip(1.5 - np.abs(4.0 * t - 2.0), 0, 1)
    b = np.clip(1.5 - np.abs(4.0 * t - 1.0), 0, 1)
    rgb = np.stack([r, g, b], axis=-1)
    rgb[~valid] = 0.0
    return to_uint8(rgb)


def pca_basis(features: np.ndarray,  # [M, D]
              k: int = 3) -> tuple:
    """(mean [D], components [D, k], lo [k], hi [k]) of the top-k principal directions of ``features``."""
    if features.ndim != 2:
        raise ValueError(f"features has shape {features.shape}, expected [M, D]")
    x = features.astype(np.float64)
    mean = x.mean(axis=0)
    x = x - mean
    d = x.shape[1]
    if d == 0 or len(x) < 2:
        comps = np.zeros((d, k))
    else:
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        comps = np.zeros((d, k))
        comps[:, : min(k, vt.shape[0])] = vt[:k].T
    proj = x @ comps
    lo = np.percentile(proj, 1, axis=0) if len(proj) else np.zeros(k)
    hi = np.percentile(proj, 99, axis=0) if len(proj) else np.ones(k)
    return mean, comps, lo, hi


def pca_rgb(features: np.ndarray,  # [H, W, D]
            basis: Optional[tuple] = None) -> np.ndarray:
    """First three principal components of a feature map as RGB -> [H, W, 3] uint8.

    Pass the ``basis`` of another map (see :func:`pca_basis`) to colour two maps consistently.
    """
    if features.ndim != 3:
        raise ValueError(f"features has shape {features.shape}, expected [H, W, D]")
    h, w, d = features.shape
    flat = features.reshape(-1, d)
    mean, comps, lo, hi = basis if basis is not None else pca_basis(flat)
    proj = (flat.astype(np.float64) - mean) @ comps
    proj = (proj - lo) / np.maximum(hi - lo, 1e-8)
    return to_uint8(proj.reshape(h, w, 3))


def resize_nearest(image: np.ndarray,  # [h, w, C]
                   height: int, width: int) -> np.ndarray:
    ys = (np.arange(height) * image.shape[0] // height).clip(0, image.shape[0] - 1)
    xs = (np.arange(width) * image.shape[1] // width).clip(0, image.shape[1] - 1)
    return image[ys][:, xs]


def image_grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Tile [H, W, 3] uint8 images (resized to the first one's size) into one panel."""
    if not rows or not rows[0]:
        raise ValueError("image_grid needs at least one image")
    h, w = rows[0][0].shape[:2]
    ncols = max(len(r) for r in rows)
    out = np.zeros((len(rows) * (h + pad) - pad, ncols * (w + pad) - pad, 3), np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            if img.shape[:2] != (h, w):
                img = resize_nearest(img, h, w)
            out[i * (h + pad): i * (h + pad) + h, j * (w + pad): j * (w + pad) + w] = img[..., :3]
    return out


# ----------------------------------------------------------------------------------------------------
# run logger


def read_metrics(path) -> List[dict]:
    """Lines of a ``metrics.jsonl``; when a step appears twice (a resumed run), the later line wins."""
    by_step: Dict[int, dict] = {}
    path = Path(path)
    if not path.is_file():
        return []
    with reading(path, "a metrics.jsonl of one JSON record with a 'step' a line"):
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                by_step[int(rec["step"])] = rec
    return [by_step[s] for s in sorted(by_step)]


class RunLogger:
    """Writes scalars, images and progress for the main process; a no-op elsewhere.

    ``resume_step``: the step a resumed run continues after. Records for later steps (written before
    the interruption, after the checkpoint) are dropped from ``metrics.jsonl`` and purged from
    TensorBoard so the curves stay continuous.
    """

    def __init__(self, run_dir, enabled: bool = True, tensorboard: bool = True, progress: bool = True,
                 total_steps: int = 0, resume_step: int = 0):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.writer = None
        self.bar = None
        self._metrics_file = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "images").mkdir(exist_ok=True)
        metrics_path = self.run_dir / "metrics.jsonl"
        if resume_step > 0:
            kept = [r for r in read_metrics(metrics_path) if r["step"] <= resume_step]
            metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        elif metrics_path.exists():
            metrics_path.unlink()
        self._metrics_file = open(metrics_path, "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.run_dir / "tb"),
                                            purge_step=resume_step + 1 if resume_step > 0 else None)
            except ImportError as e:  # tensorboard is in requirements; a bare env still trains
                log.warning("TensorBoard unavailable (%s); scalars go to metrics.jsonl only", e)
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=resume_step, unit="step", dynamic_ncols=True,
                            smoothing=0.05)

    def scalars(self, step: int, values: Mapping[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        rec = {"step": int(step), **{k: _jsonable(v) for k, v in values.items()}}
        self._metrics_file.write(json.dumps(rec) + "\n")
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def images(self, step: int, images: Mapping[str, np.ndarray]) -> List[Path]:
        """[H, W, 3] uint8 images -> TensorBoard and ``images/step_XXXXXXX_<name>.png``."""
        if not self.enabled:
            return []
        from PIL import Image

        paths = []
        for name, img in images.items():
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(f"image {name!r} has shape {img.shape} {img.dtype}, expected [H, W, 3] uint8")
            p = self.run_dir / "images" / f"step_{step:07d}_{name}.png"
            Image.fromarray(img).save(p)
            paths.append(p)
            if self.writer is not None:
                self.writer.add_image(f"images/{name}", img, step, dataformats="HWC")
        return paths

    def progress(self, n: int = 1, postfix: Optional[Mapping[str, float]] = None) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            self.bar.update(n)

    def message(self, text: str) -> None:
        """A line for the user that does not break the progress bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            log.info(text)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None


def _jsonable(v):
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep them readable
    return v


def format_metrics(values: Mapping[str, float], keys: Optional[Iterable[str]] = None) -> str:
    keys = list(keys) if keys is not None else sorted(values)
    return " ".join(f"{k}={values[k]:.4g}" for k in keys if k in values)
