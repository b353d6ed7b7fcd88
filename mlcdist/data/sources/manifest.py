"""A generic manifest for any new image dataset: CSV or JSON Lines.

CSV (``.csv``), header ``path,labels``; labels separated by ``|`` or ``;`` (empty = no label)::

    path,labels
    img/0001.jpg,cat|dog
    img/0002.jpg,

JSON Lines (``.jsonl``), one object per line::

    {"path": "img/0001.jpg", "labels": ["cat", "dog"]}

Relative paths are resolved against ``root`` (default: the manifest's folder). Classes are
the sorted union of all labels, unless a ``classes`` file (one name per line) fixes the
order; a label missing from it is an error. Samples are in manifest order.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from mlcdist.data.encode import SampleSpec
from mlcdist.data.sources.common import AnnotationError, Listing, read_lines


def _csv_rows(path: Path, lines: list[str]) -> list[tuple[int, str, list[str]]]:
    reader = csv.reader(lines)
    header = [h.strip() for h in next(reader, [])]
    if header != ["path", "labels"]:
        raise AnnotationError(f"{path}:1: header is {header}, expected 'path,labels'")
    rows = []
    for lineno, fields in enumerate(reader, start=2):
        if not fields or not "".join(fields).strip():
            continue
        if len(fields) != 2:
            raise AnnotationError(
                f"{path}:{lineno}: {len(fields)} fields, expected 2 (path,labels); "
                "quote a path that contains a comma"
            )
        if not fields[0].strip():
            raise AnnotationError(f"{path}:{lineno}: empty path")
        labels = [label.strip() for label in re.split(r"[|;]", fields[1]) if label.strip()]
        rows.append((lineno, fields[0].strip(), labels))
    return rows


def _jsonl_rows(path: Path, lines: list[str]) -> list[tuple[int, str, list[str]]]:
    rows = []
    for lineno, line in enumerate(lines, start=1):
        if not line:
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise AnnotationError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(item, dict) or not isinstance(item.get("path"), str) or not item["path"]:
            raise AnnotationError(
                f"{path}:{lineno}: expected an object with a non-empty string 'path'"
            )
        labels = item.get("labels")
        if not isinstance(labels, list) or not all(
            isinstance(x, (str, int)) and not isinstance(x, bool) for x in labels
        ):
            raise AnnotationError(f"{path}:{lineno}: 'labels' must be a list of class names")
        rows.append((lineno, item["path"], [str(x) for x in labels]))
    return rows


def list_manifest(
    manifest: str | Path, classes: str | Path | None = None, root: str | Path | None = None
) -> Listing:
    """Samples of a CSV/JSONL manifest; see the module docstring for the format."""
    path = Path(manifest)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise ValueError(f"{path}: manifest must end in .csv or .jsonl")
    lines = read_lines(path, "manifest")
    rows = _csv_rows(path, lines) if suffix == ".csv" else _jsonl_rows(path, lines)
    if classes is not None:
        names = [c for c in read_lines(classes, "class list") if c]
        if len(set(names)) != len(names):
            raise AnnotationError(f"{classes}: a class name is listed twice")
    else:
        names = sorted({label for _, _, labels in rows for label in labels})
    index = {name: j for j, name in enumerate(names)}
    base = Path(root) if root is not None else path.parent
    specs = []
    for lineno, image, labels in rows:
        unknown = [label for label in labels if label not in index]
        if unknown:
            raise AnnotationError(
                f"{path}:{lineno}: label {unknown[0]!r} is not in the class list {classes}"
            )
        specs.append(
            SampleSpec(
                source=image,
                labels=tuple(sorted({index[x] for x in labels})),
                path=str(base / image),
            )
        )
    source = {
        "kind": "manifest",
        "manifest": str(manifest),
        "classes": None if classes is None else str(classes),
    }
    return Listing(names, specs, source)
