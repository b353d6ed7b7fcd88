"""Typed recipe tree, strict YAML loading, ``base:`` inheritance and dotted overrides.

A recipe is a YAML mapping whose top-level keys are the components below. Each component
receives only its own dataclass. Unknown keys, wrong types and bad values raise
:class:`ConfigError` naming the file, the dotted key and (for typos) the nearest valid key::

    recipes/x.yaml: loss.temprature: unknown key; did you mean loss.temperature?
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from mlcdist.errors import MlcdistError

_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(MlcdistError):
    """A recipe problem, phrased as ``SOURCE: dotted.key: what is wrong; how to fix it``."""


class _NonFinite(ConfigError):
    """A float field got NaN or +-inf (never a valid setting; not retried by ``Optional``)."""


# ---------------------------------------------------------------------------------------------
# Components. Defaults follow the MulSupCon paper (image setting) unless a comment says otherwise.
# ---------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Where shards live and how batches are formed.

    ``train``/``val``/``test`` are shard folders holding ``dataset.json`` (or any URL/brace
    pattern webdataset opens, with ``dataset.json`` beside it). ``batch_size`` is per process:
    the global batch is ``batch_size x world_size x optim.grad_accum``.
    """

    train: str = ""
    val: str = ""
    test: str = ""
    batch_size: int = 64
    num_workers: int = 4
    shuffle_buffer: int = 1000
    resampled: bool = False
    seed: int = 0

    def validate(self) -> None:
        _positive(self, "batch_size")
        _non_negative(self, "num_workers")
        _non_negative(self, "shuffle_buffer")


@dataclass
class AugmentConfig:
    """Two-view augmentation (paper: random resized crop, colour jitter, grayscale; MoCo v2 flip).

    ``device`` picks the CPU (torchvision transforms in loader workers) or GPU path.
    Vectors get independent random masks of ``mask_ratio`` of their entries.
    """

    image_size: int = 224
    crop_scale: tuple[float, float] = (0.2, 1.0)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    grayscale_p: float = 0.2
    mask_ratio: float = 0.5
    device: Literal["cpu", "gpu"] = "cpu"

    def validate(self) -> None:
        _positive(self, "image_size")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise _bad("crop_scale", f"{self.crop_scale} must satisfy 0 < min <= max <= 1")
        for name in ("flip_p", "jitter_p", "grayscale_p"):
            _probability(self, name)
        if not 0 <= self.mask_ratio < 1:
            raise _bad("mask_ratio", f"{self.mask_ratio} must be in [0, 1)")


@dataclass
class ModelConfig:
    """Query encoder = backbone + projection head; the key encoder is its EMA copy.

    ``arch``: torchvision ``resnet18``/``resnet50``/``vit_b_16`` or the paper's ``mlp`` for
    vectors (``mlp_dims`` hidden widths, each linear-ReLU-dropout). ``head_dims`` are the
    projection head widths after the backbone (paper, ResNet-50: 2048 -> 1024 -> 256);
    ``head_bn`` puts BatchNorm after each hidden head layer, as the authors' code does.
    ``key_bn`` chooses how batch norm is handled across ranks: ``shuffle`` (MoCo shuffle-BN:
    the key encoder normalises a random cross-rank group, hiding the query's own batch) or
    ``sync`` (SyncBatchNorm in both encoders: global statistics, so N processes equal one).
    """

    arch: Literal["resnet18", "resnet50", "vit_b_16", "mlp"] = "resnet50"
    weights: Optional[str] = None
    mlp_dims: list[int] = field(default_factory=lambda: [256, 256, 256])
    dropout: float = 0.1
    head_dims: list[int] = field(default_factory=lambda: [1024, 256])
    head_bn: bool = True
    momentum: float = 0.999
    momentum_schedule: Literal["constant", "cosine"] = "constant"
    key_bn: Literal["shuffle", "sync"] = "shuffle"
    grad_checkpointing: bool = False
    channels_last: bool = False
    compile: bool = False

    def validate(self) -> None:
        if not 0 <= self.momentum < 1:
            raise _bad("momentum", f"{self.momentum} must be in [0, 1)")
        if not 0 <= self.dropout < 1:
            raise _bad("dropout", f"{self.dropout} must be in [0, 1)")
        if not self.head_dims or min(self.head_dims) <= 0:
            raise _bad("head_dims", "needs at least one positive width, e.g. [1024, 256]")
        if not self.mlp_dims or min(self.mlp_dims) <= 0:
            raise _bad("mlp_dims", "needs at least one positive width, e.g. [256, 256, 256]")


@dataclass
class LossConfig:
    """``kind``: MulSupCon eq. (4)+(5), ``weighted`` eq. (6), ``all``/``any`` eq. (1), or
    ``bce`` (the paper's supervised baseline: backbone + linear classifier, no contrast)."""

    kind: Literal["mulsupcon", "weighted", "all", "any", "bce"] = "mulsupcon"
    temperature: float = 0.1

    def validate(self) -> None:
        _positive(self, "temperature")


@dataclass
class QueueConfig:
    """MoCo key queue: ``size`` keys with their multi-hot labels (0 disables the queue)."""

    size: int = 8192

    def validate(self) -> None:
        _non_negative(self, "size")


@dataclass
class OptimConfig:
    """``lr`` is the peak learning rate for the global batch the recipe describes; see the
    docs for scaling to more GPUs (linear rule for SGD, square-root for Adam)."""

    name: Literal["sgd", "adam", "adamw", "lars"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    grad_accum: int = 1
    grad_clip: Optional[float] = None
    fused: bool = True

    def validate(self) -> None:
        _positive(self, "lr")
        _non_negative(self, "weight_decay")
        _positive(self, "grad_accum")


@dataclass
class ScheduleConfig:
    """Cosine (paper) or constant LR with linear warm-up, computed from the global step.

    ``max_steps`` caps the run (handy for smoke tests); otherwise ``epochs`` decides.
    """

    epochs: int = 400
    kind: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    max_steps: Optional[int] = None

    def validate(self) -> None:
        _positive(self, "epochs")
        _non_negative(self, "warmup_epochs")
        _non_negative(self, "min_lr")
        if self.max_steps is not None:
            _positive(self, "max_steps")


@dataclass
class PrecisionConfig:
    mixed: Literal["no", "bf16", "fp16"] = "no"


@dataclass
class CheckpointConfig:
    """Checkpoints go to ``RUN_DIR/checkpoints``; ``resume``: ``auto`` (latest, if any),
    a checkpoint path, or null."""

    every_steps: int = 0
    every_epochs: int = 1
    keep_last: int = 3
    resume: Optional[str] = "auto"

    def validate(self) -> None:
        _non_negative(self, "every_steps")
        _non_negative(self, "every_epochs")
        _positive(self, "keep_last")


@dataclass
class LoggingConfig:
    run_dir: str = "runs/default"
    every_steps: int = 10
    progress: bool = True

    def validate(self) -> None:
        _positive(self, "every_steps")


@dataclass
class EvalConfig:
    """Linear probe / finetune / transfer settings (paper defaults: Adam, probe lr 0.01,
    finetune lr 1e-4 with backbone at ``backbone_lr``, reduce-on-plateau x0.1).

    ``transfer``: evaluate on another dataset than the pretraining one (``data.*`` must name
    its shards; its class count may differ from the checkpoint's). See ``docs/eval.md``.
    """

    mode: Literal["linear", "finetune"] = "linear"
    transfer: bool = False
    epochs: int = 100
    lr: float = 0.01
    backbone_lr: float = 1e-4
    batch_size: int = 256
    weight_decay: float = 0.0
    plateau_patience: int = 5
    early_stop_patience: int = 20
    val_fraction: float = 0.1
    select_metric: str = "mAP"
    seed: int = 0

    def validate(self) -> None:
        _positive(self, "epochs")
        _positive(self, "lr")
        _positive(self, "backbone_lr")
        _positive(self, "batch_size")
        if not 0 < self.val_fraction < 1:
            raise _bad("val_fraction", f"{self.val_fraction} must be in (0, 1)")


@dataclass
class RecipeConfig:
    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ---------------------------------------------------------------------------------------------
# Validation helpers: raise a _FieldError that the loader turns into a ConfigError with context.
# ---------------------------------------------------------------------------------------------


class _FieldError(ValueError):
    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _bad(key: str, message: str) -> _FieldError:
    return _FieldError(key, message)


def _positive(cfg: Any, name: str) -> None:
    if getattr(cfg, name) <= 0:
        raise _bad(name, f"{getattr(cfg, name)!r} must be > 0")


def _non_negative(cfg: Any, name: str) -> None:
    if getattr(cfg, name) < 0:
        raise _bad(name, f"{getattr(cfg, name)!r} must be >= 0")


def _probability(cfg: Any, name: str) -> None:
    if not 0 <= getattr(cfg, name) <= 1:
        raise _bad(name, f"{getattr(cfg, name)!r} must be a probability in [0, 1]")


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
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail()
        args = typing.get_args(tp)
        if origin is tuple:
            if len(value) != len(args):
                raise fail(f" (needs exactly {len(args)} items)")
            return tuple(_convert(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
        return [_convert(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
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


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
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
        merged = _merge(merged, load_raw(b_path, (*_seen, resolved)))
    return _merge(merged, data)


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
    out = _merge({}, data)
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
