"""The six metrics against scikit-learn, the paper protocol against a plain numpy reference."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score

from mlcdist.metrics import (
    DEFAULT_GRID,
    METRICS,
    PAPER_PROTOCOL,
    THRESHOLD_METRICS,
    multilabel_metrics,
    paper_protocol_metrics,
    per_class_average_precision,
    tune_thresholds,
    validation_tuned_metrics,
)


def random_case(seed: int, n: int, c: int, dtype=np.float32, ties: int | None = None):
    """Scores in [0, 1] (optionally on a coarse lattice for ties), targets with an all-negative
    class, an unlabelled sample and label densities that differ by class."""
    rng = np.random.default_rng(seed)
    scores = rng.random((n, c)).astype(dtype)
    if ties is not None:
        scores = (np.round(scores * ties) / ties).astype(dtype)
    targets = rng.random((n, c)) < rng.uniform(0.02, 0.7, size=c)
    targets[:, 0] = False
    targets[0] = False
    # scores that mean something, so the thresholds and the ranking are not pure noise
    scores = np.where(targets, np.maximum(scores, rng.random((n, c)).astype(dtype)), scores)
    return scores, targets.astype(np.int64)


def sklearn_reference(scores, targets, t: float) -> dict[str, float]:
    pred = scores >= scores.dtype.type(t)
    aps = [average_precision_score(targets[:, j], scores[:, j])
           for j in range(targets.shape[1]) if targets[:, j].any()]
    top = scores.argmax(axis=1)
    return {
        "mAP": float(np.mean(aps)),
        "hamming_accuracy": float((pred == targets.astype(bool)).mean()),
        "example_f1": f1_score(targets, pred, average="samples", zero_division=0),
        "macro_f1": f1_score(targets, pred, average="macro", zero_division=0),
        "micro_f1": f1_score(targets, pred, average="micro", zero_division=0),
        "precision_at_1": float(targets[np.arange(len(top)), top].mean()),
    }


CASES = [  # seed, n, c, dtype, ties
    (0, 50, 7, np.float32, None),
    (1, 200, 13, np.float64, None),
    (2, 300, 20, np.float32, 10),
    (3, 120, 5, np.float64, 4),
    (4, 1000, 3, np.float32, 1000),
]


@pytest.mark.parametrize("seed,n,c,dtype,ties", CASES)
@pytest.mark.parametrize("threshold", [0.5, 0.3])
@pytest.mark.parametrize("as_torch", [False, True])
def test_clean_metrics_match_sklearn(seed, n, c, dtype, ties, threshold, as_torch):
    scores, targets = random_case(seed, n, c, dtype, ties)
    expected = sklearn_reference(scores, targets, threshold)
    inputs = (torch.from_numpy(scores), torch.from_numpy(targets)) if as_torch else (
        scores, targets)
    got = multilabel_metrics(*inputs, threshold=threshold)
    assert list(got) == list(METRICS)
    assert all(type(v) is float for v in got.values())
    for name in METRICS:
        assert got[name] == pytest.approx(expected[name], abs=1e-12), name


@pytest.mark.parametrize("make_scores", [
    lambda rng, n, c: 0.5 + 1e-6 * rng.random((n, c)),  # everything in one bucket per class
    lambda rng, n, c: np.round(rng.random((n, c)) * 2) / 2,  # three distinct values
    lambda rng, n, c: 1 / (1 + np.exp(-60 * rng.standard_normal((n, c)))),  # exact 0 and 1
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_average_precision_with_crowded_and_tied_scores(make_scores, dtype):
    rng = np.random.default_rng(7)
    scores = make_scores(rng, 400, 6).astype(dtype)
    targets = rng.random((400, 6)) < 0.3
    targets[:, 5] = False
    got = per_class_average_precision(scores, targets).numpy()
    expected = [average_precision_score(targets[:, j], scores[:, j]) for j in range(5)]
    np.testing.assert_allclose(got[:5], expected, rtol=0, atol=1e-12)
    assert np.isnan(got[5])


def test_average_precision_where_float32_bucket_keys_round():
    # 600 classes x 16385 buckets puts bucket ids above 2**23, where float32 sums round.
    rng = np.random.default_rng(3)
    scores = (np.round(rng.random((8192, 600)) * 3000) / 3000).astype(np.float32)
    targets = rng.random((8192, 600)) < 0.05
    got = per_class_average_precision(scores, targets).numpy()
    for j in range(585, 600):
        assert got[j] == pytest.approx(
            average_precision_score(targets[:, j], scores[:, j]), abs=1e-12)


def test_negative_zero_ties_with_zero():
    scores = np.array([[0.0], [-0.0], [0.5], [0.0], [-0.0]], dtype=np.float32)
    targets = np.array([[1], [0], [1], [0], [1]])
    expected = average_precision_score(targets[:, 0], np.abs(scores[:, 0]))
    assert per_class_average_precision(scores, targets)[0].item() == pytest.approx(expected)


def test_target_and_score_dtypes_give_the_same_answer():
    scores, targets = random_case(5, 80, 6, np.float64, ties=8)  # exact in float16
    expected = multilabel_metrics(scores, targets)
    for t in (targets.astype(bool), targets.astype(np.float32), torch.from_numpy(targets).byte()):
        assert multilabel_metrics(scores, t) == expected
    assert multilabel_metrics(torch.from_numpy(scores).half(), targets) == expected


def test_no_positive_anywhere_gives_nan_map_not_an_error():
    got = multilabel_metrics(np.full((4, 3), 0.2), np.zeros((4, 3)))
    assert np.isnan(got["mAP"]) and got["precision_at_1"] == 0.0
    assert got["hamming_accuracy"] == 1.0 and got["macro_f1"] == 0.0


def test_precision_at_1_counts_unlabelled_samples_as_misses():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.6]])
    targets = np.array([[1, 0], [1, 0], [0, 0], [0, 1]])
    # hit, miss, unlabelled (miss), tie at the top goes to the first class (miss)
    assert multilabel_metrics(scores, targets)["precision_at_1"] == 0.25
    assert paper_protocol_metrics(scores, targets)["precision_at_1"] == 0.25


def test_perfect_predictions_score_one():
    rng = np.random.default_rng(0)
    targets = rng.random((64, 9)) < 0.3
    targets[np.arange(64), rng.integers(0, 9, 64)] = True  # every sample labelled
    targets[np.arange(9), np.arange(9)] = True  # every class has a positive
    scores = np.where(targets, 0.95, 0.05)
    for got in (multilabel_metrics(scores, targets), paper_protocol_metrics(scores, targets)):
        for name in METRICS:
            assert got[name] == 1.0, name


def paper_reference(scores, targets, grid) -> dict:
    """From the definitions: each threshold metric maximised over the grid (first best)."""
    y = targets.astype(bool)
    best = {name: (-np.inf, None) for name in THRESHOLD_METRICS}
    for t in grid:
        pred = scores >= scores.dtype.type(t)
        tp_n, pp_n, p_n = (pred & y).sum(1), pred.sum(1), y.sum(1)
        kept = pp_n + p_n > 0
        example = float(np.mean(2 * tp_n[kept] / (pp_n + p_n)[kept])) if kept.any() else np.nan
        tp_c, pp_c, p_c = (pred & y).sum(0), pred.sum(0), y.sum(0)
        macro = np.mean([2 * a / (b + c) if b + c else 0.0 for a, b, c in zip(tp_c, pp_c, p_c)])
        denom = pred.sum() + y.sum()
        values = {
            "hamming_accuracy": float((pred == y).mean()),
            "example_f1": example,
            "macro_f1": float(macro),
            "micro_f1": 2 * (pred & y).sum() / denom if denom else 0.0,
        }
        for name, value in values.items():
            if value > best[name][0]:
                best[name] = (value, t)
    return best


@pytest.mark.parametrize("seed,n,c,dtype,ties", CASES)
def test_paper_protocol_matches_numpy_reference(seed, n, c, dtype, ties):
    scores, targets = random_case(seed, n, c, dtype, ties)
    got = paper_protocol_metrics(scores, targets)
    json.dumps(got)
    assert got["protocol"] == PAPER_PROTOCOL
    clean = multilabel_metrics(scores, targets)
    assert got["mAP"] == clean["mAP"] and got["precision_at_1"] == clean["precision_at_1"]
    for name, (value, t) in paper_reference(scores, targets, DEFAULT_GRID).items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
        assert got["thresholds"][name] == t, name


def test_paper_example_f1_drops_samples_with_empty_truth_and_prediction():
    scores = np.array([[0.95, 0.05], [0.05, 0.05], [0.05, 0.95]])
    targets = np.array([[1, 0], [0, 0], [0, 1]])
    assert multilabel_metrics(scores, targets)["example_f1"] == pytest.approx(2 / 3)
    assert paper_protocol_metrics(scores, targets)["example_f1"] == 1.0


def test_macro_f1_counts_an_empty_class_as_zero_in_both_protocols():
    scores = np.array([[0.95, 0.05], [0.05, 0.05]])
    targets = np.array([[1, 0], [0, 0]])
    assert multilabel_metrics(scores, targets)["macro_f1"] == 0.5
    assert paper_protocol_metrics(scores, targets)["macro_f1"] == 0.5


def test_tune_thresholds_picks_the_best_grid_point_and_transfers():
    scores, targets = random_case(11, 300, 12)
    val, test = (scores[:150], targets[:150]), (scores[150:], targets[150:])
    grid = (0.2, 0.35, 0.5, 0.65, 0.8)
    tuned = tune_thresholds(*val, grid=grid)
    per_t = {t: sklearn_reference(*val, t) for t in grid}
    for name in THRESHOLD_METRICS:
        values = [per_t[t][name] for t in grid]
        assert tuned[name] == grid[int(np.argmax(values))], name
    assert len({tuned[name] for name in THRESHOLD_METRICS}) > 1  # the test can tell them apart
    report = validation_tuned_metrics(*val, *test, grid=grid)
    json.dumps(report)
    assert report["thresholds"] == tuned and "validation" in report["protocol"]
    for name in THRESHOLD_METRICS:
        assert report[name] == pytest.approx(sklearn_reference(*test, tuned[name])[name],
                                             abs=1e-12)
    assert multilabel_metrics(*test, threshold=tuned) == {k: report[k] for k in METRICS}


@pytest.mark.parametrize("scores,targets,match", [
    (np.zeros((3, 2)), np.zeros((3, 3)), "shape"),
    (np.zeros(3), np.zeros(3), "2-D"),
    (np.full((2, 2), 1.5), np.zeros((2, 2)), r"\[0, 1\]"),
    (np.full((2, 2), -0.1), np.zeros((2, 2)), r"\[0, 1\]"),
    (np.full((2, 2), np.nan), np.zeros((2, 2)), r"\[0, 1\]"),
    (np.zeros((2, 2)), np.full((2, 2), 2), "multi-hot"),
])
def test_bad_inputs_raise_clear_errors(scores, targets, match):
    with pytest.raises(ValueError, match=match):
        multilabel_metrics(scores, targets)


def test_bad_threshold_dict_names_the_keys():
    scores, targets = random_case(0, 10, 3)
    with pytest.raises(ValueError, match="missing .*micro_f1"):
        multilabel_metrics(scores, targets, threshold={"hamming_accuracy": 0.5})


def test_80000_by_365_in_under_two_seconds():
    gen = torch.Generator().manual_seed(0)
    targets = torch.rand(80_000, 365, generator=gen) < 0.03
    noise = torch.randn(80_000, 365, generator=gen)
    scores = torch.sigmoid(torch.where(targets, 2.0, -4.0) + 2.0 * noise)
    # Wall time suffers when other jobs share the CPU, process CPU time does not, and either
    # bounds the wall time on an idle machine: the best of both over up to three runs.
    best = float("inf")
    for _ in range(3):
        wall, cpu = time.perf_counter(), time.process_time()
        multilabel_metrics(scores, targets)
        best = min(best, time.perf_counter() - wall, time.process_time() - cpu)
        if best < 2.0:
            break
    assert best < 2.0, f"80000 x 365 took {best:.2f} s"
