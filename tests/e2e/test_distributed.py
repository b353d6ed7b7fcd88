"""2 processes x batch b == 1 process x batch 2b: losses, query and key (EMA) weights, queue.

Each backend runs the real Trainer through torchrun on CPU with gloo (see tests/support/dist_worker.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support.paths import REPO, SUPPORT

WORKER = SUPPORT / "dist_worker.py"

BACKENDS = {
    "ddp": {},
    "fsdp2": {"ACCELERATE_USE_FSDP": "true"},
    "zero2": {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"},
    "zero3": {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"},
}


def run(out: Path, nproc: int, extra_env: dict[str, str]) -> dict:
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", **extra_env,
           # the workers import this checkout's mlcdist, not whichever one is installed
           "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for key in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        if key not in extra_env:
            env.pop(key, None)
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), str(out)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(29500 + os.getpid() % 1000), str(WORKER), str(out)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    return run(tmp_path_factory.mktemp("single") / "single.pt", 1, {})


def assert_same(a: dict, b: dict) -> None:
    torch.testing.assert_close(b["losses"], a["losses"], rtol=1e-5, atol=1e-6)
    for part in ("query", "key"):
        assert a[part].keys() == b[part].keys()
        for name in a[part]:
            torch.testing.assert_close(b[part][name], a[part][name], rtol=1e-5, atol=1e-6,
                                       msg=lambda m: f"{part}.{name}: {m}")
    torch.testing.assert_close(b["queue"]["keys"], a["queue"]["keys"], rtol=1e-5, atol=1e-6)
    assert torch.equal(b["queue"]["labels"], a["queue"]["labels"])


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_two_processes_equal_one(backend, single, tmp_path):
    assert single["losses"].isfinite().all() and single["losses"].std() > 0  # a real, moving run
    assert_same(single, run(tmp_path / f"{backend}.pt", 2, BACKENDS[backend]))


@pytest.mark.slow
def test_shuffle_bn_hides_the_local_batch_and_restores_order(tmp_path):
    from torch import nn

    out = tmp_path / "shuffle.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(29600 + os.getpid() % 1000), str(WORKER.with_name("dist_shuffle_bn.py")), str(out)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(out, weights_only=True)
    x = got["x"]
    plain = nn.Linear(4, 4)
    plain.load_state_dict(got["plain_state"])
    bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).train()
    bn.load_state_dict(got["bn_state"])
    with torch.no_grad():
        torch.testing.assert_close(got["plain"], plain(x))  # order restored exactly
        perm = torch.randperm(8, generator=torch.Generator().manual_seed(7))
        expected = torch.empty(8, 4)
        expected[perm] = torch.cat([bn(x[perm[:4]]), bn(x[perm[4:]])])
        torch.testing.assert_close(got["bn"], expected)  # each key normalised with a shuffled group
        unshuffled = torch.cat([bn(x[:4]), bn(x[4:])])
        assert not torch.allclose(got["bn"], unshuffled)  # not with its own rank's statistics
