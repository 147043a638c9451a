"""The trainer's default optimizer (AdamW, Table S.1) and the factory type it accepts instead."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from gcross_core.errors import InputError
from gcross_core.train.config import OptimConfig

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


def adamw_factory(cfg: OptimConfig) -> OptimizerFactory:
    """AdamW (Table S.1); biases and normalisation weights (1-D parameters) get no weight decay."""

    def make(model: nn.Module) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for _, p in model.named_parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
        if not groups:
            raise InputError("model has no trainable parameters, expected at least one with requires_grad")
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)

    return make
