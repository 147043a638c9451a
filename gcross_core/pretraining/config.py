"""Configuration of a pretraining run (``training/configs/*.yaml`` read into :class:`PretrainConfig`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from gcross_core.errors import ConfigError
from gcross_core.model.gaussiancross import GaussianCrossConfig
from gcross_core.pretraining.dataset import PretrainDataConfig
from gcross_core.pretraining.losses import LossConfig
from gcross_core.train.schedule import ScheduleConfig
from gcross_core.train.config import OptimConfig, RunConfig, TrainerConfig


@dataclass(frozen=True)
class TeacherConfig:
    name: str = "efficientnet_lite0"  # see gcross_core.pretraining.teachers.TEACHER_NAMES
    loss_weight: float = 1.0  # this teacher's share of L_sem (several teachers: the Chorus setting)
    head_hidden: Optional[int] = None  # projection head of eq. 16: None = one 1x1 conv, else a 2-layer MLP
    # keyword arguments of build_teacher(name, ...), e.g. {input_size: [480, 640]} or {repo_dir: ...}
    options: Dict[str, Any] = field(default_factory=dict)
    # the name this teacher goes by in the loss, its projector and the logs; None: ``name``. Two teachers
    # built from one network (Chorus: EfficientNet-Lite0 split into a low-level s8 teacher and a semantic
    # head teacher, each with its own projector) need different keys.
    key: Optional[str] = None


@dataclass(frozen=True)
class RenderSettings:
    backend: str = "auto"  # auto: gsplat on CUDA, the pure-PyTorch reference on CPU
    # rasterizer options of gcross_core.render.config.RenderConfig (e.g. {tile_size: 16})
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SyntheticRooms:
    """Procedural rooms (gcross_core.data.synthetic) written once as scene folders and reused."""

    rooms: int = 0  # 0: no synthetic rooms
    seed: int = 0  # room k is make_room(seed + k)
    views: int = 8  # RGB-D frames per room
    width: int = 160  # frame size, pixels
    height: int = 120
    points: int = 40_000  # surface points per room
    cache_dir: Optional[str] = None  # where the rooms go; None: <run dir>/cache/synthetic


@dataclass(frozen=True)
class DataSection:
    scenes: Tuple[str, ...] = ()  # scene folders (Pointcept layout, frames/ in the SensReader layout)
    root: Optional[str] = None  # or a folder whose sub-folders are scenes (every one with frames/)
    synthetic: SyntheticRooms = field(default_factory=SyntheticRooms)
    loop: int = 1  # each scene appears this many times per epoch (few scenes, large batches)
    pipeline: PretrainDataConfig = field(default_factory=PretrainDataConfig)

    def __post_init__(self) -> None:
        if self.loop < 1:
            raise ConfigError(f"data.loop must be >= 1, got {self.loop}")


@dataclass(frozen=True)
class PretrainConfig:
    name: str = "pretrain"
    model: GaussianCrossConfig = field(default_factory=GaussianCrossConfig)
    data: DataSection = field(default_factory=DataSection)
    teachers: Tuple[TeacherConfig, ...] = (TeacherConfig(),)
    loss: LossConfig = field(default_factory=LossConfig)
    render: RenderSettings = field(default_factory=RenderSettings)
    train: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    # start from these weights (a pretraining or imported encoder checkpoint; gcross_core.pretraining.init);
    # the optimizer and schedule start fresh. None: random initialisation
    init_checkpoint: Optional[str] = None

    def __post_init__(self) -> None:
        if abs(self.data.pipeline.grid_size_m - self.model.grid_size_m) > 1e-12:
            raise ConfigError(f"data.pipeline.grid_size_m {self.data.pipeline.grid_size_m} differs from "
                              f"model.grid_size_m {self.model.grid_size_m}; the encoder is trained at one grid")

    def run_config(self) -> RunConfig:
        return RunConfig(train=self.train, optim=self.optim, schedule=self.schedule)
