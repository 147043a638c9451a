"""The encoder's input features: the one place that turns a point's colour and normal into what the
encoder sees. Pretraining samples, segmentation samples and :class:`~gcross_core.segmentation.segmenter.Segmenter`
all call :func:`encoder_features`, so a model is always fed the convention it was trained on.

The convention's name (:data:`INPUT_FEATURES`) is written into every segmenter checkpoint, and a
checkpoint recorded with another one (e.g. an imported Pointcept encoder, trained on colour in -1..1) is
refused at inference instead of being fed the wrong scale.
"""
from __future__ import annotations

import numpy as np

INPUT_FEATURES = "rgb01_normal"  # RGB scaled to 0..1, then the unit normal
IN_CHANNELS = 6


def encoder_features(color: np.ndarray,  # [N, 3] 0..255
                     normal: np.ndarray,  # [N, 3] unit
                     ) -> np.ndarray:  # [N, 6] float32
    """Encoder input per point (``INPUT_FEATURES``): RGB scaled to 0..1 followed by the unit normal."""
    color = np.asarray(color, np.float32)
    normal = np.asarray(normal, np.float32)
    assert color.ndim == 2 and color.shape[1] == 3, f"color has shape {color.shape}, expected [N, 3]"
    assert normal.shape == color.shape, f"normal has shape {normal.shape}, expected {color.shape}"
    return np.concatenate([color / 255.0, normal], axis=1)
