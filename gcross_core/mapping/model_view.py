"""What the node renders with ``render_source: gaussians``: the map as the GaussianCross model sees it.

For a camera: the map voxels the camera can see, plus ``context_m`` around the view, thinned to one per
cell of the model's grid (the nearest ``max_points`` cells if more), go through the model (:class:`gcross_core.model.api.GaussianCrossModel`: grid
sampling, encoder, Gaussian head; eqs. 4-13) and its Gaussians are rendered at the camera (eqs. 3, 14, 15):

- colour and depth come from the model's Gaussians (depth where the accumulated opacity reaches
  ``RENDER_MIN_ALPHA``, NaN elsewhere, as for the voxel splat of :mod:`gcross_core.mapping.map_view`);
- features: the rendered d_f feature field (divided by the opacity, so coverage does not darken it) as a
  false-colour image, its first three principal components mapped to RGB. The PCA basis (mean,
  directions, 1st-99th percentile range) is computed once per map, from the Gaussians of the first view
  with at least ``MIN_BASIS_GAUSSIANS`` of them, and reused for every later view, so a surface keeps its
  colour across frames; a new map (:meth:`ModelMapRenderer.reset`, or a snapshot with fewer frames
  integrated than the previous one) gets a new one;
- semantic: every Gaussian carries the label of the nearest map voxel (within ``LABEL_RADIUS_M``) as a
  one-hot feature rendered in the same pass, so the class image follows the model's geometry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from gcross_core.data.grid import grid_sample
from gcross_core.evaluation.map_score import transfer_labels
from gcross_core.mapping.fusion import MapSnapshot
from gcross_core.mapping.map_view import RENDER_MIN_ALPHA, MapView, render_map_view, semantic_image, visible_voxels
from gcross_core.model.api import GaussianCrossModel, pinhole_cameras
from gcross_core.train.logging import pca_basis, pca_rgb
from gcross_core.types import Gaussians

MIN_BASIS_GAUSSIANS = 64  # fewer Gaussians than this (a few d_f-wide samples) give a basis too noisy to keep
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
        self._last_frame_index = 0  # frames integrated into the map at the previous render

    @property
    def basis(self) -> Optional[Tuple[np.ndarray, ...]]:
        """(mean, components, lo, hi) of the false-colour PCA (see ``pca_basis``), None until fixed."""
        return self._basis

    def reset(self) -> None:
        """Forget the PCA basis (a new map; call it when the map is cleared)."""
        self._basis = None
        self._last_frame_index = 0

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
        if snap.frame_index < self._last_frame_index:
            self.reset()  # fewer frames than at the previous render: the map was reset or replaced
        self._last_frame_index = snap.frame_index
        idx = self._model_input(snap.coords, cam_to_map, K, width, height)
        if len(idx) == 0:
            return self._blank(width, height)
        coords = snap.coords[idx]
        sets = self.model.gaussian_sets(coord=coords, color=snap.colors[idx], normal=snap.normals[idx])
        d_f = self.model.feature_dim
        if self._basis is None and d_f > 0 and len(sets[0]) >= MIN_BASIS_GAUSSIANS:
            self._basis = pca_basis(sets[0].features.cpu().numpy())
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

    def _model_input(self, coords: np.ndarray,  # [N, 3] map voxels
                     cam_to_map: np.ndarray, K: np.ndarray, width: int, height: int) -> np.ndarray:
        """Rows of the voxels given to the model: the visible ones plus context, thinned to one per cell of
        the model's grid (what its grid sampling keeps anyway), the ``max_points`` nearest cells if more.
        Thinning first keeps a view's far walls: map voxels are finer than the model's grid."""
        idx = visible_voxels(coords, cam_to_map, K, width, height, self.context_m, max(len(coords), 1))
        if len(idx) == 0:
            return idx
        keep, _, _ = grid_sample(coords[idx], self.model.grid_size_m)
        idx = idx[np.sort(keep)]
        if len(idx) > self.max_points:
            z = (coords[idx] - cam_to_map[:3, 3].astype(np.float32)) @ cam_to_map[:3, 2].astype(np.float32)
            idx = idx[np.sort(np.argpartition(z, self.max_points - 1)[:self.max_points])]
        return idx

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


def render_view(snap: MapSnapshot,
                cam_to_map: np.ndarray,  # [4, 4]
                K: np.ndarray,  # [3, 3] for width x height
                width: int, height: int,
                palette: np.ndarray,  # [num_classes, 3] uint8
                *, voxel_size_m: float, max_gaussians: int, device: str = "cpu", backend: str = "auto",
                model_renderer: Optional[ModelMapRenderer] = None) -> MapView:
    """What the node publishes for a camera: the model's view (a :class:`ModelMapView`, with features)
    when ``model_renderer`` is given (render_source gaussians), else the voxel splat (render_source voxels)."""
    if model_renderer is not None:
        return model_renderer.render(snap, cam_to_map, K, width, height, palette)
    return render_map_view(snap.coords, snap.colors, snap.labels, cam_to_map, K, width, height, palette,
                           voxel_size_m, max_gaussians, device, backend)
