"""SpUNet point encoder on spconv. This is the only module of gcross_core that imports spconv."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Tuple

import torch
from torch import Tensor, nn

from gcross_core.config import DictConfig
from gcross_core.errors import ConfigError, InputError
from gcross_core.types import PointBatch


def _import_spconv():
    """Import spconv.pytorch, making its backward usable on CPU-only torch.

    spconv's conv backward asks ``torch.cuda.current_stream()`` for a stream handle even when every
    tensor is on the CPU, which raises 'Torch not compiled with CUDA enabled' on CPU-only torch. The CPU
    kernels ignore the stream, so on machines without CUDA the lookup is replaced by the null stream (0).
    This is the one place in the project that works around it.
    """
    import spconv.pytorch as spconv_pt

    if not torch.cuda.is_available():
        from spconv.pytorch import cppcore, hash as sp_hash, ops

        def _null_stream() -> int:
            return 0

        for module in (cppcore, ops, sp_hash):
            module.get_current_stream = _null_stream
    return spconv_pt


spconv = _import_spconv()


class _SpconvOpsWithSafeCPUScatter:
    """``SpconvOps`` with its CPU scatter-add replaced by ``Tensor.index_add_``.

    spconv 2.3.x's CPU ``scatter_add`` kernel shares two row pointers between its OpenMP threads, so with
    more than one thread a row now and then receives a wrong sum (seen on 2 cores: a few percent of
    submanifold convs on ~500 sites gave a different result each run). Both the forward and the backward
    of every CPU sparse conv go through it; the rest of ``SpconvOps`` is passed through untouched.
    """

    def __init__(self, ops_cls):
        self._ops = ops_cls

    def __getattr__(self, name):
        return getattr(self._ops, name)

    @staticmethod
    def scatter_add_cpu(out, inp, inds) -> None:
        # out: [M, C] tv.Tensor, inp: [>= K, C] tv.Tensor (a reused buffer), inds: [K] int32 tv.Tensor
        out_t = torch.from_numpy(out.numpy_view())
        inds_t = torch.from_numpy(inds.numpy_view()).long()
        inp_t = torch.from_numpy(inp.numpy_view())[: inds_t.shape[0]]
        out_t.index_add_(0, inds_t, inp_t)


def _use_safe_cpu_scatter() -> None:
    from spconv.pytorch import ops

    if not isinstance(ops.SpconvOps, _SpconvOpsWithSafeCPUScatter):
        ops.SpconvOps = _SpconvOpsWithSafeCPUScatter(ops.SpconvOps)


_use_safe_cpu_scatter()


@dataclass(frozen=True)
class SpUNetConfig(DictConfig):
    """SparseUNet ("SpUNet34C" with the defaults), the backbone E_phi of eq. 5.

    ``channels``/``layers`` list the encoder stages first (downsampling by 2 each) and then the decoder
    stages from the coarsest back to full resolution, as in Pointcept's SpUNet-v1m1, so a config and its
    state dict move between the two code bases unchanged.
    """

    in_channels: int = 6  # RGB in 0..1 + unit normal
    base_channels: int = 32  # width of the 5^3 stem at full resolution
    channels: Tuple[int, ...] = (32, 64, 128, 256, 256, 128, 96, 96)
    layers: Tuple[int, ...] = (2, 3, 4, 6, 2, 2, 2, 2)  # residual blocks per stage
    num_classes: int = 0  # 0: backbone only; > 0 adds Pointcept's 1x1 `final` classifier

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "layers", tuple(int(n) for n in self.layers))
        if len(self.channels) != len(self.layers) or len(self.layers) % 2 or not self.layers:
            raise ConfigError(f"SpUNetConfig: channels {self.channels} and layers {self.layers} must have the "
                              "same even, non-zero length (encoder stages then decoder stages)")
        if min(self.channels) <= 0 or min(self.layers) <= 0 or self.in_channels <= 0 or self.base_channels <= 0:
            raise ConfigError(f"SpUNetConfig: channel and layer counts must be positive, got {self}")
        if self.num_classes < 0:
            raise ConfigError(f"SpUNetConfig: num_classes must be >= 0, got {self.num_classes}")

    @property
    def num_stages(self) -> int:
        return len(self.layers) // 2


def _norm(channels: int) -> nn.BatchNorm1d:
    # Pointcept's SpUNet uses these BatchNorm settings; keeping them keeps fine-tuning behaviour comparable
    return nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)


class _ResidualBlock(spconv.SparseModule):
    """Two 3^3 submanifold convs with a (projected) identity shortcut.

    Attribute names (proj, conv1, bn1, conv2, bn2) are part of the checkpoint format.
    """

    def __init__(self, in_channels: int, out_channels: int, indice_key: str):
        super().__init__()
        if in_channels == out_channels:
            self.proj = nn.Identity()
        else:
            self.proj = spconv.SparseSequential(
                spconv.SubMConv3d(in_channels, out_channels, kernel_size=1, bias=False), _norm(out_channels))
        # the shared indice_key lets all blocks of one resolution reuse a single neighbour search
        self.conv1 = spconv.SubMConv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=False,
                                       indice_key=indice_key)
        self.bn1 = _norm(out_channels)
        self.conv2 = spconv.SubMConv3d(out_channels, out_channels, kernel_size=3, padding=1, bias=False,
                                       indice_key=indice_key)
        self.bn2 = _norm(out_channels)

    def forward(self, x):
        shortcut = x.features if isinstance(self.proj, nn.Identity) else self.proj(x).features
        out = self.conv1(x)
        out = out.replace_feature(torch.relu(self.bn1(out.features)))
        out = self.conv2(out)
        return out.replace_feature(torch.relu(self.bn2(out.features) + shortcut))


def _stage(in_channels: int, out_channels: int, num_blocks: int, indice_key: str) -> "spconv.SparseSequential":
    return spconv.SparseSequential(OrderedDict(
        (f"block{i}", _ResidualBlock(in_channels if i == 0 else out_channels, out_channels, indice_key))
        for i in range(num_blocks)))


class SpUNet(nn.Module):
    """Submanifold sparse-conv U-Net on spconv; one feature per PointBatch row (eq. 5: F_s = E_phi(P_g)).

    The module tree reproduces Pointcept's ``SpUNet-v1m1`` (``SpUNetBase``) so that state dicts load in both
    directions: ``conv_input``, then per stage ``down[s]`` (stride-2 sparse conv) + ``enc[s]`` (blocks), and
    ``up[s]`` (inverse conv) + ``dec[s]`` (blocks on [upsampled, skip]) back to full resolution.
    """

    def __init__(self, cfg: SpUNetConfig = SpUNetConfig()):
        super().__init__()
        self.cfg = cfg
        ch, layers, n = cfg.channels, cfg.layers, cfg.num_stages
        self.conv_input = spconv.SparseSequential(
            spconv.SubMConv3d(cfg.in_channels, cfg.base_channels, kernel_size=5, padding=1, bias=False,
                              indice_key="stem"),
            _norm(cfg.base_channels),
            nn.ReLU(),
        )
        self.down = nn.ModuleList()
        self.enc = nn.ModuleList()
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for s in range(n):
            skip_channels = cfg.base_channels if s == 0 else ch[s - 1]  # features entering stage s
            dec_channels = ch[len(ch) - 1 - s]  # decoder width once back at the resolution of level s
            # the coarsest decoder stage upsamples the bottleneck; the others upsample the stage below them
            up_in = ch[len(ch) - 2 - s]
            self.down.append(spconv.SparseSequential(
                spconv.SparseConv3d(skip_channels, ch[s], kernel_size=2, stride=2, bias=False,
                                    indice_key=f"spconv{s + 1}"),
                _norm(ch[s]), nn.ReLU()))
            self.enc.append(_stage(ch[s], ch[s], layers[s], indice_key=f"subm{s + 1}"))
            self.up.append(spconv.SparseSequential(
                spconv.SparseInverseConv3d(up_in, dec_channels, kernel_size=2, bias=False,
                                           indice_key=f"spconv{s + 1}"),
                _norm(dec_channels), nn.ReLU()))
            self.dec.append(_stage(dec_channels + skip_channels, dec_channels, layers[len(ch) - 1 - s],
                                   indice_key=f"subm{s}"))
        if cfg.num_classes > 0:
            self.final = spconv.SubMConv3d(ch[-1], cfg.num_classes, kernel_size=1, padding=1, bias=True)
        self.out_channels = cfg.num_classes if cfg.num_classes > 0 else ch[-1]
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Same scheme as Pointcept: small truncated normal for submanifold convs, unit BatchNorm;
        # strided and inverse convs keep spconv's Kaiming-uniform default.
        if isinstance(m, spconv.SubMConv3d):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _check_input(self, points: PointBatch) -> None:
        n = points.coord.shape[0]
        if n == 0:
            raise InputError("SpUNet: the point batch is empty (0 rows); every scene needs at least one point")
        if points.grid_coord is None:
            raise InputError("SpUNet: points.grid_coord is None; grid-sample the points first "
                             "(gcross_core.data.grid.grid_sample)")
        if points.feat.shape[1] != self.cfg.in_channels:
            raise InputError(f"SpUNet: feat has {points.feat.shape[1]} channels per point, the encoder expects "
                             f"in_channels={self.cfg.in_channels} (e.g. RGB + normal = 6)")
        counts = torch.diff(points.offset, prepend=points.offset.new_zeros(1))
        if bool((counts <= 0).any()):
            empty = torch.nonzero(counts <= 0).flatten().tolist()
            raise InputError(f"SpUNet: scene(s) {empty} of the batch have no points (offset {points.offset.tolist()})")
        if bool((points.grid_coord < 0).any()):
            raise InputError("SpUNet: grid_coord has negative entries; grid coordinates must be >= 0 per scene")
        if not bool(torch.isfinite(points.feat).all()):
            raise InputError("SpUNet: feat contains NaN or inf")

    def forward(self, points: PointBatch) -> Tensor:
        """points: PointBatch with grid_coord [N, 3] int and feat [N, in_channels]; returns [N, out_channels]."""
        self._check_input(points)
        grid_coord = points.grid_coord.int()
        batch = points.batch.int()
        # Each stride-2 stage maps cell i to i // 2; a spatial extent that is a multiple of 2^stages keeps
        # every cell inside the grid at every level (Pointcept pads by a fixed 96 cells for the same reason).
        step = 2 ** self.cfg.num_stages
        extent = ((grid_coord.amax(0) + 1 + step - 1) // step * step).tolist()
        x = spconv.SparseConvTensor(
            features=points.feat,
            indices=torch.cat([batch[:, None], grid_coord], 1).contiguous(),
            spatial_shape=extent,
            batch_size=points.num_scenes,
        )
        x = self.conv_input(x)
        skips = [x]
        for down, enc in zip(self.down, self.enc):
            x = enc(down(x))
            skips.append(x)
        x = skips.pop()
        for s in reversed(range(self.cfg.num_stages)):
            x = self.up[s](x)
            skip = skips.pop()
            x = self.dec[s](x.replace_feature(torch.cat([x.features, skip.features], 1)))
        if self.cfg.num_classes > 0:
            x = self.final(x)
        # spconv returns the input sites in input order for submanifold/inverse convs: row i is point i
        return x.features
