"""Several eval runs side by side: ``python -m mlcdist.eval compare RUN_A RUN_B ...``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from mlcdist.errors import MlcdistError
from mlcdist.eval.report import METRIC_TITLES, PAPER_NOTE, SHORT_TITLES, _fmt
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


def compare_table(runs: Sequence[str | Path]):
    """Rich table: rows = six test metrics x (clean, paper), one column per run, best in bold."""
    from rich.table import Table

    reports = [load_metrics(r) for r in runs]
    labels = [Path(r).name if Path(r).is_dir() else Path(r).parent.name for r in runs]
    if len(set(labels)) < len(labels):  # same folder names: show more of the path
        labels = [str(Path(r) if Path(r).is_dir() else Path(r).parent) for r in runs]
    table = Table(title="test metrics at each run's selected epoch", title_justify="left",
                  caption=PAPER_NOTE, caption_justify="left")
    table.add_column("metric", no_wrap=True)
    for label, rep in zip(labels, reports):
        table.add_column(label, justify="right")
    table.add_row("mode", *[rep.get("mode", "?") + (" transfer" if rep.get("transfer") else "")
                            for rep in reports])
    table.add_row("encoder", *["random" if rep.get("random_init") else
                               Path(str(rep.get("checkpoint", "?"))).parent.name for rep in reports])
    table.add_section()
    for protocol in ("clean", "paper"):
        for m in METRICS:
            values = [rep.get("test", {}).get(protocol, {}).get(m) for rep in reports]
            finite = [v for v in values if v is not None]
            best = max(finite) if finite else None
            cells = [f"[bold]{_fmt(v)}[/]" if v is not None and v == best and len(finite) > 1 else _fmt(v)
                     for v in values]
            table.add_row(f"{METRIC_TITLES[m]} ({SHORT_TITLES[protocol]})", *cells)
        table.add_section()
    table.add_row("selected epoch", *[str(rep.get("selected_epoch", "?")) for rep in reports])
    return table


def compare_command(args) -> int:
    """``compare``: the table on stdout (a bad folder: MlcdistError -> one error line)."""
    from rich.console import Console

    Console().print(compare_table(args.runs))
    return 0
