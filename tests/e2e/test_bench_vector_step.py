"""bench/vector_step.py end to end at a tiny size: it runs the trainer and the plain loop and ends
with the summary line in its documented format (the ratio itself is not checked: the box is noisy)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from support.paths import REPO


def test_bench_vector_step_prints_the_summary_line():
    cmd = [sys.executable, str(REPO / "bench" / "vector_step.py"), "--samples", "96", "--features", "9",
           "--classes", "4", "--epochs", "2", "--warmup", "1", "--rounds", "1", "--stream"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"trainer vs plain loop: \d+\.\d\dx samples/s, loader share \d+\.\d%", lines[-1]), lines[-1]
    assert any(line.startswith("loader ms/batch: streaming ") for line in lines), proc.stdout
    assert any(line.startswith("plain torch loop: ") for line in lines), proc.stdout
    assert re.fullmatch(r"by hand vs study tool: \d+\.\d\dx samples/s", lines[-2]), lines[-2]
