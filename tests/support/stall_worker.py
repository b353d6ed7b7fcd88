"""A stalled rank under ``parallel.timeout_minutes``: rank 1 sleeps, rank 0 waits in a barrier.

    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 tests/support/stall_worker.py MINUTES

Rank 0 must fail once the timeout has passed (not after torch's 30 min gloo default).
"""

from __future__ import annotations

import sys
import time

from mlcdist.config import from_dict
from mlcdist.parallel import make_accelerator


def main() -> None:
    cfg = from_dict({"parallel": {"timeout_minutes": float(sys.argv[1])}})
    acc = make_accelerator(timeout_minutes=cfg.parallel.timeout_minutes)
    acc.wait_for_everyone()  # both ranks are up
    if acc.process_index == 1:
        time.sleep(120)
    start = time.monotonic()
    acc.wait_for_everyone()
    print(f"barrier returned after {time.monotonic() - start:.1f}s", flush=True)


if __name__ == "__main__":
    main()
