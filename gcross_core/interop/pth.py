"""Reading foreign PyTorch ``.pth`` files (Pointcept / released GaussianCross checkpoints) without executing
any pickled code.

``torch.load(weights_only=True)`` refuses a whole file as soon as its pickle names a global outside its
allow-list, and Pointcept checkpoints name several beside the weights: the OneCycleLR state of every
GaussianCross config holds a bound method (``anneal_func``, PyTorch < 2.4), ``best_metric_value`` is a numpy
scalar. :func:`read_pth` reads such files with a restricted unpickler instead:

- tensors, ``OrderedDict`` and the plain containers pickle builds by itself (dict, list, tuple, str, numbers)
  are rebuilt;
- every other global (functions, classes, ``getattr``, numpy constructors, ...) becomes an :class:`Inert`
  placeholder that records its name and arguments and never runs anything;
- a tensor whose bytes cannot be read (missing record, wrong size, big-endian file) becomes an
  :class:`UnreadableTensor` carrying the reason, so the caller can name the state-dict key.

Both serialisation formats are read: the zip format (PyTorch >= 1.6, read here record by record) and the
legacy format (``_use_new_zipfile_serialization=False``), read by ``torch.load`` with this module's
restricted unpickler as its ``pickle_module`` (torch then only supplies the storages).
"""
from __future__ import annotations

import collections
import io
import pickle
import types
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from gcross_core.errors import CheckpointError

# storage class names (module torch) -> element type; what torch.save writes for a tensor's storage
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexDoubleStorage": torch.complex128, "ComplexFloatStorage": torch.complex64,
    "UntypedStorage": torch.uint8,
}


class Inert:
    """Stands in for a global the file names but the reader does not trust; calling or building it only
    records the arguments. ``target`` is the global's ``module.name``."""

    target = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state = args, kwargs, None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.target}>"


class UnreadableTensor:
    """A tensor entry of the file whose data could not be rebuilt; ``reason`` says why."""

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self) -> str:
        return f"<unreadable tensor: {self.reason}>"


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class _StorageRef:
    """A storage record of a zip-format file, read when a tensor uses it."""

    def __init__(self, dtype: torch.dtype, key: str, numel: int):
        self.dtype, self.key, self.numel = dtype, key, numel


class _RestrictedUnpickler(pickle.Unpickler):
    """The only globals it resolves are the tensor rebuilders, OrderedDict and storage types; the rest is
    :class:`Inert`. ``archive``: the open zip file and its record prefix (zip format), else None."""

    def __init__(self, file, *, archive: Optional[Tuple[zipfile.ZipFile, str]] = None, **kwargs):
        super().__init__(file, **kwargs)
        self._archive = archive
        self._storages: Dict[str, Any] = {}
        self._inert: Dict[Tuple[str, str], type] = {}

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return self._rebuild_tensor
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return self._rebuild_parameter
        if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        key = (str(module), str(name))
        if key not in self._inert:
            self._inert[key] = type("Inert", (Inert,), {"target": f"{module}.{name}"})
        return self._inert[key]

    def zip_persistent_load(self, pid):
        # zip format: ('storage', storage type, record key, location, number of elements)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            return UnreadableTensor(f"unknown persistent id {pid!r:.80}")
        _, storage_type, key, _, numel = pid
        if not isinstance(storage_type, _StorageType):
            return UnreadableTensor(f"storage record {key!r} has an unknown type ({storage_type!r})")
        return _StorageRef(storage_type.dtype, str(key), int(numel))

    def _storage_tensor(self, ref: _StorageRef):  # -> flat tensor or UnreadableTensor
        if ref.key not in self._storages:
            zf, root = self._archive
            try:
                raw = zf.read(f"{root}data/{ref.key}")
            except (KeyError, zipfile.BadZipFile, OSError, ValueError) as e:
                self._storages[ref.key] = UnreadableTensor(f"storage record data/{ref.key}: {e}")
            else:
                itemsize = torch.empty((), dtype=ref.dtype).element_size()
                if len(raw) != ref.numel * itemsize:
                    self._storages[ref.key] = UnreadableTensor(
                        f"storage record data/{ref.key} holds {len(raw)} bytes, expected {ref.numel} x {itemsize}")
                else:
                    self._storages[ref.key] = torch.frombuffer(bytearray(raw), dtype=ref.dtype) if raw else \
                        torch.empty(0, dtype=ref.dtype)
        return self._storages[ref.key]

    def _rebuild_tensor(self, storage, offset, size, stride, *_):
        """torch._utils._rebuild_tensor(_v2): a view of ``storage``; the trailing arguments (requires_grad,
        backward hooks, metadata) are dropped."""
        if isinstance(storage, UnreadableTensor):
            return storage
        try:
            if isinstance(storage, _StorageRef):
                flat = self._storage_tensor(storage)
                if isinstance(flat, UnreadableTensor):
                    return flat
                return torch.as_strided(flat, tuple(size), tuple(stride), int(offset)).clone()
            if isinstance(storage, torch.storage.TypedStorage):
                # legacy format: torch fills the storage after unpickling, so this must stay a view
                return torch._utils._rebuild_tensor(storage, int(offset), tuple(size), tuple(stride))
        except (RuntimeError, TypeError, ValueError) as e:
            return UnreadableTensor(f"size {size!r:.60} / stride {stride!r:.60} do not fit the storage: {e}")
        return UnreadableTensor(f"its storage is {storage!r:.80}, not tensor data")

    @staticmethod
    def _rebuild_parameter(data, *_):
        return data if isinstance(data, (torch.Tensor, UnreadableTensor)) else UnreadableTensor(
            f"a parameter of {data!r:.80}")


def _legacy_load(file, **kwargs):
    return _RestrictedUnpickler(file, **kwargs).load()


# what torch.load takes as ``pickle_module`` for the legacy format: it subclasses Unpickler and calls load
_restricted_pickle = types.ModuleType("gcross_restricted_pickle")
_restricted_pickle.Unpickler = _RestrictedUnpickler
_restricted_pickle.load = _legacy_load


def read_pth(path) -> Any:
    """The object a ``.pth`` file holds, read without executing pickled code (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                pickles = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
                if len(pickles) != 1:
                    raise CheckpointError(f"{path}: a zip file without one <archive>/data.pkl record "
                                          f"(found {pickles[:3]}); not a PyTorch checkpoint")
                root = pickles[0][: -len("data.pkl")]
                if f"{root}byteorder" in zf.namelist() and zf.read(f"{root}byteorder").strip() != b"little":
                    raise CheckpointError(f"{path} was written on a big-endian machine; re-save it on x86/ARM")
                unpickler = _RestrictedUnpickler(io.BytesIO(zf.read(pickles[0])), archive=(zf, root),
                                                 encoding="utf-8")
                # assigned, not defined on the class, as torch.load does for the legacy format
                unpickler.persistent_load = unpickler.zip_persistent_load
                return unpickler.load()
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to parse the file is reported with its name
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {type(e).__name__}: {e}") from e


__all__ = ["Inert", "UnreadableTensor", "read_pth"]
