"""Cost of the per-step stop agreement (``StopRequest.agreed``, a CPU gloo all-reduce of one int).

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 bench/stop_check.py [calls]

Prints the mean microseconds per call on rank 0 (compare with the step time of your run).
"""

from __future__ import annotations

import sys
import time

import torch.distributed as dist

from mlcdist.train.preempt import StopRequest

if __name__ == "__main__":
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    dist.init_process_group("gloo")
    stop = StopRequest()
    for _ in range(50):  # warm-up (and the group's creation under NCCL)
        stop.agreed()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(calls):
        stop.agreed()
    per_call = (time.perf_counter() - start) / calls
    if dist.get_rank() == 0:
        print(f"stop agreement: {per_call * 1e6:.1f} us per optimizer step "
              f"({dist.get_world_size()} processes, gloo, {calls} calls)")
    dist.destroy_process_group()
