"""``dataset.json``: the index written beside every shard folder (see ``shards/README.md``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

FORMAT = "mlcdist-shards/1"
INDEX_NAME = "dataset.json"


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

    def shard_urls(self) -> list[str]:
        return [join_url(self.root, s.file) for s in self.shards]

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("root")
        ordered = {"format": data.pop("format"), **data}
        return json.dumps(ordered, indent=2, sort_keys=False) + "\n"


def join_url(root: str, name: str) -> str:
    if not root:
        return name
    return root.rstrip("/") + "/" + name


def index_location(location: str) -> tuple[str, str]:
    """Map a data location (folder, ``.../dataset.json`` or URL folder) to (root, index path)."""
    if location.endswith(".json"):
        root = location.rsplit("/", 1)[0] if "/" in location else ""
        return root, location
    return location.rstrip("/"), join_url(location, INDEX_NAME)


def _read_text(path: str) -> str:
    if "://" in path and not path.startswith("file://"):
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
        raise ValueError(f"{path}: not valid JSON ({err}); re-run the converter or `verify`") from None
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: format is {data.get('format')!r}, expected {FORMAT!r}")
    try:
        shards = [ShardEntry(**s) for s in data.pop("shards")]
        data.pop("format")
        info = DatasetInfo(shards=shards, root=root, **data)
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: malformed dataset.json ({err}); re-run the converter") from None
    if len(info.class_names) != info.num_classes:
        raise ValueError(f"{path}: class_names has {len(info.class_names)} names, num_classes is {info.num_classes}")
    return info
