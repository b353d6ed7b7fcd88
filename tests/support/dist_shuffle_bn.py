"""Shuffle-BN across 2 ranks; launched by tests/e2e/test_distributed.py (rank 0 writes OUT.pt)."""

import sys

import torch
import torch.distributed as dist
from torch import nn

from mlcdist.parallel import shuffled_keys


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    x = torch.randn(8, 4)
    local = x.view(world, -1, 4)[rank]
    bn_encoder = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).train()
    plain_encoder = nn.Linear(4, 4)
    with torch.no_grad():
        result = {"x": x, "bn": shuffled_keys(bn_encoder, local, 7), "plain": shuffled_keys(plain_encoder, local, 7),
                  "bn_state": bn_encoder.state_dict(), "plain_state": plain_encoder.state_dict()}
    if rank == 0:
        torch.save(result, sys.argv[1])
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
