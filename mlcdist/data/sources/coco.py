"""COCO-format detection JSON (MS-COCO, Objects365) to multi-label image samples.

Labels of an image = the set of categories of its annotations (crowd ones included).
Category ids are remapped to ``0..C-1`` in ascending category-id order, so COCO's 80
categories with ids 1..90 become classes 0..79 and ``class_names[j]`` is the name of the
j-th smallest id. Samples are in ascending image id; images without annotations are kept
with an empty label set (drop them with ``Listing.without_unlabelled``). The image file is
``IMAGES / file_name`` (``file_name`` may hold sub-folders, as in Objects365).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mlcdist.data.encode import SampleSpec
from mlcdist.data.sources.common import AnnotationError, Listing, pair_label_tuples


def _field(path: Path, section: str, entries: list, key: str, kind: type) -> list:
    """``[e[key] for e in entries]``; on failure names the first bad entry and its index."""
    try:
        values = [e[key] for e in entries]
        if all(isinstance(v, kind) and not isinstance(v, bool) for v in values):
            return values
    except (KeyError, TypeError):
        pass
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get(key), kind):
            raise AnnotationError(
                f"{path}: {section}[{i}] has no valid {key!r} "
                f"({kind.__name__} expected): {str(entry)[:200]}"
            )
    raise AssertionError("unreachable")


def _positions(
    path: Path, section: str, key: str, values: np.ndarray, known: np.ndarray
) -> np.ndarray:
    """Index of each value in the sorted array ``known``; error naming the first unknown one."""
    pos = np.searchsorted(known, values).clip(0, max(len(known) - 1, 0))
    bad = np.flatnonzero(known[pos] != values) if len(known) else np.arange(len(values))
    if len(bad):
        raise AnnotationError(
            f"{path}: annotations[{bad[0]}] refers to {key} {values[bad[0]]}, "
            f"which is not listed in {section!r}"
        )
    return pos


def list_coco(images: str | Path, annotations: str | Path) -> Listing:
    """Read a COCO-format annotation file; see the module docstring for the protocol."""
    path = Path(annotations)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: annotation file not found; check --annotations") from None
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}: not valid JSON ({err})") from None
    sections = {
        k: data.get(k) if isinstance(data, dict) else None
        for k in ("images", "annotations", "categories")
    }
    for name, value in sections.items():
        if not isinstance(value, list):
            raise AnnotationError(
                f"{path}: no {name!r} list; is this a COCO-format instances file?"
            )

    category_ids = np.asarray(
        _field(path, "categories", sections["categories"], "id", int), dtype=np.int64
    )
    category_names = _field(path, "categories", sections["categories"], "name", str)
    image_ids = np.asarray(_field(path, "images", sections["images"], "id", int), dtype=np.int64)
    file_names = _field(path, "images", sections["images"], "file_name", str)
    for section, ids in (("categories", category_ids), ("images", image_ids)):
        unique, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise AnnotationError(f"{path}: {section} id {unique[counts > 1][0]} is listed twice")

    cat_order, img_order = np.argsort(category_ids), np.argsort(image_ids)
    sorted_cats, sorted_imgs = category_ids[cat_order], image_ids[img_order]
    ann = sections["annotations"]
    ann_images = np.asarray(_field(path, "annotations", ann, "image_id", int), dtype=np.int64)
    ann_cats = np.asarray(_field(path, "annotations", ann, "category_id", int), dtype=np.int64)
    rows = _positions(path, "images", "image_id", ann_images, sorted_imgs)
    cols = _positions(path, "categories", "category_id", ann_cats, sorted_cats)

    root = Path(images)
    specs = [
        SampleSpec(
            source=file_names[i],
            labels=labels,
            path=str(root / file_names[i]),
            meta={"image_id": int(image_ids[i])},
        )
        for i, labels in zip(
            img_order.tolist(), pair_label_tuples(rows, cols, len(sorted_imgs)), strict=True
        )
    ]
    class_names = [category_names[i] for i in cat_order.tolist()]
    source = {
        "kind": "coco",
        "annotations": str(annotations),
        "images": str(images),
        "category_ids": sorted_cats.tolist(),
    }
    return Listing(class_names, specs, source)
