"""Strict loading of recipes: YAML without duplicate keys, ``base:`` inheritance, dotted
overrides, typed conversion with "did you mean", and a YAML dump that loads back equal.

Unknown keys, wrong types and bad values raise :class:`ConfigError` naming the file, the
dotted key and (for typos) the nearest valid key::

    recipes/x.yaml: loss.temprature: unknown key; did you mean loss.temperature?
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal

import yaml

from mlcdist.config.schema import ConfigError, RecipeConfig, _FieldError, _NonFinite

_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


# ---------------------------------------------------------------------------------------------
# Strict conversion from plain data to the typed tree.
# ---------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _convert_choice(value: Any, tp: Any, key: str, source: str) -> Any:
    """A ``Literal`` field: one of its choices, with a "did you mean" for a near miss."""
    choices = typing.get_args(tp)
    if value is False and "no" in choices:  # YAML 1.1 reads a bare `no` as false
        value = "no"
    if value not in choices:
        near = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(
            f"{source}: {key}: {value!r} is not one of {', '.join(map(repr, choices))}{hint}"
        )
    return value


def _convert_scalar(value: Any, tp: type, key: str, source: str, fail: Callable[..., ConfigError]) -> Any:
    """A ``bool`` / ``int`` / ``float`` / ``str`` field, strictly (no bool for int, finite floats)."""
    if tp is bool:
        if not isinstance(value, bool):
            raise fail()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail()
        return value
    if tp is float:
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads "2e-4" (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail()
        if not math.isfinite(value):  # .nan / .inf / 1e999 would pass every range check as nan
            raise _NonFinite(f"{source}: {key}: {value!r} is not a finite number; give a finite value")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail()
        return value
    raise fail()  # pragma: no cover


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    def fail(extra: str = "") -> ConfigError:
        return ConfigError(
            f"{source}: {key}: expected {_type_name(tp)}, got {value!r}{extra}"
        )

    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(
                f"{source}: {key}: expected a mapping of {tp.__name__} fields, got {value!r}"
            )
        return _build(tp, value, key, source)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, source)
            except _NonFinite:
                raise
            except ConfigError:
                continue
        raise fail()
    if origin is Literal:
        return _convert_choice(value, tp, key, source)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail()
        args = typing.get_args(tp)
        if origin is tuple:
            if len(value) != len(args):
                raise fail(f" (needs exactly {len(args)} items)")
            return tuple(_convert(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
        return [_convert(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if tp in (bool, int, float, str):
        return _convert_scalar(value, tp, key, source, fail)
    raise ConfigError(f"{source}: {key}: unsupported field type {tp!r}")  # pragma: no cover


def _build(cls: type, data: dict, prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for raw_key, value in data.items():
        dotted = f"{prefix}.{raw_key}" if prefix else str(raw_key)
        if raw_key not in names:
            near = difflib.get_close_matches(str(raw_key), names, n=1, cutoff=0.6)
            hint = f"; did you mean {prefix + '.' if prefix else ''}{near[0]}?" if near else (
                f"; valid keys: {', '.join(names)}"
            )
            raise ConfigError(f"{source}: {dotted}: unknown key{hint}")
        kwargs[raw_key] = _convert(value, hints[raw_key], dotted, source)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except _FieldError as err:
            dotted = f"{prefix}.{err.key}" if prefix else err.key
            raise ConfigError(f"{source}: {dotted}: {err}") from None
    return obj


def from_dict(data: dict, source: str = "<dict>", cls: type = RecipeConfig) -> Any:
    """Build a typed config from plain data, strictly (see module docstring)."""
    return _build(cls, data, "", source)


def to_dict(cfg: Any) -> dict:
    """Plain-data view of a config (tuples become lists so YAML stays portable)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


# ---------------------------------------------------------------------------------------------
# Files, inheritance and overrides.
# ---------------------------------------------------------------------------------------------


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first: int):
        super().__init__(f"line {line}: duplicate key {key!r} (first given on line {first}); keep one")


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping giving the same key twice (PyYAML keeps the last)."""


def _construct_strict_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges may be overridden on purpose
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            if key in seen:
                raise _DuplicateKey(key, line, seen[key])
            seen[key] = line
        except TypeError:  # unhashable key: the base constructor reports it
            pass
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_strict_mapping)


def _strict_yaml(text: str) -> Any:
    """``yaml.safe_load`` that raises :class:`_DuplicateKey` for a repeated mapping key."""
    return yaml.load(text, Loader=_StrictLoader)


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: recipe file not found; check the path") from None
    try:
        data = _strict_yaml(text)
    except _DuplicateKey as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of components, got {type(data).__name__}")
    return data


def merge(base: dict, over: dict) -> dict:
    """``over`` laid on ``base``: nested mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_raw(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a recipe and its ``base:`` chain (relative to the recipe's folder) into one dict."""
    path = Path(path)
    resolved = path.resolve()
    if resolved in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, resolved))
        raise ConfigError(f"{path}: base: circular inheritance ({chain})")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    bases = [base] if isinstance(base, str) else base
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: base: expected a path or a list of paths, got {base!r}")
    merged: dict = {}
    for b in bases:
        b_path = (path.parent / b) if not Path(b).is_absolute() else Path(b)
        if not b_path.exists():
            raise ConfigError(f"{path}: base: {b} not found (looked at {b_path})")
        merged = merge(merged, load_raw(b_path, (*_seen, resolved)))
    return merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``optim.lr=0.05`` -> (['optim', 'lr'], 0.05); values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected dotted.key=value, e.g. optim.lr=0.05")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r}: empty key segment")
    try:
        value = _strict_yaml(raw) if raw.strip() else ""
    except _DuplicateKey as err:
        raise ConfigError(f"override {text!r}: {err}") from None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    out = merge({}, data)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for part in parts[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        node[parts[-1]] = value
    return out


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = (), cls: type = RecipeConfig) -> Any:
    """Load ``path`` (with its ``base:`` chain), apply ``key=value`` overrides, validate."""
    data = load_raw(path)
    source = str(path)
    if overrides:
        data = apply_overrides(data, list(overrides))
        source = f"{path} (with overrides {' '.join(overrides)})"
    return from_dict(data, source, cls)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_recipe(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(dump_yaml(cfg))
