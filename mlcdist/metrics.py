r"""The six multi-label metrics of the paper, under three labelled protocols.

Inputs: ``scores`` :math:`s \in [0,1]^{N \times C}` (probabilities, torch tensor or numpy array)
and multi-hot ``targets`` :math:`y \in \{0,1\}^{N \times C}` (any dtype). Predictions are
:math:`\hat y_{nc} = 1[s_{nc} \ge t]`, compared in the scores' own float dtype (so a float32
score is compared with ``float32(t)``, as ``scores >= t`` does in torch and numpy). With
:math:`TP, FP, FN` counted per sample :math:`n`, per class :math:`c` or over everything:

- ``mAP``: mean over classes with at least one positive of scikit-learn's average precision
  :math:`AP_c = \sum_k (R_k - R_{k-1}) P_k` over the distinct score thresholds (tied scores enter
  together), which is :math:`AP_c = \frac{1}{|pos_c|} \sum_{i \in pos_c}
  \frac{\#\{pos: s \ge s_i\}}{\#\{all: s \ge s_i\}}`.
- ``hamming_accuracy``: :math:`\frac{1}{NC} \sum_{n,c} 1[y_{nc} = \hat y_{nc}]`.
- ``example_f1``: :math:`\frac{1}{N} \sum_n \frac{2TP_n}{2TP_n + FP_n + FN_n}` with 0/0 = 0
  (sklearn ``f1_score(average='samples', zero_division=0)``).
- ``macro_f1``: :math:`\frac{1}{C} \sum_c \frac{2TP_c}{2TP_c + FP_c + FN_c}`, 0/0 = 0, every class.
- ``micro_f1``: :math:`\frac{2\sum TP}{2\sum TP + \sum FP + \sum FN}`, 0/0 = 0.
- ``precision_at_1``: :math:`\frac{1}{N} \sum_n y_{n, \arg\max_c s_{nc}}` (first index on ties).
  A sample with no labels counts as a miss, as in the MulSupCon code, so this protocol and the
  paper's agree on it.

Protocols: :func:`multilabel_metrics` (clean: one fixed threshold, or one per metric),
:func:`tune_thresholds` + :func:`validation_tuned_metrics` (thresholds chosen on a validation
split) and :func:`paper_protocol_metrics` (the MulSupCon / C-GMVAE code: thresholds tuned on
the evaluated set itself, optimistic). Degenerate inputs (no class with a positive; every
sample dropped by the paper's example-F1) give ``nan``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray
METRICS: tuple[str, ...] = (
    "mAP", "hamming_accuracy", "example_f1", "macro_f1", "micro_f1", "precision_at_1"
)
THRESHOLD_METRICS: tuple[str, ...] = ("hamming_accuracy", "example_f1", "macro_f1", "micro_f1")
DEFAULT_GRID: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PAPER_PROTOCOL = "paper (optimistic: thresholds tuned on the evaluated set)"
VALIDATION_PROTOCOL = "validation-tuned (thresholds chosen on the validation split)"

# Score buckets per class for average precision; a power of two keeps ``B * s`` exact.
_BUCKETS = 2**14


def _checked(scores: ArrayLike, targets: ArrayLike) -> tuple[Tensor, Tensor]:
    """Validated ``(scores as float32/float64, targets as bool)``; ValueError names the fix."""
    s, y = torch.as_tensor(scores), torch.as_tensor(targets)
    if s.dim() != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty 2-D (N samples x C classes) array, "
                         f"got shape {tuple(s.shape)}")
    if y.shape != s.shape:
        raise ValueError(f"scores shape {tuple(s.shape)} != targets shape {tuple(y.shape)}; "
                         f"both must be N samples x C classes")
    if s.dtype not in (torch.float32, torch.float64):
        s = s.to(torch.float64 if s.dtype == torch.int64 else torch.float32)
    lo, hi = torch.aminmax(s)
    if not (bool(lo >= 0) and bool(hi <= 1)):  # also catches NaN
        raise ValueError(f"scores must lie in [0, 1] (probabilities), got min={lo.item()}, "
                         f"max={hi.item()}; apply torch.sigmoid to logits first")
    if y.dtype != torch.bool:
        if not bool(((y == 0) | (y == 1)).all()):
            raise ValueError("targets must be multi-hot: every entry 0 or 1")
        y = y != 0
    return s, y


def per_class_average_precision(scores: ArrayLike, targets: ArrayLike) -> Tensor:
    """Float64 (C,) sklearn average precision per class; ``nan`` for a class with no positive."""
    return _per_class_ap(*_checked(scores, targets))


def _per_class_ap(s: Tensor, y: Tensor) -> Tensor:
    # AP_c needs, for each positive i, #{all: s >= s_i} and #{pos: s >= s_i}. Sorting all N*C
    # scores (one batched sort) alone takes 1-3 s on a 2-core CPU, so entries go into monotone
    # score buckets per class, a histogram counts them, and only the entries of buckets that
    # hold a positive are sorted (cost grows with how many negatives share a positive's bucket;
    # all scores equal is a full sort). With g_i = the number of entries of the class-major
    # order sorted by (class, score) that come before i's first tie, for i in class c:
    #   #{all >= s_i} = n (c + 1) - g_i,   #{pos >= s_i} = #pos in classes <= c - #pos before g_i.
    n, c = s.shape
    buckets = min(_BUCKETS, 1 << max(n, 2).bit_length())
    width = buckets + 1  # floor(B * s) for s in [0, 1] is 0..B
    n_bins = c * width
    key_dtype = torch.float32 if s.dtype == torch.float32 and n_bins < 2**24 else torch.float64
    # Class-major (C x N) layout keeps the histogram and the bucket lookups cache-local.
    s_cn, y_cn = s.t().contiguous().view(-1), y.t().contiguous().view(-1)
    offsets = torch.arange(c, dtype=key_dtype, device=s.device)[:, None] * width
    # A rounded sum is still monotone in s, so a higher bucket always means a higher score.
    key = torch.add(offsets, s_cn.view(c, n), alpha=buckets)
    key = key.to(torch.int32 if n_bins < 2**31 else torch.int64).view(-1)
    pos_in = torch.bincount(key[y_cn], minlength=n_bins)
    mixed = pos_in > 0
    unsorted_in = torch.bincount(key, minlength=n_bins).masked_fill_(mixed, 0)
    unsorted_before = unsorted_in.cumsum(0) - unsorted_in  # entries in lower, unsorted buckets

    where = torch.index_select(mixed, 0, key).nonzero().squeeze(1)
    bucket, run_starts, order = _sorted_runs(key[where].long(), s_cn[where])
    is_pos = y_cn[where[order]]
    rank = torch.arange(bucket.numel(), device=s.device)
    tie_start = torch.cummax(torch.where(run_starts, rank, 0), 0).values  # ties enter together
    pos_before = torch.cumsum(is_pos, 0) - is_pos.long()
    at = is_pos.nonzero().squeeze(1)
    first, bucket = tie_start[at], bucket[at]
    klass = bucket // width
    n_pos = pos_in.view(c, width).sum(1)
    pos_ge = n_pos.cumsum(0)[klass] - pos_before[first]
    all_ge = n * (klass + 1) - (first + unsorted_before[bucket])
    ap_sum = torch.zeros(c, dtype=torch.float64, device=s.device)
    ap_sum.index_add_(0, klass, pos_ge.double() / all_ge)
    return ap_sum / n_pos  # 0/0 -> nan for classes without positives


def _sorted_runs(bucket: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sort by (bucket, score) ascending: (sorted buckets, first-of-equal-pair flags, order)."""
    run_starts = torch.ones(bucket.numel(), dtype=torch.bool, device=bucket.device)
    if score.dtype == torch.float32:  # non-negative float bits order like the floats
        bits = score.view(torch.int32).long() & 0x7FFFFFFF  # -0.0 is 0.0
        pair, order = torch.sort((bucket << 31) | bits)
        run_starts[1:] = pair[1:] != pair[:-1]
        return pair >> 31, run_starts, order
    order = torch.sort(score, stable=True).indices
    order = order[torch.sort(bucket[order], stable=True).indices]
    bucket, score = bucket[order], score[order]
    run_starts[1:] = (bucket[1:] != bucket[:-1]) | (score[1:] != score[:-1])
    return bucket, run_starts, order


def _precision_at_1(s: Tensor, y: Tensor) -> float:
    top = s.argmax(dim=1, keepdim=True)
    return y.gather(1, top).double().mean().item()


def _f1(tp: Tensor, pp: Tensor, p: Tensor) -> Tensor:
    """2TP / (2TP + FP + FN) = 2TP / (PP + P), with 0/0 -> 0."""
    denom = (pp + p).double()
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), 0.0)


def _grid_tables(s: Tensor, y: Tensor, levels: Sequence[float]) -> dict[str, Tensor]:
    """Each threshold metric at each of the ascending ``levels`` (float64, one value per level).

    Adds ``example_f1_paper``: the mean over samples whose truth or prediction is non-empty.
    """
    n, c = s.shape
    g_count = len(levels)
    width = 2 * (g_count + 1)
    index_dtype = torch.int32 if max(n, c) * width < 2**31 else torch.int64
    cols = torch.arange(c, dtype=index_dtype, device=s.device) * width
    rows = torch.arange(n, dtype=index_dtype, device=s.device)[:, None] * width
    # code = #thresholds <= s (+ g_count + 1 if positive): the entry is predicted positive at
    # threshold j iff its level is > j. Comparisons are in the scores' dtype, like ``s >= t``.
    # Same-dtype byte arithmetic, then one cast: mixed-dtype ops and fresh big tensors are slow.
    small = torch.uint8 if width <= 256 else torch.int32
    code = torch.add((s >= levels[0]).to(small), y.to(small), alpha=g_count + 1)
    for t in levels[1:]:
        code += (s >= t).to(small)
    index = code.to(index_dtype)
    del code
    index += cols  # one N x C buffer serves both histograms
    per_class = torch.bincount(index.view(-1), minlength=c * width)
    index.sub_(cols).add_(rows)
    per_sample = torch.bincount(index.view(-1), minlength=n * width)

    def predicted_counts(counts: Tensor, n_rows: int) -> tuple[Tensor, Tensor, Tensor]:
        counts = counts.view(n_rows, 2, g_count + 1)
        above = counts.flip(-1).cumsum(-1).flip(-1)[..., 1:]  # #entries with level > j
        tp = above[:, 1]
        return tp, above.sum(1), counts[:, 1].sum(-1, keepdim=True)

    tp_c, pp_c, p_c = predicted_counts(per_class, c)
    tp_n, pp_n, p_n = predicted_counts(per_sample, n)
    f1_n = _f1(tp_n, pp_n, p_n)
    kept = (pp_n + p_n) > 0
    tp, pp, p = tp_c.sum(0), pp_c.sum(0), p_c.sum()
    return {
        "hamming_accuracy": 1 - (pp + p - 2 * tp).double() / (n * c),
        "example_f1": f1_n.mean(0),
        "example_f1_paper": (f1_n * kept).sum(0) / kept.sum(0),  # 0/0 -> nan
        "macro_f1": _f1(tp_c, pp_c, p_c).mean(0),
        "micro_f1": _f1(tp, pp, p),
    }


def _ranking_metrics(s: Tensor, y: Tensor) -> dict[str, float]:
    ap = _per_class_ap(s, y)
    return {"mAP": ap.nanmean().item(), "precision_at_1": _precision_at_1(s, y)}


def _levels(grid: Sequence[float]) -> list[float]:
    levels = sorted({float(t) for t in grid})
    if not levels or not all(np.isfinite(levels)):
        raise ValueError(f"threshold grid must be a non-empty list of finite numbers, got {grid}")
    return levels


def _per_metric_thresholds(threshold: float | Mapping[str, float]) -> dict[str, float]:
    if not isinstance(threshold, Mapping):
        return {name: float(threshold) for name in THRESHOLD_METRICS}
    missing = sorted(set(THRESHOLD_METRICS) - set(threshold))
    unknown = sorted(set(threshold) - set(THRESHOLD_METRICS))
    if missing or unknown:
        raise ValueError(f"threshold dict needs exactly the keys {list(THRESHOLD_METRICS)}; "
                         f"missing {missing}, unknown {unknown}")
    return {name: float(threshold[name]) for name in THRESHOLD_METRICS}


def multilabel_metrics(
    scores: ArrayLike, targets: ArrayLike, threshold: float | Mapping[str, float] = 0.5
) -> dict[str, float]:
    """The six metrics (module docstring) at ``threshold``: one float for every threshold
    metric, or a dict ``{metric: t}`` over :data:`THRESHOLD_METRICS` (e.g. from
    :func:`tune_thresholds`). Returns ``{name: float}`` over :data:`METRICS`."""
    s, y = _checked(scores, targets)
    chosen = _per_metric_thresholds(threshold)
    levels = _levels(chosen.values())
    tables = _grid_tables(s, y, levels)
    out = _ranking_metrics(s, y)
    for name, t in chosen.items():
        out[name] = tables[name][levels.index(t)].item()
    return {name: out[name] for name in METRICS}


def _best(table: Tensor, levels: list[float]) -> tuple[float, float]:
    """(best value, its threshold); nan never wins and ties go to the lowest threshold."""
    j = int(torch.nan_to_num(table, nan=-float("inf")).argmax())
    return table[j].item(), levels[j]


def tune_thresholds(
    val_scores: ArrayLike, val_targets: ArrayLike, grid: Sequence[float] = DEFAULT_GRID
) -> dict[str, float]:
    """``{metric: argmax_t metric(val, t)}`` over ``grid`` for each of :data:`THRESHOLD_METRICS`
    (clean definitions; ties go to the lowest threshold)."""
    s, y = _checked(val_scores, val_targets)
    levels = _levels(grid)
    tables = _grid_tables(s, y, levels)
    return {name: _best(tables[name], levels)[1] for name in THRESHOLD_METRICS}


def validation_tuned_metrics(
    val_scores: ArrayLike,
    val_targets: ArrayLike,
    scores: ArrayLike,
    targets: ArrayLike,
    grid: Sequence[float] = DEFAULT_GRID,
) -> dict:
    """Clean metrics on (``scores``, ``targets``) at thresholds tuned on the validation split:
    the :data:`METRICS` floats plus ``thresholds`` ``{metric: t}`` and ``protocol``."""
    thresholds = tune_thresholds(val_scores, val_targets, grid)
    out: dict = multilabel_metrics(scores, targets, thresholds)
    return {**out, "thresholds": thresholds, "protocol": VALIDATION_PROTOCOL}


def paper_protocol_metrics(
    scores: ArrayLike, targets: ArrayLike, grid: Sequence[float] = DEFAULT_GRID
) -> dict:
    r"""The protocol of the MulSupCon and C-GMVAE code. OPTIMISTIC: each threshold metric is
    maximised separately over ``grid`` (0.1, ..., 0.9) on the evaluated set itself,
    :math:`\max_t m(s, y, t)`, so the numbers are upper bounds, not held-out estimates.

    Differences from :func:`multilabel_metrics`: example-F1 drops samples whose truth and
    prediction are both empty (mean over :math:`\{n : |y_n| + |\hat y_n| > 0\}`); macro-F1
    counts a class with no positive and no prediction as 0 (the same as the clean one); mAP and
    precision@1 are threshold-free and identical. Returns the :data:`METRICS` floats plus
    ``thresholds`` ``{metric: t}`` (ties go to the lowest threshold) and ``protocol``."""
    s, y = _checked(scores, targets)
    levels = _levels(grid)
    tables = _grid_tables(s, y, levels)
    tables["example_f1"] = tables.pop("example_f1_paper")
    out: dict = _ranking_metrics(s, y)
    thresholds = {}
    for name in THRESHOLD_METRICS:
        out[name], thresholds[name] = _best(tables[name], levels)
    return {**{name: out[name] for name in METRICS}, "thresholds": thresholds,
            "protocol": PAPER_PROTOCOL}
