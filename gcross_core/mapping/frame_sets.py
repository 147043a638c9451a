"""Recorded posed RGB-D frame sets (:class:`gcross_core.data.frames.FrameSet`) -> fused points: the map of
``fusion.VoxelMap`` built offline over every ``every``-th frame, with majority votes of label images."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from gcross_core.data.frames import FrameSet
from gcross_core.errors import InputError
from gcross_core.mapping.fusion import VoxelMap
from gcross_core.mapping.label_votes import LabelVotes


def _frames_to_fuse(num_frames: int, every: int, max_frames: Optional[int], what: str) -> List[int]:
    """Indices of every ``every``-th frame, at most ``max_frames``; InputError when that leaves none."""
    if every < 1:
        raise InputError(f"every must be >= 1, got {every}")
    indices = list(range(0, num_frames, every))[:max_frames]
    if not indices:
        raise InputError(f"{what}: no frames to fuse")
    return indices


def fuse_frames_to_points(frames: FrameSet, voxel_size_m: float, *, every: int = 1,
                          max_frames: Optional[int] = None, max_depth_m: float = 5.0,
                          max_voxels: int = 20_000_000) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fuse posed RGB-D frames into a voxel point map with :class:`VoxelMap`.

    Color is first registered to the depth camera. Returns (coord [M, 3] float32 metres,
    color [M, 3] float32 0..255, normal [M, 3] float32, zero where the frames gave no normal).
    """
    indices = _frames_to_fuse(len(frames), every, max_frames, "fuse_frames_to_points")
    vmap = VoxelMap(voxel_size_m, max_voxels, 1, max_depth_m=max_depth_m)
    for i in indices:
        f = frames.frame(i).registered()
        vmap.integrate(f.color, f.depth_m, f.K_depth, f.cam_to_world)
    if len(vmap) == 0:
        raise InputError(f"fusing {len(indices)} frames gave no points (no valid depth within {max_depth_m} m)")
    return (vmap.coords().astype(np.float32), vmap.colors().astype(np.float32),
            vmap.normals().astype(np.float32))


def fuse_labelled_frames(frames: FrameSet,
                         label_images: Dict[str, Callable[[int], Optional[np.ndarray]]],
                         voxel_size_m: float, *, every: int = 1, max_frames: Optional[int] = None,
                         max_depth_m: float = 5.0, max_voxels: int = 20_000_000,
                         ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Dict[str, np.ndarray]]:
    """:func:`fuse_frames_to_points` with per-voxel majority votes of 2D id images.

    ``label_images[name](i)`` gives frame ``i``'s [H, W] integer id image registered to the depth camera
    at the depth resolution (0 = unlabelled / none), or None where that frame has none (it then casts no
    votes for ``name``). Returns (coord, color, normal, {name: [M] int64 majority id, -1 where no
    labelled pixel fell into the voxel}). Pixels without valid depth fuse nothing and vote nothing.
    """
    indices = _frames_to_fuse(len(frames), every, max_frames, "fuse_labelled_frames")
    vmap = VoxelMap(voxel_size_m, max_voxels, 1, max_depth_m=max_depth_m)
    votes = {name: LabelVotes(name) for name in label_images}
    for i in indices:
        f = frames.frame(i).registered()
        images = {}
        for name, get in label_images.items():
            img = get(i)
            if img is not None:
                images[name] = img
        vmap.integrate_labelled(f.color, f.depth_m, f.K_depth, f.cam_to_world, votes, images)
    if len(vmap) == 0:
        raise InputError(f"fusing {len(indices)} frames gave no points (no valid depth within {max_depth_m} m)")
    keys = vmap.keys()
    return (vmap.coords().astype(np.float32), vmap.colors().astype(np.float32),
            vmap.normals().astype(np.float32), {name: v.majority(keys) for name, v in votes.items()})
