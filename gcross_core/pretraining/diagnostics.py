"""Signals that tell a collapsing feature field from a learning one, cheap enough to log every step.

A run can "collapse" while its pretraining loss looks unremarkable: the projected rendered features
(eq. 16) end up no closer to the teacher than the teacher's own mean feature, and the fine-tuned encoder
does worse than one trained from scratch. :func:`feature_collapse_stats` compares the student with that
constant baseline and measures how much the student varies across pixels, on a deterministic subsample
of the batch's pixels. Pure torch; nothing here takes part in the loss.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_PIXELS = 4096  # enough pixels for stable means and for a rank up to a few hundred channels
# singular values of the centred unit features below this fraction of sqrt(pixels) (the norm of the
# uncentred matrix) are rounding, not variation: without it a constant field would read as full rank
RANK_RTOL = 1e-6

STATS = ("cos_teacher", "cos_mean_teacher", "cos_gain", "student_spread", "teacher_spread",
         "student_effective_rank", "teacher_effective_rank")


def _pixels(x: Tensor,  # [V, C, h, w]
            mask: Optional[Tensor],  # [V, h, w] bool
            ) -> Tensor:  # [P, C]
    flat = x.detach().permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    return flat[mask.reshape(-1)] if mask is not None else flat


def effective_rank(x: Tensor,  # [P, C]
                   rtol: float = RANK_RTOL) -> Tensor:
    """exp of the entropy of the normalised singular values of the column-centred ``x`` (Roy & Vetterli
    2007): 1 when all variation lies along one direction, C when it is spread evenly over C directions.

    Computed in float64 from the Gram matrix. Singular values under ``rtol * ||x||_F`` count as zero; a
    matrix without any variation gets 1, the measure's floor, so a constant field reads as one-directional.
    """
    assert x.ndim == 2, f"x has shape {tuple(x.shape)}, expected [P, C]"
    x = x.double()
    if x.shape[0] < 2 or x.shape[1] == 0:
        return torch.tensor(1.0, dtype=torch.float32, device=x.device)
    xc = x - x.mean(dim=0)
    # the singular values from the smaller Gram matrix: a symmetric eigenproblem of min(P, C) rows costs
    # far less than the SVD of the tall [P, C] matrix, and float64 keeps the squared values exact enough
    gram = xc.T @ xc if xc.shape[0] >= xc.shape[1] else xc @ xc.T
    s = torch.linalg.eigvalsh(gram).clamp_min(0.0).sqrt()
    s = s[s > rtol * torch.linalg.norm(x)]
    if s.numel() == 0:
        return torch.tensor(1.0, dtype=torch.float32, device=x.device)
    p = s / s.sum()
    return torch.exp(-(p * torch.log(p)).sum()).float()


@torch.no_grad()
def feature_collapse_stats(student: Tensor,  # [V, C, h, w] projected rendered features (eq. 16)
                           teacher: Tensor,  # [V, C, h, w] teacher features at the same size
                           mask: Optional[Tensor] = None,  # [V, h, w] bool, pixels to score (default all)
                           max_pixels: int = MAX_PIXELS,
                           ) -> Dict[str, Tensor]:
    """Scalar float32 tensors, one per name in :data:`STATS`:

    - ``cos_teacher``: mean per-pixel cosine(student, teacher), 1 - the distillation loss on the subsample;
    - ``cos_mean_teacher``: the same for a constant prediction, the mean of the unit teacher features over
      the scored pixels. It is the best constant under the cosine, so any constant student has
      ``cos_gain <= 0``;
    - ``cos_gain``: ``cos_teacher - cos_mean_teacher``; <= 0 means the student tells the pixels apart no
      better than the mean teacher feature does: the collapse signal;
    - ``student_spread`` / ``teacher_spread``: mean over channels of the per-channel std of the unit
      features across pixels (0 for a constant field; at most 1/sqrt(C), reached by an isotropic one);
    - ``student_effective_rank`` / ``teacher_effective_rank``: :func:`effective_rank` of the unit features.
      It is scale-free: read it with the spread, since a nearly constant field with small isotropic noise
      has a high rank and a spread near 0.

    Unit (L2-normalised) features are used throughout because the cosine loss ignores feature norms.
    Pixels are subsampled with a fixed stride to at most ``max_pixels``. No scored pixel: every entry NaN.
    """
    assert student.ndim == 4 and student.shape == teacher.shape, \
        f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)}: expected the same [V, C, h, w]"
    if mask is not None:
        v, _, h, w = student.shape
        assert mask.shape == (v, h, w), f"mask has shape {tuple(mask.shape)}, expected {(v, h, w)}"
        mask = mask.to(device=student.device, dtype=torch.bool)
    # under the trainer's autocast the products below would run in half precision
    with torch.autocast(device_type=student.device.type, enabled=False):
        return _stats(_pixels(student.float(), mask),
                      _pixels(teacher.to(device=student.device, dtype=torch.float32), mask), max_pixels)


def _stats(s: Tensor,  # [P, C] student pixels
           t: Tensor,  # [P, C] teacher pixels
           max_pixels: int) -> Dict[str, Tensor]:
    if len(s) == 0:
        nan = torch.tensor(float("nan"), device=s.device)
        return {k: nan.clone() for k in STATS}
    stride = max(1, math.ceil(len(s) / max_pixels))
    s = F.normalize(s[::stride], dim=1)
    t = F.normalize(t[::stride], dim=1)
    cos_teacher = (s * t).sum(dim=1).mean()
    mean_teacher = F.normalize(t.mean(dim=0, keepdim=True), dim=1)
    cos_mean_teacher = (t @ mean_teacher.T).mean()
    return {
        "cos_teacher": cos_teacher,
        "cos_mean_teacher": cos_mean_teacher,
        "cos_gain": cos_teacher - cos_mean_teacher,
        "student_spread": s.std(dim=0, correction=0).mean(),
        "teacher_spread": t.std(dim=0, correction=0).mean(),
        "student_effective_rank": effective_rank(s),
        "teacher_effective_rank": effective_rank(t),
    }


__all__ = ["feature_collapse_stats", "effective_rank", "STATS", "MAX_PIXELS"]


def collapse_at_end(records, last: int = 10) -> Dict[str, Dict[str, float]]:
    """Teacher key -> stat -> mean over the last ``last`` records that hold it (``metrics.jsonl`` rows, as
    :func:`gcross_core.train.logging.read_metrics` returns them, with ``collapse/<teacher>/<stat>``)."""
    out: Dict[str, Dict[str, float]] = {}
    keys = sorted({k for r in records for k in r if k.startswith("collapse/")})
    for key in keys:
        _, teacher, stat = key.split("/", 2)
        vals = [float(r[key]) for r in records if key in r][-last:]
        out.setdefault(teacher, {})[stat] = sum(vals) / len(vals)
    return out


def collapse_warnings(summary: Dict[str, Dict[str, float]]) -> list:
    """One sentence per teacher whose ``cos_gain`` at the end is not above 0."""
    return [f"teacher {teacher}: cos_gain {stats['cos_gain']:+.3f} at the end of pretraining: the rendered features "
            f"tell pixels apart no better than the teacher's mean feature does (the distillation has learned "
            f"little beyond that mean; see docs/training.md, Collapse signals)"
            for teacher, stats in summary.items() if "cos_gain" in stats and stats["cos_gain"] <= 0.0]
