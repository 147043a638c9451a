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

The model was trained on z-up scenes (gravity = -z; its augmentations rotate about z only and its Gaussian
head's volume is laid out z-up), but a map frame need not be z-up (7-Scenes, most SLAM outputs: the first
camera's optical frame, y down). The renderer therefore gives the model the visible map turned z-up and
renders at the camera turned the same way: with R the rotation map -> z-up, the model sees the points
R p and normals R n and renders at R @ cam_to_map. A point's camera coordinates are unchanged,
(R C)^-1 (R p) = C^-1 p with C = cam_to_map, so the images (colour, depth, classes, features) are in the original camera's
pixels and depth needs no correction. How the up direction is chosen: :class:`ModelMapRenderer`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from gcross_core.data.gravity import rotation_to_z_up, up_from_cameras
from gcross_core.data.grid import grid_sample
from gcross_core.errors import InputError
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
# Observed cameras whose down axes average to a vector shorter than this (rolled every way) say nothing
# about the up direction; the threshold of gcross_core.data.gravity.up_from_cameras.
MIN_MEAN_CAMERA_UP = 0.1
# The first camera's x axis sets the heading only when it leaves the horizontal plane less steeply than
# about 84 degrees (its horizontal part is at least this long); an upright camera's x axis is horizontal.
MIN_HEADING_NORM = 0.1


@dataclass(frozen=True)
class ModelMapView(MapView):
    # keyword-only: MapView ends with defaulted counters
    features: np.ndarray = field(kw_only=True)  # [H, W, 3] uint8 false colour of the feature field, 0 where not covered


class ModelMapRenderer:
    """Renders voxel-map snapshots through a GaussianCross model; holds the per-map PCA basis and up direction.

    The model sees the map turned by the rotation R of :attr:`to_z_up`, which takes ``up`` onto +z (module
    docstring), where ``up``, in map coordinates, is

    - ``up`` given to the constructor: that vector, always (cameras are ignored). R is the smallest such
      rotation (``rotation_to_z_up``), so ``up=(0, 0, 1)`` gives the map as it is;
    - otherwise estimated from the cameras passed to :meth:`observe_camera` since the map began: minus the
      mean of their down axes (image +y), as :func:`gcross_core.data.gravity.up_from_cameras` over them,
      since a hand-held or robot-mounted camera is held roughly upright. It is kept as a running sum (O(1)
      memory) and used from the first camera on, so it settles as the camera looks around. R then also
      fixes the heading: the first camera's x axis (horizontal for an upright camera) goes to the x-z
      half-plane x > 0. Up and heading both come from the cameras, so a map frame moved rigidly with its
      cameras gives the model the same points up to a translation, which its grid sampling and Gaussian
      head do not see (both work from the points' minimum corner): the views do not depend on the map frame;
    - with no camera yet, or when the cameras' down axes cancel out (mean shorter than
      ``MIN_MEAN_CAMERA_UP``): +z, the map as it is.

    A new map (:meth:`reset`) forgets the cameras with the PCA basis.
    """

    def __init__(self, model: GaussianCrossModel, max_points: int, context_m: float = 0.3,
                 backend: str = "auto", up: Optional[Sequence[float]] = None):
        if max_points < 1:
            raise InputError(f"max_points must be >= 1, got {max_points}")
        if not context_m >= 0:
            raise InputError(f"context_m must be >= 0, got {context_m}")
        self.model = model
        self.max_points = int(max_points)
        self.context_m = float(context_m)
        self.backend = backend
        # the given up direction as a unit vector [3], None = from the cameras; InputError if not a direction
        self._up_given = None if up is None else rotation_to_z_up(up)[2, :3]  # R's last row is R^-1 z = up
        self._basis: Optional[Tuple[np.ndarray, ...]] = None
        self._last_frame_index = 0  # frames integrated into the map at the previous render
        self._up_sum = np.zeros(3)  # sum of the observed cameras' unit up vectors (minus their down axes)
        self._cameras = 0  # cameras observed since the map began
        self._heading: Optional[np.ndarray] = None  # [3] the first observed camera's x axis, map coordinates
        # the sum and count at the previous render, and the x axis of the first camera observed after it
        self._up_sum_at_render, self._cameras_at_render = np.zeros(3), 0
        self._heading_after_render: Optional[np.ndarray] = None

    @property
    def basis(self) -> Optional[Tuple[np.ndarray, ...]]:
        """(mean, components, lo, hi) of the false-colour PCA (see ``pca_basis``), None until fixed."""
        return self._basis

    @property
    def cameras_observed(self) -> int:
        """Cameras observed since the map began (the up estimate's; unused when the up vector is given)."""
        return self._cameras

    def _camera_up(self) -> Optional[np.ndarray]:
        """The cameras' unit up vector [3], None with no camera or when their down axes cancel out."""
        if self._cameras == 0:
            return None
        mean = self._up_sum / self._cameras
        n = float(np.linalg.norm(mean))
        return mean / n if n >= MIN_MEAN_CAMERA_UP else None

    @property
    def up(self) -> np.ndarray:
        """Unit up vector [3] in map coordinates that the next render uses (see the class docstring)."""
        if self._up_given is not None:
            return self._up_given.copy()
        up = self._camera_up()
        return np.array([0.0, 0.0, 1.0]) if up is None else up

    @property
    def to_z_up(self) -> np.ndarray:
        """[4, 4] rotation R from the map frame to the frame the model sees: ``up`` onto +z and, with the
        up from the cameras, the first camera's heading onto +x (class docstring)."""
        T = rotation_to_z_up(self.up)
        if self._up_given is not None or self._camera_up() is None:
            return T
        h = T[:3, :3] @ self._heading
        n = float(np.hypot(h[0], h[1]))
        if n < MIN_HEADING_NORM:
            return T
        c, s = h[0] / n, h[1] / n
        yaw = np.eye(4)
        yaw[:2, :2] = [[c, s], [-s, c]]  # rotation about z by minus the heading's angle: h onto the x-z plane
        return yaw @ T

    def observe_camera(self, cam_to_map: np.ndarray) -> None:  # [4, 4] a camera fused into the map
        """Add a camera to the up estimate (call it for every frame fused into the map)."""
        T = np.asarray(cam_to_map, dtype=np.float64)
        if T.shape != (4, 4):
            raise InputError(f"cam_to_map has shape {T.shape}, expected [4, 4]")
        self._up_sum += up_from_cameras(T)  # one camera: minus its unit down axis; InputError if not finite
        x_axis = T[:3, 0] / np.linalg.norm(T[:3, 0])
        if self._cameras == 0:
            self._heading = x_axis
        if self._cameras == self._cameras_at_render:
            self._heading_after_render = x_axis
        self._cameras += 1

    def reset(self) -> None:
        """Forget the PCA basis and the observed cameras (a new map; call it when the map is cleared)."""
        self._basis = None
        self._last_frame_index = 0
        self._up_sum, self._cameras, self._heading = np.zeros(3), 0, None
        self._up_sum_at_render, self._cameras_at_render, self._heading_after_render = np.zeros(3), 0, None

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
            # fewer frames than at the previous render: the map was reset or replaced without reset(). The
            # cameras observed since that render are the new map's (a frame is observed before it is
            # rendered), the earlier ones the old map's.
            carried = (self._up_sum - self._up_sum_at_render, self._cameras - self._cameras_at_render,
                       self._heading_after_render)
            self.reset()
            if carried[1] > 0:
                self._up_sum, self._cameras, self._heading = carried
        self._last_frame_index = snap.frame_index
        self._up_sum_at_render, self._cameras_at_render = self._up_sum.copy(), self._cameras
        # Everything from here on is in the z-up frame: R p, R n, camera R @ cam_to_map (module docstring).
        turn = self.to_z_up
        R = turn[:3, :3].astype(np.float32)
        cam_to_model = turn @ np.asarray(cam_to_map, dtype=np.float64)
        idx = self._model_input(snap.coords, cam_to_map, K, width, height, R)
        if len(idx) == 0:
            return self._blank(width, height)
        coords = snap.coords[idx] @ R.T
        # unknown (zero) normals stay zero
        sets = self.model.gaussian_sets(coord=coords, color=snap.colors[idx], normal=snap.normals[idx] @ R.T)
        d_f = self.model.feature_dim
        if self._basis is None and d_f > 0 and len(sets[0]) >= MIN_BASIS_GAUSSIANS:
            self._basis = pca_basis(sets[0].features.cpu().numpy())
        labels = snap.labels[idx] if snap.labels is not None else np.full(len(idx), -1, np.int64)
        sets = [self._with_labels(g, coords, labels, len(palette)) for g in sets]
        out = self.model.render(sets, pinhole_cameras(cam_to_model, K, self.model.device), width, height,
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
                     cam_to_map: np.ndarray, K: np.ndarray, width: int, height: int,
                     to_model: Optional[np.ndarray] = None,  # [3, 3] rotation map -> model frame; None: identity
                     ) -> np.ndarray:
        """Rows of the voxels given to the model: the visible ones plus context, thinned to one per cell of
        the model's grid (what its grid sampling keeps anyway), the ``max_points`` nearest cells if more.
        Thinning first keeps a view's far walls: map voxels are finer than the model's grid. Visibility and
        depth are the same in any rigidly moved frame; the grid is the model's, so it thins in that frame."""
        idx = visible_voxels(coords, cam_to_map, K, width, height, self.context_m, max(len(coords), 1))
        if len(idx) == 0:
            return idx
        model_coords = coords[idx] if to_model is None else coords[idx] @ to_model.T.astype(np.float32)
        keep, _, _ = grid_sample(model_coords, self.model.grid_size_m)
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
    when ``model_renderer`` is given (render_source gaussians; the map turned z-up for the model, the images
    in this camera's pixels), else the voxel splat (render_source voxels, in the map frame as it is)."""
    if model_renderer is not None:
        return model_renderer.render(snap, cam_to_map, K, width, height, palette)
    return render_map_view(snap.coords, snap.colors, snap.labels, cam_to_map, K, width, height, palette,
                           voxel_size_m, max_gaussians, device, backend)
