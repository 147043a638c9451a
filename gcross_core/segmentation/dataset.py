"""Downstream 3D semantic segmentation (paper Sec. 4.2): labelled scenes, training samples and batches,
and the data-efficient splits of Table 2. ROS-free.

Training samples follow Pointcept's semantic-segmentation pipeline with the pretraining augmentations of
Table S.1: random rotation / scaling / flip -> grid sampling with a random point per cell -> sphere crop
to a point budget (Table S.2: 102400) -> point shuffle. Evaluation
(:mod:`gcross_core.segmentation.evaluate`) never crops or augments.

Data-efficient runs (Hou et al., 2021; paper Table 2) come in two kinds:

- limited scenes: a fixed share (1/5/10/20 %) of the training scenes, drawn once by ``split_seed``;
- limited annotations: N labelled points per scene (20/50/100/200), drawn per scene by ``split_seed``
  and the scene name, every other label set to ignore (-1).

Both selections are written into the run folder (``limited_scenes.txt``, ``limited_points.npz``) and can
be fed back in (``limited_scenes_file``, ``limited_points_file``), so a run is reproducible anywhere.

With ``clutter.enabled`` a training sample is first composed into a cluttered tabletop
(:mod:`gcross_core.data.clutter`): the sample's scene as the base, objects of the other training scenes
set down on its table, all drawn from the sample's generator. Evaluation scenes are never composed.
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from gcross_core.data.classes import class_names_for
from gcross_core.data.clutter import TABLE_CLASS_NAME, ClutterConfig, compose_clutter
from gcross_core.data.grid import collate_points
from gcross_core.data.scene import Scene, load_scene
from gcross_core.data.transforms import AugmentConfig, SampleStream, sample_augmentation
from gcross_core.errors import ConfigError, InputError, reading
from gcross_core.model.features import GCROSS_CONVENTION, EncoderInput, InputConvention
from gcross_core.segmentation.instance import instance_centres
from gcross_core.segmentation.model import IGNORE_INDEX
from gcross_core.types import PointBatch

log = logging.getLogger(__name__)

LIMITED_SCENES_FILE = "limited_scenes.txt"
LIMITED_POINTS_FILE = "limited_points.npz"


@dataclass(frozen=True)
class SegDataConfig:
    root: str = "data/scannet"  # scene folders under <root>/<split>/ (Pointcept layout)
    train_split: str = "train"  # sub-folder of root; "" = the scenes directly under root
    val_split: str = "val"
    label_file: str = "segment20"  # <scene>/<label_file>.npy: segment20 | segment200 | segment
    class_set: str = "scannet20"  # scannet20 | scannet200 | synthetic (gcross_core.data.classes)
    grid_size_m: float = 0.02  # Table S.2
    max_points: int = 102400  # Table S.2 crop size: rows kept around a random centre after grid sampling
    augment: bool = True
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)  # Table S.1, as in pretraining
    loop: int = 1  # each training scene appears this many times per epoch (Pointcept's `loop`)
    cache: bool = True  # keep loaded training scenes in memory (off for ScanNet-sized sets on small RAM)
    # data-efficient settings (Table 2); 0 = off
    limited_scenes_pct: float = 0.0  # share of the training scenes, in percent
    limited_points: int = 0  # labelled points per training scene
    split_seed: int = 0  # draws the limited splits; independent of the training seed
    limited_scenes_file: str = ""  # reuse a scene list (one name per line) instead of drawing one
    limited_points_file: str = ""  # reuse labelled-point indices (.npz: scene name -> indices)
    max_val_scenes: int = 0  # evaluate on the first N validation scenes only; 0 = all
    # Input convention (gcross_core.model.features): colour range rgb01_normal | rgb_minus1_1_normal and voxel
    # lattice min_corner | center_shift. "" = the pretrained checkpoint's (an imported Pointcept backbone keeps
    # Pointcept's), or rgb01_normal / min_corner without one; a value set here overrides the checkpoint's.
    input_features: str = ""
    grid_lattice: str = ""
    # Training samples composed on the fly into cluttered tabletops (gcross_core.data.clutter): the sample's
    # scene as the base, objects of the other training scenes set down on its table. Needs a class "table".
    clutter: ClutterConfig = field(default_factory=ClutterConfig)

    def __post_init__(self) -> None:
        if self.grid_size_m <= 0:
            raise ConfigError(f"grid_size_m must be > 0, got {self.grid_size_m}")
        if self.max_points < 1 or self.loop < 1:
            raise ConfigError(f"max_points and loop must be >= 1, got {self.max_points}, {self.loop}")
        if not 0.0 <= self.limited_scenes_pct <= 100.0:
            raise ConfigError(f"limited_scenes_pct must lie in [0, 100], got {self.limited_scenes_pct}")
        if self.limited_points < 0 or self.max_val_scenes < 0:
            raise ConfigError("limited_points and max_val_scenes must be >= 0")
        class_names = class_names_for(self.class_set)  # unknown names fail here, not after loading data
        if self.clutter.enabled:
            if TABLE_CLASS_NAME not in class_names:
                raise ConfigError(f"clutter.enabled needs a class {TABLE_CLASS_NAME!r}; class_set "
                                  f"{self.class_set!r} has none")
            if self.limited_points or self.limited_points_file:
                raise ConfigError("clutter.enabled and limited_points exclude each other: the labelled-point "
                                  "indices name points of the original scenes")
        self.convention  # unknown convention names fail here too

    @property
    def convention(self) -> InputConvention:
        """The input convention, "" fields taking gcross's defaults (rgb01_normal, min_corner)."""
        return InputConvention(self.input_features or GCROSS_CONVENTION.input_features,
                               self.grid_lattice or GCROSS_CONVENTION.grid_lattice)

    @property
    def encoder_input(self) -> EncoderInput:
        """How a sample's encoder input is built: this grid on this convention."""
        return EncoderInput(self.grid_size_m, self.convention)


# ----------------------------------------------------------------------------------------------------
# scenes


def list_scenes(root, split: str = "") -> List[Path]:
    """Scene folders (those with coord.npy) under ``root/split``, sorted by name."""
    base = Path(root) / split if split else Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"scene folder root {base} does not exist")
    scenes = sorted(p for p in base.iterdir() if p.is_dir() and (p / "coord.npy").is_file())
    if not scenes:
        raise FileNotFoundError(f"{base} holds no scene folders with coord.npy")
    return scenes


def load_labelled_scene(path, label_file: str, class_names: Optional[Sequence[str]] = None,
                        mmap: bool = False) -> Scene:
    """A scene with points and labels; checks the labels against ``class_names`` when given."""
    scene = load_scene(path, segment=label_file, frames=False, mmap=mmap)
    if scene.coord is None or scene.segment is None:
        raise InputError(f"scene {path} has no labelled points ({label_file}.npy)")
    if class_names is not None:
        k = len(class_names)
        if scene.class_names is not None and tuple(scene.class_names) != tuple(class_names):
            raise InputError(f"scene {path}: its labels name the classes {list(scene.class_names)[:5]}... "
                             f"({len(scene.class_names)}), the run expects {list(class_names)[:5]}... ({k})")
        bad = (scene.segment < IGNORE_INDEX) | (scene.segment >= k)
        if bad.any():
            raise InputError(f"scene {path}: {label_file}.npy holds labels {np.unique(scene.segment[bad])[:5]} "
                             f"outside -1..{k - 1}")
    return scene


# ----------------------------------------------------------------------------------------------------
# data-efficient splits (Table 2)


def limited_scenes(names: Sequence[str], pct: float, seed: int) -> List[str]:
    """A share ``pct`` % of ``names`` (at least one), drawn by ``seed`` independently of their order."""
    if not 0.0 < pct <= 100.0:
        raise InputError(f"pct must lie in (0, 100], got {pct}")
    names = sorted(set(names))
    if not names:
        raise InputError("limited_scenes: no scene names")
    count = max(1, int(round(len(names) * pct / 100.0)))
    rng = np.random.default_rng(seed)
    return sorted(names[i] for i in rng.choice(len(names), size=count, replace=False))


def limited_point_indices(segment: np.ndarray,  # [N] int, -1 = unlabelled
                          count: int, seed: int, scene_name: str) -> np.ndarray:  # -> [<= count] int64, sorted
    """``count`` labelled points of one scene, a fixed function of (seed, scene name, labels)."""
    segment = np.asarray(segment)
    if segment.ndim != 1:
        raise ValueError(f"segment has shape {segment.shape}, expected [N]")
    if count < 1:
        raise InputError(f"count must be >= 1, got {count}")
    candidates = np.flatnonzero(segment != IGNORE_INDEX)
    rng = np.random.default_rng([int(seed), zlib.crc32(scene_name.encode())])
    if len(candidates) <= count:
        return candidates.astype(np.int64)
    return np.sort(rng.choice(candidates, size=count, replace=False)).astype(np.int64)


def keep_labels(segment: np.ndarray,  # [N] int
                indices: np.ndarray,  # [M] int, points whose labels stay
                ) -> np.ndarray:  # [N] int64, -1 everywhere else
    out = np.full(len(segment), IGNORE_INDEX, dtype=np.int64)
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) and (indices.min() < 0 or indices.max() >= len(segment)):
        raise InputError(f"labelled-point indices reach {int(indices.max())}, the scene has {len(segment)} points")
    out[indices] = np.asarray(segment)[indices]
    return out


def write_scene_list(path, names: Iterable[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{n}\n" for n in names))
    return path


def read_scene_list(path) -> List[str]:
    with reading(path, "a text file of scene names, one a line"):
        names = [line.strip() for line in Path(path).read_text().splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise InputError(f"scene list {path} is empty")
    return names


def write_point_indices(path, indices: Mapping[str, np.ndarray]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez_compressed(f, **{k: np.asarray(v, dtype=np.int64) for k, v in indices.items()})
    return path


def read_point_indices(path) -> Dict[str, np.ndarray]:
    with reading(path, "an .npz of labelled-point indices (scene name -> indices)"), \
            np.load(path, allow_pickle=False) as z:
        return {k: z[k].astype(np.int64) for k in z.files}


def select_training_scenes(scene_dirs: Sequence[Path], cfg: SegDataConfig, run_dir=None) -> List[Path]:
    """Apply the limited-scenes setting and record the chosen list in ``run_dir``."""
    by_name = {p.name: p for p in scene_dirs}
    if cfg.limited_scenes_file:
        names = read_scene_list(cfg.limited_scenes_file)
        unknown = sorted(set(names) - set(by_name))
        if unknown:
            raise InputError(f"{cfg.limited_scenes_file} names scenes that are not in the training set: {unknown[:5]}")
    elif cfg.limited_scenes_pct:
        names = limited_scenes(list(by_name), cfg.limited_scenes_pct, cfg.split_seed)
    else:
        return list(scene_dirs)
    if run_dir is not None:
        write_scene_list(Path(run_dir) / LIMITED_SCENES_FILE, names)
    log.info("limited scenes: training on %d of %d scenes", len(names), len(by_name))
    return [by_name[n] for n in sorted(names)]


def select_labelled_points(scenes: Sequence[Scene], cfg: SegDataConfig, run_dir=None
                           ) -> Optional[Dict[str, np.ndarray]]:
    """The limited-annotations setting: indices of the labelled points per scene (None = all labels)."""
    if cfg.limited_points_file:
        chosen = read_point_indices(cfg.limited_points_file)
        missing = sorted(s.name for s in scenes if s.name not in chosen)
        if missing:
            raise InputError(f"{cfg.limited_points_file} has no labelled points for scenes {missing[:5]}")
    elif cfg.limited_points:
        chosen = {s.name: limited_point_indices(s.segment, cfg.limited_points, cfg.split_seed, s.name)
                  for s in scenes}
    else:
        return None
    if run_dir is not None:
        write_point_indices(Path(run_dir) / LIMITED_POINTS_FILE, {s.name: chosen[s.name] for s in scenes})
    return {s.name: chosen[s.name] for s in scenes}


# ----------------------------------------------------------------------------------------------------
# training samples


def augment_points(coord: np.ndarray,  # [N, 3] metres
                   normal: np.ndarray,  # [N, 3]
                   cfg: AugmentConfig, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Table S.1 rotation / scaling / flips (``gcross_core.data.transforms``); normals turn with the points."""
    aug = sample_augmentation(coord, cfg, rng)
    return aug.points(coord), aug.normals(normal)


def row_labels(segment: np.ndarray,  # [N] int64, original points, -1 = unlabelled
               keep: np.ndarray,  # [M] rows kept by grid sampling (indices into the points)
               inverse: np.ndarray,  # [N] row of every original point
               ) -> np.ndarray:  # [M] int64
    """Label of each grid row: its kept point's, or, when that one is unlabelled, that of any labelled
    point in the same cell. With a few labelled points per scene (Table 2) the randomly kept point of a
    cell is almost never the labelled one; this keeps those labels in the batch."""
    out = segment[keep].astype(np.int64)
    hole = out == IGNORE_INDEX
    if hole.any():
        labelled = np.flatnonzero(segment != IGNORE_INDEX)
        by_cell = np.full(len(keep), IGNORE_INDEX, dtype=np.int64)
        by_cell[inverse[labelled]] = segment[labelled]
        out[hole] = by_cell[hole]
    return out


def sphere_crop(coord: np.ndarray,  # [M, 3]
                max_points: int, rng: np.random.Generator) -> np.ndarray:  # -> [<= max_points] indices
    """The ``max_points`` rows nearest to a random row (Pointcept's SphereCrop, mode 'random')."""
    n = len(coord)
    if n <= max_points:
        return np.arange(n)
    center = coord[rng.integers(n)]
    d2 = np.sum((coord - center) ** 2, axis=1)
    return np.sort(np.argpartition(d2, max_points - 1)[:max_points])


def training_sample(scene: Scene, cfg: SegDataConfig, rng: np.random.Generator,
                    labelled: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """One augmented, grid-sampled, cropped and shuffled sample of ``scene``.

    ``labelled``: indices of the points whose labels are kept (limited annotations); None keeps all.
    Returns coord [M, 3], feat [M, 6], grid_coord [M, 3] int32, segment [M] int64, and instance [M]
    int64 (the kept point's instance id, -1 = none or no instance.npy) with offset_target [M, 3] float32
    (instance centre over the sample's rows minus the row, 0 where no instance; the instance task, Sec. 4.2.4).
    """
    coord = np.asarray(scene.coord, dtype=np.float32)
    normal = np.asarray(scene.normal, dtype=np.float32)
    segment = np.asarray(scene.segment, dtype=np.int64)
    if labelled is not None:
        segment = keep_labels(segment, labelled)
    if cfg.augment:
        coord, normal = augment_points(coord, normal, cfg.augmentation, rng)
    encoder_input = cfg.encoder_input
    keep, grid, inverse = encoder_input.grid_sample(coord, rng)
    labels = row_labels(segment, keep, inverse)
    crop = sphere_crop(coord[keep], cfg.max_points, rng)
    # Table S.1: shuffle points
    order = crop[rng.permutation(len(crop))] if cfg.augment and cfg.augmentation.shuffle else crop
    rows = keep[order]
    grid = grid[order]
    grid = (grid - grid.min(0)).astype(np.int32)
    feat = encoder_input.features(np.asarray(scene.color)[rows], normal[rows])
    if scene.instance is not None:
        instance = np.asarray(scene.instance, dtype=np.int64)[rows]
    else:
        instance = np.full(len(rows), -1, dtype=np.int64)
    offset_target = instance_centres(coord[rows], instance) - np.where(instance[:, None] >= 0, coord[rows], 0)
    return {"coord": coord[rows], "feat": feat, "grid_coord": grid, "segment": labels[order], "instance": instance,
            "offset_target": offset_target.astype(np.float32)}


class SegmentationDataset(Dataset):
    """Training samples of labelled scene folders.

    ``sample(index, rng)`` draws every random choice from ``rng``; the trainer's ``SeededDataset`` passes
    one generator per (seed, epoch, index). Plain indexing draws from this dataset's own stream
    (:class:`~gcross_core.data.transforms.SampleStream`, seeded by ``seed``).
    """

    def __init__(self, scene_dirs: Sequence[Path], cfg: SegDataConfig,
                 labelled_points: Optional[Mapping[str, np.ndarray]] = None, seed: int = 0):
        if not scene_dirs:
            raise InputError("SegmentationDataset: no scenes")
        self.scene_dirs = [Path(p) for p in scene_dirs]
        self.cfg = cfg
        self.class_names = class_names_for(cfg.class_set)
        self.labelled_points = dict(labelled_points) if labelled_points is not None else None
        self._cache: Dict[int, Scene] = {}
        self._stream = SampleStream(seed)

    def __len__(self) -> int:
        return len(self.scene_dirs) * self.cfg.loop

    def scene(self, i: int) -> Scene:
        i = i % len(self.scene_dirs)
        if i in self._cache:
            return self._cache[i]
        scene = load_labelled_scene(self.scene_dirs[i], self.cfg.label_file, self.class_names,
                                    mmap=not self.cfg.cache)
        if self.cfg.cache:
            self._cache[i] = scene
        return scene

    def __getitem__(self, index: int) -> Dict[str, np.ndarray]:
        return self.sample(index, self._stream.generator())

    def training_scene(self, index: int, rng: np.random.Generator) -> Scene:
        """The scene sample ``index`` is drawn from: the scene itself or, with ``clutter.enabled`` (and
        ``clutter.probability``), a composite of it and objects of the other training scenes."""
        scene = self.scene(index)
        clutter = self.cfg.clutter
        if not clutter.enabled or rng.random() >= clutter.probability:
            return scene
        i = index % len(self.scene_dirs)
        # a single training scene lends its own objects
        donors = _SceneList(self, [j for j in range(len(self.scene_dirs)) if j != i] or [i])
        composite = compose_clutter(scene, donors, rng, clutter.objects, stacked_fraction=clutter.stacked_fraction,
                                    table_class=self.class_names.index(TABLE_CLASS_NAME),
                                    lean_fraction=clutter.lean_fraction, flat_fraction=clutter.flat_fraction)
        return composite.as_scene(f"{scene.name}+clutter", scene.class_names)

    def sample(self, index: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        scene = self.training_scene(index, rng)
        labelled = None
        if self.labelled_points is not None:
            if scene.name not in self.labelled_points:
                raise KeyError(f"no labelled-point indices for scene {scene.name}")
            labelled = self.labelled_points[scene.name]
        return training_sample(scene, self.cfg, rng, labelled)


class _SceneList(Sequence):
    """Some of a dataset's scenes, loaded when indexed (and cached as the dataset caches them)."""

    def __init__(self, dataset: SegmentationDataset, indices: Sequence[int]):
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k):
        return self.dataset.scene(self.indices[k])


@dataclass
class SegBatch:
    points: PointBatch
    segment: torch.Tensor  # [N] int64 label per row, -1 = ignore
    instance: Optional[torch.Tensor] = None  # [N] int64 instance id per row (unique within its sample), -1 = none
    offset_target: Optional[torch.Tensor] = None  # [N, 3] float32 instance centre - row, 0 where none

    def __post_init__(self) -> None:
        n = self.points.coord.shape[0]
        if self.segment.shape != (n,):
            raise ValueError(f"segment has shape {tuple(self.segment.shape)}, expected [{n}]")
        if self.instance is not None and (self.instance.shape != (n,) or self.offset_target is None
                                          or self.offset_target.shape != (n, 3)):
            raise ValueError(f"instance {tuple(self.instance.shape)} / offset_target must be [{n}] / [{n}, 3]")

    def to(self, device) -> "SegBatch":
        move = (lambda t: t.to(device) if t is not None else None)
        return SegBatch(self.points.to(device), self.segment.to(device), move(self.instance),
                        move(self.offset_target))


def collate_segmentation(samples: Sequence[Mapping[str, np.ndarray]]) -> SegBatch:
    points = collate_points([s["coord"] for s in samples], [s["feat"] for s in samples],
                            [s["grid_coord"] for s in samples])
    segment = torch.from_numpy(np.concatenate([s["segment"] for s in samples]).astype(np.int64))
    instance = offset_target = None
    if all("instance" in s for s in samples):
        instance = torch.from_numpy(np.concatenate([s["instance"] for s in samples]).astype(np.int64))
        offset_target = torch.from_numpy(np.concatenate([s["offset_target"] for s in samples]).astype(np.float32))
    return SegBatch(points, segment, instance, offset_target)
