"""Mulan multi-label ARFF (dense or sparse) to vector samples.

The dataset's XML (``<labels xmlns="http://mulan.sourceforge.net/labels"><label name="..."/>``,
nesting allowed) names the label attributes; every other attribute is a feature. Classes keep
the ARFF column order of the label attributes (as Mulan does); features become a float32
vector in column order. Rows are dense (``v1,v2,...``) or sparse (``{index value, ...}``,
absent entries are 0). ARFF quirks handled: ``%`` comments, case-insensitive ``@attribute`` /
``@data``, attribute names quoted as ARFF (and Weka) quote them: in single or double quotes, with
backslash escapes (``\\'`` ``\\"`` ``\\\\`` ``\\%``, ``\\t`` ``\\n``: :func:`split_name`), so that they
match the XML's names; ``numeric|real|integer|{0,1}`` types, quoted values. Missing values
(``?``) and non-numeric features are errors naming the line; names in messages are printed as
parsed, in single quotes (no ``repr`` escaping, which would double every backslash).

Standardisation (``standardize_with``): the MulSupCon authors' code fits scikit-learn's
``StandardScaler`` on the TRAIN split and applies it to every split; their MLP and its 50%
input masking assume zero-mean, unit-variance features (yeast's raw features span very
different scales, and masking a raw feature to 0 is not "no information"). The statistics come
from the train file only, never from the split being converted, so the test split is scaled
with train statistics (no test information leaks into the features). They are recorded in
``dataset.json`` under ``source.standardize`` so a reader can undo or check the transform.
"""

from __future__ import annotations

import difflib
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlcdist.data.encode import SampleSpec
from mlcdist.data.sources.common import AnnotationError, Listing, label_tuples


def read_label_names(xml_path: str | Path) -> list[str]:
    """Label names listed by a Mulan XML file (namespaced or not), in document order."""
    try:
        root = ET.parse(xml_path).getroot()
    except FileNotFoundError:
        raise FileNotFoundError(f"{xml_path}: Mulan label XML not found; check --xml") from None
    except ET.ParseError as err:
        raise AnnotationError(f"{xml_path}: malformed XML ({err})") from None
    labels = [el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "label"]
    for k, el in enumerate(labels):
        if not el.get("name"):
            raise AnnotationError(f"{xml_path}: <label> number {k + 1} has no name attribute")
    if not labels:
        raise AnnotationError(
            f"{xml_path}: no <label name=...> entries; is this a Mulan label file?"
        )
    return [el.get("name") for el in labels]


# Backslash escapes inside a quoted ARFF name, as Weka reads them (java.io.StreamTokenizer; Weka's
# Utils.quote writes \\ \' \" \% \t \n \r): these letters are control characters, any other
# escaped character stands for itself.
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "a": "\a"}


def split_name(text: str) -> tuple[str, str]:
    """``'a \\'name\\''  numeric`` -> (``a 'name'``, ``numeric``): an ARFF name (single- or
    double-quoted with backslash escapes, or a bare word) and the rest of the line."""
    text = text.lstrip()
    if not text:
        raise ValueError("no attribute name")
    quote = text[0]
    if quote not in "'\"":
        name = re.match(r"[^\s{]+", text).group(0)  # a bare name ends at a space or a nominal {
        return name, text[len(name):].strip()
    chars, i = [], 1
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            chars.append(_ESCAPES.get(text[i + 1], text[i + 1]))
            i += 2
        elif c == quote:
            return "".join(chars), text[i + 1:].strip()
        else:
            chars.append(c)
            i += 1
    raise ValueError(f"the name's {quote} quote is never closed")


def _attribute(line: str, path: Path, lineno: int) -> tuple[str, str]:
    """``@attribute 'a name' numeric`` -> (name, type)."""
    try:
        name, kind = split_name(line[len("@attribute"):])
    except ValueError as err:
        raise AnnotationError(f"{path}:{lineno}: cannot parse attribute line {line} ({err})") from None
    if not kind:
        raise AnnotationError(f"{path}:{lineno}: attribute '{name}' has no type: {line}")
    return name, kind.lower()


def _value(token: str) -> float:
    token = token.strip().strip("'\"")
    if token == "?":
        raise ValueError("missing value '?' is not supported")
    return float(token)


def _parse_row(line: str, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(column indices, values) of one dense or sparse data row."""
    if line.startswith("{"):
        body = line[1 : line.index("}")]
        items = [item.split() for item in body.split(",") if item.strip()]
        if any(len(item) != 2 for item in items):
            raise ValueError("sparse entries must be 'index value'")
        cols = np.asarray([int(i) for i, _ in items], dtype=np.int64)
        if len(cols) and (cols.min() < 0 or cols.max() >= width):
            raise ValueError(f"sparse index outside 0..{width - 1}")
        return cols, np.asarray([_value(v) for _, v in items], dtype=np.float32)
    values = line.split(",")
    if len(values) != width:
        raise ValueError(f"{len(values)} values for {width} attributes")
    return np.arange(width), np.asarray([_value(v) for v in values], dtype=np.float32)


def read_arff(path: str | Path) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Attributes ``[(name, type)]`` and the full data matrix (n x attributes, float32)."""
    path = Path(path)
    attributes: list[tuple[str, str]] = []
    rows, cols, vals = [], [], []
    in_data = False
    try:
        handle = open(path, encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: ARFF file not found; check --arff") from None
    with handle:
        for lineno, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line or line.startswith("%"):
                continue
            if not in_data:
                lower = line.lower()
                if lower.startswith("@attribute"):
                    attributes.append(_attribute(line, path, lineno))
                elif lower.startswith("@data"):
                    in_data = True
                continue
            try:
                c, v = _parse_row(line, len(attributes))
            except ValueError as err:
                raise AnnotationError(f"{path}:{lineno}: malformed data row ({err})") from None
            rows.append(np.full(len(c), len(rows), dtype=np.int64))
            cols.append(c)
            vals.append(v)
    if not in_data:
        raise AnnotationError(f"{path}: no @data section; is this an ARFF file?")
    data = np.zeros((len(rows), len(attributes)), dtype=np.float32)
    if rows:
        data[np.concatenate(rows), np.concatenate(cols)] = np.concatenate(vals)
    return attributes, data


@dataclass(frozen=True)
class Standardizer:
    """Per-feature ``(x - mean) / std`` fitted on a train split (``std`` 0 replaced by 1, as
    ``StandardScaler`` does, so a constant feature maps to 0 instead of dividing by zero)."""

    mean: np.ndarray  # float64, one entry per feature
    std: np.ndarray  # float64, population std (ddof 0, like StandardScaler), zeros -> 1
    fitted_on: str
    feature_names: tuple[str, ...]
    num_rows: int

    def apply(self, features: np.ndarray) -> np.ndarray:
        """Standardised float32 copy of an ``N x D`` feature matrix (float64 arithmetic)."""
        return ((features.astype(np.float64) - self.mean) / self.std).astype(np.float32)

    def to_json(self) -> dict:
        """What ``dataset.json`` records under ``source.standardize``."""
        return {"fitted_on": self.fitted_on, "num_rows": self.num_rows, "ddof": 0,
                "mean": self.mean.tolist(), "std": self.std.tolist()}


def _split_columns(arff: str | Path, xml: str | Path, label_names: list[str],
                   attributes: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
    """(label columns, feature columns) of an ARFF; errors name the file and attribute."""
    names = [name for name, _ in attributes]
    missing = [n for n in label_names if n not in names]
    if missing:
        close = difflib.get_close_matches(missing[0], names, n=1, cutoff=0.6)
        hint = f"; its closest attribute is '{close[0]}'" if close else ""
        raise AnnotationError(f"{xml}: label '{missing[0]}' is not an attribute of {arff}{hint} "
                              "(names are compared after ARFF unquoting: \\' is ', \\\\ is \\)")
    wanted = set(label_names)
    label_cols = [i for i, n in enumerate(names) if n in wanted]
    feature_cols = [i for i, n in enumerate(names) if n not in wanted]
    for i in feature_cols:
        kind = attributes[i][1]
        if kind.split()[0] in ("string", "date", "relational"):
            raise AnnotationError(
                f"{arff}: feature attribute '{names[i]}' has type {kind}; only numeric features"
            )
    return label_cols, feature_cols


def fit_standardizer(train_arff: str | Path, xml: str | Path) -> Standardizer:
    """Mean and std of every feature of ``train_arff`` (the labels named by ``xml`` excluded)."""
    label_names = read_label_names(xml)
    try:
        attributes, data = read_arff(train_arff)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{train_arff}: ARFF file not found; check --standardize-with (the train split, "
            "e.g. yeast-train.arff)") from None
    _, feature_cols = _split_columns(train_arff, xml, label_names, attributes)
    if len(data) < 2:
        raise AnnotationError(f"{train_arff}: {len(data)} data row(s); standardisation needs >= 2")
    features = data[:, feature_cols].astype(np.float64)
    std = features.std(axis=0)
    return Standardizer(mean=features.mean(axis=0), std=np.where(std > 0, std, 1.0),
                        fitted_on=str(train_arff),
                        feature_names=tuple(attributes[i][0] for i in feature_cols),
                        num_rows=len(data))


def list_arff(arff: str | Path, xml: str | Path,
              standardize_with: str | Path | None = None) -> Listing:
    """Vector samples of one Mulan ARFF split; see the module docstring.

    ``standardize_with``: a train ARFF whose per-feature mean/std standardise these features
    (it may be ``arff`` itself); its feature attributes must equal this file's, in order.
    """
    label_names = read_label_names(xml)
    attributes, data = read_arff(arff)
    names = [name for name, _ in attributes]
    label_cols, feature_cols = _split_columns(arff, xml, label_names, attributes)
    labels = data[:, label_cols]
    bad = np.argwhere((labels != 0) & (labels != 1))
    if len(bad):
        r, c = bad[0]
        raise AnnotationError(
            f"{arff}: data row {r + 1}, label '{names[label_cols[c]]}' is {labels[r, c]}, "
            "expected 0 or 1"
        )
    features = np.ascontiguousarray(data[:, feature_cols])
    source: dict = {"kind": "arff", "arff": str(arff), "xml": str(xml)}
    if standardize_with is not None:
        scaler = fit_standardizer(standardize_with, xml)
        feature_names = tuple(names[i] for i in feature_cols)
        if scaler.feature_names != feature_names:
            raise AnnotationError(
                f"{standardize_with}: its feature attributes differ from {arff}'s "
                f"({len(scaler.feature_names)} vs {len(feature_names)} features, or another order); "
                "--standardize-with must name the train split of the same data set")
        features = scaler.apply(features)
        source["standardize"] = scaler.to_json()
    stem = Path(arff).name
    specs = [
        SampleSpec(source=f"{stem}#{i}", labels=y, vector=features[i])
        for i, y in enumerate(label_tuples(labels == 1))
    ]
    return Listing(
        [names[i] for i in label_cols],
        specs,
        source,
        modality="vector",
        feature_dim=len(feature_cols),
    )
