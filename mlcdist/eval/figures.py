r"""The PNG figures of eval runs, drawn to be kept: titled with what was evaluated (a random
encoder says so), on fixed scales so that two runs' figures compare.

- ``per_class_ap.png``: test AP per class, sorted, with its value and the class's positive count;
- ``class_similarity.png``: cosine similarity :math:`\cos(\bar h_i, \bar h_j)` of class
  embeddings on the fixed scale 0..1 (negative values, rare after a ReLU, show as 0), with
  :math:`\bar h_c` the mean L2-normalised feature of
  the test samples whose label set is exactly :math:`\{c\}` (falling back to every sample
  carrying :math:`c` when there is none, as on the digits demo). The paper's figure 3 shows the
  row softmax of these cosines (:func:`class_similarity`), whose scale depends on the class count;
- ``curves.png``: training and validation loss and the validation selection metric per epoch
  (linear probe and finetune), the selected epoch and learning-rate drops marked;
- ``compare --plot``: the six clean test metrics of several runs side by side.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

RANDOM_NOTE = "RANDOM encoder (not pretrained: baseline)"


def class_cosine(features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(cos, exclusive, count)``: the C x C cosine similarities of the class embeddings
    (module docstring; rows/columns of classes without samples are nan), whether each class
    embedding came from single-label samples, and how many samples it averaged."""
    y = torch.as_tensor(targets).bool()
    h = F.normalize(torch.as_tensor(features).double(), dim=1)
    only = y & (y.sum(1, keepdim=True) == 1)
    use_only = only.any(0)
    members = torch.where(use_only[None, :], only, y).double()  # N x C
    count = members.sum(0)
    means = (members.T @ h) / count.clamp(min=1)[:, None]
    cos = F.normalize(means, dim=1) @ F.normalize(means, dim=1).T
    present = count > 0
    cos[~present] = math.nan
    cos[:, ~present] = math.nan
    return cos, use_only, count


def class_similarity(features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""``(P, exclusive, count)`` as :func:`class_cosine`, with ``P`` the paper's row softmax
    :math:`\mathrm{softmax}_j \cos(\bar h_i, \bar h_j)` over the classes that have samples."""
    cos, use_only, count = class_cosine(features, targets)
    present = count > 0
    prob = torch.softmax(cos.nan_to_num(0.0).masked_fill(~present[None, :], -math.inf), dim=1)
    prob[~present] = math.nan
    prob[:, ~present] = math.nan
    return prob, use_only, count


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)


def plot_per_class_ap(per_class_ap: dict, positives: dict, path: Path, title: str) -> None:
    """Horizontal bars sorted by AP (best on top), each with its value; the label gives the
    class's test positives (``n=``), the dashed line the mean (= mAP)."""
    plt = _pyplot()
    rows = sorted(((math.nan if v is None else v, name) for name, v in per_class_ap.items()),
                  key=lambda r: -1.0 if math.isnan(r[0]) else r[0], reverse=True)
    labels = [f"{name} (n={positives.get(name, '?')})" for _, name in rows]
    values = [v for v, _ in rows]
    fig, ax = plt.subplots(figsize=(7.5, max(3.0, 0.28 * len(rows) + 1.4)))
    ax.barh(range(len(rows)), [0 if math.isnan(v) else v for v in values], color="#4477aa")
    small = 7 if len(rows) > 30 else 9
    for i, v in enumerate(values):
        ax.text(0.005 if math.isnan(v) else v + 0.005, i, "n/a" if math.isnan(v) else f"{v:.3f}",
                va="center", fontsize=small)
    ax.set_yticks(range(len(rows)), labels, fontsize=small)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # best class on top, no empty margin
    finite = [v for v in values if not math.isnan(v)]
    if finite:  # in the title rather than a legend, which would hide a bar
        mean = sum(finite) / len(finite)
        ax.axvline(mean, color="#cc3311", linestyle="--")
        title += f"\nmAP {mean:.3f} (dashed line); n = positive test samples"
    ax.set_xlim(0, 1.08)  # room for the value of a bar at 1.0
    ax.set_xticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_xlabel("average precision (test)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def plot_class_similarity(cos: Tensor, exclusive: Tensor, names: Sequence[str], path: Path,
                          title: str) -> None:
    """Heatmap of :func:`class_cosine` on the fixed scale 0..1 (values written in the cells
    up to 20 classes); classes whose embedding fell back to all samples carrying them are
    marked with ``*``."""
    plt = _pyplot()
    c = len(names)
    labels = [n if bool(e) else f"{n}*" for n, e in zip(names, exclusive)]
    side = min(14.0, max(5.0, 0.3 * c + 2.5))  # inches; 80 COCO classes still fit on one page
    fig, ax = plt.subplots(figsize=(side + 1.4, side))
    # one scale for every run, so two runs' figures compare; backbone features after a ReLU are
    # non-negative (cosines in 0..1), so 0..1 keeps the resolution where the values are
    image = ax.imshow(cos.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    negative = bool((cos.nan_to_num(0.0) < 0).any())
    if c <= 20:
        for i in range(c):
            for j in range(c):
                v = float(cos[i, j])
                if math.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if v > 0.6 else "white")
    size = min(10.0, 0.75 * 72 * (side - 2) / c)  # points per row, with room between labels
    step = 1 if size >= 4 else 2 if size >= 2 else max(1, c // 40)
    size = max(size, 4.0)
    ticks = list(range(0, c, step))
    ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=90, fontsize=size)
    ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=size)
    ax.set_xlabel("class j")
    ax.set_ylabel("class i")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                 label=r"cosine similarity $\cos(\bar h_i, \bar h_j)$, fixed scale 0..1" +
                 (" (negative: shown as 0)" if negative else ""))
    note = "" if bool(exclusive.all()) else \
        "\n* no single-label test sample: mean over all samples with the class"
    ax.set_title(title + note, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def plot_curves(history: Sequence[dict], selected_epoch: int, select_metric: str, path: Path,
                title: str) -> None:
    """Left: training and validation loss per epoch; right: the validation selection metric.
    The selected epoch is a dotted line, each learning-rate drop (ReduceLROnPlateau) a tick."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss_ax.plot(epochs, [h["train_loss"] for h in history], label="train", color="#4477aa")
    loss_ax.plot(epochs, [h["val_loss"] for h in history], label="validation", color="#ee6677")
    loss_ax.set_ylabel("BCE loss")
    loss_ax.legend(frameon=False)
    key = f"val_{select_metric}"
    metric_ax.plot(epochs, [h.get(key, math.nan) for h in history], color="#228833")
    metric_ax.set_ylabel(f"validation {select_metric}")
    drops = [h["epoch"] for prev, h in zip(history, history[1:]) if h["lr"][-1] < prev["lr"][-1]]
    for ax in (loss_ax, metric_ax):
        ax.axvline(selected_epoch, color="black", linestyle=":", linewidth=1)
        for epoch in drops:
            ax.axvline(epoch, color="grey", linewidth=0.6, alpha=0.5)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.25)
    metric_ax.set_title(f"dotted: selected epoch {selected_epoch}" + (
        "; grey: learning rate x0.1" if drops else ""), fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def plot_compare(labels: Sequence[str], reports: Sequence[dict], path: Path) -> None:
    """Grouped bars: the six clean (threshold 0.5) test metrics, one bar per run, values on
    top; the legend names each run's encoder and test data (a title warns when they differ)."""
    from mlcdist.eval.labels import METRIC_TITLES, data_set, encoder
    from mlcdist.metrics import METRICS

    plt = _pyplot()
    width = 0.8 / len(reports)
    fig, ax = plt.subplots(figsize=(max(8.0, 1.2 * len(METRICS) * max(1, len(reports) / 2)), 4.6))
    colours = plt.get_cmap("tab10").colors
    for k, (label, rep) in enumerate(zip(labels, reports)):
        values = [rep.get("test", {}).get("clean", {}).get(m) for m in METRICS]
        xs = [i + (k - (len(reports) - 1) / 2) * width for i in range(len(METRICS))]
        bars = ax.bar(xs, [0 if v is None else v for v in values], width * 0.95, color=colours[k % 10],
                      label=f"{label}: {'RANDOM encoder' if rep.get('random_init') else encoder(rep)}, "
                            f"test {data_set(rep, 'test')}")
        for bar, v in zip(bars, values):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01,
                    "n/a" if v is None else f"{v:.3f}", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(range(len(METRICS)), [METRIC_TITLES[m] for m in METRICS])
    ax.set_ylim(0, 1.18)  # room for the rotated values above a bar at 1.0
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("test metric (clean protocol: thresholds 0.5)")
    ax.legend(fontsize=8, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=1)
    tests = {data_set(rep, "test") for rep in reports}
    ax.set_title("test metrics at each run's selected epoch" + (
        "\nWARNING: different test sets, the runs do not compare" if len(tests) > 1 else ""), fontsize=10)
    fig.tight_layout()
    _save(fig, path)
