"""Loader worker counts that fit the machine.

Recipes ship ``data.num_workers`` for a GPU node (8 per GPU for images). On a smaller machine,
or with many processes per node, more workers than CPUs only add processes that compete for the
same cores (and memory for their prefetched batches), so the count is capped at the CPUs this
process may run on (``os.sched_getaffinity``: honours ``taskset``, cgroup cpusets and SLURM's
``--cpus-per-task``) divided by the processes started on this machine (``LOCAL_WORLD_SIZE``,
set by torchrun / accelerate launch).

The loader's sample order depends on the worker count, so the capped value is what the run
records in ``config.yaml``; to resume exactly on a machine with fewer CPUs, set
``data.num_workers`` at or below the new cap for both runs (``docs/resuming.md``).
"""

from __future__ import annotations

import os
import sys
from typing import Optional


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where unsupported)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def local_processes() -> int:
    """Training processes on this machine (``LOCAL_WORLD_SIZE``; 1 when launched alone)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def worker_cap(cpus: int, processes: int) -> int:
    """``floor(cpus / processes)``: loader workers per process that fit the CPUs (may be 0)."""
    return cpus // max(1, processes)


def cap_num_workers(requested: int, *, cpus: Optional[int] = None, processes: Optional[int] = None,
                    key: str = "data.num_workers") -> int:
    """``min(requested, worker_cap)``; prints a one-line note (local rank 0) when it caps."""
    cpus = available_cpus() if cpus is None else cpus
    processes = local_processes() if processes is None else processes
    cap = worker_cap(cpus, processes)
    if requested <= cap:
        return requested
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(f"note: {key}={requested} capped at {cap}: {cpus} CPU{'s' if cpus != 1 else ''} available to "
              f"{processes} process{'es' if processes > 1 else ''} on this machine", file=sys.stderr)
    return cap
