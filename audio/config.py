"""YAML configs that map one-to-one onto (nested) frozen dataclasses.

``load_config(ExpConfig, "x.yaml", overrides=["model.hidden=256"])`` builds the dataclass from the YAML
mapping; an unknown key, in the file or in an override, is an error that names it.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = ["from_dict", "to_dict", "load_config", "apply_overrides", "save_config"]

T = TypeVar("T")


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def from_dict(cls: type[T], data: dict[str, Any] | None, *, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, recursing into dataclass-typed fields."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown config key(s) {sorted(unknown)} in {where or cls.__name__}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if _is_dataclass_type(tp) and isinstance(value, dict):
            value = from_dict(tp, value, where=f"{where}.{name}" if where else name)
        elif isinstance(value, list) and typing.get_origin(tp) is tuple:
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def to_dict(obj) -> dict[str, Any]:
    """A dataclass as plain dicts, lists and scalars (YAML/JSON-safe)."""
    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(obj).items()}


def _parse_value(text: str):
    return yaml.safe_load(text)


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML scalars) to a nested mapping, in place."""
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key.path=value")
        key, value = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = _parse_value(value)
    return data


def load_config(cls: type[T], path: str | os.PathLike | None, overrides: list[str] | None = None) -> T:
    """Read YAML ``path`` (or start from defaults when None), apply overrides, build ``cls``."""
    data: dict[str, Any] = {}
    if path is not None:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a config must be a YAML mapping")
    apply_overrides(data, overrides)
    return from_dict(cls, data, where=str(path) if path else cls.__name__)


def save_config(path: str | os.PathLike, cfg) -> None:
    """Write a config dataclass as YAML, atomically."""
    from audio.atomic import write_text

    write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))
