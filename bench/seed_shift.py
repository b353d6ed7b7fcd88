"""Is a change's effect on the reproduce/study table within the seed spread?

Compares two sets of finished runs cell by cell (data set x method x protocol x metric) with
Welch's t on the per-seed test metrics, and prints how many cells moved by more than 2 and 3
standard errors. Run it on two code versions *and* on one version with two disjoint seed sets
(the null: what reseeding alone does) and compare the two lines::

    python bench/seed_shift.py runs/base:0-3 runs/new:0-3     # the change
    python bench/seed_shift.py runs/new:0-3 runs/new:3-6      # reseeding, same code

``DIR:A-B`` takes seeds ``A <= s < B`` from ``DIR/DATASET/METHOD/seed-S/result.json`` (what
``python -m tools.reproduce`` and ``python -m tools.study`` store; fraction 1.0 only).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

METRICS = ("example_f1", "micro_f1", "macro_f1", "hamming_accuracy", "mAP", "precision_at_1")
# result.json's protocol -> the tables' name for it: the tables' "clean" row is "val_tuned"
# (thresholds tuned on validation); result.json's own "clean" (threshold 0.5) is not printed
PROTOCOLS = {"paper": "paper", "val_tuned": "clean"}


def load(spec: str) -> dict[tuple, list[float]]:
    """``{(dataset, method, protocol, metric): [value per seed]}`` of ``DIR:A-B``."""
    folder, _, seeds = spec.partition(":")
    lo, hi = (int(s) for s in seeds.split("-")) if seeds else (0, 10**9)
    cells: dict[tuple, list[float]] = {}
    for path in sorted(Path(folder).glob("*/*/seed-*/result.json")):
        run = json.loads(path.read_text())
        if not lo <= run["seed"] < hi or run.get("fraction", 1.0) != 1.0:
            continue
        for protocol, title in PROTOCOLS.items():
            for metric in METRICS:
                value = run["test"][protocol].get(metric)
                if value is not None:
                    cells.setdefault((run["dataset"], run["method"], title, metric), []).append(value)
    return cells


def welch_t(a: list[float], b: list[float]) -> float:
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    diff = statistics.fmean(b) - statistics.fmean(a)
    return 0.0 if se == 0 and diff == 0 else diff / se if se else math.copysign(math.inf, diff)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="DIR:A-B, the reference runs")
    parser.add_argument("b", help="DIR:A-B, the runs compared with them")
    parser.add_argument("--worst", type=int, default=5, help="list the N cells with the largest |t|")
    args = parser.parse_args()
    a, b = load(args.a), load(args.b)
    keys = sorted(k for k in a.keys() & b.keys() if len(a[k]) > 1 and len(b[k]) > 1)
    if not keys:
        raise SystemExit(f"error: {args.a} and {args.b} share no cell with 2+ seeds each")
    rows = [(k, statistics.fmean(b[k]) - statistics.fmean(a[k]), welch_t(a[k], b[k])) for k in keys]
    diffs = [abs(d) for _, d, _ in rows]
    ts = [abs(t) for _, _, t in rows]
    print(f"{args.a} -> {args.b}: {len(rows)} cells, seeds {len(a[keys[0]])} vs {len(b[keys[0]])}")
    print(f"|mean diff|: mean {statistics.fmean(diffs):.4f}, max {max(diffs):.4f}; "
          f"|t| > 2: {sum(t > 2 for t in ts)}, |t| > 3: {sum(t > 3 for t in ts)}, "
          f"median |t| {statistics.median(ts):.2f}")
    for key, diff, t in sorted(rows, key=lambda r: -abs(r[2]))[:args.worst]:
        print(f"  {' '.join(key):<44} {statistics.fmean(a[key]):.3f} -> {statistics.fmean(b[key]):.3f}"
              f"  ({diff:+.4f}, t {t:+.1f})")


if __name__ == "__main__":
    main()
