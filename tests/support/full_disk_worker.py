"""One good checkpoint, then a save of step 3 under a 16 KiB file-size limit on rank 0.

    [torchrun --nproc_per_node 2] tests/support/full_disk_worker.py RECIPE_JSON

SIGXFSZ is ignored so that the write fails with EFBIG instead of killing the process (as a full
disk fails with ENOSPC); ``cli.run`` prints the error as the command line would.
"""

from __future__ import annotations

import json
import resource
import signal
import sys

import torch

from mlcdist import cli
from mlcdist.config import from_dict
from mlcdist.train.trainer import Trainer


def save_on_a_full_disk(argv) -> int:
    trainer = Trainer(from_dict(json.loads(sys.argv[1])))
    trainer.fit(stop_at_step=2)
    if trainer.rank == 0:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16384, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    trainer.progress.step += 1
    trainer.save()
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(cli.run(save_on_a_full_disk))
