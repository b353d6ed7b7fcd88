"""``dataset.json``: the index written beside every shard folder (see ``shards/README.md``)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from mlcdist.errors import MlcdistError

FORMAT = "mlcdist-shards/1"
INDEX_NAME = "dataset.json"
# A shard name is one plain file name: no folder, no scheme (``pipe:``), no shell metacharacters,
# because it is appended to the data location and a ``pipe:`` location runs it through a shell.
# The converter writes ``shard-NNNNNN.tar`` (:data:`SHARD_PATTERN`), which this admits.
SAFE_SHARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,200}\.tar")
# The converter's shard names, and its files including unfinished ones (the atomic writer's
# ``.NAME.partial``, or ``NAME.tmp`` of older versions) left by a killed run: what it may delete
# as stale and what ``verify`` reports when ``dataset.json`` does not list it.
SHARD_NAME = re.compile(r"shard-\d{6}\.tar")
SHARD_PATTERN = re.compile(r"shard-\d{6}\.tar(\.tmp)?|\.shard-\d{6}\.tar\.partial")


class DatasetError(MlcdistError):
    """A data location or ``dataset.json`` that cannot be read as a data set; names the file."""


@dataclass
class ShardEntry:
    file: str
    num_samples: int
    sha256: str


@dataclass
class DatasetInfo:
    name: str
    modality: str  # "image" | "vector"
    num_classes: int
    class_names: list[str]
    class_counts: list[int]
    num_samples: int
    label_cardinality: float
    shards: list[ShardEntry]
    feature_dim: Optional[int] = None
    image: Optional[dict] = None
    skipped: list[dict] = field(default_factory=list)
    source: dict = field(default_factory=dict)
    format: str = FORMAT
    root: str = ""  # folder or URL prefix the shard files are relative to (not serialised)

    @classmethod
    def for_tensors(cls, name: str, class_names: Sequence[str], x: Any, y: Any) -> DatasetInfo:
        """The ``DatasetInfo`` of in-memory rows (``data/memory.py``): ``x`` (N, D) features,
        ``y`` (N, C) 0/1 labels (tensors). ``class_counts = y.sum(0)``, ``label_cardinality =
        mean(y.sum(1))``; no shards (nothing to read), ``feature_dim = D``."""
        return cls(name=name, modality="vector", num_classes=len(class_names),
                   class_names=list(class_names), class_counts=y.sum(0).long().tolist(),
                   num_samples=len(x), label_cardinality=float(y.sum(1).mean()), shards=[],
                   feature_dim=x.shape[1])

    def shard_urls(self) -> list[str]:
        return [join_url(self.root, s.file) for s in self.shards]

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("root")
        ordered = {"format": data.pop("format"), **data}
        return json.dumps(ordered, indent=2, sort_keys=False) + "\n"


def join_url(root: str, name: str) -> str:
    """``root/name``; under a ``pipe:`` root the name is shell-quoted (it becomes a shell word)."""
    if root.startswith("pipe:"):
        name = shlex.quote(name)
    if not root:
        return name
    return root.rstrip("/") + "/" + name


def is_remote(path: str) -> bool:
    """True for locations webdataset must open (``pipe:`` commands, ``scheme://`` URLs)."""
    return path.startswith("pipe:") or ("://" in path and not path.startswith("file://"))


def check_shard_entries(path: str, shards: list) -> None:
    """Reject a ``shards`` list whose entries are not ``{"file": safe name, "num_samples": int >= 0,
    "sha256": str}``; the error names the entry (the names reach a shell under ``pipe:``)."""
    for k, entry in enumerate(shards):
        name = entry.file
        if not isinstance(name, str) or not SAFE_SHARD_NAME.fullmatch(name):
            raise DatasetError(
                f"{path}: shards[{k}].file {name!r} is not a plain shard file name (letters, digits, "
                "'.', '_', '-', ending in .tar, e.g. shard-000000.tar); refusing to read it, "
                "re-run the converter")
        if isinstance(entry.num_samples, bool) or not isinstance(entry.num_samples, int) \
                or entry.num_samples < 0:
            raise DatasetError(f"{path}: shards[{k}].num_samples {entry.num_samples!r} must be an integer >= 0")
        if not isinstance(entry.sha256, str):
            raise DatasetError(f"{path}: shards[{k}].sha256 {entry.sha256!r} must be a string")


def index_location(location: str) -> tuple[str, str]:
    """Map a data location (folder, ``.../dataset.json`` or URL folder) to (root, index path)."""
    if location.endswith(".json"):
        root = location.rsplit("/", 1)[0] if "/" in location else ""
        return root, location
    return location.rstrip("/"), join_url(location, INDEX_NAME)


def _read_text(path: str) -> str:
    if is_remote(path):
        import webdataset as wds  # lazy: only remote indexes need it

        with wds.gopen(path, "rb") as stream:
            return stream.read().decode("utf-8")
    local = path[len("file://"):] if path.startswith("file://") else path
    try:
        return Path(local).read_text()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{local}: no dataset.json here; convert the data first, e.g. "
            "`python -m tools.make_shards coco --images DIR --annotations FILE --out shards/coco/train`"
        ) from None


def load_dataset_info(location: str | Path) -> DatasetInfo:
    """Read ``dataset.json`` from a shard folder (local path or URL); errors name the file."""
    root, path = index_location(str(location))
    text = _read_text(path)
    try:
        data: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON ({err}); re-run the converter or `verify`") from None
    if data.get("format") != FORMAT:
        raise DatasetError(f"{path}: format is {data.get('format')!r}, expected {FORMAT!r}")
    try:
        shards = [ShardEntry(**s) for s in data.pop("shards")]
        data.pop("format")
        info = DatasetInfo(shards=shards, root=root, **data)
    except (KeyError, TypeError) as err:
        raise DatasetError(f"{path}: malformed dataset.json ({err}); re-run the converter") from None
    check_shard_entries(path, info.shards)
    if len(info.class_names) != info.num_classes:
        raise DatasetError(f"{path}: class_names has {len(info.class_names)} names, num_classes is {info.num_classes}")
    return info


def split_info(key: str, location: str) -> DatasetInfo:
    """``dataset.json`` of the split that recipe key ``key`` (``data.train``...) names, read before
    any torch-heavy work; a missing or broken index is one :class:`MlcdistError` naming the key,
    the expected file and the converter call."""
    if not location:
        raise MlcdistError(f"{key}: no shard folder named; set {key} in the recipe or as {key}=PATH")
    # a shard URL or brace pattern has its dataset.json in the folder above (data.pipeline.resolve)
    pattern = location.endswith(".tar") or "{" in location
    folder = (location.rsplit("/", 1)[0] if "/" in location else ".") if pattern else location
    try:
        return load_dataset_info(folder)
    except FileNotFoundError:
        raise MlcdistError(
            f"{key}: {index_location(folder)[1]} not found; make the shards first, e.g. "
            f"`python -m tools.make_shards digits --out shards/digits` for the demo, or "
            f"`python -m tools.make_shards SOURCE ... --out {location}` "
            "(see python -m tools.make_shards --help)") from None
    except MlcdistError:
        raise
    except ValueError as err:  # malformed index: the message names the file
        raise MlcdistError(f"{key}: {err}") from None
