"""Differentiable Gaussian splatting: ``render(gaussians, cameras, width, height, backend=...)``.

The pure-PyTorch reference (``reference.py``) runs anywhere; the gsplat backend (``gsplat_backend.py``,
the only module importing gsplat) runs on CUDA.
"""
from gcross_core.render.api import render
from gcross_core.render.config import RenderConfig

__all__ = ["render", "RenderConfig"]
