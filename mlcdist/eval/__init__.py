"""Evaluation of pretrained encoders: ``python -m mlcdist.eval CHECKPOINT`` (see ``docs/eval.md``).

- ``recipe``: checkpoint recipe <- eval recipe <- flags <- overrides, compatibility checks;
- ``run``: one evaluation (encoder, features or finetune, outputs); ``__main__`` the thin CLI;
- ``features``: checkpoint loading (format: ``mlcdist/checkpoint.py``), distributed feature
  extraction, the cache;
- ``probe``: linear probe on cached features, finetuning, validation-based epoch selection;
- ``report``: metrics.json / metrics.md / rich tables, per-class AP and class-similarity plots,
  ``compare``.
"""

from mlcdist.eval.features import (
    Checkpoint, EvalInputError, FeatureSet, carve_validation, collect, extract_features,
    load_checkpoint, resolve_checkpoint,
)
from mlcdist.eval.probe import ProbeResult, finetune, train_linear_probe
from mlcdist.eval.report import build_report, class_similarity, compare_table, score_report, write_report

__all__ = [
    "Checkpoint", "EvalInputError", "build_report", "FeatureSet", "ProbeResult", "carve_validation",
    "class_similarity", "collect", "compare_table", "extract_features", "finetune",
    "load_checkpoint", "resolve_checkpoint", "score_report", "train_linear_probe", "write_report",
]
