"""YAML configs that map one-to-one onto (nested) frozen dataclasses.

``load_config(ExpConfig, "x.yaml", overrides=["model.hidden=256"])`` builds the dataclass from the YAML
mapping; an unknown key, in the file or in an override, is an error that names it.

A config may start from another: ``base: wavenet_preemph.yaml`` (a path relative to the file) takes that
file's mapping and lays this one's keys over it, section by section (``read_yaml``), so a stage config
lists only what it changes. One level: a base names no base of its own, so a recipe's prerequisites are
the config and, at most, the one file its ``base:`` line names.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = ["from_dict", "to_dict", "read_yaml", "load_config", "apply_overrides", "save_config"]

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
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, key)
    return cls(**kwargs)


def _coerce(tp, value, key: str):
    """``value`` as field type ``tp``: nested dataclasses built, lists made tuples, and numbers that YAML
    read as strings (PyYAML reads ``3e-4`` as a string) parsed. A mismatch is an error naming ``key``."""
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ValueError(f"config key {key} must be a mapping, got {value!r}")
        return from_dict(tp, value, where=key)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(option, value, key)
            except (TypeError, ValueError) as err:
                errors.append(str(err))
        raise ValueError(f"config key {key}: {value!r} fits none of {options}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {key} must be a list, got {value!r}")
        inner = args[0] if args else typing.Any
        return tuple(_coerce(inner, v, key) for v in value)
    if isinstance(value, dict):
        raise ValueError(f"config key {key} is not a section, got a mapping")
    if tp is float and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"config key {key} must be a number, got {value!r}") from None
    if tp is int and not isinstance(value, bool):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int):
            raise ValueError(f"config key {key} must be an integer, got {value!r}")
    if tp is bool and not isinstance(value, bool):
        raise ValueError(f"config key {key} must be true or false, got {value!r}")
    if tp is str and not isinstance(value, str):
        raise ValueError(f"config key {key} must be a string, got {value!r}")
    return value


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


def _read_mapping(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config must be a YAML mapping")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` laid over ``base``: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A config file's mapping, with its ``base:`` (if any) resolved: the base's mapping with this
    file's keys laid over it (see the module docstring)."""
    path = Path(path)
    data = _read_mapping(path)
    if "base" not in data:
        return data
    name = data.pop("base")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{path}: base must name a YAML file, got {name!r}")
    base_path = path.parent / name
    if not base_path.is_file():
        raise ValueError(f"{path}: base {name!r}: no such file {base_path}")
    base = _read_mapping(base_path)
    if "base" in base:
        raise ValueError(f"{path}: its base {base_path} names a base of its own; one level only")
    return _merge(base, data)


def load_config(cls: type[T], path: str | os.PathLike | None, overrides: list[str] | None = None) -> T:
    """Read YAML ``path`` (``base:`` resolved; or start from defaults when None), apply overrides, build
    ``cls``."""
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    apply_overrides(data, overrides)
    return from_dict(cls, data, where=str(path) if path else cls.__name__)


def save_config(path: str | os.PathLike, cfg) -> None:
    """Write a config dataclass as YAML, atomically."""
    from audio.atomic import write_text

    write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))


def write_section_if_changed(config_path: str | os.PathLike, section: str, out: str | os.PathLike) -> bool:
    """Write one top-level section of a YAML config to ``out`` unless ``out`` already holds the same.

    Recipes make feature statistics depend on this file rather than on the whole model config, so
    editing, say, the learning rate does not recompute statistics and retrain from scratch.
    Returns True if the file was (re)written.
    """
    from audio.atomic import write_text

    data = read_yaml(config_path)
    if section not in data:
        raise ValueError(f"{config_path}: no {section!r} section")
    text = yaml.safe_dump({section: data[section]}, sort_keys=True)
    out = Path(out)
    if out.is_file() and out.read_text(encoding="utf-8") == text:
        return False
    write_text(out, text)
    return True


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m audio.config",
                                     description="Copy one section of a YAML config, only if it changed.")
    parser.add_argument("--config", required=True)
    parser.add_argument("--section", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    write_section_if_changed(args.config, args.section, args.out)
