"""The one shard writer: deterministic WebDataset tars plus ``dataset.json`` (see shards/README.md)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from mlcdist.data.info import INDEX_NAME, DatasetInfo, ShardEntry, load_dataset_info


@dataclass
class EncodedSample:
    """One sample ready to write: payload bytes under ``ext`` (``jpg`` or ``npy``)."""

    ext: str
    payload: bytes
    labels: list[int]
    source: str


@dataclass
class ShardWriter:
    """Writes samples in order into ``shard-NNNNNN.tar`` files of at most ``max_samples``
    samples or ``max_bytes`` bytes, with fixed tar metadata so output is byte-identical."""

    out_dir: Path
    max_samples: int = 10_000
    max_bytes: int = 256 * 2**20
    entries: list[ShardEntry] = field(default_factory=list)
    _tar: Optional[tarfile.TarFile] = None
    _count: int = 0
    _bytes: int = 0
    _index: int = 0

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))
        self._bytes += len(data) + 1024

    def _path(self, i: int) -> Path:
        return self.out_dir / f"shard-{i:06d}.tar"

    def write(self, key: int, sample: EncodedSample) -> None:
        if self._tar is None or self._count >= self.max_samples or self._bytes >= self.max_bytes:
            self._close_shard()
            self._tar = tarfile.open(self._path(len(self.entries)).with_suffix(".tar.partial"), "w",
                                     format=tarfile.USTAR_FORMAT)
            self._count = self._bytes = 0
        stem = f"{key:09d}"
        self._add(f"{stem}.{sample.ext}", sample.payload)
        self._add(f"{stem}.labels.json", json.dumps(sorted(set(sample.labels))).encode())
        self._add(f"{stem}.meta.json", json.dumps({"source": sample.source}).encode())
        self._count += 1

    def _close_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        partial = self._path(len(self.entries)).with_suffix(".tar.partial")
        final = self._path(len(self.entries))
        partial.replace(final)
        self.entries.append(ShardEntry(final.name, self._count, sha256_file(final)))
        self._tar = None

    def close(self) -> list[ShardEntry]:
        self._close_shard()
        return self.entries


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def npy_bytes(vector: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(vector, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def write_dataset(samples: Iterable[EncodedSample], out_dir: Path, *, name: str, class_names: list[str],
                  modality: str, feature_dim: Optional[int] = None, image: Optional[dict] = None,
                  skipped: Optional[list[dict]] = None, source: Optional[dict] = None,
                  max_samples_per_shard: int = 10_000, max_shard_bytes: int = 256 * 2**20) -> DatasetInfo:
    """Write ``samples`` (already encoded, in their final order) and ``dataset.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out_dir, max_samples_per_shard, max_shard_bytes)
    counts = np.zeros(len(class_names), dtype=np.int64)
    n = 0
    for n, sample in enumerate(samples, start=1):
        bad = [j for j in sample.labels if not 0 <= j < len(class_names)]
        if bad:
            raise ValueError(f"{sample.source}: label index {bad[0]} outside 0..{len(class_names) - 1}")
        counts[sorted(set(sample.labels))] += 1
        writer.write(n - 1, sample)
    shards = writer.close()
    info = DatasetInfo(name=name, modality=modality, num_classes=len(class_names),
                       class_names=list(class_names), class_counts=counts.tolist(), num_samples=n,
                       label_cardinality=round(float(counts.sum()) / max(n, 1), 6), shards=shards,
                       feature_dim=feature_dim, image=image, skipped=skipped or [], source=source or {},
                       root=str(out_dir))
    (out_dir / INDEX_NAME).write_text(info.to_json())
    return info


def verify(location: str | Path) -> list[str]:
    """Re-read every shard and compare with ``dataset.json``; returns a list of problems."""
    info = load_dataset_info(str(location))
    problems: list[str] = []
    counts = np.zeros(info.num_classes, dtype=np.int64)
    total = 0
    for entry in info.shards:
        path = Path(info.root) / entry.file
        if not path.exists():
            problems.append(f"{path}: missing")
            continue
        if sha256_file(path) != entry.sha256:
            problems.append(f"{path}: sha256 differs from dataset.json (shard modified or truncated)")
        keys = set()
        with tarfile.open(path) as tar:
            for member in tar:
                stem, _, ext = member.name.partition(".")
                keys.add(stem)
                if ext == "labels.json":
                    labels = json.loads(tar.extractfile(member).read())
                    if any(not 0 <= j < info.num_classes for j in labels):
                        problems.append(f"{path}: {member.name}: label outside 0..{info.num_classes - 1}")
                    else:
                        counts[labels] += 1
        if len(keys) != entry.num_samples:
            problems.append(f"{path}: {len(keys)} samples, dataset.json says {entry.num_samples}")
        total += len(keys)
    if total != info.num_samples:
        problems.append(f"{info.root}: {total} samples in shards, dataset.json says {info.num_samples}")
    if counts.tolist() != list(info.class_counts):
        problems.append(f"{info.root}: per-class counts recomputed from shards differ from dataset.json")
    return problems
