"""The headline tables: the paper's numbers, per-(data set, method) summaries over seeds, and
their rich (console) and markdown (``OUT/results.md``) renderings."""

from __future__ import annotations

import math
import statistics

from rich.table import Table


METHOD_TITLES = {"mulsupcon": "MulSupCon", "weighted": "MulSupCon (weighted)", "all": "ALL", "any": "ANY",
                 "jaccard": "Jaccard SupCon", "proto": "prototypes", "msc": "MSC", "reg": "reg (study)",
                 "reg_plain": "reg w/o regulariser", "bce": "BCE", "asl": "ASL", "zlpr": "ZLPR"}
PROTOCOLS = ("paper", "val_tuned")
PROTOCOL_TITLES = {"paper": "paper*", "val_tuned": "clean"}
TABLE_METRICS = ("example_f1", "micro_f1", "macro_f1", "hamming_accuracy", "mAP")
ALL_METRICS = (*TABLE_METRICS, "precision_at_1")  # the six of docs/eval.md
METRIC_TITLES = {"precision_at_1": "P@1", "example_f1": "example-F1", "micro_f1": "micro-F1", "macro_f1": "macro-F1",
                 "hamming_accuracy": "Hamming acc.", "mAP": "mAP"}
# The paper's MulSupCon row (Zhang & Wu, AAAI-24, Tables 2 and 3; no mAP is reported there).
PAPER_MULSUPCON: dict[str, dict[str, float]] = {
    "yeast": {"example_f1": 0.659, "micro_f1": 0.667, "macro_f1": 0.475, "hamming_accuracy": 0.799},
    "scene": {"example_f1": 0.787, "micro_f1": 0.773, "macro_f1": 0.776, "hamming_accuracy": 0.922},
}
TOLERANCE = 0.01  # issue #6: reach the paper's numbers within this, or explain the gap
PAPER_NOTE = ("* paper protocol: per-metric thresholds tuned on the test set itself, as in the "
              "authors' code (optimistic). clean: thresholds tuned on the validation split. "
              "Both: epoch selected on the validation split (carved from train).")


def mean_sd(values: list[float | None]) -> dict:
    """Mean, sample standard deviation (0 for one value) and the values themselves."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": None, "sd": None, "values": values}
    sd = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return {"mean": statistics.fmean(finite), "sd": sd, "values": values}


def summarise(results: list[dict], datasets: list[str], methods: list[str],
              fraction: float = 1.0) -> dict:
    """``{dataset: {method: {protocol: {metric: mean_sd}, "pretrain_loss": ..., "seeds"}}}`` of
    the runs at one training ``fraction``."""
    table: dict = {}
    for ds in datasets:
        table[ds] = {}
        for method in methods:
            runs = sorted((r for r in results if r["dataset"] == ds and r["method"] == method
                           and r.get("fraction", 1.0) == fraction), key=lambda r: r["seed"])
            if not runs:
                continue
            entry: dict = {"seeds": [r["seed"] for r in runs]}
            for protocol in ("paper", "val_tuned", "clean"):
                entry[protocol] = {m: mean_sd([r["test"][protocol][m] for r in runs])
                                   for m in ALL_METRICS}
            curves = [r["pretrain"]["epoch_loss"] for r in runs]
            entry["pretrain_loss"] = {
                "first_epoch": mean_sd([c[0] for c in curves]),
                "second_epoch": mean_sd([c[1] if len(c) > 1 else None for c in curves]),
                "last_epoch": mean_sd([c[-1] for c in curves]),
                "ln_candidates": runs[0]["pretrain"]["ln_candidates"],
                "epochs": runs[0]["pretrain"]["epochs"]}
            entry["selected_epoch"] = [r["selected_epoch"] for r in runs]
            entry["seconds"] = mean_sd([r["seconds"]["total"] for r in runs])
            table[ds][method] = entry
    return table


def _cell(stat: dict | None, seeds: int) -> str:
    if stat is None or stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.3f}" + (f" ± {stat['sd']:.3f}" if seeds > 1 else "")


def table_rows(summary: dict) -> list[tuple[str, str, str, list[str], bool]]:
    """``(data set, method, protocol, cells, is_gap_row)`` rows of the headline table: per data
    set the paper's row, then every method under the paper protocol, the MulSupCon - paper gap
    (``ok`` within the tolerance), then every method under the clean protocol."""
    rows = []
    for ds, methods in summary.items():
        paper = PAPER_MULSUPCON.get(ds)
        if paper:
            rows.append((ds, "MulSupCon (paper)", "reported",
                         [f"{paper[m]:.3f}" if m in paper else "-" for m in TABLE_METRICS], False))
        for protocol in PROTOCOLS:
            for method, entry in methods.items():
                seeds = len(entry["seeds"])
                rows.append((ds, METHOD_TITLES[method], PROTOCOL_TITLES[protocol],
                             [_cell(entry[protocol][m], seeds) for m in TABLE_METRICS], False))
            ours = methods.get("mulsupcon")
            if paper and ours:
                cells = []
                for m in TABLE_METRICS:
                    mean = ours[protocol][m]["mean"]
                    if m not in paper or mean is None:
                        cells.append("-")
                        continue
                    gap = mean - paper[m]
                    cells.append(f"{gap:+.3f} {'ok' if abs(gap) <= TOLERANCE else 'MISS'}")
                rows.append((ds, "MulSupCon - paper", PROTOCOL_TITLES[protocol], cells, True))
    return rows


def loss_rows(summary: dict) -> list[list[str]]:
    rows = []
    for ds, methods in summary.items():
        for method, entry in methods.items():
            loss = entry["pretrain_loss"]
            seeds = len(entry["seeds"])
            ref = "-" if loss["ln_candidates"] is None else f"{loss['ln_candidates']:.3f}"
            rows.append([ds, METHOD_TITLES[method], _cell(loss["first_epoch"], seeds),
                         _cell(loss["second_epoch"], seeds), _cell(loss["last_epoch"], seeds),
                         ref, str(loss["epochs"]),
                         ", ".join(map(str, entry["selected_epoch"]))])
    return rows


LOSS_HEAD = ["data set", "method", "loss, epoch 1", "epoch 2", "last epoch", "ln(batch+queue)",
             "epochs", "finetune epoch selected"]
LOSS_NOTE = ("Pretraining loss: mean over every step of each epoch. The "
             "queue fills during epoch 1 (fewer candidates, lower loss), so epoch 2 is the first "
             "comparable value; ln(batch+queue) is the contrastive loss of uninformative "
             "embeddings (all similarities equal).")


def rich_tables(summary: dict, seeds: int) -> list[Table]:
    head = Table(title=f"MulSupCon reproduction: test metrics, mean ± sd over {seeds} seed(s)",
                 title_justify="left", caption=PAPER_NOTE, caption_justify="left")
    for col in ("data set", "method", "protocol"):
        head.add_column(col, no_wrap=True)
    for m in TABLE_METRICS:
        head.add_column(METRIC_TITLES[m], justify="right")
    last = None
    for ds, method, protocol, cells, gap in table_rows(summary):
        if last is not None and ds != last:
            head.add_section()
        last = ds
        style = "bold" if gap else None
        head.add_row(ds, method, protocol, *cells, style=style)
    losses = Table(title="pretraining loss", title_justify="left", caption=LOSS_NOTE,
                   caption_justify="left")
    for col in LOSS_HEAD:
        losses.add_column(col, justify="left" if col in ("data set", "method") else "right")
    for row in loss_rows(summary):
        losses.add_row(*row)
    return [head, losses]


def markdown(summary: dict, seeds: int, command: str, seconds: float, load: str) -> str:
    head = ["data set", "method", "protocol"] + [METRIC_TITLES[m] for m in TABLE_METRICS]
    intro = (f"Test metrics, mean ± sd over {seeds} seed(s). Command: `{command}`; wall time "
             f"{seconds / 60:.1f} min; {load}.")
    lines = [intro, "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for ds, method, protocol, cells, gap in table_rows(summary):
        row = [ds, method, protocol] + cells
        lines.append("| " + " | ".join(f"**{c}**" if gap else c for c in row) + " |")
    lines += ["", PAPER_NOTE, "", "| " + " | ".join(LOSS_HEAD) + " |",
              "|" + "---|" * len(LOSS_HEAD)]
    lines += ["| " + " | ".join(row) + " |" for row in loss_rows(summary)]
    lines += ["", LOSS_NOTE]
    return "\n".join(lines) + "\n"
