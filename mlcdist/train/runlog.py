"""Run folder bookkeeping: resolved recipe, jsonl metrics, progress (main process). With
``logging.progress``: a rich bar on a terminal, else a plain line per logging step on stdout
(``mlcdist/progress.py``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mlcdist.config import save_recipe
from mlcdist.progress import console as default_console, eta_seconds, plain, step_line


class RunLog:
    """Writes ``config.yaml`` and appends ``metrics.jsonl``; silent on non-main ranks.

    ``console`` receives messages, the bar and (unless it is ``quiet``) the plain step lines;
    a caller running many short trainings passes ``Console(quiet=True)``."""

    def __init__(self, run_dir: Path, cfg: Any, *, main: bool, total_steps: int, progress: bool,
                 start_step: int = 0, console: Optional[Console] = None):
        self.run_dir = run_dir
        self.console = console = console or default_console
        self.main = main
        self._bar: Optional[Progress] = None
        self._total, self._start_step, self._start = total_steps, start_step, time.perf_counter()
        # no terminal (a batch scheduler's log): a plain line per logging step instead of the bar
        self._plain = main and progress and not console.is_terminal
        if not main:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        save_recipe(cfg, run_dir / "config.yaml")
        self._metrics = open(run_dir / "metrics.jsonl", "a", buffering=1)
        if progress and console.is_terminal:
            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
                                 console=console, transient=False)
            self._task = self._bar.add_task("pretrain", total=total_steps, completed=start_step, status="")
            self._bar.start()

    def advance(self, step: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step)

    def log(self, record: dict[str, Any], line: bool = True) -> None:
        """Append ``record`` to metrics.jsonl; ``line``: also the plain step line / bar status."""
        if not self.main:
            return
        record = {"time": round(time.time(), 3), **record}
        self._metrics.write(json.dumps(record) + "\n")
        if not line:
            return
        if self._plain and not self.console.quiet and "step" in record:
            eta = eta_seconds(record["step"], self._total, time.perf_counter() - self._start, self._start_step)
            plain(step_line(record, self._total, eta))
        if self._bar is not None:
            status = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in record.items() if k in ("epoch", "loss", "lr", "samples_per_s"))
            self._bar.update(self._task, status=status)

    def message(self, text: str) -> None:
        if self.main:
            self.console.print(text)

    def close(self) -> None:
        if not self.main:
            return
        if self._bar is not None:
            self._bar.stop()
        self._metrics.close()
