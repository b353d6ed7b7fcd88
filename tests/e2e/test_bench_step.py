"""bench/step.py end to end on CPU with tiny settings: four table rows, sane positive numbers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from support.paths import REPO

ROOT = REPO


def test_bench_step_prints_four_modes(tmp_path):
    out = tmp_path / "step.json"
    cmd = [sys.executable, str(ROOT / "bench" / "step.py"), "--arch", "resnet18", "--batch", "4",
           "--image-size", "32", "--steps", "2", "--warmup", "1", "--queue", "64", "--classes", "12",
           "--make-shards", "24", "--json", str(out)]
    # one thread: on a shared 2-core machine, oversubscribed OpenMP makes each step ~5x slower
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("│")]  # table body
    assert [re.search(r"\(([abcd])\) ", r).group(1) for r in rows] == list("abcd"), proc.stdout
    assert all("cpu" in r for r in rows) and "resnet18 32px, batch 4" in proc.stdout

    report = json.loads(out.read_text())
    assert report["gpu"] == "cpu"
    results = report["results"]
    base = results["a"]["samples_per_s"]
    for mode, r in results.items():
        assert r["samples_per_s"] > 0 and r["seconds"] > 0, mode
        assert 0 <= r["data_wait"] < 1 and r["peak_gib"] is None, mode
        ratio = f"{r['samples_per_s'] / base:.2f}"
        assert any(f"({mode}) " in row and ratio in row for row in rows), (mode, ratio)
    assert results["a"]["data_wait"] == 0 or results["a"]["data_wait"] < 0.01  # synthetic: no loader
    assert 0 < results["b"]["loss_share"] < 1
