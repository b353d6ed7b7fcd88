"""Tiny shard writer for tests and benches, straight from ``shards/README.md`` (tarfile + JSON).

Independent of ``mlcdist.data.shards`` on purpose: the reader is tested against the documented
format, not against our own writer.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image


def jpeg_bytes(rng: np.random.Generator, size: tuple[int, int] = (32, 32), quality: int = 90) -> bytes:
    """A smooth random RGB image (upsampled noise, so JPEG size is photo-like) of ``size`` (w, h)."""
    small = rng.integers(0, 256, (max(2, size[1] // 8), max(2, size[0] // 8), 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(size, Image.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def npy_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(x, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_split(
    out: Path,
    shard_sizes: Sequence[int],
    *,
    num_classes: int = 5,
    modality: str = "image",
    feature_dim: int = 8,
    image_size: tuple[int, int] = (32, 32),
    corrupt: Sequence[int] = (),
    seed: int = 0,
    payloads: Optional[dict[int, bytes]] = None,
) -> dict:
    """Write ``shard-NNNNNN.tar`` files with the given sample counts plus ``dataset.json``.

    Sample ``i`` (global key) gets labels ``{i % C, (3i) % C}``, vector ``x[j] = i + j/100``;
    indices in ``corrupt`` get truncated JPEG bytes. Returns ``{index: (labels, payload bytes)}``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    truth: dict = {}
    entries, key = [], 0
    for s, count in enumerate(shard_sizes):
        name = f"shard-{s:06d}.tar"
        with tarfile.open(out / name, "w", format=tarfile.USTAR_FORMAT) as tar:
            for _ in range(count):
                labels = sorted({key % num_classes, (3 * key) % num_classes})
                if modality == "image":
                    ext, data = "jpg", (payloads or {}).get(key) or jpeg_bytes(rng, image_size)
                    if key in corrupt:
                        data = data[: len(data) // 3]
                else:
                    ext, data = "npy", (payloads or {}).get(key) or npy_bytes(key + np.arange(feature_dim) / 100.0)
                stem = f"{key:09d}"
                _add(tar, f"{stem}.{ext}", data)
                _add(tar, f"{stem}.labels.json", json.dumps(labels).encode())
                _add(tar, f"{stem}.meta.json", json.dumps({"source": f"src-{key}"}).encode())
                truth[key] = (labels, data)
                key += 1
        entries.append({"file": name, "num_samples": count, "sha256": "0" * 64})
    counts = [sum(j in v[0] for v in truth.values()) for j in range(num_classes)]
    index = {
        "format": "mlcdist-shards/1", "name": "test", "modality": modality, "num_classes": num_classes,
        "class_names": [f"c{j}" for j in range(num_classes)], "class_counts": counts, "num_samples": key,
        "label_cardinality": sum(len(v[0]) for v in truth.values()) / max(1, key),
        "feature_dim": feature_dim if modality == "vector" else None,
        "image": {"shorter_side": min(image_size), "quality": 90} if modality == "image" else None,
        "shards": entries, "skipped": [], "source": {"kind": "test"},
    }
    (out / "dataset.json").write_text(json.dumps(index, indent=2))
    return truth
