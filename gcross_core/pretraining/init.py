"""Start pretraining from a checkpoint: continue GaussianCross pretraining on new scenes (adaptation).

``init_checkpoint`` in a pretraining config names the weights to start from; the optimizer, schedule and
step count start fresh (``--resume`` is the other thing: it continues a killed run exactly). Accepted:

- a pretraining checkpoint (kind "pretrain", ``training/pretrain.py``'s ``final.safetensors`` or
  ``checkpoints/last.safetensors``): encoder and Gaussian head (``model.*``) are loaded, and the projection
  heads (``projection.*``, eq. 16) of the teachers whose heads fit. The architecture is the checkpoint's:
  ``model`` is replaced by its ``model_config`` (a config that set another one is logged);
- an encoder-only checkpoint (kind "encoder" from ``training/import_pointcept.py``, or a segmenter): the
  encoder is loaded and its configuration replaces ``model.encoder``; the Gaussian head starts fresh.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Dict, List

from torch import nn

from gcross_core.checkpoint import PRETRAIN_KIND, CheckpointHeader, load_checkpoint, load_strict, read_header, unprefixed
from gcross_core.model.gaussiancross import GaussianCrossConfig
from gcross_core.model.features import InputConvention
from gcross_core.pretraining.config import PretrainConfig
from gcross_core.segmentation.model import checkpoint_encoder

log = logging.getLogger(__name__)

MODEL_PREFIX = "model"  # PretrainModule.model (encoder + Gaussian head)
PROJECTION_PREFIX = "projection"  # PretrainModule.projection (eq. 16 heads)


def _with_model(cfg: PretrainConfig, model: GaussianCrossConfig, header: CheckpointHeader) -> PretrainConfig:
    if model != cfg.model:
        log.info("init_checkpoint %s: model architecture taken from the checkpoint", cfg.init_checkpoint)
    # the encoder keeps being fed what it was trained on (an imported Pointcept backbone: colour -1..1,
    # centre-shift lattice); a checkpoint that does not say is refused, naming the key
    convention = InputConvention.from_header(header)
    if convention != cfg.data.pipeline.convention:
        log.info("init_checkpoint %s: input convention %s taken from the checkpoint", cfg.init_checkpoint,
                 convention.header_fields())
    pipeline = dataclasses.replace(cfg.data.pipeline, grid_size_m=model.grid_size_m,
                                   input_features=convention.input_features, grid_lattice=convention.grid_lattice)
    return dataclasses.replace(cfg, model=model, data=dataclasses.replace(cfg.data, pipeline=pipeline))


def config_for_init(cfg: PretrainConfig) -> PretrainConfig:
    """``cfg`` with the architecture of ``cfg.init_checkpoint`` (unchanged without one)."""
    if not cfg.init_checkpoint:
        return cfg
    header = read_header(cfg.init_checkpoint)
    if header.kind == PRETRAIN_KIND:
        return _with_model(cfg, header.parse("model_config", GaussianCrossConfig.from_dict), header)
    _, enc_cfg, _ = checkpoint_encoder(cfg.init_checkpoint)
    model = dataclasses.replace(cfg.model, encoder=enc_cfg)
    if header.grid_size_m is not None:  # the density the encoder was trained at (Pointcept: 0.02 m)
        model = dataclasses.replace(model, grid_size_m=header.grid_size_m)
    return _with_model(cfg, model, header)


def load_init_weights(module: nn.Module, path) -> Dict[str, List[str]]:
    """Load ``path`` into a PretrainModule built from :func:`config_for_init`'s config.

    Returns {"loaded": [...], "fresh": [...]}: the submodules that start from the checkpoint and those that
    start fresh. Raises CheckpointError when the weights do not fit.
    """
    tensors, header = load_checkpoint(path)
    report: Dict[str, List[str]] = {"loaded": [], "fresh": []}
    if header.kind == PRETRAIN_KIND:
        load_strict(module.model, unprefixed(tensors, MODEL_PREFIX), f"init_checkpoint {path}: model weights")
        report["loaded"].append("model")
        projection = getattr(module, "projection", None)
        if projection is not None:
            saved = unprefixed(tensors, PROJECTION_PREFIX)
            for name, head in projection.heads.items():
                own = head.state_dict()
                theirs = unprefixed(saved, f"heads.{name}")
                fits = bool(theirs) and set(theirs) == set(own) and all(theirs[k].shape == own[k].shape for k in own)
                if fits:
                    head.load_state_dict(theirs)
                    report["loaded"].append(f"projection.{name}")
                else:
                    report["fresh"].append(f"projection.{name}")
    else:
        state, _, _ = checkpoint_encoder(path)
        load_strict(module.model.encoder, state, f"init_checkpoint {path}: encoder weights")
        report["loaded"].append("model.encoder")
        report["fresh"].append("model.head")
        if getattr(module, "projection", None) is not None:
            report["fresh"].append("projection")
    log.info("init_checkpoint %s: loaded %s; fresh %s", path, report["loaded"], report["fresh"] or "nothing")
    return report
