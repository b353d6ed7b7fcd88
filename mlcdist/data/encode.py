"""Encoding for the writer: one :class:`SampleSpec` -> an :class:`~mlcdist.data.records.EncodedSample`.

Images are decoded once, scaled down so the shorter side is ``EncodeSettings.shorter_side``
(never up) and saved as baseline JPEG with fixed PIL parameters (no EXIF/ICC kept), so the same
input gives the same bytes; vectors become 1-D float32 ``.npy`` payloads. A missing, corrupt or
non-finite input becomes a :class:`~mlcdist.data.records.Skipped` with the reason, never an
exception. :func:`encoded` runs the encoding in worker processes and keeps the input order.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
from PIL import Image, ImageOps

from mlcdist.data.records import EncodedSample, Skipped


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


def encoded(specs: Sequence[SampleSpec], settings: EncodeSettings, workers: int) -> Iterator:
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
