"""The project's exceptions: every error gcross raises on purpose derives from :class:`GcrossError`.

Two kinds, because callers treat them differently:

- :class:`InputError`: what the caller gave is unusable (a file, a config value, an argument, a bag). It is
  also a ``ValueError``, so code written against the standard library keeps working. Command-line tools
  exit 2 for these (see :mod:`gcross_core.cli`).
- any other :class:`GcrossError`: the work itself failed at run time (a node that never answered, a run
  that diverged). Command-line tools exit 1.
"""
from __future__ import annotations


class GcrossError(Exception):
    """Base of every exception the project raises on purpose."""


class InputError(GcrossError, ValueError):
    """An input (file, folder, config value, argument, message) is missing or not what was expected."""


class ConfigError(InputError):
    """A configuration file or override does not fit the config it is read into."""


class CheckpointError(InputError):
    """A checkpoint file is missing, unreadable or of the wrong kind for the tool reading it."""


class BagError(InputError):
    """A ROS 2 bag is missing, unreadable or lacks what the tool needs."""


class PointceptImportError(CheckpointError):
    """A foreign checkpoint (Pointcept / released GaussianCross ``.pth``) cannot be converted."""


class StaleCacheError(InputError):
    """A teacher-feature cache was written for other frames or another teacher than the one asked for."""


class TeacherWeightsNotFound(InputError, FileNotFoundError):
    """Pretrained weights a teacher needs are not on this machine (nothing is ever downloaded)."""


class LiveEvalError(GcrossError, RuntimeError):
    """A live evaluation could not complete (the node published nothing usable in time)."""


class SegmenterProcessError(GcrossError, RuntimeError):
    """The segmenter's child process (gcross_core.segmentation.process) did not start in time or ended."""


class MalformedMessageError(InputError):
    """A message's fields contradict each other (an image buffer shorter than step * height, a step
    smaller than one row): the sender is broken, unlike an encoding the reader merely does not support."""


class UnavailableError(GcrossError, RuntimeError):
    """Something the configuration asks for (a CUDA device, an optional package such as tf2_ros) is not
    available on this machine: the input is fine, this machine cannot serve it (command-line tools exit 1)."""


class RenderBackendError(UnavailableError):
    """A render backend cannot run on this machine (no CUDA, gsplat missing or its CUDA extension not built)."""
