"""Mulan ARFF (dense and sparse) to vector samples; labels are the attributes the XML names."""

from __future__ import annotations

import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

import numpy as np

from mlcdist.data.shards import EncodedSample, npy_bytes


def read_label_names(xml_path: str | Path) -> list[str]:
    """Label names in the order the Mulan XML lists them (namespaced or not)."""
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"{xml_path}: malformed XML ({err})") from None
    names = [el.attrib["name"] for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "label"]
    if not names:
        raise ValueError(f"{xml_path}: no <label name=...> entries; is this a Mulan label file?")
    return names


def _attribute_name(line: str, path: Path, lineno: int) -> str:
    try:
        return shlex.split(line[len("@attribute"):].strip(), posix=True)[0]
    except (ValueError, IndexError):
        raise ValueError(f"{path}:{lineno}: cannot parse attribute line {line.strip()!r}") from None


def read_arff(arff_path: str | Path, label_names: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features (n x d float32), labels (n x L bool) and feature names of a Mulan ARFF file."""
    path = Path(arff_path)
    attributes: list[str] = []
    rows: list[np.ndarray] = []
    in_data = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line or line.startswith("%"):
                continue
            if not in_data:
                lower = line.lower()
                if lower.startswith("@attribute"):
                    attributes.append(_attribute_name(line, path, lineno))
                elif lower.startswith("@data"):
                    in_data = True
                continue
            row = np.zeros(len(attributes), dtype=np.float32)
            try:
                if line.startswith("{"):
                    for item in line.strip("{}").split(","):
                        if item.strip():
                            index, value = item.split()
                            row[int(index)] = float(value)
                else:
                    values = line.split(",")
                    if len(values) != len(attributes):
                        raise ValueError(f"{len(values)} values for {len(attributes)} attributes")
                    row[:] = [float(v) for v in values]
            except ValueError as err:
                raise ValueError(f"{path}:{lineno}: malformed data row ({err})") from None
            rows.append(row)
    missing = [n for n in label_names if n not in attributes]
    if missing:
        raise ValueError(f"{path}: label attributes {missing[:3]} from the XML are not in the ARFF header")
    index = {n: i for i, n in enumerate(attributes)}
    label_cols = [index[n] for n in label_names]
    feature_cols = [i for i in range(len(attributes)) if i not in set(label_cols)]
    data = np.stack(rows) if rows else np.zeros((0, len(attributes)), np.float32)
    return data[:, feature_cols], data[:, label_cols] > 0.5, [attributes[i] for i in feature_cols]


def arff_samples(arff_path: str | Path, xml_path: str | Path) -> tuple[Iterator[EncodedSample], list[str], int, int]:
    """(samples, class names, feature width, count) for :func:`write_dataset`."""
    names = read_label_names(xml_path)
    features, labels, _ = read_arff(arff_path, names)
    stem = Path(arff_path).name

    def gen() -> Iterator[EncodedSample]:
        for i in range(len(features)):
            yield EncodedSample("npy", npy_bytes(features[i]), np.flatnonzero(labels[i]).tolist(), f"{stem}:{i}")

    return gen(), names, features.shape[1], len(features)
