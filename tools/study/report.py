"""The study's outputs: ``results.json`` (every run, every metric, both protocols, the summaries),
``results.md`` (one table per data set: loss x training fraction, the six metrics) and the figures
of ``plots.py``. Everything is rebuilt from every ``result.json`` stored under the output folder,
so a second call into the same folder merges its runs with the first call's."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tools.study.plots import BASELINE, draw_all, seed_gains
from tools.study.tables import ALL_METRICS, METHOD_TITLES, METRIC_TITLES, PAPER_NOTE, summarise

PROTOCOLS = {"val_tuned": "clean (thresholds tuned on validation)",
             "paper": "paper protocol (per-metric thresholds tuned on test, as the authors' code)"}


def stored_results(out: Path, settings: dict | None = None) -> list[dict]:
    """Every finished run under ``out`` (its ``result.json``), whichever call made it; with
    ``settings``, only the runs made with the same shared settings (``command.call_settings``)."""
    runs = []
    for path in sorted(out.glob("**/result.json")):
        result = json.loads(path.read_text())
        if {"dataset", "method", "seed", "test"} <= result.keys() and (
                settings is None or result.get("settings") == settings):
            runs.append(result)
    return runs


def by_fraction(results: list[dict]) -> tuple[dict[float, dict], list[str], list[str], dict[str, int]]:
    """Summaries per training fraction, and the data sets, methods and label counts present."""
    datasets = sorted({r["dataset"] for r in results})
    methods = [m for m in METHOD_TITLES if any(r["method"] == m for r in results)]
    fractions = sorted({r.get("fraction", 1.0) for r in results})
    labels = {r["dataset"]: r.get("num_labels", 0) for r in results}
    datasets.sort(key=lambda d: labels[d])
    summaries = {f: summarise(results, datasets, methods, f) for f in fractions}
    for summary in summaries.values():
        for ds in list(summary):
            if not summary[ds]:
                del summary[ds]
    return summaries, datasets, methods, labels


def _cell(stat: dict) -> str:
    if stat["mean"] is None:
        return "-"
    n = len([v for v in stat["values"] if v is not None])
    return f"{stat['mean']:.3f}" + (f" ± {stat['sd']:.3f}" if n > 1 else "")


def table_rows(summaries: dict[float, dict], dataset: str, protocol: str) -> list[list[str]]:
    rows = []
    for fraction, summary in sorted(summaries.items(), reverse=True):
        for method, entry in summary.get(dataset, {}).items():
            rows.append([METHOD_TITLES[method], f"{fraction:g}", str(len(entry["seeds"])),
                         *[_cell(entry[protocol][m]) for m in ALL_METRICS]])
    return rows


def gain_rows(summaries: dict[float, dict], datasets: list[str]) -> list[list[str]]:
    """Macro-F1 and mAP gain over BCE per (loss, fraction), data set by data set."""
    rows = []
    for fraction, summary in sorted(summaries.items(), reverse=True):
        methods = {m for ds in summary.values() for m in ds if m != BASELINE}
        for method in (m for m in METHOD_TITLES if m in methods):
            cells = []
            for ds in datasets:
                for metric in ("macro_f1", "mAP"):
                    g = seed_gains(summary, ds, method, metric)
                    cells.append(f"{sum(g) / len(g):+.3f}" if g else "-")
            rows.append([METHOD_TITLES[method], f"{fraction:g}", *cells])
    return rows


def markdown(results: list[dict], grouped: tuple, command: str, seconds: float, load: str,
             figures: list[Path]) -> str:
    """``grouped``: ``by_fraction(results)``."""
    summaries, datasets, methods, labels = grouped
    head = ["loss", "fraction", "seeds", *[METRIC_TITLES[m] for m in ALL_METRICS]]
    lines = ["# Multi-label contrastive study", "", f"`{command}`", "",
             f"{datetime.now():%Y-%m-%d %H:%M}; {len(results)} runs; wall time {seconds / 60:.1f} min; {load}.",
             "Test metrics, mean ± sd over seeds. Finetuned with the epoch chosen on a validation split "
             "carved from train (the same rows for every fraction); a fraction is a seeded share of the "
             "remaining training rows, used for pretraining and finetuning.", ""]
    for ds in datasets:
        used = {r.get("fraction", 1.0): r.get("train_rows", "?") for r in results if r["dataset"] == ds}
        rows = ", ".join(f"{used[f]} at fraction {f:g}" for f in sorted(used, reverse=True))
        lines += [f"## {ds}: {labels[ds]} labels; training rows {rows}", ""]
        for protocol, title in PROTOCOLS.items():
            lines += [f"{title}:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(r) + " |" for r in table_rows(summaries, ds, protocol)]
            lines.append("")
    if BASELINE in methods and len(methods) > 1:
        gain_head = ["loss", "fraction"] + [f"{d} {m}" for d in datasets for m in ("macro-F1", "mAP")]
        lines += ["## Gain over BCE (clean protocol, mean over seeds)", "",
                  "| " + " | ".join(gain_head) + " |", "|" + "---|" * len(gain_head)]
        lines += ["| " + " | ".join(r) + " |" for r in gain_rows(summaries, datasets)]
        lines.append("")
    if figures:
        lines += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures] + [""]
    lines += [PAPER_NOTE, ""]
    return "\n".join(lines)


def write(out: Path, command: str, seconds: float, load: str, console: Console,
          settings: dict | None = None) -> list[dict]:
    """``results.md``, ``results.json`` and the figures from every stored run under ``out`` made
    with these ``settings`` (so a second call adds its runs; a quick look with other settings
    into the same folder is left out)."""
    results = stored_results(out, settings)
    grouped = by_fraction(results)
    summaries, datasets, methods, labels = grouped
    out.mkdir(parents=True, exist_ok=True)
    figures = draw_all(summaries, labels, methods, out) if results else []
    (out / "results.md").write_text(markdown(results, grouped, command, seconds, load, figures))
    payload = {"command": command, "date": datetime.now().isoformat(timespec="seconds"),
               "wall_seconds": round(seconds, 1), "load": load, "datasets": datasets, "methods": methods,
               "num_labels": labels, "protocols": PROTOCOLS,
               "summary": {f"{f:g}": s for f, s in summaries.items()}, "runs": results}
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    for ds in datasets:
        table = Table(title=f"{ds} ({labels[ds]} labels): test metrics, clean protocol", title_justify="left")
        for col in ["loss", "fraction", "seeds", *[METRIC_TITLES[m] for m in ALL_METRICS]]:
            table.add_column(col, justify="left" if col == "loss" else "right")
        for row in table_rows(summaries, ds, "val_tuned"):
            table.add_row(*row)
        console.print(table)
    console.print(f"wrote {out / 'results.md'}, {out / 'results.json'}"
                  + (f" and {len(figures)} figures" if figures else ""))
    return results
