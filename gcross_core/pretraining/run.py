"""A whole pretraining run: scene folders (including generated synthetic rooms) -> dataset ->
:class:`~gcross_core.pretraining.module.PretrainModule` -> :class:`~gcross_core.train.trainer.Trainer`.
``training/pretrain.py`` is its command line.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from torch import nn
from torch.utils.data import Dataset

from gcross_core.errors import ConfigError
from gcross_core.files import atomic_path
from gcross_core.model.api import pretrain_header
from gcross_core.pretraining.config import DataSection, PretrainConfig, SyntheticRooms
from gcross_core.pretraining.dataset import PretrainDataset, collate_pretrain
from gcross_core.pretraining.diagnostics import collapse_at_end, collapse_warnings
from gcross_core.pretraining.init import config_for_init, load_init_weights
from gcross_core.pretraining.module import build_pretrain_module, visualize
from gcross_core.train.distributed import barrier, init_distributed, shutdown_distributed
from gcross_core.train.logging import read_metrics
from gcross_core.train.checkpointing import FINAL_CHECKPOINT
from gcross_core.train.seeding import seed_everything
from gcross_core.train.trainer import RunOutput, Trainer, TrainingTask, TrainState

log = logging.getLogger(__name__)


class _Looped(Dataset):
    """``loop`` passes over a dataset per epoch; item i is scene i % n (its augmentation differs)."""

    def __init__(self, dataset: Dataset, loop: int):
        self.dataset, self.loop = dataset, int(loop)

    def __len__(self) -> int:
        return len(self.dataset) * self.loop

    def __getitem__(self, index: int):
        return self.dataset[index % len(self.dataset)]

    def sample(self, index: int, rng: np.random.Generator):
        return self.dataset.sample(index % len(self.dataset), rng)


def repeats_per_epoch(num_scenes: int, loop: int, batch_size: int) -> int:
    """How often each scene appears per epoch: ``data.loop``, raised until one epoch fills a global batch
    (a single room with ``batch_size`` 2 repeats twice instead of failing)."""
    need = -(-int(batch_size) // max(int(num_scenes), 1))
    if need > loop:
        log.info("%d scene(s) for a global batch of %d: each repeats %d times per epoch (data.loop %d -> %d); "
                 "train.max_steps bounds the run", num_scenes, batch_size, need, loop, need)
        return need
    return int(loop)


def synthetic_scene_dirs(cfg: SyntheticRooms, run_dir, create: bool = True) -> List[Path]:
    """Folders of the configured synthetic rooms, generating the missing ones when ``create``."""
    from gcross_core.data.scene import write_scene
    from gcross_core.data.synthetic import make_room

    root = Path(cfg.cache_dir) if cfg.cache_dir else Path(run_dir) / "cache" / "synthetic"
    dirs = []
    for k in range(cfg.rooms):
        seed = cfg.seed + k
        out = root / f"synthetic_{seed:04d}_{cfg.points}p_{cfg.views}v_{cfg.width}x{cfg.height}"
        if create and not (out / "coord.npy").is_file():
            t0 = time.perf_counter()
            scene = make_room(seed, num_points=cfg.points, num_views=cfg.views, width=cfg.width, height=cfg.height)
            write_scene(scene, out, color_format="png", overwrite=True)
            log.info("synthetic room %s written in %.1f s", out, time.perf_counter() - t0)
        dirs.append(out)
    return dirs


def scene_dirs(cfg: DataSection, run_dir, create: bool = True) -> List[Path]:
    dirs = [Path(s) for s in cfg.scenes]
    if cfg.root:
        root = Path(cfg.root)
        if not root.is_dir():
            raise FileNotFoundError(f"data.root {root} is not a folder")
        dirs += sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    dirs += synthetic_scene_dirs(cfg.synthetic, run_dir, create)
    if not dirs:
        raise ConfigError("no scenes: set data.scenes, data.root or data.synthetic.rooms")
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise FileNotFoundError(f"scene folders do not exist: {missing[:5]}")
    return dirs


def run_pretraining(cfg: PretrainConfig, run_dir, resume: bool = False, progress: bool = True,
                    tensorboard: bool = True) -> Tuple[TrainState, Optional[Path]]:
    """The whole pretraining run (one process of a torchrun group, or alone).

    Returns the final train state and, on the main process, the path of ``final.safetensors`` (encoder
    under ``model.encoder.*``, metadata kind "pretrain" with model_config and the resolved config).
    """
    run_dir = Path(run_dir)
    dist = init_distributed(cfg.train.device)
    try:
        if dist.is_main:
            scene_dirs(cfg.data, run_dir, create=True)
        barrier(dist)
        dirs = scene_dirs(cfg.data, run_dir, create=False)
        cfg = config_for_init(cfg)
        dataset = PretrainDataset(dirs, cfg.data.pipeline)
        loop = repeats_per_epoch(len(dataset), cfg.data.loop, cfg.train.batch_size)
        if loop > 1:
            dataset = _Looped(dataset, loop)
        seed_everything(cfg.train.seed)  # identical initial weights on every rank (DDP also broadcasts)
        module = build_pretrain_module(cfg)
        if cfg.init_checkpoint:
            load_init_weights(module, cfg.init_checkpoint)
        log.info("pretraining %s: %.2fM trainable parameters, %d scenes, teachers %s", cfg.name,
                 sum(p.numel() for p in module.parameters() if p.requires_grad) / 1e6, len(dirs),
                 [t.key or t.name for t in cfg.teachers] if cfg.loss.use_sem else "none")
        task = TrainingTask(module, _step, dataset, collate_pretrain, visualize_fn=visualize)
        output = RunOutput(run_dir, checkpoint_header=pretrain_header(cfg.model, cfg, cfg.data.pipeline.convention), resolved_config=cfg,
                           progress=progress, tensorboard=tensorboard)
        trainer = Trainer(task, cfg.run_config(), output, dist_info=dist)
        state = trainer.fit(resume=resume)
        if dist.is_main:
            report_collapse(run_dir)
        return state, (run_dir / FINAL_CHECKPOINT) if dist.is_main else None
    finally:
        shutdown_distributed(dist)


def report_collapse(run_dir: Path, last: int = 10) -> Dict[str, Dict[str, float]]:
    """The collapse signals over the last logged steps (``gcross_core.pretraining.diagnostics``), written to
    ``<run_dir>/collapse.json`` and logged; a warning per teacher whose ``cos_gain`` ended at or below 0."""
    summary = collapse_at_end(read_metrics(run_dir / "metrics.jsonl"), last)
    if summary:
        with atomic_path(run_dir / "collapse.json") as tmp:
            tmp.write_text(json.dumps({"last_steps": last, "teachers": summary}, indent=1))
        for teacher, stats in summary.items():
            log.info("collapse signals, %s, last %d logged steps: %s", teacher, last,
                     ", ".join(f"{k} {v:.3f}" for k, v in sorted(stats.items())))
        for line in collapse_warnings(summary):
            log.warning(line)
    return summary


def _step(model: nn.Module, batch) -> Dict[str, Any]:
    return model(batch)
