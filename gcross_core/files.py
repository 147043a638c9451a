"""Writing a file so that no reader, and no crash, ever finds half of it.

Checkpoints, teacher-feature caches and results.json are written through :func:`atomic_path`: the data
goes to a temporary file beside the target and is renamed onto it (``os.replace``, atomic on one file
system) only once it is complete.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path, durable: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write; renamed onto ``path`` when the block ends,
    deleted if it raises. ``durable``: flush the file to disk before the rename, so that the new file, not
    an empty one, survives a power cut (checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
