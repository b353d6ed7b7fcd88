"""How eval reports name things: metric and protocol titles, the paper-protocol note, a metric
cell, a run's encoder and data sets. Shared by the report, ``compare`` and the figures, so none
of them imports another for a word."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

METRIC_TITLES = {"mAP": "mAP", "hamming_accuracy": "Hamming acc.", "example_f1": "example-F1",
                 "macro_f1": "macro-F1", "micro_f1": "micro-F1", "precision_at_1": "P@1"}
PROTOCOL_TITLES = {"clean": "clean (threshold 0.5)",
                   "val_tuned": "validation-tuned thresholds",
                   "paper": "paper (optimistic: thresholds tuned on test)"}
SHORT_TITLES = {"clean": "clean @0.5", "val_tuned": "val-tuned", "paper": "paper*"}
PAPER_NOTE = "* paper protocol: thresholds tuned on the test set itself (optimistic upper bound)"


def fmt_metric(value: Optional[float]) -> str:
    """A metric to 4 decimals; ``n/a`` for a missing or nan one."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def data_set(report: dict, split: str) -> str:
    """``NAME (N samples)`` of a run's split, from its ``datasets`` record."""
    entry = report.get("datasets", {}).get(split, {})
    count = entry.get("num_samples", report.get("num_rows", {}).get(split))
    return f"{entry.get('name', '?')}" + (f" ({count})" if count is not None else "")


def encoder(report: dict) -> str:
    """``random`` or ``RUN step-N`` of the checkpoint (``RUN/checkpoints/step-N/state.pt``)."""
    if report.get("random_init"):
        return "random"
    path = Path(str(report.get("checkpoint", "?")))
    step = path.parent
    return f"{step.parent.parent.name} {step.name}" if step.parent.name == "checkpoints" else step.name
