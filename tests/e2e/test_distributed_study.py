"""The study's losses: 2 processes x batch b == 1 process x batch 2b (tests/support/dist_study_worker.py).

Per loss (kind:candidates), 2 real Trainer steps on tiny vectors: step losses, query weights (label
prototypes included: they are parameters of the query, decayed like the others) and EMA key weights,
and the queue. One launch per backend runs every case. Plain ``pytest`` runs jaccard, msc and reg
(MoCo and in-batch) and asl under DDP and FSDP2 (about 30 s); ``MLCDIST_FULL_MATRIX=1`` adds every
kind and ZeRO-1/2/3.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support.paths import REPO, SUPPORT

WORKER = SUPPORT / "dist_study_worker.py"
FULL = os.environ.get("MLCDIST_FULL_MATRIX", "") == "1"
BACKENDS = {
    "ddp": {},
    "fsdp2": {"ACCELERATE_USE_FSDP": "true"},
    "zero1": {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "1"},
    "zero2": {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"},
    "zero3": {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"},
}
RUN_BACKENDS = list(BACKENDS) if FULL else ["ddp", "fsdp2"]
CASES = (["jaccard:moco", "jaccard:batch", "mulsupcon:batch", "proto:moco", "proto:batch", "msc:moco",
          "msc:batch", "reg:moco", "reg:batch", "reg_plain:moco", "reg_plain:batch", "asl:moco", "zlpr:moco"]
         if FULL else ["jaccard:moco", "msc:batch", "reg:moco", "reg:batch", "asl:moco"])


def launch(out: Path, nproc: int, extra_env: dict[str, str]) -> dict:
    # PYTHONPATH: the workers import this checkout's mlcdist, not another installed copy
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           **extra_env}
    for key in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        if key not in extra_env:
            env.pop(key, None)
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), str(out), *CASES]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(29700 + os.getpid() % 200), str(WORKER), str(out), *CASES]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    return launch(tmp_path_factory.mktemp("study") / "single.pt", 1, {})


@pytest.mark.slow
@pytest.mark.parametrize("backend", RUN_BACKENDS)
def test_two_processes_equal_one_for_the_study_losses(backend, single, tmp_path):
    got = launch(tmp_path / f"{backend}.pt", 2, BACKENDS[backend])
    for case in CASES:
        a, b = single[case], got[case]
        assert "error" not in a and "error" not in b, f"{case}: {a.get('error')} / {b.get('error')}"
        assert a["losses"].isfinite().all() and a["losses"][0] != a["losses"][1], f"{case}: {a['losses']}"
        torch.testing.assert_close(b["losses"], a["losses"], rtol=1e-5, atol=1e-6, msg=lambda m: f"{case}: {m}")
        for part in ("query", "key"):
            assert a[part].keys() == b[part].keys(), case
            for name in a[part]:
                torch.testing.assert_close(b[part][name], a[part][name], rtol=1e-5, atol=1e-6,
                                           msg=lambda m: f"{backend} {case} {part}.{name}: {m}")
        if "prototypes.weight" in a["query"]:  # moved by the loss and by weight decay
            assert not torch.equal(a["query"]["prototypes.weight"], a["key"]["prototypes.weight"])
        torch.testing.assert_close(b["queue"]["keys"], a["queue"]["keys"], rtol=1e-5, atol=1e-6)
        assert torch.equal(b["queue"]["labels"], a["queue"]["labels"])
