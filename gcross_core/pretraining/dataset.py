"""Pretraining samples and batches: augmented, grid-sampled points plus M aligned RGB-D views per scene.

One sample (:meth:`PretrainDataset.sample`) of a scene:
  1. draw M views from the scene's frames (without replacement when it has enough), resize each to the
     training resolution (color resampled into the depth camera, depth by nearest neighbour,
     intrinsics scaled to match);
  2. draw an augmentation (Table S.1, ``transforms.py``) and apply it to the points, normals and to every
     view (camera, depth scale, and for ``mirror_image`` the image);
  3. shuffle the points, grid-sample them at ``grid_size_m`` (one random point per occupied cell),
     keeping ``inverse``: the row of every original point;
  4. if the scene has more cells than ``max_points``, keep the ``max_points`` cells nearest to the
     middle of the first view (the original points of dropped cells are dropped too);
  5. input features: :func:`gcross_core.model.features.encoder_features` (colour in 0..1 and normal), on
     the min-corner voxel lattice (``GCROSS_CONVENTION``, recorded in the checkpoint).

"Original points" below are the scene's points after shuffling and cropping, before grid sampling.
:func:`collate_pretrain` concatenates samples (Pointcept offsets, no padding) into a
:class:`PretrainBatch`. Randomness comes from the ``numpy.random.Generator`` passed to
:meth:`PretrainDataset.sample`: one per ``(seed, epoch, index)`` under the trainer and
:func:`pretrain_loader` (so the same seed gives the same batches with any number of workers), or the
dataset's own stream for plain indexing; the global numpy RNG is never used.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler

from gcross_core.geometry import invert_rigid
from gcross_core.types import Cameras, PointBatch
from gcross_core.data.grid import collate_points
from gcross_core.data.frames import FrameSet, find_frames_dir
from gcross_core.data.scene import Scene, load_scene
from gcross_core.mapping.fusion_cache import FusionSettings, default_cache_dir, fused_points
from gcross_core.train.seeding import SeededDataset
from gcross_core.data.transforms import AugmentConfig, SampleStream, sample_augmentation
from gcross_core.errors import ConfigError, InputError
from gcross_core.model.features import GCROSS_CONVENTION, EncoderInput, InputConvention

log = logging.getLogger(__name__)

SceneSource = Union[str, Path, Scene]


@dataclass(frozen=True)
class TeacherCacheSpec:
    """Where cached teacher features of a scene live (see ``gcross_core.pretraining.teachers.cache``)."""

    teacher: str  # teacher name, e.g. "efficientnet_lite0"
    height: int  # the teacher's input resolution the cache was built at
    width: int
    root: Optional[str] = None  # cache root when the scenes are read-only; None: inside each scene folder


@dataclass(frozen=True)
class PretrainDataConfig:
    grid_size_m: float = 0.02  # paper Sec. 3: grid sampling at 2 cm
    views_per_scene: int = 5  # M views rendered per scene and step (paper: M = 5)
    image_size: Tuple[int, int] = (240, 320)  # (H, W) of the target views
    max_points: Optional[int] = None  # cap on grid cells per scene (memory); None = no crop
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    segment: Optional[str] = None  # label file carried along (load_scene's choice when None), "none" to skip
    # frames-only scenes (a SensReader frames folder, no coord.npy) are fused into points once and cached
    # (gcross_core.mapping.fusion_cache, keyed by these three settings)
    fuse_voxel_size_m: float = 0.02  # voxel size of the fused points
    fuse_every: int = 1  # fuse every k-th frame
    fuse_max_depth_m: float = 5.0  # depth beyond this is ignored when fusing
    # where the fused points are cached: None = <scene>/fused (read-only scenes then fuse on every load)
    fuse_cache_root: Optional[str] = None
    # up direction of frames-only scenes (the augmentations rotate about z and the head's volume is laid out
    # with z up): None = the world is z-up already (warned when the cameras say otherwise); "cameras" or
    # "plane" = estimated (gcross_core.data.gravity.estimate_up); "x,y,z" = given. Points and poses are
    # rotated so that up becomes +z.
    up: Optional[str] = None
    teacher_caches: Tuple[TeacherCacheSpec, ...] = ()  # attach cached teacher features when all views have them
    # SensReader exports kept apart from the point folders: frames of scene folder X at <frames_root>/<X name>
    frames_root: Optional[str] = None
    # encoder input convention (gcross_core.model.features.InputConvention), recorded in the checkpoint;
    # starting from an imported checkpoint (init_checkpoint) takes that checkpoint's convention
    input_features: str = GCROSS_CONVENTION.input_features
    grid_lattice: str = GCROSS_CONVENTION.grid_lattice

    @property
    def convention(self) -> InputConvention:
        return InputConvention(self.input_features, self.grid_lattice)

    @property
    def encoder_input(self) -> EncoderInput:
        """How a sample's encoder input is built: this grid on this convention."""
        return EncoderInput(self.grid_size_m, self.convention)

    def __post_init__(self) -> None:
        if self.views_per_scene < 1:
            raise ConfigError(f"views_per_scene must be >= 1, got {self.views_per_scene}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ConfigError(f"image_size must be (H, W) >= 1, got {self.image_size}")
        if self.max_points is not None and self.max_points < 1:
            raise ConfigError(f"max_points must be >= 1 or None, got {self.max_points}")
        if not self.grid_size_m > 0:
            raise ConfigError(f"grid_size_m must be > 0, got {self.grid_size_m}")


@dataclass
class PretrainSample:
    """One scene's part of a batch (numpy)."""

    name: str
    coord: np.ndarray  # [n, 3] float32 augmented metres, one row per grid cell
    feat: np.ndarray  # [n, 6] float32 encoder_features(color, normal)
    grid_coord: np.ndarray  # [n, 3] int32 grid cell, min 0
    inverse: np.ndarray  # [n_orig] int64 row of each original point
    segment: Optional[np.ndarray]  # [n_orig] int64 or None
    images: np.ndarray  # [M, H, W, 3] uint8
    depths_m: np.ndarray  # [M, H, W] float32 augmented metres, 0 = invalid
    world_to_cam: np.ndarray  # [M, 4, 4] float64 augmented cameras
    K: np.ndarray  # [M, 3, 3] float64 intrinsics at (H, W)
    frame_ids: List[str]
    augmentation: np.ndarray  # [4, 4] the matrix A applied to the points
    teacher_features: Dict[str, np.ndarray] = field(default_factory=dict)  # {teacher: [M, d, h, w] float16}


def _map_tensors(obj, fn):
    if torch.is_tensor(obj):
        return fn(obj)
    if isinstance(obj, (PointBatch, Cameras)):
        return type(obj)(**{f.name: _map_tensors(getattr(obj, f.name), fn) for f in fields(obj)})
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    return obj


@dataclass
class PretrainBatch:
    """What one pretraining step consumes."""

    points: PointBatch  # grid-sampled, augmented points of B scenes (inverse -> original points)
    images: Tensor  # [V, H, W, 3] float32 RGB in 0..1
    depths_m: Tensor  # [V, H, W] float32 metres in the augmented frame, 0 = invalid
    cameras: Cameras  # world_to_cam [V, 4, 4] (augmented world), K [V, 3, 3] for H x W, batch [V]
    view_scene: Tensor  # [V] int64 scene index of each view (== cameras.batch)
    segment: Optional[Tensor] = None  # [N_orig] int64 labels of the original points, -1 = ignore
    teacher_features: Optional[Dict[str, Tensor]] = None  # {teacher: [V, d*, h, w] float32} from caches
    scene_names: List[str] = field(default_factory=list)  # [B]
    frame_ids: List[str] = field(default_factory=list)  # [V] source frame of each view

    def to(self, device) -> "PretrainBatch":
        return PretrainBatch(**{f.name: _map_tensors(getattr(self, f.name), lambda t: t.to(device))
                                for f in fields(self)})

    def pin_memory(self) -> "PretrainBatch":
        return PretrainBatch(**{f.name: _map_tensors(getattr(self, f.name), lambda t: t.pin_memory())
                                for f in fields(self)})


def collate_pretrain(samples: Sequence[PretrainSample]) -> PretrainBatch:
    """Concatenate samples: points with offsets (``inverse`` shifted to global rows), views stacked."""
    if not samples:
        raise ValueError("collate_pretrain: no samples")
    points = collate_points([s.coord for s in samples], [s.feat for s in samples],
                            [s.grid_coord for s in samples], [s.inverse for s in samples])
    shapes = {s.images.shape[1:] for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"collate_pretrain: samples have views of different sizes {sorted(shapes)}")
    view_scene = torch.cat([torch.full((len(s.images),), b, dtype=torch.int64) for b, s in enumerate(samples)])
    images = torch.from_numpy(np.concatenate([s.images for s in samples])).float().div_(255.0)
    depths = torch.from_numpy(np.concatenate([s.depths_m for s in samples]).astype(np.float32))
    cameras = Cameras(world_to_cam=torch.from_numpy(np.concatenate([s.world_to_cam for s in samples])).float(),
                      K=torch.from_numpy(np.concatenate([s.K for s in samples])).float(), batch=view_scene.clone())
    segment = None
    if all(s.segment is not None for s in samples):
        segment = torch.from_numpy(np.concatenate([s.segment for s in samples]).astype(np.int64))
    teachers = set.intersection(*(set(s.teacher_features) for s in samples))
    teacher_features = {t: torch.from_numpy(np.concatenate([s.teacher_features[t] for s in samples])).float()
                        for t in sorted(teachers)} or None
    return PretrainBatch(points=points, images=images, depths_m=depths, cameras=cameras, view_scene=view_scene,
                         segment=segment, teacher_features=teacher_features,
                         scene_names=[s.name for s in samples],
                         frame_ids=[f for s in samples for f in s.frame_ids])


UP_WARN_DEG = 30.0  # a world whose camera-estimated up is further than this from +z is probably not z-up


def up_transform(frames: FrameSet, coord: np.ndarray, up: Optional[str], name: str = "scene") -> Optional[np.ndarray]:
    """[4, 4] rotation making the up direction of a scene +z (``up``: see :attr:`PretrainDataConfig.up`), or
    None for ``up`` None (then a warning when the camera poses put up more than ``UP_WARN_DEG`` from +z)."""
    from gcross_core.data.gravity import estimate_up, parse_up, rotation_to_z_up

    if up is None:
        try:
            est = estimate_up(frames, "cameras")
        except InputError:
            return None
        angle = float(np.degrees(np.arccos(np.clip(est[2], -1.0, 1.0))))
        if angle > UP_WARN_DEG:
            log.warning("scene %s: its cameras put up at %s, %.0f deg from +z; the model assumes z-up. Set "
                        "data.pipeline.up (cameras, plane or x,y,z) to rotate it", name,
                        np.round(est, 3).tolist(), angle)
        return None
    method, given = parse_up(up)
    est = estimate_up(frames, method, given, points=np.asarray(coord))
    log.info("scene %s: up %s (%s) rotated to +z", name, np.round(est, 3).tolist(), method)
    return rotation_to_z_up(est)


def transform_scene(scene: Scene, T: Optional[np.ndarray]) -> Scene:
    """Points, normals and frame poses of ``scene`` moved by the rotation ``T`` [4, 4] (None: unchanged)."""
    if T is None:
        return scene
    R = T[:3, :3].astype(np.float32)
    return Scene(scene.name, np.asarray(scene.coord, np.float32) @ R.T, scene.color,
                 np.asarray(scene.normal, np.float32) @ R.T, frames=scene.frames.transformed(T))


def align_up(scene: Scene, up: Optional[str]) -> Scene:
    """``scene`` (points and frames) rotated so that its up direction is +z (:func:`up_transform`)."""
    return transform_scene(scene, up_transform(scene.frames, scene.coord, up, scene.name))


def _crop_nearest(coord: np.ndarray, center: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k rows of coord nearest to center, in their original order."""
    d = np.sum((coord - center) ** 2, axis=1)
    return np.sort(np.argpartition(d, k - 1)[:k])


class PretrainDataset(Dataset):
    """Map-style dataset over scenes: item ``i`` is one :class:`PretrainSample` of scene ``i``.

    scenes: scene folders (loaded per item, frames opened once per worker) or in-memory Scenes.
    Frames-only folders are fused into points once, at construction, through the fused-points cache
    (``gcross_core.mapping.fusion_cache``, keyed by the fuse_* settings). Every scene needs frames.
    ``seed`` seeds the stream plain indexing draws from (``sample(index, rng)`` takes its own generator).
    """

    def __init__(self, scenes: Sequence[SceneSource], cfg: PretrainDataConfig = PretrainDataConfig(),
                 seed: int = 0):
        if not scenes:
            raise InputError("PretrainDataset: no scenes given")
        self.cfg = cfg
        self._stream = SampleStream(seed)
        self._sources: List[SceneSource] = []
        self._frames: Dict[int, FrameSet] = {}  # per-process cache of opened frame sets
        for src in scenes:
            if not isinstance(src, Scene):
                path = Path(src)
                fdir = self._frames_dir(path)
                if (fdir is None and find_frames_dir(path) is None) or (fdir is not None and not fdir.is_dir()):
                    where = "" if fdir is None else f" and {fdir} does not exist"
                    raise InputError(f"scene folder {path} has no frames/ (SensReader layout){where}; "
                                     "pretraining renders its views")
                if (path / "coord.npy").is_file():
                    # loaded per item; opened here too (memory-mapped: headers and sizes only), so that a
                    # damaged file stops the run before any training
                    load_scene(path, segment=cfg.segment, frames=False, frames_dir=fdir, mmap=True)
                    self._sources.append(path)
                    continue
                src = load_scene(path, segment="none", frames_dir=fdir)
                cache_dir = default_cache_dir(path, cfg.fuse_cache_root)
            else:
                cache_dir = None
            if src.frames is None or len(src.frames) == 0:
                raise InputError(f"scene {src.name!r} has no frames; pretraining renders its views")
            if src.coord is None:  # frames-only: fused once (or read from the cache), here
                fused = fused_points(src.frames, self.fusion_settings, cache_dir)
                src = align_up(Scene(src.name, fused.coord, fused.color, fused.normal, frames=src.frames), cfg.up)
            self._sources.append(src)

    @property
    def fusion_settings(self) -> FusionSettings:
        return FusionSettings(self.cfg.fuse_voxel_size_m, self.cfg.fuse_every, self.cfg.fuse_max_depth_m)

    def __len__(self) -> int:
        return len(self._sources)

    def _frames_dir(self, scene_dir: Path) -> Optional[Path]:
        return None if self.cfg.frames_root is None else Path(self.cfg.frames_root) / scene_dir.name

    def scene(self, index: int) -> Scene:
        """Scene ``index`` with its frames (frame sets are opened once per process)."""
        src = self._sources[index]
        if isinstance(src, Scene):
            return src
        scene = load_scene(src, segment=self.cfg.segment, frames=index not in self._frames,
                           frames_dir=self._frames_dir(src), mmap=True)
        if index in self._frames:
            scene.frames = self._frames[index]
        elif scene.frames is None or len(scene.frames) == 0:
            raise InputError(f"scene {src} has no usable frames (frames/ missing or every pose invalid); "
                             "pretraining renders its views")
        else:
            self._frames[index] = scene.frames
        return scene

    def __getitem__(self, index: int) -> PretrainSample:
        return self.sample(index, self._stream.generator())

    def _teacher_features(self, index: int, frame_ids: List[str]) -> Dict[str, np.ndarray]:
        src = self._sources[index]
        if not self.cfg.teacher_caches or isinstance(src, Scene):
            return {}
        from gcross_core.pretraining.teachers.cache import FeatureCache

        out = {}
        for spec in self.cfg.teacher_caches:
            cache = FeatureCache(src, spec.teacher, spec.height, spec.width, root=spec.root)
            feats = [cache.get(fid) for fid in frame_ids]
            if all(f is not None for f in feats):
                out[spec.teacher] = np.stack(feats)
            else:
                log.debug("%s: %s features missing for some of frames %s", src, spec.teacher, frame_ids)
        return out

    def sample(self, index: int, rng: np.random.Generator) -> PretrainSample:
        cfg = self.cfg
        scene = self.scene(index)
        h, w = cfg.image_size
        frames = scene.frames
        m = cfg.views_per_scene
        chosen = rng.choice(len(frames), size=m, replace=len(frames) < m)
        views = [frames.frame(int(i)).resized(w, h) for i in chosen]
        frame_ids = [v.frame_id for v in views]
        cached = self._teacher_features(index, frame_ids)

        coord = np.asarray(scene.coord, dtype=np.float32)
        aug = sample_augmentation(coord, cfg.augment, rng)
        order = rng.permutation(len(coord)) if cfg.augment.shuffle else np.arange(len(coord))
        coord = aug.points(coord[order])
        normal = aug.normals(np.asarray(scene.normal)[order])
        color = np.asarray(scene.color, dtype=np.float32)[order]
        segment = None if scene.segment is None else np.asarray(scene.segment, dtype=np.int64)[order]

        w2c, Ks, images, depths = [], [], [], []
        for v in views:
            w2c_k, K_k, img_k, depth_k = aug.view(invert_rigid(v.cam_to_world), v.K_depth, v.color, v.depth_m)
            w2c.append(w2c_k)
            Ks.append(K_k)
            images.append(img_k)
            depths.append(depth_k)
        if aug.mirrors_images:  # features follow their images left-right (an approximation at feature stride)
            cached = {t: np.ascontiguousarray(f[..., ::-1]) for t, f in cached.items()}

        # the configured input convention (pretrain_header records it in the checkpoint)
        keep, grid_coord, inverse = cfg.encoder_input.grid_sample(coord, rng)
        if cfg.max_points is not None and len(keep) > cfg.max_points:
            rows = _crop_nearest(coord[keep], self._crop_center(w2c[0], depths[0], coord), cfg.max_points)
            new_row = np.full(len(keep), -1, dtype=np.int64)
            new_row[rows] = np.arange(len(rows))
            originals = np.flatnonzero(new_row[inverse] >= 0)
            keep, grid_coord, inverse = keep[rows], grid_coord[rows], new_row[inverse[originals]]
            grid_coord = grid_coord - grid_coord.min(0)
            color, normal, coord = color[originals], normal[originals], coord[originals]
            keep = np.searchsorted(originals, keep)  # kept points are among the originals by construction
            segment = None if segment is None else segment[originals]
        feat = cfg.encoder_input.features(color[keep], normal[keep])
        return PretrainSample(
            name=scene.name, coord=coord[keep], feat=feat, grid_coord=grid_coord.astype(np.int32),
            inverse=inverse.astype(np.int64), segment=segment, images=np.stack(images),
            depths_m=np.stack(depths), world_to_cam=np.stack(w2c), K=np.stack(Ks), frame_ids=frame_ids,
            augmentation=aug.matrix, teacher_features=cached)

    @staticmethod
    def _crop_center(world_to_cam: np.ndarray,  # [4, 4] augmented
                     depth_m: np.ndarray,  # [H, W] augmented metres
                     coord: np.ndarray,  # [N, 3] augmented points
                     ) -> np.ndarray:  # [3]
        """Middle of what the first view sees (its median valid depth along the optical axis)."""
        valid = depth_m[depth_m > 0]
        if valid.size == 0:
            return coord.mean(0)
        # world_to_cam may carry a scale-free reflection; its inverse is still exact
        cam_to_world = np.linalg.inv(world_to_cam)
        return (cam_to_world @ np.array([0.0, 0.0, float(np.median(valid)), 1.0]))[:3]


def _seed_worker(worker_id: int) -> None:
    # Anything that still uses the global RNGs gets a stream derived from the loader's seeded generator.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    import random

    random.seed(seed)


def pretrain_loader(dataset: PretrainDataset, batch_size: int, *, seed: int = 0, epoch: int = 0,
                    shuffle: bool = True, num_workers: int = 0, drop_last: bool = False,
                    pin_memory: bool = False) -> DataLoader:
    """A DataLoader of :class:`PretrainBatch` whose order and augmentations are a function of
    (seed, epoch) only. Build one per epoch (the trainer in ``gcross_core.train`` has its own)."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    view = SeededDataset(dataset, seed)
    view.set_epoch(epoch)
    g = torch.Generator()
    g.manual_seed(int(np.random.default_rng([seed, epoch, 2**31]).integers(2**62)))
    sampler = RandomSampler(view, generator=g) if shuffle else SequentialSampler(view)
    return DataLoader(view, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_pretrain, drop_last=drop_last, pin_memory=pin_memory,
                      worker_init_fn=_seed_worker, generator=g, persistent_workers=False)
