"""Evaluation of pretrained encoders: ``python -m mlcdist.eval CHECKPOINT`` (see ``docs/eval.md``).

- ``recipe``: checkpoint recipe <- eval recipe <- flags <- overrides, compatibility checks;
- ``run``: one evaluation (encoder, features or finetune, outputs); ``__main__`` the thin CLI
  (sub-commands ``run``, the default, and ``compare``);
- ``features``: checkpoint loading (format: ``mlcdist/checkpoint.py``), distributed feature
  extraction, the cache;
- ``probe``: linear probe on cached features, finetuning, validation-based epoch selection;
- ``report``: metrics.json / metrics.md / rich tables; ``figures``: the PNG plots;
  ``compare``: several eval runs side by side.

The names below are imported on first use (PEP 562), so that ``python -m mlcdist.eval --help``,
which imports this package first, does not load torch.
"""

from mlcdist.lazy import lazy_attributes

_HOMES = {
    "Checkpoint": "features", "EvalInputError": "features", "FeatureSet": "features",
    "carve_validation": "features", "collect": "features", "extract_features": "features",
    "load_checkpoint": "features", "resolve_checkpoint": "features",
    "ProbeResult": "probe", "finetune": "probe", "train_linear_probe": "probe",
    "build_report": "report", "score_report": "report", "write_report": "report",
    "class_similarity": "figures", "compare_table": "compare",
}
__all__ = sorted(_HOMES)


__getattr__ = lazy_attributes("mlcdist.eval", _HOMES, globals())
