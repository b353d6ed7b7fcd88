"""Evaluation of pretrained encoders: ``python -m mlcdist.eval CHECKPOINT`` (see ``docs/eval.md``).

- ``features``: checkpoint resolution/loading, distributed feature extraction, the cache;
- ``probe``: linear probe on cached features, finetuning, validation-based epoch selection;
- ``report``: metrics.json / metrics.md / rich tables, per-class AP and class-similarity plots,
  ``compare``.
"""

from mlcdist.eval.features import (
    Checkpoint, EvalInputError, FeatureSet, carve_validation, collect, extract_features,
    load_checkpoint, resolve_checkpoint,
)
from mlcdist.eval.probe import ProbeResult, finetune, train_linear_probe
from mlcdist.eval.report import class_similarity, compare_table, score_report, write_report

__all__ = [
    "Checkpoint", "EvalInputError", "FeatureSet", "ProbeResult", "carve_validation",
    "class_similarity", "collect", "compare_table", "extract_features", "finetune",
    "load_checkpoint", "resolve_checkpoint", "score_report", "train_linear_probe", "write_report",
]
