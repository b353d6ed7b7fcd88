"""Several eval runs side by side: ``python -m mlcdist.eval compare RUN_A RUN_B ...``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from mlcdist.errors import MlcdistError
from mlcdist.eval.labels import METRIC_TITLES, PAPER_NOTE, SHORT_TITLES, data_set, encoder, fmt_metric
from mlcdist.metrics import METRICS


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


def load_runs(runs: Sequence[str | Path]) -> tuple[list[str], list[dict]]:
    """``(labels, reports)``: each run's folder name (more of the path when names repeat)."""
    reports = [load_metrics(r) for r in runs]
    labels = [Path(r).name if Path(r).is_dir() else Path(r).parent.name for r in runs]
    if len(set(labels)) < len(labels):  # same folder names: show more of the path
        labels = [str(Path(r) if Path(r).is_dir() else Path(r).parent) for r in runs]
    return labels, reports


def compare_warnings(labels: Sequence[str], reports: Sequence[dict]) -> list[str]:
    """Different test sets (their metrics do not compare) and each run's own warnings."""
    tests = [data_set(rep, "test") for rep in reports]
    out = []
    if len(set(tests)) > 1:
        pairs = ", ".join(f"{label}: {test}" for label, test in zip(labels, tests))
        out.append(f"the runs are tested on different data sets ({pairs}); their metrics do not compare")
    out += [f"{label}: {w}" for label, rep in zip(labels, reports) for w in rep.get("warnings", [])]
    return out


def compare_table(runs: Sequence[str | Path]):
    """Rich table: rows = six test metrics x (clean, paper), one column per run, best in bold."""
    return build_table(*load_runs(runs))


def build_table(labels: Sequence[str], reports: Sequence[dict]):
    from rich.table import Table

    table = Table(title="test metrics at each run's selected epoch", title_justify="left",
                  caption=PAPER_NOTE, caption_justify="left")
    table.add_column("metric", no_wrap=True)
    for label in labels:
        table.add_column(label, justify="right")
    table.add_row("mode", *[rep.get("mode", "?") + (" transfer" if rep.get("transfer") else "")
                            for rep in reports])
    table.add_row("encoder", *[encoder(rep) for rep in reports])
    table.add_row("train data", *[data_set(rep, "train") for rep in reports])
    table.add_row("test data", *[data_set(rep, "test") for rep in reports])
    table.add_section()
    for protocol in ("clean", "paper"):
        for m in METRICS:
            values = [rep.get("test", {}).get(protocol, {}).get(m) for rep in reports]
            finite = [v for v in values if v is not None]
            best = max(finite) if finite else None
            cells = [f"[bold]{fmt_metric(v)}[/]" if v is not None and v == best and len(finite) > 1 else fmt_metric(v)
                     for v in values]
            table.add_row(f"{METRIC_TITLES[m]} ({SHORT_TITLES[protocol]})", *cells)
        table.add_section()
    table.add_row("selected epoch", *[str(rep.get("selected_epoch", "?")) for rep in reports])
    return table


def compare_command(args) -> int:
    """``compare``: the table on stdout, warnings on stderr, ``--plot FILE`` the figure (a bad
    folder: MlcdistError -> one error line)."""
    from rich.console import Console

    labels, reports = load_runs(args.runs)
    Console().print(build_table(labels, reports))
    err = Console(stderr=True)
    for warning in compare_warnings(labels, reports):
        err.print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)  # one grep-able line
    if args.plot:
        from mlcdist.eval.figures import plot_compare

        plot_compare(labels, reports, Path(args.plot))
        err.print(f"wrote {args.plot}", highlight=False)
    return 0
