"""``loss_curve.png`` of a run folder, drawn from its ``metrics.jsonl``.

The trainer draws it when training ends; ``python -m mlcdist.eval plot RUN`` draws it again
(e.g. while a run is still going, or for a run folder copied from a cluster). Panels, sharing
the step axis: the loss (with ``ln(candidates)``, the loss of an encoder that cannot tell the
candidates apart, and collapse warnings when logged); the learning rate with the key
encoder's momentum on a second axis; throughput with the share of time spent waiting for data.
A restarted run logs some steps twice; the newest record of a step wins.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Optional

from mlcdist.errors import MlcdistError

METRICS_FILE = "metrics.jsonl"
LOSS_CURVE = "loss_curve.png"


def read_metrics(path: Path) -> list[dict]:
    """Step records of ``metrics.jsonl`` in step order (the newest record of a repeated step; a
    torn last line, left by a killed run, and event records such as an epoch's skip count are
    skipped)."""
    by_step: dict[int, dict] = {}
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "step" in record and "event" not in record:  # not the epoch counts
            by_step[int(record["step"])] = record
    return [by_step[s] for s in sorted(by_step)]


def read_epoch_ends(path: Path) -> list[int]:
    """The steps at which epochs ended: the trainer's per-epoch ``{"event": "epoch"}`` records."""
    ends = set()
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "epoch" and "step" in record:
            ends.add(int(record["step"]))
    return sorted(ends)


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    rows = [(r["step"], float(r[key])) for r in records
            if isinstance(r.get(key), (int, float)) and math.isfinite(float(r[key]))]
    return [s for s, _ in rows], [v for _, v in rows]


def _title(run_dir: Path) -> str:
    """``RUN — arch, loss, dataset`` from the run's config.yaml when it is readable."""
    name = Path(run_dir).resolve().name
    try:
        import yaml

        cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
        train = Path(str(cfg.get("data", {}).get("train") or ""))
        bits = [cfg.get("model", {}).get("arch"), cfg.get("loss", {}).get("kind"),
                "/".join(train.parts[-2:]) or None]
        details = ", ".join(str(b) for b in bits if b)
    except (OSError, ValueError, AttributeError):
        details = ""
    return f"{name}: training curves" + (f" ({details})" if details else "")


def _loss_panel(ax, records: list[dict], epoch_ends: list[int]) -> None:
    steps, loss = _series(records, "loss")
    ax.plot(steps, loss, color="tab:blue", marker="o" if len(steps) < 30 else None, ms=3, label="loss")
    ref_steps, ref = _series(records, "ln_candidates")
    if ref:
        ax.plot(ref_steps, ref, color="grey", ls="--", lw=1, label="ln(candidates): uniform guess")
    # the last epoch's end is the run's end, not a line; a log without epoch events (older
    # runs) falls back to the last record before a change of ``epoch``
    ends = [s for s in epoch_ends if s < records[-1]["step"]] if epoch_ends else [
        a["step"] for a, b in zip(records, records[1:]) if b.get("epoch", 0) != a.get("epoch", 0)]
    for i, step in enumerate(ends if len(ends) <= 50 else []):  # many epochs: lines would be noise
        ax.axvline(step, color="0.6", ls=":", lw=0.8, label="end of epoch" if i == 0 else None)
    warned = [r["step"] for r in records if r.get("collapse_warning")]
    for i, step in enumerate(warned):
        ax.axvline(step, color="tab:red", lw=1, label="collapse warning" if i == 0 else None)
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)


def _twin_panel(ax, records: list[dict], left: tuple[str, str, str], right: tuple[str, str, str]) -> bool:
    """``(key, label, colour)`` on the left axis and on a second right axis; False if neither is logged."""
    drawn = False
    for axis, (key, label, colour) in ((ax, left), (None, right)):
        steps, values = _series(records, key)
        if not values:
            continue
        axis = axis or ax.twinx()
        axis.plot(steps, values, color=colour, label=label)
        axis.set_ylabel(label, color=colour)
        axis.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        axis.tick_params(axis="y", colors=colour)
        drawn = True
    ax.grid(alpha=0.3)
    return drawn


def plot_loss_curve(run_dir: Path, out: Optional[Path] = None) -> Path:
    """Draw ``RUN/loss_curve.png`` (or ``out``) from ``RUN/metrics.jsonl``; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    metrics = run_dir / METRICS_FILE
    if not metrics.is_file():
        raise MlcdistError(f"{run_dir}: no {METRICS_FILE}; pass a run folder written by python -m mlcdist.train")
    records = read_metrics(metrics)
    if not _series(records, "loss")[1]:
        raise MlcdistError(f"{metrics}: no logged loss yet (the first record comes at logging.every_steps)")
    fig, axes = plt.subplots(3, 1, figsize=(8, 8.5), sharex=True, height_ratios=(2, 1, 1))
    _loss_panel(axes[0], records, read_epoch_ends(metrics))
    _twin_panel(axes[1], records, ("lr", "learning rate", "tab:green"), ("momentum", "key momentum", "tab:purple"))
    if not _twin_panel(axes[2], records, ("samples_per_s", "samples/s", "tab:orange"),
                       ("data_wait_share", "data-wait share", "tab:brown")):
        axes[2].set_visible(False)
    last = max(r["step"] for r in records)
    first = min(r["step"] for r in records)
    if first > 0 and last / first >= 100:  # long runs: early steps get room on a log axis
        axes[0].set_xscale("log")
    visible = [a for a in axes if a.get_visible()]
    visible[-1].set_xlabel("optimizer step")
    visible[-1].xaxis.set_tick_params(labelbottom=True)
    fig.suptitle(_title(run_dir))
    fig.tight_layout()
    out = Path(out) if out else run_dir / LOSS_CURVE
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_command(args: argparse.Namespace) -> int:
    """``python -m mlcdist.eval plot RUN [--out PNG]``."""
    print(f"wrote {plot_loss_curve(Path(args.run), args.out)}")
    return 0
