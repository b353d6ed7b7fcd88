"""Tiny image trees and shard read-back helpers for the source and converter tests."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from mlcdist.data.info import load_dataset_info
from mlcdist.data.shards import write_shards
from mlcdist.data.sources.common import Listing


def write_image(
    path: Path, size: tuple[int, int] = (12, 8), seed: int = 0, fmt: str = "JPEG"
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, fmt)
    return path


def write_garbage(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, 300, dtype=np.uint8).tobytes())
    return path


def read_back(out: Path) -> list[dict]:
    """Every sample of every shard listed in dataset.json, in order, checking the member layout."""
    info = load_dataset_info(out)
    samples = []
    for entry in info.shards:
        with tarfile.open(out / entry.file) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar]
        assert len(members) == 3 * entry.num_samples
        for (data, payload), (lab, labels), (meta, meta_json) in zip(
            *[iter(members)] * 3, strict=True
        ):
            key = data.name.split(".")[0]
            assert key == f"{len(samples):09d}"
            assert (lab.name, meta.name) == (f"{key}.labels.json", f"{key}.meta.json")
            assert data.mtime == 0 and data.mode == 0o644 and data.uid == 0
            samples.append(
                {
                    "ext": data.name.split(".", 1)[1],
                    "payload": payload,
                    "labels": json.loads(labels),
                    **json.loads(meta_json),
                }
            )
    assert len(samples) == info.num_samples
    return samples


def convert(listing: Listing, out: Path, **kw) -> list[dict]:
    write_shards(
        listing.specs,
        out,
        listing.class_names,
        name="t",
        modality=listing.modality,
        source=listing.source,
        feature_dim=listing.feature_dim,
        **kw,
    )
    return read_back(out)


def labels_by_source(samples: list[dict]) -> dict[str, list[int]]:
    by_source = {s["source"]: s["labels"] for s in samples}
    assert len(by_source) == len(samples), "a sample came back twice"
    return by_source


def skipped(out: Path) -> dict[str, str]:
    return {s["source"]: s["reason"] for s in load_dataset_info(out).skipped}


def coco_tree(root: Path) -> tuple[Path, Path]:
    images = root / "images"
    write_image(images / "a.jpg", (40, 20), seed=1)
    write_image(images / "b.png", (9, 7), seed=2, fmt="PNG")
    write_image(images / "sub" / "c.jpg", (8, 8), seed=3)
    write_garbage(images / "d.jpg")
    data = {  # ids out of order on purpose; category ids 1, 3, 7 -> classes 0, 1, 2
        "images": [
            {"id": 30, "file_name": "sub/c.jpg"},
            {"id": 10, "file_name": "a.jpg"},
            {"id": 20, "file_name": "b.png"},
            {"id": 40, "file_name": "d.jpg"},
            {"id": 50, "file_name": "missing.jpg"},
        ],
        "categories": [
            {"id": 3, "name": "car"},
            {"id": 1, "name": "person"},
            {"id": 7, "name": "dog"},
        ],
        "annotations": [
            {"image_id": 10, "category_id": 1},
            {"image_id": 10, "category_id": 7},
            {"image_id": 10, "category_id": 1},
            {"image_id": 20, "category_id": 3},
            {"image_id": 40, "category_id": 7},
        ],
    }
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return images, path
