"""Load a GaussianCross pretraining checkpoint and render what it learned: points -> Gaussians -> images.

    model = GaussianCrossModel.from_checkpoint("runs/synthetic_tiny/final.safetensors")
    gaussians = model.gaussians(scene)                    # a Scene, or coord=, color=, normal= arrays
    cams = pinhole_cameras(cam_to_world, K)               # [C, 4, 4] and [3, 3] or [C, 3, 3]
    out = model.render(gaussians, cams, width, height)    # RenderOutput: color, depth, features, alpha

Only the model is built (encoder + Gaussian head): no teacher, no projection head, no optimizer. The input
goes through the same two steps as a pretraining sample (``gcross_core.pretraining.dataset``): grid sampling
at the checkpoint's ``grid_size_m`` (here deterministic: the first point of each cell) and the encoder
features, both built by :class:`gcross_core.model.features.EncoderInput` from the checkpoint's header. Training
augmentations are not applied: the Gaussians live in the frame of the given points.

:func:`pretrain_header` is the one definition of a pretraining checkpoint's header (``training/pretrain.py``
writes it through the trainer, :func:`save_model` here).

Eval-time input (:class:`EvalInput`). The encoder is trained on input from which ``mask_ratio`` (gamma = 0.5,
eq. 4) of the grid cells were dropped, and its BatchNorm layers normalise with the statistics of each training
batch. At inference the choices are:
  - ``mask_ratio``: None (the default) feeds what training fed: the model's own gamma, with a seeded mask
    (:func:`gcross_core.model.gaussiancross.mask_points`); 0 feeds every cell (full density);
  - ``num_masks``: with a mask, render K differently seeded masks and average the images (:meth:`render`
    takes the list :meth:`gaussian_sets` returns);
  - ``batchnorm``: "input" (the default: the statistics of the input itself, as in a training step; the
    running averages are left untouched) or "running" (the running averages, as ``model.eval()``).

The defaults are the training path, chosen by measurement (``python -m experiments.eval_input``, the shipped
synthetic model on 4 held-out rooms, 32 views at 80x60): PSNR / depth L1 were 16.11 dB / 0.181 m with full
density and running BatchNorm averages (``model.eval()``), 16.28 / 0.167 with full density and input
statistics, 15.90 / 0.191 with the mask and running averages, 16.46 / 0.163 with the mask and input
statistics, and 16.52 / 0.163 averaging 4 masks (4x the time). The running averages lag: BatchNorm's
momentum is 0.01, so after a few hundred steps they still hold much of their initial values.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from gcross_core.checkpoint import (PRETRAIN_ENCODER_PREFIX, PRETRAIN_KIND, CheckpointHeader, load_checkpoint,
                                    load_parts, prefixed, save_checkpoint)
from gcross_core.config import to_dict
from gcross_core.data.scene import Scene
from gcross_core.errors import CheckpointError, InputError
from gcross_core.model.features import GCROSS_CONVENTION, EncoderInput, InputConvention
from gcross_core.model.gaussiancross import GaussianCross, GaussianCrossConfig, mask_points
from gcross_core.render import render
from gcross_core.types import Cameras, Gaussians, PointBatch, RenderOutput

MODEL_PREFIX = "model"  # PretrainModule.model: where a pretraining checkpoint keeps encoder + Gaussian head
BATCHNORM_MODES = ("running", "input")

# A small GaussianCross model of the synthetic rooms shipped for the demo and the node's default
# render_source: gaussians; training/make_demo_checkpoint.sh rebuilds it.
DEMO_MODEL = Path(__file__).resolve().parents[1] / "assets" / "gaussiancross_synthetic.safetensors"


@dataclass(frozen=True)
class EvalInput:
    """How the encoder's input is built at inference (see the module docstring)."""

    mask_ratio: Optional[float] = None  # share of grid cells dropped before the encoder; None: the model's gamma
    num_masks: int = 1  # masks rendered and averaged (only meaningful with a mask)
    batchnorm: str = "input"  # "input": statistics of the input, as in training; "running": running averages
    seed: int = 0  # seed of the first mask; mask k uses seed + k

    def __post_init__(self) -> None:
        if self.mask_ratio is not None and not 0.0 <= self.mask_ratio < 1.0:
            raise InputError(f"EvalInput.mask_ratio must lie in [0, 1), got {self.mask_ratio}")
        if self.num_masks < 1:
            raise InputError(f"EvalInput.num_masks must be >= 1, got {self.num_masks}")
        if self.batchnorm not in BATCHNORM_MODES:
            raise InputError(f"EvalInput.batchnorm must be one of {BATCHNORM_MODES}, got {self.batchnorm!r}")


def pinhole_cameras(cam_to_world: np.ndarray,  # [C, 4, 4] or [4, 4] camera-to-world (OpenCV axes)
                    K: np.ndarray,  # [C, 3, 3] or [3, 3] intrinsics for the rendered width x height
                    device: Union[str, torch.device] = "cpu") -> Cameras:
    """Cameras of one scene from camera-to-world poses (as in SensReader ``pose/*.txt``) and intrinsics."""
    c2w = np.asarray(cam_to_world, dtype=np.float64)
    if c2w.shape == (4, 4):
        c2w = c2w[None]
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
        raise InputError(f"cam_to_world has shape {np.shape(cam_to_world)}, expected [C, 4, 4] or [4, 4]")
    Ks = np.asarray(K, dtype=np.float64)
    Ks = np.broadcast_to(Ks, (len(c2w), 3, 3)) if Ks.shape == (3, 3) else Ks
    if Ks.shape != (len(c2w), 3, 3):
        raise InputError(f"K has shape {np.shape(K)}, expected [3, 3] or [{len(c2w)}, 3, 3]")
    if not (np.all(np.isfinite(c2w)) and np.all(np.isfinite(Ks))):
        raise InputError("cam_to_world and K must be finite")
    world_to_cam = np.linalg.inv(c2w)
    return Cameras(torch.from_numpy(world_to_cam).float().to(device), torch.from_numpy(Ks.copy()).float().to(device),
                   torch.zeros(len(c2w), dtype=torch.int64, device=device))


def average_renders(outputs: Sequence[RenderOutput]) -> RenderOutput:
    """Mean of several renders of the same cameras (colour, depth, features and alpha averaged per pixel;
    expected depth = mean depth / mean alpha, as for one render)."""
    if not outputs:
        raise InputError("average_renders: no renders given")
    if len(outputs) == 1:
        return outputs[0]
    mean = {k: torch.stack([getattr(o, k) for o in outputs]).mean(0) for k in ("color", "depth", "features", "alpha")}
    return RenderOutput(expected_depth=mean["depth"] / mean["alpha"].clamp_min(1e-10), **mean)


@contextlib.contextmanager
def _batchnorm_from_input(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers normalise with the statistics of the current input and leave their running
    averages as they are (momentum 0); everything else stays in eval mode."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.momentum) for m in norms]
    try:
        for m in norms:
            m.train()
            m.momentum = 0.0
        yield
    finally:
        for m, (training, momentum) in zip(norms, saved):
            m.train(training)
            m.momentum = momentum


def pretrain_header(model_cfg: GaussianCrossConfig, config: Any = None,
                    convention: Optional[InputConvention] = None) -> CheckpointHeader:
    """The header of a pretraining checkpoint (model under ``MODEL_PREFIX``, its encoder under
    ``PRETRAIN_ENCODER_PREFIX``); ``config``: the run's resolved config (a dataclass or dict);
    ``convention``: the model's input convention when known, else the one ``config`` feeds."""
    encoder_input = EncoderInput(model_cfg.grid_size_m, convention or _convention_of(config))
    return CheckpointHeader(kind=PRETRAIN_KIND, model_config=to_dict(model_cfg), encoder_config=to_dict(model_cfg.encoder),
                            encoder_prefix=PRETRAIN_ENCODER_PREFIX, config=to_dict(config),
                            **encoder_input.header_fields())


def _convention_of(config: Any) -> InputConvention:
    """The input convention a run's config feeds (data.pipeline; gcross's own when the config has none)."""
    pipeline = getattr(getattr(config, "data", None), "pipeline", None)
    if pipeline is None and isinstance(config, dict):
        pipeline = (config.get("data") or {}).get("pipeline")
        if isinstance(pipeline, dict) and "input_features" in pipeline:
            return InputConvention(pipeline["input_features"], pipeline["grid_lattice"])
        return GCROSS_CONVENTION
    return pipeline.convention if pipeline is not None else GCROSS_CONVENTION


def save_model(path, model: GaussianCross, config: Any = None,
               convention: Optional[InputConvention] = None) -> Path:
    """Save a GaussianCross model as a pretraining checkpoint holding only ``model.*`` tensors (what
    :meth:`GaussianCrossModel.from_checkpoint` and the segmentation tools read); ``config``: the run's
    resolved config (a dataclass or dict), kept in the header; ``convention``: the model's input
    convention (default: the one ``config`` feeds)."""
    return save_checkpoint(path, prefixed(model.state_dict(), MODEL_PREFIX), pretrain_header(model.cfg, config, convention))


class GaussianCrossModel:
    """A GaussianCross encoder + Gaussian head for inference: points -> :class:`Gaussians` -> renders."""

    def __init__(self, model: GaussianCross, device: Union[str, torch.device] = "cpu",
                 eval_input: EvalInput = EvalInput(), config: Optional[Dict[str, Any]] = None,
                 convention: InputConvention = GCROSS_CONVENTION):
        self.device = torch.device(device)
        # grid and colour range / voxel lattice of the encoder input (the checkpoint's header)
        self.encoder_input = EncoderInput(model.cfg.grid_size_m, convention)
        self.model = model.to(self.device).eval()
        self.eval_input = eval_input
        # None: the ratio the model was trained with (gamma of eq. 4)
        self.mask_ratio = model.cfg.mask_ratio if eval_input.mask_ratio is None else eval_input.mask_ratio
        self.config = config  # the resolved config of the run that trained the model, when known

    @property
    def cfg(self) -> GaussianCrossConfig:
        return self.model.cfg

    @property
    def grid_size_m(self) -> float:
        return self.model.cfg.grid_size_m

    @property
    def feature_dim(self) -> int:
        """d_f, the width of ``Gaussians.features`` and ``RenderOutput.features``."""
        return self.model.cfg.head.feature_dim

    @classmethod
    def from_checkpoint(cls, path, device: Union[str, torch.device] = "cpu",
                        eval_input: EvalInput = EvalInput()) -> "GaussianCrossModel":
        """Build from a pretraining checkpoint (``training/pretrain.py``: ``final.safetensors`` or
        ``checkpoints/last.safetensors``; header kind "pretrain" with ``model_config``).

        Read the header, build what it describes, load strictly: only the tensors under ``model.`` are read
        (projection heads and optimizer state are ignored) and every one of them must fit. Raises
        CheckpointError naming the file (and the field) when it is missing or corrupt, of another kind (e.g.
        a segmenter, which has no Gaussian head), or lacks its model config, grid or input convention.
        """
        tensors, header = load_checkpoint(path)
        header.expect_kind([PRETRAIN_KIND], f"a GaussianCross pretraining checkpoint (kind {PRETRAIN_KIND!r}, from "
                                            f"training/pretrain.py): only those carry the Gaussian head")
        cfg = header.parse("model_config", GaussianCrossConfig.from_dict)
        encoder_input = EncoderInput.from_header(header, cfg.encoder.in_channels)
        if encoder_input.grid_size_m != cfg.grid_size_m:
            raise CheckpointError(f"checkpoint {path}: grid_size_m {encoder_input.grid_size_m} differs from its "
                                  f"model_config's {cfg.grid_size_m}")
        model = GaussianCross(cfg)
        load_parts(tensors, header, [(MODEL_PREFIX, model)])
        return cls(model, device, eval_input, header.config, encoder_input.convention)

    def save(self, path) -> Path:
        """Write the model alone (no projection heads, no optimizer) as a pretraining checkpoint that
        :meth:`from_checkpoint` reads; atomic, safetensors."""
        return save_model(path, self.model, self.config, self.encoder_input.convention)

    @property
    def convention(self) -> InputConvention:
        """Colour range and voxel lattice of the encoder input (the checkpoint's header)."""
        return self.encoder_input.convention

    # ------------------------------------------------------------------------------------------------
    def points(self, scene: Optional[Scene] = None, *, coord: Optional[np.ndarray] = None,
               color: Optional[np.ndarray] = None, normal: Optional[np.ndarray] = None) -> PointBatch:
        """The encoder input of one scene: grid-sampled rows with encoder features (``inverse`` maps every
        input point to its row). Pass a Scene with points, or coord [N, 3] metres, color [N, 3] 0..255 and
        normal [N, 3] unit."""
        if scene is not None:
            if coord is not None or color is not None or normal is not None:
                raise InputError("pass either a Scene or coord/color/normal arrays, not both")
            if not scene.has_points:
                raise InputError(f"scene {scene.name!r} has no points (frames only); fuse its frames first "
                                 "(gcross_core.mapping.frame_sets.fuse_frames_to_points)")
            coord, color, normal = scene.coord, scene.color, scene.normal
        return self.encoder_input.batch(coord, color, normal, self.device).points

    @torch.no_grad()
    def _gaussians(self, batch: PointBatch, mask_seed: int) -> Gaussians:
        ev = self.eval_input
        if self.mask_ratio > 0:
            g = torch.Generator().manual_seed(int(mask_seed))
            batch, _ = mask_points(batch, self.mask_ratio, g)  # eq. 4, as in training
        ctx = _batchnorm_from_input(self.model) if ev.batchnorm == "input" else contextlib.nullcontext()
        with ctx:
            # the model stays in eval mode, so its own forward never masks a second time
            return self.model(batch).gaussians

    def gaussians(self, scene: Optional[Scene] = None, *, coord: Optional[np.ndarray] = None,
                  color: Optional[np.ndarray] = None, normal: Optional[np.ndarray] = None) -> Gaussians:
        """The model's Gaussians of one scene, in the frame of its points (eqs. 4-13); with a mask, the
        first mask's (``eval_input.seed``)."""
        return self._gaussians(self.points(scene, coord=coord, color=color, normal=normal), self.eval_input.seed)

    def gaussian_sets(self, scene: Optional[Scene] = None, *, coord: Optional[np.ndarray] = None,
                      color: Optional[np.ndarray] = None, normal: Optional[np.ndarray] = None) -> List[Gaussians]:
        """One Gaussians per mask (``eval_input.num_masks``; one set without a mask); :meth:`render` averages
        their images."""
        batch = self.points(scene, coord=coord, color=color, normal=normal)
        ev = self.eval_input
        count = ev.num_masks if self.mask_ratio > 0 else 1
        return [self._gaussians(batch, ev.seed + k) for k in range(count)]

    @torch.no_grad()
    def render(self, gaussians: Union[Gaussians, Sequence[Gaussians]], cameras: Cameras, width: int, height: int,
               backend: str = "auto") -> RenderOutput:
        """Render Gaussians of one scene at ``cameras`` (:func:`gcross_core.render.render`, eqs. 3, 14, 15);
        a list of Gaussians (:meth:`gaussian_sets`) is rendered set by set and averaged."""
        sets = [gaussians] if isinstance(gaussians, Gaussians) else list(gaussians)
        cameras = cameras.to(self.device)
        outs = [render(g.to(self.device), cameras, width, height, backend=backend, num_scenes=1) for g in sets]
        return average_renders(outs)
