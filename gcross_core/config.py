"""Configuration files: small frozen dataclasses, read from YAML with errors on unknown keys.

``from_dict(cls, data)`` builds any (nested) dataclass from plain dicts and lists, converting lists to
tuples where a field is declared as a tuple, and raises ``ConfigError`` naming the dotted path of a key
that the dataclass does not have; :func:`coerce` is its type check of one value (the node's parameters use
it too). ``load_config(path, cls, overrides)`` adds YAML reading and
``key.sub=value`` overrides (values parsed as YAML, so ``--set train.epochs=3`` gives an int).
``save_resolved`` writes the config a run actually used into its folder.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple, Type, TypeVar

import yaml

from gcross_core.errors import ConfigError, reading

T = TypeVar("T")


# ----------------------------------------------------------------------------------------------------
# dict <-> dataclass


def described(default: Any, description: str):
    """A dataclass field with a ``description`` in its metadata: the text a tool shows for it (the node
    declares its parameters with it, gcross_ros/node/params.py)."""
    return dataclasses.field(default=default, metadata={"description": description})


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def coerce(value: Any, tp, path: str) -> Any:
    """``value`` as type ``tp`` (a scalar, Optional/Union, tuple, list, dict or a config dataclass), or a
    ConfigError naming ``path`` (a dotted config key or a parameter name).

    The one type check of configuration values: YAML configs (:func:`from_dict`) and the node's ROS
    parameters (gcross_ros/node/params.py) both go through it. Integers are accepted for floats, and
    integral floats (``3.0``) for integers; bools are never numbers, and nothing else is converted.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is None:
        return value
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for a in non_none:
            try:
                return coerce(value, a, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{path}: {value!r} fits none of {tp} ({'; '.join(errors)})")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path} must be a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, path)
    if origin in (tuple, Tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{path} must have {len(args)} items, got {len(value)}")
        return tuple(coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args or [Any] * len(value))))
    if origin in (list, typing.List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        return [coerce(v, args[0] if args else Any, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, typing.Dict) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path} must be a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        return int(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        return value
    return value


def from_dict(cls: Type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and ill-typed values raise ConfigError."""
    if not _is_dataclass_type(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):
        # annotations naming types only imported under TYPE_CHECKING: convert what can be resolved
        hints = {f.name: f.type for f in dataclasses.fields(cls) if not isinstance(f.type, str)}
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(known))
    if unknown:
        where = f" in {path}" if path else ""
        raise ConfigError(f"unknown config key(s) {unknown}{where}; {cls.__name__} has {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = coerce(value, hints.get(name, Any), f"{path}.{name}" if path else name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{path or cls.__name__}: {e}") from e


class DictConfig:
    """Mixin for config dataclasses: ``to_dict()`` and ``cls.from_dict(d)`` through :func:`to_dict` and
    :func:`from_dict` (unknown keys and ill-typed values raise ConfigError, a ValueError)."""

    def to_dict(self) -> Dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls: Type[T], d: Mapping[str, Any]) -> T:
        return from_dict(cls, d)


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) -> plain dicts/lists, JSON- and YAML-serialisable."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ----------------------------------------------------------------------------------------------------
# YAML + overrides


def parse_override(text: str) -> Tuple[Tuple[str, ...], Any]:
    """``'train.epochs=3'`` -> (('train', 'epochs'), 3). The value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    keys = tuple(k for k in key.strip().split("."))
    if not keys or any(not k for k in keys):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {e}") from e
    return keys, value


def apply_overrides(data: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """Set dotted keys in a nested dict (copied). Intermediate mappings are created as needed; whether a
    key exists is checked later by :func:`from_dict`, so a typo still fails loudly."""
    out = json.loads(json.dumps(data))  # deep copy of plain data
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: {k!r} is a value, not a section")
            node = nxt
        node[keys[-1]] = value
    return out


def read_yaml(path, what: str = "config file") -> Dict[str, Any]:
    """The mapping a YAML file holds; ConfigError naming ``what`` and the file when it is missing, is not
    YAML or holds something else."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        with reading(path, "a YAML file"):
            data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {' '.join(str(e).split())}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping at the top level")
    return data


def load_config(path, cls: Type[T], overrides: Optional[Iterable[str]] = None) -> T:
    """Read ``path`` (YAML), apply ``overrides`` (``key.sub=value``) and build ``cls``."""
    data = apply_overrides(read_yaml(path), overrides or [])
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def save_resolved(obj: Any, run_dir) -> Path:
    """Write the resolved config as ``config.yaml`` and ``config.json`` into the run folder."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = to_dict(obj)
    (run_dir / "config.json").write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return run_dir / "config.yaml"
