r"""The PNG figures of an eval run: per-class AP bars and the class-similarity heatmap.

Class similarity (paper, figure 3): with :math:`\bar h_c` the mean L2-normalised feature of the
test samples whose label set is exactly :math:`\{c\}` (falling back to every sample carrying
:math:`c` when there is none, as on the digits demo), row :math:`i` of the heatmap is
:math:`\mathrm{softmax}_j \cos(\bar h_i, \bar h_j)`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


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


