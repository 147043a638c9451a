"""Moving (nested) batches to the training device."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch


def move_to(obj: Any, device: torch.device) -> Any:
    """Move tensors inside (nested) batches to ``device``: tensors, objects with ``.to``, dataclasses,
    dicts, lists and tuples."""
    if torch.is_tensor(obj):
        return obj.to(device, non_blocking=True)
    if hasattr(obj, "to") and callable(obj.to) and not isinstance(obj, type):
        return obj.to(device)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: move_to(getattr(obj, f.name), device)
                                           for f in dataclasses.fields(obj) if f.init})
    if isinstance(obj, Mapping):
        return type(obj)({k: move_to(v, device) for k, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to(v, device) for v in obj)
    return obj
