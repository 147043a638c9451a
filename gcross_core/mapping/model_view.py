"""What the node renders with ``render_source: gaussians``: the map as the GaussianCross model sees it.

For a camera: the map voxels the camera can see, plus ``context_m`` around the view (the nearest
``max_points`` if more), go through the model (:class:`gcross_core.model.api.GaussianCrossModel`: grid
sampling, encoder, Gaussian head; eqs. 4-13) and its Gaussians are rendered at the camera (eqs. 3, 14, 15):

- colour and depth come from the model's Gaussians (depth where the accumulated opacity reaches
  ``RENDER_MIN_ALPHA``, NaN elsewhere, as for the voxel splat of :mod:`gcross_core.mapping.map_view`);
- features: the rendered d_f feature field (divided by the opacity, so coverage does not darken it) as a
  false-colour image, its first three principal components mapped to RGB. The PCA basis (mean,
  directions, 1st-99th percentile range) is computed once per map, from the Gaussians of the first view
  with at least ``MIN_BASIS_GAUSSIANS`` of them, and reused for every later view, so a surface keeps its
  colour across frames; a new map (fewer frames integrated than when the basis was fixed) gets a new one;
- semantic: every Gaussian carries the label of the nearest map voxel (within ``LABEL_RADIUS_M``) as a
  one-hot feature rendered in the same pass, so the class image follows the model's geometry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from gcross_core.evaluation.map_score import transfer_labels
from gcross_core.mapping.fusion import MapSnapshot
from gcross_core.mapping.map_view import RENDER_MIN_ALPHA, MapView, semantic_image, visible_voxels
from gcross_core.model.api import GaussianCrossModel, pinhole_cameras
from gcross_core.train.logging import pca_basis, pca_rgb
from gcross_core.types import Gaussians

MIN_BASIS_GAUSSIANS = 200  # fewer Gaussians than this give a PCA basis too noisy to keep for the whole map
# A Gaussian's mean may sit up to one head voxel (Delta of eq. 11) from the voxel centre; head voxels are
# about 0.1-0.2 m for a room-sized view, so the nearest map voxel within this radius is its surface.
LABEL_RADIUS_M = 0.25


@dataclass(frozen=True)
class ModelMapView(MapView):
    features: np.ndarray  # [H, W, 3] uint8 false colour of the rendered feature field, 0 where not covered


class ModelMapRenderer:
    """Renders voxel-map snapshots through a GaussianCross model; holds the per-map PCA basis."""

    def __init__(self, model: GaussianCrossModel, max_points: int, context_m: float = 0.3,
                 backend: str = "auto"):
        if max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {max_points}")
        if not context_m >= 0:
            raise ValueError(f"context_m must be >= 0, got {context_m}")
        self.model = model
        self.max_points = int(max_points)
        self.context_m = float(context_m)
        self.backend = backend
        self._basis: Optional[Tuple[np.ndarray, ...]] = None
        self._basis_frame_index = 0

    @property
    def basis(self) -> Optional[Tuple[np.ndarray, ...]]:
        """(mean, components, lo, hi) of the false-colour PCA (see ``pca_basis``), None until fixed."""
        return self._basis

    def reset(self) -> None:
        """Forget the PCA basis (a new map)."""
        self._basis = None

    def _blank(self, width: int, height: int) -> ModelMapView:
        return ModelMapView(color=np.zeros((height, width, 3), np.uint8),
                            depth_m=np.full((height, width), np.nan, np.float32),
                            semantic=np.zeros((height, width, 3), np.uint8),
                            features=np.zeros((height, width, 3), np.uint8))

    def render(self, snap: MapSnapshot,
               cam_to_map: np.ndarray,  # [4, 4]
               K: np.ndarray,  # [3, 3] for width x height
               width: int, height: int,
               palette: np.ndarray,  # [num_classes, 3] uint8
               ) -> ModelMapView:
        if self._basis is not None and snap.frame_index < self._basis_frame_index:
            self.reset()  # the map was reset or replaced
        idx = visible_voxels(snap.coords, cam_to_map, K, width, height, self.context_m, self.max_points)
        if len(idx) == 0:
            return self._blank(width, height)
        coords = snap.coords[idx]
        sets = self.model.gaussian_sets(coord=coords, color=snap.colors[idx], normal=snap.normals[idx])
        d_f = self.model.feature_dim
        if self._basis is None and d_f > 0 and len(sets[0]) >= MIN_BASIS_GAUSSIANS:
            self._basis = pca_basis(sets[0].features.cpu().numpy())
            self._basis_frame_index = snap.frame_index
        labels = snap.labels[idx] if snap.labels is not None else np.full(len(idx), -1, np.int64)
        sets = [self._with_labels(g, coords, labels, len(palette)) for g in sets]
        out = self.model.render(sets, pinhole_cameras(cam_to_map, K, self.model.device), width, height,
                                backend=self.backend)
        alpha = out.alpha[0].cpu().numpy()
        covered = alpha >= RENDER_MIN_ALPHA
        color = (out.color[0].clamp(0, 1) * 255).round().byte().cpu().numpy()
        depth_m = np.where(covered, out.expected_depth[0].cpu().numpy(), np.nan).astype(np.float32)
        feat = out.features[0].cpu().numpy()
        semantic = semantic_image(feat[..., d_f:], alpha, palette)
        features = np.zeros((height, width, 3), np.uint8)
        if self._basis is not None:
            field = feat[..., :d_f] / np.maximum(alpha, 1e-6)[..., None]
            features[covered] = pca_rgb(field, self._basis)[covered]
        return ModelMapView(color=color, depth_m=depth_m, semantic=semantic, features=features)

    @staticmethod
    def _with_labels(g: Gaussians, coords: np.ndarray,  # [N, 3] the voxels given to the model
                     labels: np.ndarray,  # [N] int, -1 = not segmented
                     num_classes: int) -> Gaussians:
        """The Gaussians with the one-hot label of their nearest voxel appended to their features."""
        near, _ = transfer_labels(coords, labels, g.means.detach().cpu().numpy(), LABEL_RADIUS_M)
        onehot = torch.zeros(len(g), num_classes, dtype=g.features.dtype, device=g.features.device)
        rows = np.flatnonzero(near >= 0)
        onehot[torch.from_numpy(rows).to(onehot.device), torch.from_numpy(near[rows]).to(onehot.device)] = 1.0
        return Gaussians(means=g.means, quats=g.quats, scales=g.scales, colors=g.colors, opacities=g.opacities,
                         features=torch.cat([g.features, onehot], 1), batch=g.batch)
