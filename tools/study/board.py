"""Scheduling and progress: a process pool of runs and the rich board that shows their events.

Runs are independent processes (``spawn``, one torch thread each); their events
(``jobs.Event``) travel back through one queue and drive :class:`ProgressBoard`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_module
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, ClassVar

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from mlcdist.config.schema import SUPERVISED_KINDS
from tools.study.data import VectorSet
from tools.study.jobs import Event, Job, run_job
from tools.study.recipes import paper_batch

# Worker-process state, set once per process by ``_init_worker`` (data and events travel once,
# not with every job).
_WORKER: dict[str, Any] = {}


def _init_worker(events: Any, data: dict[str, VectorSet], tool_pid: int) -> None:
    torch.set_num_threads(1)  # one thread per run: tiny MLPs; more threads only spin on 2 cores
    _WORKER.update(events=events, data=data)
    exit_with_parent(tool_pid)


def exit_with_parent(parent_pid: int, poll_seconds: float = 1.0) -> None:
    """End this process once ``parent_pid`` is no longer its parent. SIGTERM or SIGKILL end the
    tool without any cleanup, and its orphaned runs would go on writing into the output folder
    (where the next call reuses them) for as long as the queued runs last."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_seconds)
        os._exit(143)  # 128 + SIGTERM, as if the signal had reached this process too

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _worker_job(job: Job, fresh: bool, keep_checkpoints: bool) -> dict:
    return run_job(job, _WORKER["data"][job.dataset], _WORKER["events"].put, fresh,
                   keep_checkpoints)


class ProgressBoard:
    """Rich progress: one overall bar (epochs of every run) and one line per running run."""

    PHASE_SHARE: ClassVar[dict[str, float]] = {"pretrain": 0.85, "finetune": 0.15}  # of a run

    def __init__(self, jobs: list[Job], console: Console, enabled: bool,
                 weights: dict[str, float] | None = None):
        """``weights``: each run's expected share of the work (``expected_cost``), so that the
        overall bar and the ETA move with the work done, not with the number of runs."""
        raw = weights or {job.key: 1.0 for job in jobs}
        scale = len(jobs) / max(sum(raw.values()), 1e-12)
        self.weight = {job.key: raw.get(job.key, 1.0) * scale for job in jobs}
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[note]}"), TimeElapsedColumn(),
                                 TimeRemainingColumn(), console=console, disable=not enabled)
        self.overall = self.progress.add_task("all runs", total=len(jobs) * 100.0, note="")
        self.rows: dict[str, TaskID] = {}
        self.phase: dict[str, tuple[str, int]] = {}
        self.started: dict[str, int] = {}
        self.credited: dict[str, float] = {job.key: 0.0 for job in jobs}
        self.console, self.total, self.done = console, len(jobs), 0
        self.start = time.perf_counter()
        self._describe()

    def _describe(self) -> None:
        running = len(self.rows)
        left = self.total - self.done - running
        self.progress.update(self.overall, description=f"runs: {self.done} done, {running} running, "
                                                       f"{left} left")

    def __enter__(self) -> ProgressBoard:  # noqa: PYI034 (a final class; Self needs 3.11)
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _credit(self, key: str, value: float) -> None:
        """Move a run's share of the overall bar to ``value`` (0..100)."""
        self.progress.advance(self.overall, (value - self.credited[key]) * self.weight[key])
        self.credited[key] = value

    def _start(self, key: str, phase: str, total: int) -> None:
        self.phase[key] = (phase, total)
        self.started[key] = 0
        if key not in self.rows:
            self.rows[key] = self.progress.add_task(f"  {key}", total=total, note=phase)
        note = phase if phase == "pretrain" else f"{phase} (early stop)"
        self.progress.update(self.rows[key], total=total, completed=0, note=note)

    def _epoch(self, key: str) -> None:
        phase, total = self.phase[key]
        self.started[key] += 1
        done = min(self.started[key] - 1, total)  # epochs completed before this one
        self.progress.update(self.rows[key], completed=done)
        base = 0.0 if phase == "pretrain" else self.PHASE_SHARE["pretrain"]
        self._credit(key, 100 * (base + self.PHASE_SHARE[phase] * done / max(total, 1)))

    def handle(self, event: Event) -> None:
        """``start`` a phase of ``total`` epochs, ``epoch`` (one more epoch started), ``done``."""
        kind, key = event[0], event[1]
        if kind == "start":
            self._start(key, event[2], int(event[3]))
        elif kind == "epoch" and key in self.rows:
            self._epoch(key)
        elif kind == "done":
            self._credit(key, 100.0)
            if key in self.rows:
                self.progress.remove_task(self.rows.pop(key))
            self.done += 1
            if not self.console.is_terminal:  # a log file gets one line per finished run
                self._log_done(key, float(event[2]))
        self._describe()

    def _log_done(self, key: str, seconds: float) -> None:
        elapsed = time.perf_counter() - self.start
        share = sum(v * self.weight[k] for k, v in self.credited.items()) / (100.0 * max(self.total, 1))
        eta = max(elapsed * (1 - share) / share, 0.0) if share > 0 else float("nan")
        reused = " (stored result reused)" if seconds == 0 else f" in {seconds:.0f} s"
        self.console.print(f"[{self.done}/{self.total}] {key} done{reused}; {len(self.rows)} running, "
                           f"{self.total - self.done - len(self.rows)} left, elapsed {elapsed / 60:.1f} "
                           f"min, ETA {eta / 60:.1f} min", highlight=False, soft_wrap=True)


def expected_cost(job: Job, data: dict[str, VectorSet]) -> float:
    """Relative run time, for longest-first scheduling and the ETA: steps x (a fixed per-step
    overhead + batch x width), fitted to one core (yeast ~4.4 ms, bibtex ~70 ms a step), with
    contrastive steps costing ~1.6x a supervised one (key encoder, queue)."""
    x = data[job.dataset].train_x
    batch = paper_batch(round(job.fraction * len(x)))
    per_step = 3e-3 + batch * (x.shape[1] + 256) * 1.25e-7
    return job.fraction * len(x) / batch * per_step * (1.0 if job.method in SUPERVISED_KINDS else 1.6)


def run_all(jobs: list[Job], data: dict[str, VectorSet], workers: int, board: ProgressBoard,
            fresh: bool, keep_checkpoints: bool) -> list[dict]:
    """Every job, ``workers`` processes at a time (in this process when ``workers`` is 1)."""
    ordered = sorted(jobs, key=lambda job: expected_cost(job, data), reverse=True)
    if workers <= 1:
        return [run_job(job, data[job.dataset], board.handle, fresh, keep_checkpoints)
                for job in ordered]
    ctx = mp.get_context("spawn")  # fork after torch has started threads is unsafe
    events = ctx.Queue()
    results: list[dict] = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(events, data, os.getpid())) as pool:
        pending: set[Future] = {pool.submit(_worker_job, job, fresh, keep_checkpoints)
                                for job in ordered}
        try:
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(events, board)
                for future in done:
                    results.append(future.result())  # a failed run raises here, with its error
        except BaseException:
            for future in pending:  # do not start the queued runs; running ones finish
                future.cancel()
            raise
        _drain(events, board)
    return results


def _drain(events: Any, board: ProgressBoard) -> None:
    while True:
        try:
            board.handle(events.get_nowait())
        except queue_module.Empty:
            return
