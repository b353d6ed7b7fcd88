"""The study's figures (PNG), drawn from the summaries of ``tables.summarise``.

* ``gain_vs_labels.png``: macro-F1 and mAP gain over BCE (same data set, fraction and protocol)
  against the number of labels, one line per loss, error bars = the seed spread of the gain;
* ``gain_vs_fraction.png``: the same gain, averaged over the data sets, against the training
  fraction;
* ``metrics_NAME.png``: per data set, the six test metrics of every loss (full training set),
  bars with the seed spread.

The gain of seed ``s`` is ``metric(loss, s) - mean over seeds of metric(BCE)``; its mean and
sample standard deviation over the seeds are what is drawn.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Callable

from tools.study.tables import ALL_METRICS, METHOD_TITLES, METRIC_TITLES, mean_sd

GAIN_METRICS = ("macro_f1", "mAP")
BASELINE = "bce"
PROTOCOL = "val_tuned"  # the clean protocol: thresholds from validation, never from test


def _finite(values: list) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample sd (0 for one value), as every table of the study reports them."""
    stat = mean_sd(values)
    return stat["mean"], stat["sd"]


def seed_gains(summary: dict, dataset: str, method: str, metric: str) -> list[float]:
    """Per-seed gains of ``method`` over the baseline's seed mean on one data set (empty: no data)."""
    entries = summary.get(dataset, {})
    if method not in entries or BASELINE not in entries:
        return []
    base = _finite(entries[BASELINE][PROTOCOL][metric]["values"])
    ours = _finite(entries[method][PROTOCOL][metric]["values"])
    if not base or not ours:
        return []
    ref = statistics.fmean(base)
    return [v - ref for v in ours]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


Points = Callable[[str, str], list[tuple[float, float, float]]]  # (method, metric) -> (x, mean, sd)


def _gain_figure(path: Path, methods: list[str], points: Points, ticks: list[float], tick_labels: list[str],
                 xlabel: str, title: str) -> Path:
    """One panel per gain metric: a line per loss (error bars: the seed spread), BCE at 0."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(GAIN_METRICS), figsize=(6 * len(GAIN_METRICS), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], GAIN_METRICS):
        losses = [m for m in methods if m != BASELINE]
        for i, method in enumerate(losses):
            if found := points(method, metric):
                x, mean, sd = zip(*found)
                dodge = 1.02 ** (i - (len(losses) - 1) / 2)  # error bars of one x side by side
                ax.errorbar([v * dodge for v in x], mean, yerr=sd, marker="o", capsize=3,
                            label=METHOD_TITLES.get(method, method))
        ax.axhline(0.0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xticks(ticks)
        ax.set_xticklabels(tick_labels, fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{METRIC_TITLES[metric]} gain over BCE")
        ax.set_title(f"{METRIC_TITLES[metric]} gain over BCE, {title}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.text(0.01, 0.01, "test set, thresholds tuned on validation; bars: sd over seeds", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def gain_vs_labels(summary: dict, num_labels: dict[str, int], methods: list[str], path: Path,
                   fraction: float) -> Path:
    datasets = sorted(summary, key=lambda d: (num_labels[d], d))
    # sets with the same label count sit side by side (x 1.08 each), under one tick
    same: dict[int, list[str]] = {}
    for d in datasets:
        same.setdefault(num_labels[d], []).append(d)
    where = {d: n * 1.08 ** names.index(d) for n, names in same.items() for d in names}

    def points(method: str, metric: str):
        return [(where[d], *_spread(g)) for d in datasets if (g := seed_gains(summary, d, method, metric))]
    return _gain_figure(path, methods, points, list(same), [f"{', '.join(v)}\n{n}" for n, v in same.items()],
                        "data set and number of labels (log scale)", f"training fraction {fraction:g}")


def gain_vs_fraction(by_fraction: dict[float, dict], methods: list[str], path: Path) -> Path:
    fractions = sorted(by_fraction)

    def points(method: str, metric: str):
        found = []
        for f in fractions:
            per_set = [g for d in by_fraction[f] if (g := seed_gains(by_fraction[f], d, method, metric))]
            if per_set:  # seed s's gain averaged over the data sets
                seeds = min(map(len, per_set))
                found.append((f, *_spread([statistics.fmean(g[s] for g in per_set) for s in range(seeds)])))
        return found
    return _gain_figure(path, methods, points, fractions, [f"{f:g}" for f in fractions],
                        "training fraction (log scale)", "mean over data sets")


def metric_bars(summary: dict, dataset: str, methods: list[str], path: Path, fraction: float) -> Path:
    plt = _pyplot()
    present = [m for m in methods if m in summary.get(dataset, {})]
    fig, ax = plt.subplots(figsize=(1.6 * len(ALL_METRICS) + 2, 4.2))
    width = 0.8 / max(len(present), 1)
    for i, method in enumerate(present):
        stats = [summary[dataset][method][PROTOCOL][m] for m in ALL_METRICS]
        means = [s["mean"] if s["mean"] is not None else 0.0 for s in stats]
        sds = [s["sd"] or 0.0 for s in stats]
        xs = [j + (i - (len(present) - 1) / 2) * width for j in range(len(ALL_METRICS))]
        bars = ax.bar(xs, means, width, yerr=sds, capsize=2, label=METHOD_TITLES.get(method, method))
        ax.bar_label(bars, fmt="%.3f", fontsize=6, rotation=90, padding=3)
    ax.set_xticks(range(len(ALL_METRICS)))
    ax.set_xticklabels([METRIC_TITLES[m] for m in ALL_METRICS])
    ax.set_ylim(0, 1.12)  # room for the value labels above 1.0-ish bars
    ax.set_ylabel("test score")
    ax.set_title(f"{dataset}: six test metrics, training fraction {fraction:g} "
                 "(thresholds tuned on validation; bars: sd over seeds)", fontsize=10)
    ax.legend(fontsize=8, ncol=min(len(present), 4), loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def draw_all(by_fraction: dict[float, dict], num_labels: dict[str, int], methods: list[str],
             out: Path) -> list[Path]:
    """Every figure the grid supports (the gain plots need BCE in ``methods``)."""
    top = max(by_fraction)
    paths = [metric_bars(by_fraction[top], d, methods, out / f"metrics_{d}.png", top)
             for d in by_fraction[top]]
    if BASELINE in methods and len(methods) > 1:
        paths.append(gain_vs_labels(by_fraction[top], num_labels, methods, out / "gain_vs_labels.png", top))
        if len(by_fraction) > 1:
            paths.append(gain_vs_fraction(by_fraction, methods, out / "gain_vs_fraction.png"))
    return paths
