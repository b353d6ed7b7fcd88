"""One wrapper for every command line: ``error: ...`` lines, exit codes, process-group teardown.

    python -m mlcdist.train | mlcdist.eval | tools.make_shards | tools.reproduce

each define ``main`` under the :func:`command` decorator (so that calling ``main(argv)`` from
Python or a test behaves like the command line) and end in ``sys.exit(main())``. :class:`~mlcdist.errors.MlcdistError` (and the user-facing
``FileNotFoundError`` of a missing path) becomes one line on stderr and the error's exit code (2
for bad input); a ``KeyboardInterrupt`` outside the trainer's own handler exits 130 without a
traceback; every exit destroys the process group so that no rank hangs in a collective.

Once per job: in a distributed run the first rank that fails prints (not rank 0: torchrun kills
the other ranks as soon as one exits, often before rank 0 has printed). The ranks agree through
the job's key-value store (torchrun's agent store, else the process group's); a rank that then
fails in a collective because a peer is gone exits quietly instead of adding a traceback.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from functools import wraps
from typing import Callable, Optional

from mlcdist.errors import USER_ERROR, MlcdistError


def _is_job_leader() -> bool:
    """Rank 0 of the job (or of a job not started yet): prints when no job store answers."""
    return os.environ.get("RANK", "0") == "0"


def _job_store():
    """The store every rank of this job reaches, or None (one process, or none reachable)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    try:
        import torch.distributed as dist

        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":  # torchrun: outlives the ranks
            return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                 is_master=False, timeout=timedelta(seconds=10))
        if dist.is_available() and dist.is_initialized():
            return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - no store: fall back to rank 0 printing
        return None
    return None


def _error_key() -> str:
    return f"mlcdist/error-lines/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"


def _failures_so_far(add: int) -> int:
    """Add ``add`` to the job's failure count; the count before (-1: no store answered)."""
    store = _job_store()
    if store is None:
        return -1
    try:
        return int(store.add(_error_key(), add)) - add
    except Exception:  # noqa: BLE001
        return -1


def print_error(message: str) -> None:
    """``error: message`` on stderr, once per job (the first failing rank)."""
    before = _failures_so_far(1)
    if before == 0 or (before < 0 and _is_job_leader()):
        print(f"error: {message}", file=sys.stderr, flush=True)


def teardown(synchronize: bool = False) -> None:
    """Destroy the default process group if this process created one (no-op otherwise).

    ``synchronize`` (the command returned on this rank, as on its peers): a gloo group gets a
    barrier first. torch 2.7's gloo destructor joins its worker threads holding the GIL, while a
    worker still freeing the tensors of the last collective waits for the GIL: the rank hung at
    exit (pytorch/pytorch#154976, fixed in later releases). The barrier waits with it released.
    """
    dist = sys.modules.get("torch.distributed")  # never import torch just to tear down
    if dist is not None and dist.is_available() and dist.is_initialized():
        if synchronize and "gloo" in str(dist.get_backend()):
            try:
                dist.barrier()
            except Exception:  # noqa: BLE001 - a peer that left already has nothing in flight
                pass
            time.sleep(0.05)  # GIL released: a worker thread not yet scheduled finishes too
        dist.destroy_process_group()


def run(main: Callable[[Optional[list[str]]], int], argv: Optional[list[str]] = None) -> int:
    """Call ``main(argv)`` and turn user errors into an ``error:`` line and an exit code."""
    returned = False
    try:
        code = main(argv)
        returned = True
        return code
    except MlcdistError as err:
        print_error(str(err))
        return err.exit_code
    except FileNotFoundError as err:  # a path the user named; the message says which
        print_error(str(err) if err.filename is None or str(err.filename) in str(err)
                    else f"{err.filename}: {err.strerror}")
        return USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:
        if _failures_so_far(0) > 0:  # a peer reported a user error and left: this is the echo
            return USER_ERROR
        raise
    finally:
        teardown(synchronize=returned)


def command(main: Callable[[Optional[list[str]]], int]) -> Callable[[Optional[list[str]]], int]:
    """Decorator: ``main(argv)`` runs through :func:`run` (error lines, exit codes, teardown)."""

    @wraps(main)
    def wrapper(argv: Optional[list[str]] = None) -> int:
        return run(main, argv)

    return wrapper
