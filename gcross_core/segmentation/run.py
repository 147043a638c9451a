"""Semantic segmentation on a (pretrained) encoder: linear probing, fine-tuning and data-efficient runs
(paper Sec. 4.2, Tables 1-3). ``training/finetune.py`` is its command line.

- ``pretrained``: a pretraining checkpoint (encoder under ``model.encoder.*``), a segmenter checkpoint or
  an imported Pointcept encoder. Every encoder tensor must match the encoder configuration by name and
  shape or the run stops. Without one the encoder starts from random weights (training from scratch, or
  the random-encoder linear-probing baseline).
- input convention (colour range, voxel lattice; ``data.input_features`` / ``data.grid_lattice``): the
  pretrained checkpoint's unless the config sets one (:func:`finetune_convention`), so a model fine-tuned
  from an imported Pointcept backbone is fed what Pointcept fed it; the segmenter records the one used.
- ``linear_probe``: freeze the encoder (weights and BatchNorm statistics) and train only the linear
  classifier (Table 1). Otherwise the whole network trains (Tables 2-3).
- data-efficient settings (Table 2, ``data.limited_*``): the chosen scenes / labelled point indices are
  written into the run folder and can be fed back in.
- ``task: instance``: 3D instance segmentation (Sec. 4.2.4, Table 4, settings Table S.3): the model gains
  PointGroup's offset head (:mod:`gcross_core.segmentation.instance`), trained with cross-entropy plus the
  offset L1 and direction losses; evaluation reports AP25 / AP50 / mAP next to mIoU. Scenes need
  ``instance.npy``. ``instance`` holds the loss weights and grouping settings stored with the segmenter.
  ``from_segmenter`` / ``instance_head_only`` start from a trained segmenter (its classifier too), the
  latter training the offset head alone on the frozen encoder and classifier.

The run folder receives the resolved config, training logs, the trainer's checkpoints,
``segmenter.safetensors`` (what :meth:`~gcross_core.segmentation.segmenter.Segmenter.from_checkpoint`
loads) and, with ``evaluate``, an evaluation of the validation split in ``eval/``.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import numpy as np
import torch
from tqdm import tqdm

from gcross_core.checkpoint import (FINETUNE_KIND, HEAD_PREFIX, SEGMENTER_ENCODER_PREFIX, SEGMENTER_KIND,
                                    CheckpointHeader, load_checkpoint, load_strict, read_header, unprefixed)
from gcross_core.config import to_dict
from gcross_core.data.classes import class_names_for
from gcross_core.errors import CheckpointError, ConfigError, InputError
from gcross_core.evaluation.report import write_metrics_report
from gcross_core.model.encoder import SpUNetConfig
from gcross_core.model.features import InputConvention
from gcross_core.segmentation.dataset import (SegBatch, SegDataConfig, SegmentationDataset, collate_segmentation,
                                              list_scenes, load_labelled_scene, select_labelled_points,
                                              select_training_scenes)
from gcross_core.segmentation.evaluate import evaluate_scenes
from gcross_core.segmentation.instance import InstanceConfig, contact_rows, offset_losses, thing_mask
from gcross_core.segmentation.model import (IGNORE_INDEX, SegmentationModel, checkpoint_encoder, load_pretrained_encoder,
                                            save_segmenter, segmentation_loss)
from gcross_core.segmentation.segmenter import Segmenter
from gcross_core.train.distributed import barrier, derive_seed, init_distributed, shutdown_distributed
from gcross_core.train.schedule import ScheduleConfig
from gcross_core.train.config import OptimConfig, RunConfig, TrainerConfig
from gcross_core.train.seeding import seed_everything
from gcross_core.train.trainer import RunOutput, Trainer, TrainingTask
from gcross_core.types import PointBatch

log = logging.getLogger(__name__)

SEGMENTER_FILE = "segmenter.safetensors"
RECALIBRATION_STREAM = 7919  # seed key of the BatchNorm recalibration draws (apart from the training stream)
TASKS = ("semantic", "instance")


@dataclass(frozen=True)
class FinetuneConfig:
    # Table S.2 (ScanNet): batch 32, 800 epochs, AdamW (0.9, 0.95), wd 0.05, lr 0.005, cosine, 40 warmup epochs
    train: TrainerConfig = field(default_factory=lambda: TrainerConfig(epochs=800, batch_size=32))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.005))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(kind="cosine", warmup_fraction=0.05))
    data: SegDataConfig = field(default_factory=SegDataConfig)
    # None: the pretrained checkpoint's encoder configuration (SpUNetConfig() when training from scratch);
    # when set and a pretrained checkpoint is given, the two must agree
    encoder: Optional[SpUNetConfig] = None
    linear_probe: bool = False  # freeze the encoder, train the classifier only (Table 1)
    # linear probing: first re-estimate the frozen encoder's BatchNorm statistics on this many training
    # batches (recalibrate_batchnorm below); 0 keeps the checkpoint's statistics
    bn_recalibration_batches: int = 0
    # global batch of the data-efficient runs (Table S.2: 24); 0 keeps train.batch_size
    limited_batch_size: int = 0
    evaluate: bool = True  # evaluate the validation split at the end
    eval_rotations: int = 1  # test-time augmentation: rotations about z averaged at evaluation
    task: str = "semantic"  # semantic | instance (PointGroup offset head, Sec. 4.2.4)
    instance: InstanceConfig = field(default_factory=InstanceConfig)  # the instance task's losses and grouping
    # instance task on a trained segmenter (--pretrained, same classes): its encoder and classifier are
    # loaded and frozen and only the offset head trains, so the semantic output stays exactly that
    # segmenter's (how the demo checkpoint gains its instance head)
    instance_head_only: bool = False
    # start from a trained segmenter (--pretrained, same classes): its classifier is loaded next to its
    # encoder and everything trains (with task: instance the offset head starts fresh)
    from_segmenter: bool = False

    def __post_init__(self) -> None:
        if self.limited_batch_size < 0 or self.eval_rotations < 1 or self.bn_recalibration_batches < 0:
            raise ConfigError("limited_batch_size and bn_recalibration_batches must be >= 0, eval_rotations >= 1")
        if self.task not in TASKS:
            raise ConfigError(f"task {self.task!r} is not one of {TASKS}")
        if self.task == "instance" and self.linear_probe:
            raise ConfigError("the instance task trains the whole network; linear_probe must be false "
                              "(instance_head_only trains the offset head alone)")
        if self.instance_head_only and self.task != "instance":
            raise ConfigError("instance_head_only needs task: instance")

    def instance_config(self) -> Optional[InstanceConfig]:
        """The instance settings with the class set's stuff classes filled in; None for the semantic task."""
        if self.task != "instance":
            return None
        return self.instance.resolved(self.data.class_set, class_names_for(self.data.class_set))

    @property
    def data_efficient(self) -> bool:
        d = self.data
        return bool(d.limited_scenes_pct or d.limited_points or d.limited_scenes_file or d.limited_points_file)

    def run_config(self) -> RunConfig:
        train = self.train
        if self.data_efficient and self.limited_batch_size:
            train = replace(train, batch_size=self.limited_batch_size)
        return RunConfig(train=train, optim=self.optim, schedule=self.schedule)


def finetune_convention(data: SegDataConfig, pretrained: Optional[str]) -> InputConvention:
    """The input convention of a run: the config's where set, the rest from the pretrained checkpoint
    (CheckpointError naming the key when it records none), gcross's defaults without a checkpoint."""
    if not pretrained or (data.input_features and data.grid_lattice):
        return data.convention
    header = read_header(pretrained)
    given = {"input_features": data.input_features, "grid_lattice": data.grid_lattice}
    stamped = InputConvention.from_header(header.replace(**{k: v for k, v in given.items() if v}))
    for key, value in given.items():
        recorded = getattr(header, key)
        if value and recorded not in (None, value):
            log.warning("data.%s=%s overrides the pretrained checkpoint's %s", key, value, recorded)
    return stamped


def build_model(cfg: FinetuneConfig, pretrained: Optional[str]) -> SegmentationModel:
    """The segmentation model, its encoder initialised from ``pretrained`` when given (strictly)."""
    num_classes = len(class_names_for(cfg.data.class_set))
    enc_cfg = cfg.encoder
    if pretrained:
        _, ckpt_cfg, _ = checkpoint_encoder(pretrained)
        if enc_cfg is not None and enc_cfg != ckpt_cfg:
            raise CheckpointError(f"config asks for encoder {enc_cfg.to_dict()}, the pretrained checkpoint "
                                  f"{pretrained} holds {ckpt_cfg.to_dict()}")
        enc_cfg = ckpt_cfg
    model = SegmentationModel(enc_cfg or SpUNetConfig(), num_classes, instance_head=cfg.task == "instance")
    if pretrained:
        header = load_pretrained_encoder(model, pretrained)
        log.info("encoder initialised from %s (%s checkpoint)", pretrained, header.kind)
    elif cfg.linear_probe:
        log.warning("linear probing a randomly initialised encoder (no --pretrained): a baseline, not a model")
    if cfg.instance_head_only or cfg.from_segmenter:
        load_classifier(model, pretrained, class_names_for(cfg.data.class_set))
    if cfg.instance_head_only:
        model.freeze_encoder()
        for p in model.seg_head.parameters():
            p.requires_grad_(False)
        log.info("instance head only: encoder and classifier of %s frozen", pretrained)
    if cfg.linear_probe:
        model.freeze_encoder()
    return model


def load_classifier(model: SegmentationModel, pretrained: Optional[str], class_names) -> None:
    """instance_head_only / from_segmenter: the classifier of the segmenter ``pretrained`` too (its
    encoder is already loaded)."""
    if not pretrained:
        raise CheckpointError("instance_head_only and from_segmenter need --pretrained: a segmenter checkpoint "
                              "of the same classes")
    tensors, header = load_checkpoint(pretrained)
    if header.kind != SEGMENTER_KIND or list(header.class_names or []) != list(class_names):
        raise CheckpointError(f"instance_head_only / from_segmenter: {pretrained} is not a segmenter of the "
                              f"classes {list(class_names)[:4]}... (kind {header.kind!r})")
    load_strict(model.seg_head, unprefixed(tensors, HEAD_PREFIX), f"classifier weights of {pretrained}")


def run_finetuning(cfg: FinetuneConfig, run_dir, pretrained: Optional[str] = None, progress: bool = True,
                   tensorboard: bool = True, resume: bool = False) -> Dict[str, Any]:
    """Train, save the segmenter and (optionally) evaluate; returns a summary dict (main process)."""
    run_dir = Path(run_dir)
    dist = init_distributed(cfg.train.device)
    try:
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)  # before any encoder call (BatchNorm recalibration)
        seed_everything(cfg.train.seed)
        convention = finetune_convention(cfg.data, pretrained)
        cfg = replace(cfg, data=replace(cfg.data, input_features=convention.input_features,
                                        grid_lattice=convention.grid_lattice))  # resolved for every use below
        class_names = class_names_for(cfg.data.class_set)
        train_dirs = list_scenes(cfg.data.root, cfg.data.train_split)
        train_dirs = select_training_scenes(train_dirs, cfg.data, run_dir if dist.is_main else None)
        labelled = None
        if cfg.data.limited_points or cfg.data.limited_points_file:
            scenes = [load_labelled_scene(p, cfg.data.label_file, class_names, mmap=True) for p in train_dirs]
            labelled = select_labelled_points(scenes, cfg.data, run_dir if dist.is_main else None)
            log.info("limited annotations: %d labelled points in %d scenes",
                     sum(len(v) for v in labelled.values()), len(scenes))
        run_cfg = cfg.run_config()
        data_cfg = cfg.data
        min_loop = math.ceil(run_cfg.train.batch_size / len(train_dirs))
        if data_cfg.loop < min_loop:
            log.info("%d training scenes for a global batch of %d: repeating each scene %d times per epoch",
                     len(train_dirs), run_cfg.train.batch_size, min_loop)
            data_cfg = replace(data_cfg, loop=min_loop)
        dataset = SegmentationDataset(train_dirs, data_cfg, labelled)
        model = build_model(cfg, pretrained)
        if cfg.linear_probe and cfg.bn_recalibration_batches:
            recalibrate(model, dataset, cfg, run_cfg.train.batch_size // dist.world_size, dist.device)
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("%s: %d trainable parameters, %d classes, %d training scenes, input %s on the %s lattice",
                 "linear probe" if cfg.linear_probe else "fine-tuning", n_train, len(class_names), len(train_dirs),
                 convention.input_features, convention.grid_lattice)
        header = CheckpointHeader(kind=FINETUNE_KIND, class_names=tuple(class_names),
                                  encoder_config=model.encoder_config.to_dict(), encoder_prefix=SEGMENTER_ENCODER_PREFIX,
                                  **convention.header_fields(),
                                  extra={"pretrained": str(pretrained) if pretrained else None,
                                         "linear_probe": cfg.linear_probe})
        instance = cfg.instance_config()
        step_fn = segmentation_step
        if instance is not None:
            step_fn = InstanceStep(thing_mask(class_names, instance.stuff_classes), instance)
        output = RunOutput(run_dir, checkpoint_header=header, resolved_config=cfg, progress=progress,
                           tensorboard=tensorboard)
        trainer = Trainer(TrainingTask(model, step_fn, dataset, collate_segmentation), run_cfg, output, dist_info=dist)
        t0 = time.perf_counter()
        state = trainer.fit(resume=resume)
        train_s = time.perf_counter() - t0
        summary: Dict[str, Any] = {"steps": state.step, "train_seconds": train_s,
                                   "last_metrics": state.last_metrics, "run_dir": str(run_dir)}
        if dist.is_main:
            extra = {"config": to_dict(cfg), "pretrained": str(pretrained) if pretrained else None,
                     "linear_probe": cfg.linear_probe,
                     "trained_steps": state.step}
            path = save_segmenter(run_dir / SEGMENTER_FILE, model, class_names, cfg.data.grid_size_m, extra=extra,
                                  convention=convention, instance=instance)
            summary["segmenter"] = str(path)
            if cfg.evaluate:
                summary["eval"] = evaluate_run(cfg, model, class_names, run_dir / "eval", progress)
        barrier(dist)
        return summary
    finally:
        shutdown_distributed(dist)


def recalibrate(model: SegmentationModel, dataset: SegmentationDataset, cfg: FinetuneConfig, batch_size: int,
                device) -> None:
    """BatchNorm statistics of the frozen encoder from ``cfg.bn_recalibration_batches`` training batches,
    drawn reproducibly from the training seed (and the same on every rank: BatchNorm is not synced here)."""

    def batches():
        for b in range(cfg.bn_recalibration_batches):
            samples = []
            for j in range(batch_size):
                i = (b * batch_size + j) % len(dataset)
                rng = np.random.default_rng(derive_seed(cfg.train.seed, RECALIBRATION_STREAM, b, j))
                samples.append(dataset.sample(i, rng))
            yield collate_segmentation(samples).points.to(device)

    model.encoder.to(device)
    n = recalibrate_batchnorm(model.encoder, batches())
    model.freeze_encoder()
    log.info("re-estimated the frozen encoder's BatchNorm statistics on %d batches of %d scenes", n, batch_size)


def evaluate_run(cfg: FinetuneConfig, model: SegmentationModel, class_names, out_dir, progress: bool = True
                 ) -> Optional[Dict[str, Any]]:
    try:
        val_dirs = list_scenes(cfg.data.root, cfg.data.val_split)
    except FileNotFoundError as e:
        log.warning("no evaluation: %s", e)
        return None
    if cfg.data.max_val_scenes:
        val_dirs = val_dirs[: cfg.data.max_val_scenes]
    device = next(model.parameters()).device
    segmenter = Segmenter(model, class_names, cfg.data.grid_size_m, device=str(device),
                          convention=cfg.data.convention, instance=cfg.instance_config())
    wrap = (lambda it: tqdm(it, desc="evaluate", unit="scene", leave=False)) if progress else None
    res = evaluate_scenes(segmenter, val_dirs, cfg.data.label_file, cfg.eval_rotations, wrap)
    write_metrics_report(out_dir, res.conf, res.metrics, class_names, title="Validation",
                         extra_json={"scenes": res.per_scene, "rotations": cfg.eval_rotations}, instance=res.instance)
    m = res.metrics
    log.info("validation (%d scenes): mIoU %.1f  mAcc %.1f  allAcc %.1f", len(val_dirs), 100 * m.miou,
             100 * m.macc, 100 * m.allacc)
    out = {"miou": m.miou, "macc": m.macc, "allacc": m.allacc, "scenes": len(val_dirs)}
    if res.instance is not None:
        i = res.instance
        log.info("validation instances: AP25 %.1f  AP50 %.1f  mAP %.1f", 100 * i.ap25, 100 * i.ap50, 100 * i.map)
        out.update({"ap25": i.ap25, "ap50": i.ap50, "map": i.map})
    return out


# ----------------------------------------------------------------------------------------------------
# the pieces of a run


def recalibrate_batchnorm(encoder: torch.nn.Module, batches: Iterable[PointBatch]) -> int:
    """Re-estimate the BatchNorm running statistics of ``encoder`` as the plain average over ``batches``;
    no weight changes. Returns the number of batches seen.

    Linear probing keeps the encoder frozen, BatchNorm included. A random or pretrained encoder's running
    statistics need not describe the downstream data (a fresh encoder has mean 0 / variance 1 everywhere,
    so its deeper features shrink layer after layer); re-estimating them is the only change made, the
    same for every encoder compared.
    """
    norms = [m for m in encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    was_training = encoder.training
    encoder.train()
    seen = 0
    try:
        with torch.no_grad():
            for points in batches:
                encoder(points)
                seen += 1
    finally:
        for m, mom in zip(norms, momenta):
            m.momentum = mom
        encoder.train(was_training)
    return seen


class InstanceStep:
    """The trainer's step_fn of the instance task: cross-entropy + PointGroup's offset L1 and direction
    losses (Sec. 4.2.4) over the rows of thing instances."""

    def __init__(self, thing: np.ndarray, cfg: InstanceConfig):
        self.thing = torch.as_tensor(np.asarray(thing, bool))
        self.cfg = cfg

    def __call__(self, model: torch.nn.Module, batch: SegBatch) -> Dict[str, Any]:
        if batch.instance is None:
            raise InputError("the instance task needs instance ids in every sample (scene folders with instance.npy)")
        logits, offsets = model(batch.points, with_offsets=True)
        ce = segmentation_loss(logits, batch.segment)
        seg = batch.segment
        thing = self.thing.to(seg.device)
        valid = (batch.instance >= 0) & (seg >= 0) & thing[seg.clamp_min(0)]
        weight = None
        contact = None
        if self.cfg.contact_weight > 0:
            if batch.points.grid_coord is None:
                raise InputError("instance.contact_weight needs the batch's grid cells (PointBatch.grid_coord)")
            contact = contact_rows(batch.points.grid_coord, batch.points.offset, batch.instance) & valid
            weight = 1.0 + self.cfg.contact_weight * contact.float()
        l1, direction = offset_losses(offsets.float(), batch.offset_target, valid, weight)
        loss = ce + self.cfg.offset_l1_weight * l1 + self.cfg.offset_dir_weight * direction
        with torch.no_grad():
            labelled = seg != IGNORE_INDEX
            acc = ((logits.argmax(1) == seg) & labelled).sum() / labelled.sum().clamp_min(1)
        out = {"loss": loss, "ce": ce, "offset_l1": l1, "offset_dir": direction, "acc": acc,
               "instance_rows": valid.sum().float()}
        if contact is not None:
            out["contact_rows"] = contact.sum().float()
        return out


def segmentation_step(model: torch.nn.Module, batch: SegBatch) -> Dict[str, Any]:
    """The trainer's step_fn: cross-entropy over labelled rows, plus row accuracy for the logs."""
    logits = model(batch.points)
    loss = segmentation_loss(logits, batch.segment)
    with torch.no_grad():
        valid = batch.segment != IGNORE_INDEX
        n = valid.sum()
        acc = ((logits.argmax(1) == batch.segment) & valid).sum() / n.clamp_min(1)
    return {"loss": loss, "acc": acc, "labelled_rows": n.float()}
