"""The project's exceptions: every error gcross raises on purpose derives from :class:`GcrossError`.

Two kinds, because callers treat them differently:

- :class:`InputError`: what the caller gave is unusable (a file, a config value, an argument, a bag). It is
  also a ``ValueError``, so code written against the standard library keeps working. Command-line tools
  exit 2 for these (see :mod:`gcross_core.cli`).
- any other :class:`GcrossError`: the work itself failed at run time (a node that never answered, a run
  that diverged). Command-line tools exit 1.

Readers of files wrap their parsing in :func:`reading`, so that a truncated or garbled file is an
``InputError`` naming the file and what it should have held, whatever the parser underneath raised.
"""
from __future__ import annotations

import contextlib
import pickle
import struct
import zlib
from typing import Iterator


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


# What parsers (numpy, PIL, json, struct, zlib, pickle, Python's own file reading) raise on a damaged file;
# PIL's format plugins raise SyntaxError for a malformed image.
_DAMAGED_FILE = (ValueError, EOFError, KeyError, IndexError, TypeError, struct.error, zlib.error, OSError,
                 pickle.UnpicklingError, SyntaxError)
# Already say which input is missing: passed through as they are.
_PASS_THROUGH = (InputError, FileNotFoundError, IsADirectoryError, NotADirectoryError)


@contextlib.contextmanager
def reading(path, expected: str) -> Iterator[None]:
    """Around the parsing of one file: what a truncated or garbled file makes the parser raise becomes one
    :class:`InputError` ``"<path> is not <expected> (<what the parser said>)"``. Keep the body to the
    reading itself, so that a bug of the caller is not reported as a bad file."""
    try:
        yield
    except _PASS_THROUGH:
        raise
    except _DAMAGED_FILE as e:
        detail = " ".join(str(e).split()) or "no detail"
        raise InputError(f"{path} is not {expected} ({type(e).__name__}: {detail})") from e
