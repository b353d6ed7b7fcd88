"""``python -m mlcdist.train`` with a slowed-down loader, so a test can signal a running run.

    [torchrun --nproc_per_node 2] tests/support/preempt_worker.py RECIPE [key=value ...]

Each rank writes its pid to ``RUN_DIR/pid-rank{RANK}`` (so a test can signal one rank) and then
runs the real CLI; every batch is delayed by ``PREEMPT_TEST_DELAY`` seconds (default 0.15).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import mlcdist.data.loaders as loaders
from mlcdist.config import load_recipe
from mlcdist.train import main


class SlowLoader:
    """The real loader, one batch every ``delay`` seconds."""

    def __init__(self, inner, delay: float):
        self.inner, self.delay = inner, delay

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.inner.set_epoch(epoch, skip_batches)

    def to_device(self, batch, device, **kwargs):
        return self.inner.to_device(batch, device, **kwargs)

    def __iter__(self):
        for batch in self.inner:
            time.sleep(self.delay)
            yield batch


if __name__ == "__main__":
    argv = sys.argv[1:]
    run_dir = Path(load_recipe(argv[0], argv[1:]).logging.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / f"pid-rank{os.environ.get('RANK', '0')}").write_text(str(os.getpid()))
    delay = float(os.environ.get("PREEMPT_TEST_DELAY", "0.15"))
    real = loaders.make_loader
    loaders.make_loader = lambda *a, **k: SlowLoader(real(*a, **k), delay)
    sys.exit(main(argv))
