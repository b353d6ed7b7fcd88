r"""Numbers for a paper: metrics.json, a markdown/rich table, and the plots (``figures.py``).

Protocols (``mlcdist/metrics.py``), all on the test split at the selected epoch:

- ``clean``: every threshold metric at 0.5;
- ``val_tuned``: thresholds chosen per metric on the validation split, applied to test;
- ``paper``: the MulSupCon code's protocol, thresholds tuned on the test set itself
  (optimistic, labelled as such in every output).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from mlcdist.eval.labels import METRIC_TITLES, PAPER_NOTE, PROTOCOL_TITLES, SHORT_TITLES, encoder, fmt_metric
from mlcdist.metrics import (
    METRICS, multilabel_metrics, paper_protocol_metrics, per_class_average_precision,
    validation_tuned_metrics,
)

def json_safe(value: Any) -> Any:
    """nan/inf -> None (strict JSON), tensors -> lists, recursively."""
    if isinstance(value, Tensor):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def build_report(result: Any, eval_cfg: Any, class_names: Sequence[str], *, checkpoint: str,
                 pretrain_data: Optional[str], datasets: dict, num_rows: dict, mode: str,
                 transfer: bool = False, random_init: bool = False, warnings: Sequence[str] = ()) -> dict:
    """The ``metrics.json`` record of one evaluation (``python -m mlcdist.eval`` and
    ``tools.reproduce`` both write it): settings, data, the selected epoch's scores
    (:func:`score_report`), the history and the warnings (the data's and the probe's).
    ``result`` is an ``eval.probe.ProbeResult``."""
    import dataclasses

    return {
        "mode": mode, "transfer": transfer, "random_init": random_init, "checkpoint": checkpoint,
        "pretrain_data": pretrain_data, "selected_epoch": result.selected_epoch,
        "epochs_run": result.epochs_run, "select_metric": eval_cfg.select_metric,
        "datasets": datasets, "num_rows": num_rows,
        **score_report(result.val_scores, result.val_targets, result.test_scores, result.test_targets,
                       class_names),
        "eval": dataclasses.asdict(eval_cfg), "history": result.history,
        "warnings": [*warnings, *getattr(result, "warnings", [])],
    }


def score_report(val_scores: Tensor, val_targets: Tensor, test_scores: Tensor, test_targets: Tensor,
                 class_names: Sequence[str]) -> dict:
    """``{"val": clean metrics, "test": {"clean", "val_tuned", "paper"}, "per_class_ap",
    "test_positives"}`` (positives: test samples carrying each class)."""
    ap = per_class_average_precision(test_scores, test_targets)
    return {
        "val": multilabel_metrics(val_scores, val_targets),
        "test": {
            "clean": {**multilabel_metrics(test_scores, test_targets), "threshold": 0.5},
            "val_tuned": validation_tuned_metrics(val_scores, val_targets, test_scores, test_targets),
            "paper": paper_protocol_metrics(test_scores, test_targets),
        },
        "per_class_ap": dict(zip(class_names, ap.tolist())),
        "test_positives": dict(zip(class_names, torch.as_tensor(test_targets).bool().sum(0).tolist())),
    }


def table_rows(report: dict, titles: dict = PROTOCOL_TITLES) -> list[list[str]]:
    """One row per protocol: title, then the six test metrics."""
    return [[titles[p]] + [fmt_metric(report["test"][p][m]) for m in METRICS]
            for p in titles if p in report["test"]]


def _headline(report: dict) -> str:
    mode = report["mode"] + (" (transfer)" if report.get("transfer") else "")
    return (f"{mode} evaluation of {report['checkpoint']}: test metrics at the selected epoch "
            f"{report['selected_epoch']} of {report['epochs_run']} (selected on validation "
            f"{report['select_metric']})")


def markdown_table(report: dict) -> str:
    """The headline table (protocols x six metrics) and the per-class AP table, in markdown."""
    head = ["protocol"] + [METRIC_TITLES[m] for m in METRICS]
    lines = [_headline(report), "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    lines += ["", "| class | AP |", "|---|---|"]
    lines += [f"| {name} | {fmt_metric(ap)} |" for name, ap in report["per_class_ap"].items()]
    return "\n".join(lines) + "\n"


def rich_table(report: dict):
    from rich.table import Table

    table = Table(title=_headline(report), title_justify="left", caption=PAPER_NOTE,
                  caption_justify="left")
    table.add_column("protocol", no_wrap=True)
    for m in METRICS:
        table.add_column(METRIC_TITLES[m], justify="right")
    for row in table_rows(report, SHORT_TITLES):
        table.add_row(*row)
    return table


# ---------------------------------------------------------------------------------------------
# Run folder
# ---------------------------------------------------------------------------------------------


def write_report(out_dir: Path, report: dict, class_names: Sequence[str], test_features: Tensor,
                 test_targets: Tensor, plots: bool = True) -> dict:
    """Write metrics.json, metrics.md and (``plots``) per_class_ap.png, class_similarity.png and
    curves.png (``eval/figures.py``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    safe = json_safe(report)
    (out_dir / "metrics.json").write_text(json.dumps(safe, indent=2) + "\n")
    (out_dir / "metrics.md").write_text(markdown_table(safe))
    if plots:
        write_figures(out_dir, safe, class_names, test_features, test_targets)
    return safe


def write_figures(out_dir: Path, report: dict, class_names: Sequence[str], test_features: Tensor,
                  test_targets: Tensor) -> None:
    from mlcdist.eval import figures

    subject = figures.RANDOM_NOTE if report.get("random_init") else encoder(report)
    what = f"{report['mode']}{' transfer' if report.get('transfer') else ''}"
    test = report["datasets"]["test"]["name"]
    figures.plot_per_class_ap(report["per_class_ap"], report.get("test_positives", {}),
                              out_dir / "per_class_ap.png", f"per-class test AP on {test}, {what} probe of\n{subject}"
                              if report["mode"] == "linear" else f"per-class test AP on {test}, {what} of\n{subject}")
    cos, exclusive, _ = figures.class_cosine(test_features, test_targets)
    figures.plot_class_similarity(cos, exclusive, class_names, out_dir / "class_similarity.png",
                                  f"class-embedding similarity on {test}, "
                                  f"{'finetuned' if report['mode'] == 'finetune' else 'frozen'} features of\n{subject}")
    if report.get("history"):
        figures.plot_curves(report["history"], report["selected_epoch"], report["select_metric"],
                            out_dir / "curves.png", f"{what}{' probe' if report['mode'] == 'linear' else ''} of "
                            f"{subject}; train {report['datasets']['train']['name']}, validation "
                            f"{report['datasets'].get('val', {}).get('name', '?')}")
