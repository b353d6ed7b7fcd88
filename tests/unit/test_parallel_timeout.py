"""Issue 16 item 6: ``parallel.timeout_minutes`` reaches the process group (a stalled rank fails
the job after it, not after torch's 30 min gloo / 10 min NCCL defaults)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta

import pytest

from support.paths import REPO, SUPPORT

from mlcdist.config import RecipeConfig, from_dict
from mlcdist.parallel.backend import process_group_kwargs


def test_default_and_recipe_timeout_build_the_handler():
    assert RecipeConfig().parallel.timeout_minutes == 10.0
    cfg = from_dict({"parallel": {"timeout_minutes": 2.5}})
    cpu = process_group_kwargs(True, cfg.parallel.timeout_minutes)
    assert cpu.backend == "gloo" and cpu.timeout == timedelta(minutes=2.5)
    gpu = process_group_kwargs(False, cfg.parallel.timeout_minutes).to_kwargs()
    assert gpu == {"timeout": timedelta(minutes=2.5)}  # Accelerate keeps choosing the backend


@pytest.mark.slow
def test_stalled_rank_fails_the_job_after_the_timeout():
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}  # this checkout's mlcdist
    for key in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(27500 + os.getpid() % 1000), str(SUPPORT / "stall_worker.py"), "0.05"]
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=110)
    elapsed = time.monotonic() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert "barrier returned" not in output
    assert "3000ms" in output or "timed out" in output.lower(), output[-3000:]
    assert elapsed < 90, elapsed  # 3 s timeout + start-up, far below the sleeping rank's 120 s
