"""The one shard writer: deterministic WebDataset tars plus ``dataset.json`` (see shards/README.md).

Sources list lightweight :class:`SampleSpec`\\ s (an image path, raw pixels or a vector, plus
label indices); :func:`write_shards` decodes and resizes them in worker processes, keeps their
order, and cuts the stream into ``shard-NNNNNN.tar`` files. A shard is closed before sample
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
import os
import re
import tarfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from mlcdist.data.info import INDEX_NAME, DatasetInfo, ShardEntry

PROGRESS_NAME = "make_shards.progress.json"
SHARD_PATTERN = re.compile(r"shard-\d{6}\.tar(\.tmp)?")
DEFAULT_MAX_SAMPLES = 10_000
DEFAULT_MAX_BYTES = 256 * 10**6


@dataclass
class SampleSpec:
    """What a source knows about one sample before decoding: exactly one of ``path`` (an image
    file), ``pixels`` (an ``H x W`` or ``H x W x 3`` uint8 array) or ``vector`` (1-D features)."""

    source: str
    labels: tuple[int, ...]
    path: str | None = None
    pixels: np.ndarray | None = None
    vector: np.ndarray | None = None
    meta: dict | None = None


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


@dataclass(frozen=True)
class EncodeSettings:
    """Image encoding done once at conversion: shorter side scaled down to ``shorter_side``
    (never up; ``None`` keeps the size) and saved as baseline JPEG of ``quality``."""

    shorter_side: int | None = 256
    quality: int = 90

    def __post_init__(self) -> None:
        if self.shorter_side is not None and self.shorter_side < 1:
            raise ValueError(f"shorter_side={self.shorter_side}: use a positive size or None")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality={self.quality}: JPEG quality must be in 1..100")


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


def npy_bytes(vector: np.ndarray) -> bytes:
    """A 1-D float32 ``.npy`` payload (no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(np.ravel(vector), dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def _scaled_size(size: tuple[int, int], shorter_side: int | None) -> tuple[int, int]:
    """``(w, h) * s / min(w, h)`` rounded, only when that shrinks the image."""
    w, h = size
    if not shorter_side or min(w, h) <= shorter_side:
        return w, h
    scale = shorter_side / min(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def jpeg_bytes(image: Image.Image, settings: EncodeSettings) -> bytes:
    """Resize (down only, bicubic) and save as JPEG with fixed parameters (no EXIF/ICC kept)."""
    image = image.convert("RGB")
    target = _scaled_size(image.size, settings.shorter_side)
    if target != image.size:
        image = image.resize(target, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(
        buf, "JPEG", quality=settings.quality, subsampling=2, optimize=False, progressive=False
    )
    return buf.getvalue()


def _open_image(path: str, settings: EncodeSettings) -> Image.Image:
    with Image.open(path) as image:
        # JPEG DCT scaling decodes large photos at 1/2..1/8 of the cost; still >= the target size.
        image.draft("RGB", _scaled_size(image.size, settings.shorter_side))
        return ImageOps.exif_transpose(image).convert("RGB")


def encode_spec(spec: SampleSpec, settings: EncodeSettings) -> EncodedSample | Skipped:
    """Decode, resize and encode one sample (runs in worker processes)."""
    labels = sorted(set(int(j) for j in spec.labels))
    if spec.vector is not None:
        with np.errstate(over="ignore"):  # beyond float32 range becomes inf, reported below
            vector = np.asarray(spec.vector).astype(np.float32)
        bad = int(np.count_nonzero(~np.isfinite(vector)))
        if bad:  # NaN/inf: never trainable, left out (and listed) like a corrupt image
            return Skipped(spec.source, f"non-finite vector: {bad} NaN/inf values (float32)")
        return EncodedSample("npy", npy_bytes(vector), labels, spec.source, spec.meta)
    try:
        image = (
            Image.fromarray(spec.pixels)
            if spec.pixels is not None
            else _open_image(spec.path, settings)
        )
        return EncodedSample("jpg", jpeg_bytes(image, settings), labels, spec.source, spec.meta)
    except FileNotFoundError:
        return Skipped(spec.source, f"missing image: {spec.path}")
    except Exception as err:  # any decoder failure means an unreadable file: skip it, never die
        return Skipped(spec.source, f"corrupt image: {type(err).__name__}: {err}")


def _encoded(specs: Sequence[SampleSpec], settings: EncodeSettings, workers: int) -> Iterator:
    """Encoded samples in input order; a bounded window of chunked maps keeps memory flat."""
    fn = partial(encode_spec, settings=settings)
    if workers <= 1 or len(specs) < 4 * workers:
        yield from map(fn, specs)
        return
    chunk = max(1, min(64, len(specs) // (8 * workers)))
    window = chunk * workers * 8
    pool = ProcessPoolExecutor(workers)
    try:
        pending: deque = deque()
        for lo in range(0, len(specs), window):
            pending.append(pool.map(fn, specs[lo : lo + window], chunksize=chunk))
            if len(pending) > 2:
                yield from pending.popleft()
        while pending:
            yield from pending.popleft()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _tar_bytes(size: int) -> int:
    return 512 + -(-size // 512) * 512  # header block + data padded to 512


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
    info.uname = info.gname = ""
    return info, data


def _members(key: int, sample: EncodedSample) -> list[tuple[tarfile.TarInfo, bytes]]:
    stem = f"{key:09d}"
    meta = {**(sample.meta or {}), "source": sample.source}
    return [
        _member(f"{stem}.{sample.ext}", sample.payload),
        _member(f"{stem}.labels.json", json.dumps(sample.labels).encode()),
        _member(f"{stem}.meta.json", json.dumps(meta, sort_keys=True).encode()),
    ]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class _Shard:
    """One tar being written under a temporary name; renamed into place when complete."""

    def __init__(self, path: Path, num_classes: int):
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")
        self.tar = tarfile.open(self.tmp, "w", format=tarfile.USTAR_FORMAT)
        self.count, self.bytes, self.labels = 0, 0, []
        self.num_classes = num_classes

    def add(self, members: list, labels: list[int]) -> None:
        for info, data in members:
            self.tar.addfile(info, io.BytesIO(data))
        self.count += 1
        self.bytes += sum(_tar_bytes(info.size) for info, _ in members)
        self.labels.extend(labels)

    def close(self) -> dict:
        self.tar.close()
        os.replace(self.tmp, self.path)
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
        if not SHARD_PATTERN.fullmatch(str(shard.get("file"))) or shard["file"].endswith(".tmp"):
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
            _atomic_write_text(out / PROGRESS_NAME, json.dumps(asdict(state)))
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
        members = _members(key, sample)
        size = sum(_tar_bytes(info.size) for info, _ in members)
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
    _atomic_write_text(out / INDEX_NAME, info.to_json())
    keep = {s.file for s in info.shards}
    for path in out.iterdir():
        if SHARD_PATTERN.fullmatch(path.name) and path.name not in keep:
            path.unlink()  # left by an earlier run with more shards; a glob would pick it up
    (out / PROGRESS_NAME).unlink(missing_ok=True)
    return info


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
    stream = _encoded(specs[start:], encode, workers if modality == "image" else 1)
    with bar, closing(stream):
        _write(
            enumerate(stream, start),
            out,
            state,
            len(class_names),
            max_samples_per_shard,
            max_shard_bytes,
            on_shard_written,
            advance,
            save_progress=True,
        )
    return _finalise(
        out,
        state,
        name=name,
        class_names=list(class_names),
        modality=modality,
        feature_dim=feature_dim,
        image=image,
        source=source,
    )


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
    _write(
        enumerate(samples),
        out,
        state,
        len(class_names),
        max_samples_per_shard,
        max_shard_bytes,
        None,
        lambda: None,
        save_progress=False,
    )
    return _finalise(
        out,
        state,
        name=name,
        class_names=list(class_names),
        modality=modality,
        feature_dim=feature_dim,
        image=image,
        source=source,
    )
