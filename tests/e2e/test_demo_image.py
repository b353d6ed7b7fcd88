"""``make demo-image``: the image path learns (issue 11, item 2).

The unit tests pin ``tools.demo_summary`` (the line, the exit codes); the e2e test runs a short
form of the demo's commands, exactly as the Makefile chains them, and asserts that the
pretrained probe beats the random-encoder probe and that the collapse guard stayed silent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.paths import REPO
from tools.demo_summary import main as summary_main

# The short form: fewer mosaics and steps than recipes/demo_image.yaml (same settings otherwise).
SHORT = ["schedule.epochs=4", "schedule.max_steps=234", "checkpoint.every_epochs=4"]  # 234 steps (70 per epoch)
NUM_TRAIN = 5000
MIN_GAP = 0.02  # measured on this 2-core box: see docs/benchmarks.md, "image demo"


def _write_eval(folder: Path, map_value: float) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"test": {"clean": {"mAP": map_value}}}))


def _fake_run(tmp_path: Path, pretrained: float, random: float, *, collapsed: bool = False) -> Path:
    run = tmp_path / "run"
    _write_eval(run / "eval" / "linear", pretrained)
    _write_eval(run / "eval" / "linear-random", random)
    records = [{"step": 20, "loss": 7.0}, {"step": 40, "loss": 6.5, **({"collapse_warning": True}
                                                                      if collapsed else {})}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def test_summary_prints_the_line_and_passes_a_wide_gap(tmp_path, capsys):
    assert summary_main([str(_fake_run(tmp_path, 0.9, 0.7))]) == 0
    assert capsys.readouterr().out.strip() == "demo-image: probe mAP pretrained 0.9000 vs random 0.7000"


def test_summary_fails_below_the_gap_and_on_collapse(tmp_path, capsys):
    assert summary_main([str(_fake_run(tmp_path / "a", 0.75, 0.7))]) == 1
    assert "below --min-gap 0.1" in capsys.readouterr().err
    assert summary_main([str(_fake_run(tmp_path / "b", 0.95, 0.7, collapsed=True))]) == 1
    assert "collapse guard fired at step 40" in capsys.readouterr().err


def test_summary_names_a_missing_probe(tmp_path, capsys):
    run = _fake_run(tmp_path, 0.9, 0.7)
    (run / "eval" / "linear-random" / "metrics.json").unlink()
    assert summary_main([str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "linear-random/metrics.json" in err


def _run(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"{args}: rc {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.mark.slow
def test_short_demo_image_learns_without_collapse(tmp_path):
    shards, run = tmp_path / "digits-32", tmp_path / "run"
    data = [f"data.train={shards / 'train'}", f"data.test={shards / 'test'}"]
    _run("-m", "tools.make_shards", "digits", "--size", "32", "--train", str(NUM_TRAIN), "--out", str(shards),
         "--no-progress")
    _run("-m", "mlcdist.train", "recipes/demo_image.yaml", *data, *SHORT, f"logging.run_dir={run}",
         "logging.progress=false")
    for extra in ([], ["--random-init"]):
        _run("-m", "mlcdist.eval", str(run), "--recipe", "recipes/eval/demo_image.yaml", "--no-plots", *extra)
    _run("-m", "tools.demo_summary", str(run), "--min-gap", str(MIN_GAP))
