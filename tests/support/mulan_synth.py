"""A synthetic Mulan set of delicious' shape (983 labels, ~19 per sample; sparse ARFF) at tiny size.

The labels come from a few hidden topics, each a block of labels, and the features are noisy
topic indicators, so that pretraining and finetuning have something to learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np

LABELS, PER_SAMPLE, TOPICS = 983, 19, 8


def write_split(path: Path, rows: int, features: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    topic_labels = [rng.choice(LABELS, 60, replace=False) for _ in range(TOPICS)]
    topic_dirs = rng.normal(size=(TOPICS, features))
    lines = [f"@relation 'synthetic-delicious: -C -{LABELS}'", ""]
    lines += [f"@attribute f{i} numeric" for i in range(features)]
    lines += [f"@attribute 'tag\\'{j}' {{0,1}}" for j in range(LABELS)]  # quoted names, as Mulan's
    lines += ["", "@data"]
    for _ in range(rows):
        topic = rng.integers(TOPICS)
        x = topic_dirs[topic] + 0.5 * rng.normal(size=features)
        labels = set(rng.choice(topic_labels[topic], PER_SAMPLE - 3, replace=False))
        labels |= set(rng.choice(LABELS, 3, replace=False))
        entries = [f"{i} {v:.4f}" for i, v in enumerate(x)]
        entries += [f"{features + j} 1" for j in sorted(labels)]
        lines.append("{" + ",".join(entries) + "}")
    path.write_text("\n".join(lines) + "\n")


def write_set(folder: Path, name: str = "deli", train: int = 160, test: int = 60,
              features: int = 24) -> dict[str, Path]:
    """``NAME-train.arff``, ``NAME-test.arff`` and ``NAME.xml`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"train": folder / f"{name}-train.arff", "test": folder / f"{name}-test.arff",
             "xml": folder / f"{name}.xml"}
    write_split(paths["train"], train, features, 0)
    write_split(paths["test"], test, features, 1)
    names = "\n".join(f'  <label name="tag&apos;{j}"></label>' for j in range(LABELS))
    paths["xml"].write_text('<?xml version="1.0" encoding="utf-8"?>\n'
                            f'<labels xmlns="http://mulan.sourceforge.net/labels">\n{names}\n</labels>\n')
    return paths
