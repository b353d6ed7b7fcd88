"""The end of a torchrun test worker."""

from __future__ import annotations

import os
import sys

import torch.distributed as dist


def end_worker() -> None:
    """Barrier, destroy the process group, then leave without interpreter finalisation.

    Under load, gloo's worker threads can still hold tensors while Python finalises, and a rank
    then aborts at exit ("terminate called without an active exception", SIGABRT) after its
    results were written (seen in test_two_processes_equal_one[fsdp2]; upstream:
    pytorch/pytorch#179291). The results are on disk, so skip finalisation.
    """
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
