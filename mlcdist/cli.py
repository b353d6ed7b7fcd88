"""One wrapper for every command line: ``error: ...`` lines, exit codes, process-group teardown.

    python -m mlcdist.train | mlcdist.eval | tools.make_shards | tools.reproduce

each define ``main`` under the :func:`command` decorator (so that calling ``main(argv)`` from
Python or a test behaves like the command line) and end in ``sys.exit(main())``. :class:`~mlcdist.errors.MlcdistError` (and the user-facing
``FileNotFoundError`` of a missing path) becomes one line on stderr, printed once per job (rank
0 of a distributed run) and the error's exit code (2 for bad input); a ``KeyboardInterrupt``
outside the trainer's own handler exits 130 without a traceback; every exit destroys the
process group so that no rank hangs in a collective.
"""

from __future__ import annotations

import os
import sys
from functools import wraps
from typing import Callable, Optional

from mlcdist.errors import USER_ERROR, MlcdistError


def _is_job_leader() -> bool:
    """Rank 0 of the job (or of a job not started yet): the one rank that prints user errors."""
    return os.environ.get("RANK", "0") == "0"


def print_error(message: str) -> None:
    if _is_job_leader():
        print(f"error: {message}", file=sys.stderr, flush=True)


def teardown() -> None:
    """Destroy the default process group if this process created one (no-op otherwise)."""
    dist = sys.modules.get("torch.distributed")  # never import torch just to tear down
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run(main: Callable[[Optional[list[str]]], int], argv: Optional[list[str]] = None) -> int:
    """Call ``main(argv)`` and turn user errors into an ``error:`` line and an exit code."""
    try:
        return main(argv)
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
    finally:
        teardown()


def command(main: Callable[[Optional[list[str]]], int]) -> Callable[[Optional[list[str]]], int]:
    """Decorator: ``main(argv)`` runs through :func:`run` (error lines, exit codes, teardown)."""

    @wraps(main)
    def wrapper(argv: Optional[list[str]] = None) -> int:
        return run(main, argv)

    return wrapper
