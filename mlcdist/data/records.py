"""One sample as a tar record (``shards/README.md``): its key, its members, and reading them back.

A record is three tar members sharing the basename ``KEY`` (the 9-digit sample index)::

    KEY.jpg | KEY.npy     the payload (JPEG bytes, or a 1-D float32 ``.npy``, never pickled)
    KEY.labels.json       sorted distinct class indices, e.g. [0, 17]
    KEY.meta.json         {"source": ..., ...}

The writer (``shards.py``) builds records with :func:`record_members`; the reader
(``pipeline.py``) and ``verify.py`` read them with :func:`read_shard` / :func:`read_tar` and
decode the labels with :func:`decode_labels`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

log = logging.getLogger("mlcdist.data")

LABELS_MEMBER = "labels.json"
META_MEMBER = "meta.json"


def sample_key(index: int) -> str:
    """The record basename of sample ``index``: 9 digits, zero-padded (``000000042``)."""
    return f"{index:09d}"


@dataclass
class EncodedSample:
    """One sample ready to write: payload bytes under ``ext`` (``jpg`` or ``npy``)."""

    ext: str
    payload: bytes
    labels: list[int]
    source: str
    meta: dict | None = None


@dataclass
class Skipped:
    """An input left out (missing or corrupt image); listed in ``dataset.json``."""

    source: str
    reason: str


def tar_bytes(size: int) -> int:
    """Bytes one member of ``size`` payload bytes takes in a tar: header + data padded to 512."""
    return 512 + -(-size // 512) * 512


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
    info.uname = info.gname = ""
    return info, data


def record_members(index: int, sample: EncodedSample) -> list[tuple[tarfile.TarInfo, bytes]]:
    """The tar members of sample ``index``, with fixed metadata (byte-identical re-runs)."""
    stem = sample_key(index)
    meta = {**(sample.meta or {}), "source": sample.source}
    return [
        _member(f"{stem}.{sample.ext}", sample.payload),
        _member(f"{stem}.{LABELS_MEMBER}", json.dumps(sample.labels).encode()),
        _member(f"{stem}.{META_MEMBER}", json.dumps(meta, sort_keys=True).encode()),
    ]


def decode_labels(raw: bytes, num_classes: int, *, canonical: bool = False) -> list[int]:
    """A record's label list; ValueError unless it is a list of class indices in
    ``0..num_classes-1`` (``canonical``: also sorted and distinct, as the writer stores it)."""
    labels = json.loads(raw)
    in_range = isinstance(labels, list) and all(
        isinstance(j, int) and 0 <= j < num_classes for j in labels)
    if canonical and not (in_range and labels == sorted(set(labels))):
        raise ValueError(f"labels {labels} are not sorted distinct indices in 0..{num_classes - 1}")
    if not in_range:
        raise ValueError(f"labels {labels} are not class indices in 0..{num_classes - 1}")
    return labels


def decode_vector(raw: bytes) -> np.ndarray:
    """A record's ``.npy`` payload (pickles refused)."""
    return np.load(io.BytesIO(raw), allow_pickle=False)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    """Every record of a local shard in file order: ``{KEY: {ext: bytes}}`` (``tarfile`` errors
    propagate: the caller reports an unreadable shard)."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


@dataclass(frozen=True)
class Shortfall:
    """Stands in for each sample a shard did not deliver (``read_shard``); the loader stops on
    the first one unless ``data.allow_missing`` (then they are holes, counted in ``skipped``)."""

    url: str
    reason: str

    def __str__(self) -> str:
        return f"{self.url}: {self.reason}"


def read_shard(url: str, start: int, stop: int) -> Iterator[tuple[int, Optional[dict] | Shortfall]]:
    """Yield exactly ``(pos, raw sample)`` for ``pos`` in ``[start, stop)`` of one tar shard, raw
    bytes undecoded; positions the shard cannot deliver (unreadable, too short) come as one
    :class:`Shortfall` naming the shard."""
    from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

    pos = 0
    short = None
    try:
        for sample in group_by_keys(tar_file_expander(url_opener([{"url": url}]))):
            if pos >= stop:
                break
            if pos >= start:
                yield pos, sample
            pos += 1
        if pos < stop:
            short = Shortfall(url, f"has {pos} samples, dataset.json promises at least {stop}")
    except Exception as err:  # a broken shard must not hang the other ranks: its rest becomes holes
        short = Shortfall(url, f"unreadable after sample {pos} ({err})")
    if short is not None:
        log.warning("%s; its missing samples are skipped", short)
    for missing in range(max(pos, start), stop):
        yield missing, short
