"""Graceful stop on SIGTERM / SIGINT: finish the optimizer step, checkpoint, exit non-zero.

    with StopRequest() as stop:           # installs the handlers, restores the old ones on exit
        trainer.fit(stop=stop)            # calls stop.agreed() once per optimizer step

The first SIGTERM or SIGINT only records the signal; the training loop asks ``agreed()`` after
every optimizer step and, once it is non-zero, stops, writes a checkpoint and exits with
``128 + signum`` (143 for SIGTERM, 130 for SIGINT; the shell's convention). A second signal
exits at once (``os._exit(128 + signum)``, no checkpoint). A repeat that arrives within
``repeat_grace_s`` of the first is treated as the same event: Ctrl-C under ``torchrun`` reaches
every worker twice, once from the terminal and once forwarded by torchrun.

Agreement across ranks. A signal may reach only some ranks (``kill`` of one worker; torchrun
forwards its SIGTERM to all workers, but not at the same instant), and ranks that stop at
different steps deadlock in the next collective. ``agreed()`` therefore all-reduces (MAX) the
local signal number at every optimizer step when ``world > 1``, so every rank stops after the
same step. It runs on a CPU tensor through a gloo group (the default group when the backend is
gloo; a separate gloo group under NCCL), so it never waits for the GPU: no host sync of the CUDA
stream, only a small CPU collective (measured in ``docs/clusters.md``: about 0.1 ms per step
with 2 processes on one host, against steps of tens to hundreds of milliseconds). Checking only
every K steps would also agree (every rank checks at the same steps) but would delay the stop
by up to K steps of the scheduler's grace period; per-step checking is exact and cheap.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType
from typing import Optional

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_code(signum: int) -> int:
    """The shell's code for a process ended by ``signum``: ``128 + signum``."""
    return 128 + signum


class StopRequest:
    """Context manager holding the first stop signal; ``agreed()`` is its cross-rank value."""

    def __init__(self, signals: tuple[int, ...] = SIGNALS, repeat_grace_s: float = 1.0):
        self.signals = signals
        self.repeat_grace_s = repeat_grace_s
        self.signum = 0  # the first signal received on this rank, 0 if none
        self._first_at = 0.0
        self._previous: dict[int, object] = {}
        self._group: Optional[object] = None
        self._group_ready = False

    # -- handlers ------------------------------------------------------------------------------

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signal.signal's requirement
            for sig in self.signals:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        now = time.monotonic()
        name = signal.Signals(signum).name
        if not self.signum:
            self.signum, self._first_at = signum, now
            _say(f"{name} received: stopping after the current optimizer step to write a checkpoint "
                 "(send it again to exit at once without one)")
        elif now - self._first_at > self.repeat_grace_s:
            _say(f"{name} received again: exiting now, without a checkpoint")
            os._exit(exit_code(signum))

    # -- agreement ------------------------------------------------------------------------------

    def agreed(self) -> int:
        """The largest signal number any rank has received (0: keep training). Collective when
        the process group has more than one rank: every rank must call it at the same step."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.signum
        flag = torch.tensor(self.signum, dtype=torch.int32)  # CPU: no wait for the GPU stream
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._cpu_group())
        return int(flag)

    def _cpu_group(self):
        """The default group if it is gloo, else a gloo group over all ranks (made once; collective)."""
        if not self._group_ready:
            if "gloo" not in str(dist.get_backend()):  # e.g. "cuda:nccl,cpu:gloo" has one
                self._group = dist.new_group(backend="gloo")
            self._group_ready = True
        return self._group


def _say(text: str) -> None:
    """One line on stderr; ``os.write`` because a signal handler may interrupt a ``print``."""
    os.write(2, (text + "\n").encode())
