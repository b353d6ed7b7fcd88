r"""Numbers for a paper: metrics.json, a markdown/rich table, per-class AP and class-similarity plots.

Protocols (``mlcdist/metrics.py``), all on the test split at the selected epoch:

- ``clean``: every threshold metric at 0.5;
- ``val_tuned``: thresholds chosen per metric on the validation split, applied to test;
- ``paper``: the MulSupCon code's protocol, thresholds tuned on the test set itself
  (optimistic, labelled as such in every output).

Class similarity (paper, figure 3): with :math:`\bar h_c` the mean L2-normalised feature of the
test samples whose label set is exactly :math:`\{c\}` (falling back to every sample carrying
:math:`c` when there is none, as on the digits demo), row :math:`i` of the heatmap is
:math:`\mathrm{softmax}_j \cos(\bar h_i, \bar h_j)`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mlcdist.errors import MlcdistError
from mlcdist.metrics import (
    METRICS, multilabel_metrics, paper_protocol_metrics, per_class_average_precision,
    validation_tuned_metrics,
)

METRIC_TITLES = {"mAP": "mAP", "hamming_accuracy": "Hamming acc.", "example_f1": "example-F1",
                 "macro_f1": "macro-F1", "micro_f1": "micro-F1", "precision_at_1": "P@1"}
PROTOCOL_TITLES = {"clean": "clean (threshold 0.5)",
                   "val_tuned": "validation-tuned thresholds",
                   "paper": "paper (optimistic: thresholds tuned on test)"}
SHORT_TITLES = {"clean": "clean @0.5", "val_tuned": "val-tuned", "paper": "paper*"}
PAPER_NOTE = "* paper protocol: thresholds tuned on the test set itself (optimistic upper bound)"


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
                 transfer: bool = False, random_init: bool = False) -> dict:
    """The ``metrics.json`` record of one evaluation (``python -m mlcdist.eval`` and
    ``tools.reproduce`` both write it): settings, data, the selected epoch's scores
    (:func:`score_report`) and the history. ``result`` is an ``eval.probe.ProbeResult``."""
    import dataclasses

    return {
        "mode": mode, "transfer": transfer, "random_init": random_init, "checkpoint": checkpoint,
        "pretrain_data": pretrain_data, "selected_epoch": result.selected_epoch,
        "epochs_run": result.epochs_run, "select_metric": eval_cfg.select_metric,
        "datasets": datasets, "num_rows": num_rows,
        **score_report(result.val_scores, result.val_targets, result.test_scores, result.test_targets,
                       class_names),
        "eval": dataclasses.asdict(eval_cfg), "history": result.history,
    }


def score_report(val_scores: Tensor, val_targets: Tensor, test_scores: Tensor, test_targets: Tensor,
                 class_names: Sequence[str]) -> dict:
    """``{"val": clean metrics, "test": {"clean", "val_tuned", "paper"}, "per_class_ap"}``."""
    ap = per_class_average_precision(test_scores, test_targets)
    return {
        "val": multilabel_metrics(val_scores, val_targets),
        "test": {
            "clean": {**multilabel_metrics(test_scores, test_targets), "threshold": 0.5},
            "val_tuned": validation_tuned_metrics(val_scores, val_targets, test_scores, test_targets),
            "paper": paper_protocol_metrics(test_scores, test_targets),
        },
        "per_class_ap": dict(zip(class_names, ap.tolist())),
    }


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def table_rows(report: dict, titles: dict = PROTOCOL_TITLES) -> list[list[str]]:
    """One row per protocol: title, then the six test metrics."""
    return [[titles[p]] + [_fmt(report["test"][p][m]) for m in METRICS]
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
    lines += [f"| {name} | {_fmt(ap)} |" for name, ap in report["per_class_ap"].items()]
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
# Plots
# ---------------------------------------------------------------------------------------------


def class_similarity(features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(P, exclusive, count)``: the C x C row-softmax of cosine similarities between class
    embeddings (module docstring; rows/columns of classes without samples are nan), whether each
    class embedding came from single-label samples, and how many samples it averaged."""
    y = torch.as_tensor(targets).bool()
    h = F.normalize(torch.as_tensor(features).double(), dim=1)
    only = y & (y.sum(1, keepdim=True) == 1)
    use_only = only.any(0)
    members = torch.where(use_only[None, :], only, y).double()  # N x C
    count = members.sum(0)
    means = (members.T @ h) / count.clamp(min=1)[:, None]
    cos = F.normalize(means, dim=1) @ F.normalize(means, dim=1).T
    present = count > 0
    logits = cos.masked_fill(~present[None, :], -math.inf)
    prob = torch.softmax(logits, dim=1)
    prob[~present] = math.nan
    prob[:, ~present] = math.nan
    return prob, use_only, count


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_per_class_ap(per_class_ap: dict, path: Path, title: str) -> None:
    """Horizontal bars, classes in dataset order, the mean AP (= mAP) as a dashed line."""
    plt = _pyplot()
    names = list(per_class_ap)
    values = [math.nan if v is None else v for v in per_class_ap.values()]
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.28 * len(names) + 1.2)))
    ax.barh(range(len(names)), [0 if math.isnan(v) else v for v in values], color="#4477aa")
    ax.set_yticks(range(len(names)), names, fontsize=8 if len(names) > 30 else 10)
    ax.set_ylim(len(names) - 0.5, -0.5)  # first class on top, no empty margin
    finite = [v for v in values if not math.isnan(v)]
    if finite:  # in the title rather than a legend, which would hide a bar
        mean = sum(finite) / len(finite)
        ax.axvline(mean, color="#cc3311", linestyle="--")
        title += f"\nmAP {mean:.3f} (dashed line)"
    ax.set_xlim(0, 1)
    ax.set_xlabel("average precision (test)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_class_similarity(prob: Tensor, exclusive: Tensor, names: Sequence[str], path: Path,
                          title: str) -> None:
    """Heatmap of :func:`class_similarity` (row i: softmax over classes j); classes whose
    embedding fell back to all samples carrying them are marked with ``*``."""
    plt = _pyplot()
    c = len(names)
    labels = [n if bool(e) else f"{n}*" for n, e in zip(names, exclusive)]
    side = min(14.0, max(5.0, 0.3 * c + 2.5))  # inches; 80 COCO classes still fit on one page
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(prob.numpy(), cmap="viridis", interpolation="nearest")
    size = min(10.0, 0.75 * 72 * (side - 2) / c)  # points per row, with room between labels
    step = 1 if size >= 4 else 2 if size >= 2 else max(1, c // 40)
    size = max(size, 4.0)
    ticks = list(range(0, c, step))
    ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=90, fontsize=size)
    ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=size)
    ax.set_xlabel("class j")
    ax.set_ylabel("class i")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                 label=r"$\mathrm{softmax}_j \, \cos(\bar h_i, \bar h_j)$")
    note = "" if bool(exclusive.all()) else \
        "\n* no single-label test sample: mean over all samples with the class"
    ax.set_title(title + note, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Run folder and comparison
# ---------------------------------------------------------------------------------------------


def write_report(out_dir: Path, report: dict, class_names: Sequence[str], test_features: Tensor,
                 test_targets: Tensor, plots: bool = True) -> dict:
    """Write metrics.json, metrics.md and (``plots``) per_class_ap.png, class_similarity.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    safe = json_safe(report)
    (out_dir / "metrics.json").write_text(json.dumps(safe, indent=2) + "\n")
    (out_dir / "metrics.md").write_text(markdown_table(safe))
    if plots:
        name = Path(str(report["checkpoint"])).parent.name or str(report["checkpoint"])
        plot_per_class_ap(safe["per_class_ap"], out_dir / "per_class_ap.png",
                          f"per-class AP, {report['mode']} on {report['datasets']['test']['name']} ({name})")
        prob, exclusive, _ = class_similarity(test_features, test_targets)
        plot_class_similarity(prob, exclusive, class_names, out_dir / "class_similarity.png",
                              f"class-embedding similarity, {report['datasets']['test']['name']} ({name})")
    return safe


def load_metrics(run: str | Path) -> dict:
    """``metrics.json`` of an eval run folder (or the file itself); errors name the path."""
    path = Path(run)
    path = path / "metrics.json" if path.is_dir() else path
    if not path.is_file():
        raise MlcdistError(f"{path}: no metrics.json; pass an eval run folder written by "
                                "python -m mlcdist.eval CHECKPOINT")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MlcdistError(f"{path}: not valid JSON ({err})") from None


def compare_table(runs: Sequence[str | Path]):
    """Rich table: rows = six test metrics x (clean, paper), one column per run, best in bold."""
    from rich.table import Table

    reports = [load_metrics(r) for r in runs]
    labels = [Path(r).name if Path(r).is_dir() else Path(r).parent.name for r in runs]
    if len(set(labels)) < len(labels):  # same folder names: show more of the path
        labels = [str(Path(r) if Path(r).is_dir() else Path(r).parent) for r in runs]
    table = Table(title="test metrics at each run's selected epoch", title_justify="left",
                  caption=PAPER_NOTE, caption_justify="left")
    table.add_column("metric", no_wrap=True)
    for label, rep in zip(labels, reports):
        table.add_column(label, justify="right")
    table.add_row("mode", *[rep.get("mode", "?") + (" transfer" if rep.get("transfer") else "")
                            for rep in reports])
    table.add_row("encoder", *["random" if rep.get("random_init") else
                               Path(str(rep.get("checkpoint", "?"))).parent.name for rep in reports])
    table.add_section()
    for protocol in ("clean", "paper"):
        for m in METRICS:
            values = [rep.get("test", {}).get(protocol, {}).get(m) for rep in reports]
            finite = [v for v in values if v is not None]
            best = max(finite) if finite else None
            cells = [f"[bold]{_fmt(v)}[/]" if v is not None and v == best and len(finite) > 1 else _fmt(v)
                     for v in values]
            table.add_row(f"{METRIC_TITLES[m]} ({SHORT_TITLES[protocol]})", *cells)
        table.add_section()
    table.add_row("selected epoch", *[str(rep.get("selected_epoch", "?")) for rep in reports])
    return table
