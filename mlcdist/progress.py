"""Progress that reads well in a terminal and in a batch scheduler's log file.

On a terminal (stderr is a TTY) loops show a rich progress bar. Without one (SLURM, Kubernetes,
``> log.txt``) a bar would print nothing useful until the end, so loops print plain, greppable
lines on stdout instead, e.g.::

    step 20/180 (11%) epoch 1 loss 4.1234 lr 0.001 samples/s 523.4 ETA 0:03:12
    features test: 40/120 batches (33%) 12.5 batches/s ETA 0:00:06
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

T = TypeVar("T")

# The default console of the trainer and eval: setting ``console.quiet`` silences bars and plain
# lines alike; callers that must be quiet pass their own (``Trainer(console=Console(quiet=True))``,
# as tools/reproduce does).
console = Console(stderr=True, soft_wrap=True)  # log files: no hard wraps at 80 columns


def is_terminal() -> bool:
    """Whether progress bars can be drawn (rich's view of stderr, which also honours FORCE_TERMINAL)."""
    return console.is_terminal


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (``?`` when unknown)."""
    if not seconds >= 0 or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def eta_seconds(done: int, total: int, elapsed: float, start: int = 0) -> float:
    """Remaining time at the rate since ``start``: ``(total - done) * elapsed / (done - start)``."""
    if done <= start:
        return float("nan")
    return (total - done) * elapsed / (done - start)


def step_line(record: dict, total: int, eta: float) -> str:
    """One training-log line from a metrics record (``step``, ``epoch``, ``loss``, ``lr``,
    ``samples_per_s``; missing keys are left out)."""
    step = record["step"]
    parts = [f"step {step}/{total} ({100 * step // max(total, 1)}%)"]
    if "epoch" in record:
        parts.append(f"epoch {record['epoch']}")
    if "loss" in record:
        parts.append(f"loss {record['loss']:.4f}")
    if "lr" in record:
        parts.append(f"lr {record['lr']:.4g}")
    if "samples_per_s" in record:
        parts.append(f"samples/s {record['samples_per_s']:.1f}")
    parts.append(f"ETA {format_duration(eta)}")
    return " ".join(parts)


def length(items: object) -> int:
    """``len(items)``, or 0 (no progress display) for iterables without a length."""
    return len(items) if hasattr(items, "__len__") else 0


def plain(text: str) -> None:
    """A plain progress line on stdout, flushed (log files see it at once)."""
    print(text, file=sys.stdout, flush=True)


def track(items: Iterable[T], total: int, label: str, *, enabled: bool = True,
          lines: int = 10) -> Iterator[T]:
    """Yield ``items`` showing progress: a transient bar on a terminal, otherwise about
    ``lines`` plain lines (every ``ceil(total / lines)`` items and at the end)."""
    if not enabled or total <= 0 or console.quiet:
        yield from items
        return
    if is_terminal():
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=console, transient=True) as bar:
            task = bar.add_task(label, total=total)
            for item in items:
                yield item
                bar.advance(task)
        return
    every = max(1, -(-total // lines))
    start = time.perf_counter()
    done = 0
    for item in items:
        yield item
        done += 1
        if done % every == 0 or done == total:
            elapsed = time.perf_counter() - start
            plain(f"{label}: {done}/{total} batches ({100 * done // total}%) "
                  f"{done / max(elapsed, 1e-9):.1f} batches/s ETA "
                  f"{format_duration(eta_seconds(done, total, elapsed))}")
