"""A :class:`~gcross_core.segmentation.segmenter.Segmenter` in a child process of its own.

The node fuses frames on its callback thread while it segments; in one process the model's Python and
numpy work competes with fusion for the interpreter lock, and fusion stalls for as long as a forward pass
(on 2 cores: fusion 98.5 ms/frame wall against 28.5 ms CPU behind a full-size SpUNet). In a child
process the model holds its own interpreter and its own ``threads`` cores; the parent keeps the rest.

``SegmenterProcess`` has the parts of the Segmenter interface the mapping pipeline and the node use
(``class_names``, ``grid_size_m``, ``has_instance_head``, ``instance_config``, ``predict``,
``predict_instances``), so :class:`~gcross_core.mapping.pipeline.SegmentationPipeline` takes either. Point
arrays go to the child and probabilities come back through a pipe as pickled numpy buffers (protocol 5):
for 40k points and 20 classes about 5 MB, a few milliseconds. The child is started with ``spawn`` (never
``fork``: the parent runs DDS threads), loads the checkpoint itself and reports a load failure as the
same error type the parent would have raised. It ends when the parent calls :meth:`close`, or when the
parent dies (its pipe closes). With ``nice`` > 0 the child runs at that lower scheduling priority: where
the parent's work cannot wait (the node's fusion of a camera stream), the child yields a contended core
to it instead of taking half of it.
"""
from __future__ import annotations

import multiprocessing as mp
import threading
from typing import Optional, Tuple

import numpy as np

from gcross_core.errors import InputError, SegmenterProcessError

_READY, _RESULT, _ERROR = "ready", "result", "error"


def _serve(conn, checkpoint: str, device: str, threads: int, nice: int) -> None:  # runs in the child
    import os

    import torch

    if nice > 0:
        os.nice(nice)
    torch.set_num_threads(max(1, int(threads)))
    try:
        from gcross_core.segmentation.segmenter import Segmenter

        seg = Segmenter.from_checkpoint(checkpoint, device)
    except Exception as e:  # reported to the parent, which raises it as its own
        conn.send((_ERROR, type(e).__name__, str(e)))
        return
    conn.send((_READY, dict(class_names=seg.class_names, grid_size_m=seg.grid_size_m,
                            instance_config=seg.instance_config)))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the parent closed the pipe or died
            return
        if request is None:
            return
        method, coord, color, normal = request
        try:
            if method == "predict_instances":
                out = seg.predict_instances(coord, color, normal)
            else:
                out = seg.predict(coord, color, normal, return_probs=True)
            conn.send((_RESULT, out))
        except Exception as e:
            conn.send((_ERROR, type(e).__name__, str(e)))


class SegmenterProcess:
    """The segmenter of ``checkpoint`` in a child process using ``threads`` torch threads, at niceness
    ``nice`` above the parent's (0: the same priority)."""

    def __init__(self, checkpoint, device: str = "cpu", threads: int = 1, start_timeout_s: float = 600.0,
                 nice: int = 0):
        if int(nice) != nice or nice < 0:
            raise InputError(f"nice must be an integer >= 0, got {nice!r}")
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._lock = threading.Lock()  # one request at a time
        self._proc = ctx.Process(target=_serve, args=(child, str(checkpoint), device, threads, int(nice)),
                                 daemon=True,
                                 name="gcross_segmenter")
        self._proc.start()
        child.close()
        self.threads = int(threads)
        kind, *payload = self._receive(start_timeout_s, "load the checkpoint")
        if kind == _ERROR:
            self.close()
            raise _rebuild(*payload)
        info = payload[0]
        self.class_names = list(info["class_names"])
        self.grid_size_m = float(info["grid_size_m"])
        self.instance_config = info["instance_config"]

    @property
    def has_instance_head(self) -> bool:
        return self.instance_config is not None

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid

    def _receive(self, timeout_s: Optional[float], doing: str):
        if not self._conn.poll(timeout_s):
            raise SegmenterProcessError(f"the segmenter process did not {doing} within {timeout_s:g} s")
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            self._proc.join(1.0)
            raise SegmenterProcessError(f"the segmenter process ended (exit status {self._proc.exitcode}) "
                                        f"while asked to {doing}") from None

    def _call(self, method: str, coord, color, normal):
        with self._lock:
            if not self._proc.is_alive():
                raise SegmenterProcessError(f"the segmenter process has ended (exit status {self._proc.exitcode})")
            self._conn.send((method, np.ascontiguousarray(coord), np.ascontiguousarray(color),
                             np.ascontiguousarray(normal)))
            kind, *payload = self._receive(None, method)
        if kind == _ERROR:
            raise _rebuild(*payload)
        return payload[0]

    def predict(self, coord: np.ndarray, color: np.ndarray, normal: np.ndarray,
                return_probs: bool = False) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        labels, conf, probs = self._call("predict", coord, color, normal)
        return labels, conf, (probs if return_probs else None)

    def predict_instances(self, coord: np.ndarray, color: np.ndarray, normal: np.ndarray):
        return self._call("predict_instances", coord, color, normal)

    def close(self, timeout_s: float = 10.0) -> None:
        """Ask the child to end, wait ``timeout_s``, then terminate it (at once if a request is under way
        for longer than ``timeout_s``)."""
        if self._lock.acquire(timeout=timeout_s):
            try:
                self._conn.send(None)
            except (OSError, ValueError):
                pass
            finally:
                self._lock.release()
            self._proc.join(timeout_s)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout_s)
        self._conn.close()


_BUILTIN_ERRORS = {e.__name__: e for e in (ValueError, FileNotFoundError, RuntimeError)}


def _rebuild(type_name: str, text: str) -> Exception:
    """The child's error as the parent's exception type: the project's (gcross_core.errors) or a few builtins
    the segmenter raises; anything else as a SegmenterProcessError naming it."""
    from gcross_core import errors

    cls = getattr(errors, type_name, None) or _BUILTIN_ERRORS.get(type_name)
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls(text)
    return SegmenterProcessError(f"{type_name}: {text}")
