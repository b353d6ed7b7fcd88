"""The one shard writer: deterministic WebDataset tars plus ``dataset.json`` (see shards/README.md).

Sources list lightweight :class:`~mlcdist.data.encode.SampleSpec`\\ s (an image path, raw pixels
or a vector, plus label indices); :func:`write_shards` encodes them in worker processes
(``encode.py``), keeps their order, and cuts the stream of records (``records.py``) into
``shard-NNNNNN.tar`` files. A shard is closed before sample
``k`` would push it past ``max_samples_per_shard`` samples or ``max_shard_bytes`` bytes:

    close  iff  count >= max_samples  or  bytes + tar_size(k) > max_bytes   (and count > 0)

Determinism: samples keep the source's order, keys are ``0..N-1`` over the written samples,
tar members carry fixed metadata and images are saved with fixed PIL parameters, so the same
input gives byte-identical shards. Resume: after every shard the completed shards (with their
sha256) go to ``make_shards.progress.json``; a re-run keeps those whose bytes still match and
continues with the next input sample. ``mlcdist.data.verify`` re-reads shards against ``dataset.json``.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Callable, Iterable, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlcdist.data.encode import EncodeSettings, SampleSpec, encoded
from mlcdist.data.info import INDEX_NAME, SHARD_NAME, SHARD_PATTERN, DatasetInfo, ShardEntry
from mlcdist.data.records import EncodedSample, Skipped, record_members, sha256_file, tar_bytes
from mlcdist.fileio import AtomicFile, write_text

PROGRESS_NAME = "make_shards.progress.json"
DEFAULT_MAX_SAMPLES = 10_000
DEFAULT_MAX_BYTES = 256 * 10**6


def parse_size(text: str) -> int:
    """``"256MB"`` -> 256e6 bytes; units B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB (1024)."""
    units = {
        "": 1,
        "b": 1,
        "kb": 10**3,
        "mb": 10**6,
        "gb": 10**9,
        "kib": 2**10,
        "mib": 2**20,
        "gib": 2**30,
    }
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in units:
        raise ValueError(
            f"shard size {text!r}: expected a number with unit B, KB, MB, GB, KiB, MiB or GiB"
        )
    return int(float(match.group(1)) * units[match.group(2).lower()])


class _Shard:
    """One tar being written as ``.NAME.partial``; put into place by the atomic writer when complete."""

    def __init__(self, path: Path, num_classes: int):
        self.path, self.file = path, AtomicFile(path)
        self.tar = tarfile.open(fileobj=self.file.handle, mode="w", format=tarfile.USTAR_FORMAT)
        self.count, self.bytes, self.labels = 0, 0, []
        self.num_classes = num_classes

    def add(self, members: list, labels: list[int]) -> None:
        for info, data in members:
            self.tar.addfile(info, io.BytesIO(data))
        self.count += 1
        self.bytes += sum(tar_bytes(info.size) for info, _ in members)
        self.labels.extend(labels)

    def close(self) -> dict:
        self.tar.close()  # writes the end blocks; the file itself stays open for the commit
        self.file.commit()
        counts = np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=self.num_classes)
        return {
            "file": self.path.name,
            "num_samples": self.count,
            "sha256": sha256_file(self.path),
            "class_counts": counts.tolist(),
        }


@dataclass
class _State:
    """Resumable progress: completed shards (with class counts and the next input index)."""

    settings: dict
    shards: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    next_input: int = 0


def _load_state(out: Path, settings: dict) -> _State:
    """Completed shards from an interrupted run with the same settings, if their bytes match."""
    path = out / PROGRESS_NAME
    try:
        saved = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return _State(settings)
    if saved.get("settings") != settings:
        return _State(settings)
    kept: list[dict] = []
    for shard in saved["shards"]:
        if not SHARD_NAME.fullmatch(str(shard.get("file"))):
            break  # only names this writer produces; anything else restarts from there
        shard_path = out / shard["file"]
        if not shard_path.exists() or sha256_file(shard_path) != shard["sha256"]:
            break
        kept.append(shard)
    next_input = kept[-1]["end_input"] if kept else 0
    skipped = [s for s in saved["skipped"] if s["input"] < next_input]
    return _State(settings, kept, skipped, next_input)


def _fingerprint(specs: Sequence[SampleSpec]) -> str:
    """sha256 of the listing (sources, labels, paths, vectors): resume only the same input."""
    digest = hashlib.sha256()
    for spec in specs:
        digest.update(json.dumps([spec.source, list(spec.labels), spec.path]).encode())
        for array in (spec.pixels, spec.vector):
            if array is not None:
                digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


ShardHook = Callable[[ShardEntry], None]


def _write(
    items: Iterable[tuple[int, EncodedSample | Skipped]],
    out: Path,
    state: _State,
    num_classes: int,
    max_samples: int,
    max_bytes: int,
    on_shard: ShardHook | None,
    advance: Callable[[], None],
    save_progress: bool,
) -> None:
    """Stream encoded samples into shards, recording each completed shard in ``state``."""
    key = sum(s["num_samples"] for s in state.shards)
    shard: _Shard | None = None
    end = state.next_input

    def finish(end_input: int) -> None:
        entry = {**shard.close(), "end_input": end_input}
        state.shards.append(entry)
        state.next_input = end_input
        if save_progress:
            write_text(out / PROGRESS_NAME, json.dumps(asdict(state)))
        if on_shard is not None:
            on_shard(ShardEntry(entry["file"], entry["num_samples"], entry["sha256"]))

    for index, sample in items:
        end = index + 1
        advance()
        if isinstance(sample, Skipped):
            state.skipped.append({"source": sample.source, "reason": sample.reason, "input": index})
            continue
        sample.labels = sorted(set(int(j) for j in sample.labels))
        bad = [j for j in sample.labels if not 0 <= j < num_classes]
        if bad:
            raise ValueError(f"{sample.source}: label index {bad[0]} outside 0..{num_classes - 1}")
        members = record_members(key, sample)
        size = sum(tar_bytes(info.size) for info, _ in members)
        if shard is not None and (shard.count >= max_samples or shard.bytes + size > max_bytes):
            finish(index)
            shard = None
        if shard is None:
            shard = _Shard(out / f"shard-{len(state.shards):06d}.tar", num_classes)
        shard.add(members, sample.labels)
        key += 1
    if shard is not None:
        finish(end)


def _finalise(
    out: Path,
    state: _State,
    *,
    name: str,
    class_names: list[str],
    modality: str,
    feature_dim: int | None,
    image: dict | None,
    source: dict | None,
) -> DatasetInfo:
    """Write ``dataset.json``, drop stale shard files of older runs and the progress file."""
    counts = np.zeros(len(class_names), dtype=np.int64)
    for shard in state.shards:
        counts += np.asarray(shard["class_counts"], dtype=np.int64)
    num_samples = sum(s["num_samples"] for s in state.shards)
    info = DatasetInfo(
        name=name,
        modality=modality,
        num_classes=len(class_names),
        class_names=list(class_names),
        class_counts=counts.tolist(),
        num_samples=num_samples,
        label_cardinality=round(float(counts.sum()) / max(num_samples, 1), 6),
        shards=[ShardEntry(s["file"], s["num_samples"], s["sha256"]) for s in state.shards],
        feature_dim=feature_dim,
        image=image,
        skipped=[{"source": s["source"], "reason": s["reason"]} for s in state.skipped],
        source=source or {},
        root=str(out),
    )
    write_text(out / INDEX_NAME, info.to_json())
    keep = {s.file for s in info.shards}
    for path in out.iterdir():
        if SHARD_PATTERN.fullmatch(path.name) and path.name not in keep:
            path.unlink()  # left by an earlier run with more shards; a glob would pick it up
    (out / PROGRESS_NAME).unlink(missing_ok=True)
    return info


def _write_all(
    items: Iterable[tuple[int, EncodedSample | Skipped]],
    out: Path,
    state: _State,
    describe: dict,
    max_samples: int,
    max_bytes: int,
    *,
    on_shard: ShardHook | None = None,
    advance: Callable[[], None] = lambda: None,
    save_progress: bool = False,
) -> DatasetInfo:
    """:func:`_write` the shards, then :func:`_finalise` (``describe``: its keyword arguments)."""
    _write(items, out, state, len(describe["class_names"]), max_samples, max_bytes, on_shard,
           advance, save_progress)
    return _finalise(out, state, **describe)


def _progress_bar(enabled: bool, total: int | None, done: int, description: str) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),  # stdout stays clean for scripts
        disable=not enabled,
    )
    task = bar.add_task(description, total=total, completed=done)
    return bar, lambda: bar.advance(task)


def write_shards(
    specs: Sequence[SampleSpec],
    out_dir: str | Path,
    class_names: Sequence[str],
    *,
    name: str,
    modality: str = "image",
    source: dict | None = None,
    feature_dim: int | None = None,
    encode: EncodeSettings = EncodeSettings(),
    workers: int = 1,
    max_samples_per_shard: int = DEFAULT_MAX_SAMPLES,
    max_shard_bytes: int = DEFAULT_MAX_BYTES,
    resume: bool = True,
    progress: bool = False,
    on_shard_written: ShardHook | None = None,
) -> DatasetInfo:
    """Encode ``specs`` (in ``workers`` processes, order kept) into shards + ``dataset.json``.

    With ``resume`` an interrupted run of the same listing and settings keeps its completed
    shards and continues after them. ``on_shard_written`` is called after each shard is final.
    """
    if max_samples_per_shard < 1 or max_shard_bytes < 1:
        raise ValueError("max_samples_per_shard and max_shard_bytes must be positive")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image = asdict(encode) if modality == "image" else None
    settings = {
        "name": name,
        "modality": modality,
        "class_names": list(class_names),
        "image": image,
        "max_samples": max_samples_per_shard,
        "max_bytes": max_shard_bytes,
        "num_inputs": len(specs),
        "listing": _fingerprint(specs),
    }
    state = _load_state(out, settings) if resume else _State(settings)
    start = state.next_input
    bar, advance = _progress_bar(progress, len(specs), start, f"{name}")
    stream = encoded(specs[start:], encode, workers if modality == "image" else 1)
    describe = dict(name=name, class_names=list(class_names), modality=modality,
                    feature_dim=feature_dim, image=image, source=source)
    with bar, closing(stream):
        return _write_all(enumerate(stream, start), out, state, describe, max_samples_per_shard,
                          max_shard_bytes, on_shard=on_shard_written, advance=advance,
                          save_progress=True)


def write_dataset(
    samples: Iterable[EncodedSample],
    out_dir: str | Path,
    *,
    name: str,
    class_names: list[str],
    modality: str,
    feature_dim: int | None = None,
    image: dict | None = None,
    skipped: list[dict] | None = None,
    source: dict | None = None,
    max_samples_per_shard: int = DEFAULT_MAX_SAMPLES,
    max_shard_bytes: int = DEFAULT_MAX_BYTES,
) -> DatasetInfo:
    """Write already-encoded ``samples`` (in their final order) and ``dataset.json``; no resume."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = _State({}, skipped=[{**s, "input": -1} for s in (skipped or [])])
    describe = dict(name=name, class_names=list(class_names), modality=modality,
                    feature_dim=feature_dim, image=image, source=source)
    return _write_all(enumerate(samples), out, state, describe, max_samples_per_shard,
                      max_shard_bytes)
