"""3D instance segmentation, PointGroup-style (Jiang et al., 2020), on the segmentation backbone
(paper Sec. 4.2.4, Table 4; settings Table S.3).

Next to the per-point semantic logits the model predicts a per-point offset to the centre of the point's
instance (:class:`OffsetHead`). Training adds to the cross-entropy the offset losses of PointGroup
(:func:`offset_losses`): L1 between predicted and true offset, and (1 - cos) between their directions.
With ``contact_weight`` above 0 the rows where an object touches another (:func:`contact_rows`: a row
of another instance in one of the 26 neighbouring grid cells) weigh ``1 + contact_weight`` in both
offset terms instead of 1. Those rows are few, and they are the ones whose offsets decide whether two
touching objects' shifted points separate; plain averaging lets the loss ignore them.

Inference (:func:`group_instances`) is the PointGroup dual-set grouping, in numpy/scipy only:

1. points of one predicted "thing" class (not in ``stuff_classes``: walls, floors, ... are never
   instanced) are linked to their neighbours within ``cluster_radius_m`` in the ORIGINAL coordinates and,
   separately, within ``shifted_radius_m`` (default: the same) in the SHIFTED coordinates (point +
   predicted offset); the connected components of each graph are proposals. Shifted coordinates split
   touching objects of one class (their points move to different centres); original coordinates keep
   objects whose offsets are poor.
   Neighbours come from scipy's cKDTree, at most ``max_neighbors`` nearest per point (PointGroup bounds
   its ball query the same way): with shifted points piled up at a centre an unbounded radius graph
   would grow quadratically.
   With ``normal_min_cos`` set, the original-coordinate graph links two neighbours only where their unit
   normals agree (cosine above it): a box standing on a tin or against another box meets it at a crease,
   and the crease cuts the graph where the points themselves touch. Normals must be oriented
   consistently (towards the sensor, as fused maps and ``training/prepare_frames.py`` give them); a
   curved object keeps its points linked, since neighbours 2-3 cm apart differ little in direction.
   A point without a normal (a zero vector: fused maps leave one where the normal's window crosses a
   depth edge, which is where objects meet) links to nothing there and joins an instance through the
   shifted graph only; linking such points to every neighbour instead cost 9 AP50 on the clutter test.
   Measured on tabletop clutter (docs/data.md, "Instance grouping"): this and a 2 cm shifted radius
   raised AP50 far more than any other grouping change tried there; gating by colour lowered it.
2. proposals with fewer than ``min_points`` points are dropped;
3. each proposal is scored without a learned ScoreNet (PointGroup learns one): the mean predicted
   probability of its class over its points times an offset-agreement factor
   ``1 - 0.5 * min(1, spread(shifted) / spread(original))``, where spread is the root-mean-square
   distance of the points from their mean. The points of one object, shifted by good offsets, collapse
   to its centre (factor near 1); a proposal that merges two touching objects keeps two separate piles
   (factor near 0.6), so the split proposals outrank the merged one in NMS;
4. non-maximum suppression: in decreasing score, a proposal whose point IoU with a kept one exceeds
   ``nms_iou`` is dropped; proposals under ``score_threshold`` are dropped;
5. fragments: a kept proposal lying for more than half inside a larger kept proposal of its class is
   dropped. Where offsets are imprecise the shifted points of one object break into several small
   piles, each a proposal too small to be suppressed by IoU against the whole object that the original
   coordinates give (PointGroup's learned ScoreNet ranks such pieces low; without one they would stay
   as false positives).
6. merging (with ``merge_centre_m`` set; off by default): kept instances of one class whose shifted
   points' means lie closer than ``merge_centre_m`` become one instance (transitively), scored by the
   best of them. The offsets of an object seen in two pieces (occluded by another in front) point to one
   centre, but the shifted points of each piece pile up apart, and a small shifted radius keeps them
   apart; HAIS's set aggregation (Chen et al., ICCV 2021) joins such fragments the same way, by the
   distance of their shifted centroids. On tabletop clutter it raised AP50 everywhere and most on the
   occluded-object frames (docs/data.md, "Instance grouping").

The same function serves training-time evaluation, ``training/evaluate.py``, the bag evaluator and the
ROS node (through :meth:`gcross_core.segmentation.segmenter.Segmenter.predict_instances`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gcross_core.config import DictConfig
from gcross_core.errors import ConfigError
from gcross_core.types import offset_to_batch

# Classes never split into instances, per class set. ScanNet's instance benchmark leaves out wall and
# floor (its 18 instance classes); on tabletops the table is stuff. Override with InstanceConfig.stuff_classes.
DEFAULT_STUFF_CLASSES: Dict[str, Tuple[str, ...]] = {
    "scannet20": ("wall", "floor"),
    "scannet200": ("wall", "floor", "ceiling"),
    "synthetic": ("wall", "floor"),
    "tabletop": ("table",),  # objects on a table: the table is the stuff they stand on
}


@dataclass(frozen=True)
class InstanceConfig(DictConfig):
    """The instance task: loss weights and grouping parameters (stored in a segmenter checkpoint's metadata)."""

    # class names that are not instanced; None = DEFAULT_STUFF_CLASSES of the run's class set
    stuff_classes: Optional[Tuple[str, ...]] = None
    offset_l1_weight: float = 1.0  # PointGroup: offset L1 and direction terms weigh 1 each
    offset_dir_weight: float = 1.0
    # extra weight of the offset losses on rows that touch another instance (contact_rows); 0 = PointGroup
    contact_weight: float = 0.0
    # PointGroup clusters at 0.03 m on a 2 cm grid (1.5 cells); coarser grids want a larger radius
    cluster_radius_m: float = 0.03
    # radius of the shifted-coordinate graph; None = cluster_radius_m (PointGroup uses one radius)
    shifted_radius_m: Optional[float] = None
    # original-coordinate graph: link neighbours only where their normals' cosine exceeds this; None = always
    normal_min_cos: Optional[float] = None
    # join kept instances of a class whose shifted points' means lie closer than this (step 6); None = never
    merge_centre_m: Optional[float] = None
    max_neighbors: int = 32  # nearest neighbours kept per point in the radius graph (see module docstring)
    min_points: int = 50  # PointGroup's minimum cluster size (grid rows)
    score_threshold: float = 0.09  # PointGroup's test score threshold
    nms_iou: float = 0.3  # PointGroup's NMS threshold
    use_original: bool = True  # proposals from the original coordinates
    use_shifted: bool = True  # proposals from the shifted coordinates

    def __post_init__(self) -> None:
        if self.stuff_classes is not None:
            object.__setattr__(self, "stuff_classes", tuple(self.stuff_classes))
        if not self.cluster_radius_m > 0:
            raise ConfigError(f"cluster_radius_m must be > 0, got {self.cluster_radius_m}")
        if self.shifted_radius_m is not None and not self.shifted_radius_m > 0:
            raise ConfigError(f"shifted_radius_m must be > 0 (or null: cluster_radius_m), got {self.shifted_radius_m}")
        if self.merge_centre_m is not None and not self.merge_centre_m > 0:
            raise ConfigError(f"merge_centre_m must be > 0 (or null: no merging), got {self.merge_centre_m}")
        if self.normal_min_cos is not None and not -1.0 <= self.normal_min_cos < 1.0:
            raise ConfigError(f"normal_min_cos must lie in [-1, 1) (or null: normals unused), got {self.normal_min_cos}")
        if self.max_neighbors < 2 or self.min_points < 1:
            raise ConfigError(f"max_neighbors must be >= 2 and min_points >= 1, got {self.max_neighbors}, "
                              f"{self.min_points}")
        if not 0.0 <= self.nms_iou <= 1.0 or not 0.0 <= self.score_threshold <= 1.0:
            raise ConfigError("nms_iou and score_threshold must lie in [0, 1]")
        if self.offset_l1_weight < 0 or self.offset_dir_weight < 0 or self.contact_weight < 0:
            raise ConfigError(f"offset loss weights and contact_weight must be >= 0, got {self.offset_l1_weight}, "
                              f"{self.offset_dir_weight}, {self.contact_weight}")
        if not (self.use_original or self.use_shifted):
            raise ConfigError("at least one of use_original and use_shifted must be true")

    def resolved(self, class_set: str, class_names: Sequence[str]) -> "InstanceConfig":
        """This config with ``stuff_classes`` filled from the class set and checked against its names."""
        stuff = self.stuff_classes
        if stuff is None:
            stuff = DEFAULT_STUFF_CLASSES.get(class_set, ())
        unknown = sorted(set(stuff) - set(class_names))
        if unknown:
            raise ConfigError(f"instance.stuff_classes names {unknown}, which are not classes of {class_set!r}")
        return InstanceConfig(**{**asdict(self), "stuff_classes": tuple(stuff)})


def thing_mask(class_names: Sequence[str], stuff_classes: Sequence[str]) -> np.ndarray:  # -> [K] bool
    """True for the classes that are instanced."""
    stuff = set(stuff_classes)
    return np.array([n not in stuff for n in class_names], dtype=bool)


# ----------------------------------------------------------------------------------------------------
# the head and its losses


class OffsetHead(nn.Module):
    """Per-point offset to the instance centre (PointGroup's offset branch: MLP C -> C -> 3)."""

    def __init__(self, channels: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.BatchNorm1d(channels), nn.ReLU(inplace=True),
                                 nn.Linear(channels, 3))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:  # [N, C] -> [N, 3] metres
        return self.mlp(feat)


def instance_centres(coord: np.ndarray,  # [M, 3]
                     instance: np.ndarray,  # [M] int, -1 = none
                     ) -> np.ndarray:  # -> [M, 3] float32: centre of each row's instance (0 where none)
    """Centre of every row's instance: the mean of that instance's rows (PointGroup's offset target is
    centre - point, with the centre taken over the instance's points in the sample)."""
    coord = np.asarray(coord, np.float64)
    instance = np.asarray(instance)
    out = np.zeros((len(coord), 3), np.float32)
    has = instance >= 0
    if not has.any():
        return out
    ids, inv = np.unique(instance[has], return_inverse=True)
    sums = np.zeros((len(ids), 3))
    np.add.at(sums, inv, coord[has])
    counts = np.bincount(inv, minlength=len(ids))[:, None]
    out[has] = (sums / counts)[inv]
    return out


def offset_losses(offset: torch.Tensor,  # [N, 3] predicted
                  target: torch.Tensor,  # [N, 3] centre - point
                  valid: torch.Tensor,  # [N] bool: rows of a thing instance
                  weight: Optional[torch.Tensor] = None,  # [N] >= 0 per-row weight; None = 1 everywhere
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """PointGroup's offset losses over the valid rows: (mean L1 norm of the error, mean (1 - cos) of the
    directions), each a weighted mean with ``weight``. Zero (with a graph) when no row is valid."""
    if offset.shape != target.shape or offset.ndim != 2 or offset.shape[1] != 3 or valid.shape != offset.shape[:1]:
        raise ValueError(f"offset {tuple(offset.shape)} and target {tuple(target.shape)} must be [N, 3], valid "
                         f"{tuple(valid.shape)} [N]")
    if weight is not None and weight.shape != valid.shape:
        raise ValueError(f"weight has shape {tuple(weight.shape)}, expected {tuple(valid.shape)}")
    if not valid.any():
        zero = offset.sum() * 0.0
        return zero, zero
    o, t = offset[valid], target[valid]
    l1 = (o - t).abs().sum(dim=1)
    direction = 1.0 - F.cosine_similarity(o, t, dim=1, eps=1e-8)
    if weight is None:
        return l1.mean(), direction.mean()
    w = weight[valid].to(l1.dtype)
    total = w.sum().clamp_min(1e-12)
    return (w * l1).sum() / total, (w * direction).sum() / total


# 26 neighbouring cells of a grid cell, as integer steps
_NEIGHBOUR_STEPS = torch.tensor([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)
                                 if (i, j, k) != (0, 0, 0)], dtype=torch.int64)


def contact_rows(grid_coord: torch.Tensor,  # [N, 3] integer grid cells (>= 0 per sample)
                 batch_offset: torch.Tensor,  # [B] cumulative end row of each sample (PointBatch.offset)
                 instance: torch.Tensor,  # [N] int instance id per row, -1 = none
                 ) -> torch.Tensor:  # -> [N] bool
    """Rows of an instance that touch another: one of the 26 neighbouring grid cells of the row's cell,
    in the same sample, holds a row of a different instance (id >= 0). Rows without an instance are never
    contact rows; an object resting on the table (stuff, id -1) is not in contact through it."""
    n = grid_coord.shape[0]
    if grid_coord.shape != (n, 3) or instance.shape != (n,):
        raise ValueError(f"grid_coord {tuple(grid_coord.shape)} / instance {tuple(instance.shape)} must be [N, 3] / [N]")
    device = grid_coord.device
    out = torch.zeros(n, dtype=torch.bool, device=device)
    if n == 0:
        return out
    sample = offset_to_batch(batch_offset.to(device).long())
    g = grid_coord.long() + 1  # room for the -1 step
    size = g.max(dim=0).values + 2

    def key(cells: torch.Tensor) -> torch.Tensor:
        return ((sample * size[0] + cells[:, 0]) * size[1] + cells[:, 1]) * size[2] + cells[:, 2]

    keys = key(g)
    order = torch.argsort(keys)
    sorted_keys, sorted_inst = keys[order], instance.long()[order]
    own = instance.long()
    for step in _NEIGHBOUR_STEPS.to(device):
        k = key(g + step)
        pos = torch.searchsorted(sorted_keys, k).clamp_max(n - 1)
        hit = sorted_keys[pos] == k
        other = sorted_inst[pos]
        out |= hit & (other >= 0) & (other != own)
    return out & (own >= 0)


# ----------------------------------------------------------------------------------------------------
# grouping


@dataclass
class InstanceSet:
    """Instances of one cloud: one entry per kept proposal, in decreasing score."""

    indices: List[np.ndarray]  # per instance: indices of its points (int64, sorted)
    classes: np.ndarray  # [P] int64 class index
    scores: np.ndarray  # [P] float32 in [0, 1]
    num_points: int  # N, the size of the cloud the indices refer to

    def __len__(self) -> int:
        return len(self.indices)

    def point_ids(self) -> np.ndarray:  # -> [N] int64, -1 = no instance
        """One instance index per point (a point in two instances keeps the higher-scoring one)."""
        out = np.full(self.num_points, -1, np.int64)
        for i in range(len(self.indices) - 1, -1, -1):  # lowest score first, so higher scores overwrite
            out[self.indices[i]] = i
        return out

    def expand(self, inverse: np.ndarray) -> "InstanceSet":
        """The same instances on the original points, given each original point's row (grid sampling)."""
        inverse = np.asarray(inverse)
        indices = []
        member = np.zeros(self.num_points, bool)
        for rows in self.indices:
            member[rows] = True
            indices.append(np.flatnonzero(member[inverse]).astype(np.int64))
            member[rows] = False
        return InstanceSet(indices, self.classes.copy(), self.scores.copy(), len(inverse))

    @classmethod
    def empty(cls, num_points: int) -> "InstanceSet":
        return cls([], np.empty(0, np.int64), np.empty(0, np.float32), int(num_points))


def radius_components(coord: np.ndarray,  # [M, 3]
                      radius_m: float, max_neighbors: int,
                      normal: Optional[np.ndarray] = None,  # [M, 3] unit, with min_cos
                      min_cos: Optional[float] = None,
                      ) -> np.ndarray:  # -> [M] component id
    """Connected components of the graph linking each point to its (at most ``max_neighbors``) nearest
    neighbours within ``radius_m`` (scipy cKDTree + csgraph); with ``min_cos``, only neighbours whose
    normals' cosine exceeds it."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    m = len(coord)
    if m == 0:
        return np.empty(0, np.int64)
    k = min(max_neighbors + 1, m)
    _, nbr = cKDTree(coord).query(coord, k=k, distance_upper_bound=radius_m)
    nbr = np.asarray(nbr).reshape(m, k)
    src = np.repeat(np.arange(m), k)
    dst = nbr.reshape(-1)
    ok = dst < m  # missing neighbours come back as index m
    src, dst = src[ok], dst[ok]
    if min_cos is not None:
        if normal is None or np.shape(normal) != (m, 3):
            raise ValueError(f"normal-gated grouping needs [M, 3] normals for the {m} points, got "
                             f"{None if normal is None else np.shape(normal)}")
        agree = np.einsum("ij,ij->i", normal[src], normal[dst]) > min_cos
        src, dst = src[agree], dst[agree]
    graph = coo_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(m, m))
    _, comp = connected_components(graph, directed=False)
    return comp.astype(np.int64)


def _proposals_of(rows: np.ndarray, comp: np.ndarray, min_points: int) -> List[np.ndarray]:
    order = np.argsort(comp, kind="stable")
    comp_sorted = comp[order]
    cuts = np.flatnonzero(np.diff(comp_sorted)) + 1
    groups = np.split(rows[order], cuts)
    return [np.sort(g) for g in groups if len(g) >= min_points]


def intersections(indices: Sequence[np.ndarray], num_points: int) -> np.ndarray:  # -> [P, P] shared points
    from scipy.sparse import csr_matrix

    lens = np.array([len(i) for i in indices])
    mat = csr_matrix((np.ones(int(lens.sum()), np.float32), np.concatenate(indices),
                      np.concatenate([[0], np.cumsum(lens)])), shape=(len(indices), num_points))
    return (mat @ mat.T).toarray()


def nms(indices: Sequence[np.ndarray], scores: np.ndarray, num_points: int, iou_threshold: float,
        inter: Optional[np.ndarray] = None) -> np.ndarray:
    """Indices of the proposals kept by greedy point-IoU non-maximum suppression, in decreasing score."""
    p = len(indices)
    if p == 0:
        return np.empty(0, np.int64)
    order = np.argsort(-np.asarray(scores), kind="stable")
    lens = np.array([len(i) for i in indices])
    inter = intersections(indices, num_points) if inter is None else inter
    iou = inter / np.maximum(lens[:, None] + lens[None, :] - inter, 1)
    keep: List[int] = []
    suppressed = np.zeros(p, bool)
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        suppressed |= iou[i] > iou_threshold
    return np.asarray(keep, np.int64)


def proposal_score(coord: np.ndarray,  # [P, 3] the proposal's points
                   offset: np.ndarray,  # [P, 3] their predicted offsets
                   prob: np.ndarray,  # [P] their probability of the proposal's class
                   ) -> float:
    """Mean class probability times the offset-agreement factor (module docstring, step 3)."""
    def spread(x):
        return float(np.sqrt(((x - x.mean(0)) ** 2).sum(1).mean()))

    original = spread(coord)
    ratio = min(1.0, spread(coord + offset) / original) if original > 0 else 0.0
    return float(prob.mean()) * (1.0 - 0.5 * ratio)


def group_instances(coord: np.ndarray,  # [M, 3] metres
                    offset: np.ndarray,  # [M, 3] predicted offset to the instance centre
                    probs: np.ndarray,  # [M, K] class probabilities
                    thing: np.ndarray,  # [K] bool: classes that are instanced
                    cfg: InstanceConfig,
                    normal: Optional[np.ndarray] = None,  # [M, 3] unit; needed when cfg.normal_min_cos is set
                    ) -> InstanceSet:
    """Instances of one cloud (the algorithm is in the module docstring)."""
    coord = np.asarray(coord, np.float32)
    if cfg.normal_min_cos is not None:
        if normal is None:
            raise ValueError("this grouping gates the original-coordinate graph by normals (normal_min_cos); "
                             "pass the points' normals")
        normal = np.asarray(normal, np.float32)
    offset = np.asarray(offset, np.float32)
    probs = np.asarray(probs, np.float32)
    m = len(coord)
    if coord.shape != (m, 3) or offset.shape != (m, 3) or probs.ndim != 2 or len(probs) != m:
        raise ValueError(f"coord {coord.shape}, offset {offset.shape} and probs {probs.shape} must be [M, 3], "
                         f"[M, 3] and [M, K]")
    thing = np.asarray(thing, bool)
    if thing.shape != (probs.shape[1],):
        raise ValueError(f"thing mask has shape {thing.shape}, expected [{probs.shape[1]}]")
    labels = probs.argmax(1)
    shifted_radius = cfg.cluster_radius_m if cfg.shifted_radius_m is None else cfg.shifted_radius_m
    # (points, radius, normals to gate by or None) of each graph
    spaces = (([(coord, cfg.cluster_radius_m, normal)] if cfg.use_original else [])
              + ([(coord + offset, shifted_radius, None)] if cfg.use_shifted else []))
    cand: List[np.ndarray] = []
    cand_cls: List[int] = []
    cand_score: List[float] = []
    for c in np.flatnonzero(thing):
        rows = np.flatnonzero(labels == c)
        if len(rows) < cfg.min_points:
            continue
        for pts, radius, nrm in spaces:
            gate = None if nrm is None else cfg.normal_min_cos
            comp = radius_components(pts[rows], radius, cfg.max_neighbors,
                                     None if nrm is None else nrm[rows], gate)
            for group in _proposals_of(rows, comp, cfg.min_points):
                cand.append(group)
                cand_cls.append(int(c))
                cand_score.append(proposal_score(coord[group], offset[group], probs[group, c]))
    if not cand:
        return InstanceSet.empty(m)
    scores = np.asarray(cand_score, np.float32)
    classes = np.asarray(cand_cls, np.int64)
    inter = intersections(cand, m)
    keep = nms(cand, scores, m, cfg.nms_iou, inter)
    keep = keep[scores[keep] >= cfg.score_threshold]
    lens = np.array([len(c) for c in cand])
    sub = inter[np.ix_(keep, keep)]
    inside = (sub > 0.5 * lens[keep][:, None]) & (lens[keep][None, :] > lens[keep][:, None]) \
        & (classes[keep][None, :] == classes[keep][:, None])
    keep = keep[~inside.any(axis=1)]  # step 5: fragments of a larger kept proposal
    found = InstanceSet([cand[i] for i in keep], classes[keep], scores[keep], m)
    if cfg.merge_centre_m is not None:
        found = merge_by_centre(found, coord + offset, cfg.merge_centre_m)
    return found


def merge_by_centre(instances: InstanceSet, shifted: np.ndarray,  # [M, 3] point + predicted offset
                    distance_m: float) -> InstanceSet:
    """Step 6 of the grouping: instances of one class whose shifted points' means lie closer than
    ``distance_m`` are joined (transitively); a joined instance keeps the best score. In decreasing score."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    p = len(instances)
    if p < 2:
        return instances
    centres = np.stack([shifted[i].mean(0) for i in instances.indices])
    pairs = cKDTree(centres).query_pairs(distance_m, output_type="ndarray")
    pairs = pairs[instances.classes[pairs[:, 0]] == instances.classes[pairs[:, 1]]]
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(p, p))
    _, comp = connected_components(graph, directed=False)
    groups = [np.flatnonzero(comp == c) for c in range(comp.max() + 1)]
    scores = np.array([instances.scores[g].max() for g in groups], np.float32)
    order = np.argsort(-scores, kind="stable")
    return InstanceSet([np.unique(np.concatenate([instances.indices[k] for k in groups[o]])) for o in order],
                       np.array([instances.classes[groups[o][0]] for o in order], np.int64), scores[order],
                       instances.num_points)


def instance_boxes(coord: np.ndarray,  # [N, 3]
                   instances: InstanceSet) -> np.ndarray:  # -> [P, 2, 3] float32 (min corner, max corner)
    """Axis-aligned bounding box of every instance."""
    out = np.zeros((len(instances), 2, 3), np.float32)
    for i, idx in enumerate(instances.indices):
        if len(idx):
            out[i, 0], out[i, 1] = coord[idx].min(0), coord[idx].max(0)
    return out

