"""Issue 16 item 4: a user error of a 2-process torchrun job is one ``error:`` line, no worker traceback.

torchrun kills the other ranks as soon as one exits, so "rank 0 prints" lost the line whenever
another rank failed first; data-set errors were plain ``ValueError`` tracebacks on every rank.
torchrun's own ``ChildFailedError`` report (its traceback included) is the launcher's, not ours.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support.paths import REPO
from support.vector_run import recipe

from mlcdist.train.command import main as train_main


def torchrun(recipe_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    for key in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(28500 + os.getpid() % 1000), "-m", "mlcdist.train", str(recipe_path),
           *overrides]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


def assert_one_error_line(proc: subprocess.CompletedProcess, expected: str) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, output[-4000:]
    assert expected in lines[0], lines[0]
    worker_tracebacks = output.count("Traceback (most recent call last)") - output.count("errors.ChildFailedError")
    assert worker_tracebacks == 0, output[-4000:]


@pytest.fixture(scope="module")
def recipe_path(shards, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("errlines") / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(shards, path.parent / "run")))
    return path


CASES = {
    "missing train": (["data.train=/nonexistent/train"], "data.train: /nonexistent/train/dataset.json not found"),
    "empty train": (["data.train="], "data.train: no shard folder named"),
    "batch too large": (["data.batch_size=64"], "give no full batch of 64 x 2 ranks; lower data.batch_size"),
    "missing weights": (["model.weights=/nonexistent/w.pt"], "model.weights: /nonexistent/w.pt not found"),
    "missing resume": (["checkpoint.resume=/nonexistent/ckpt"], "checkpoint.resume: /nonexistent/ckpt holds no"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_input_error_is_one_line_per_job(recipe_path, tmp_path, case):
    overrides, expected = CASES[case]
    proc = torchrun(recipe_path, *overrides, f"logging.run_dir={tmp_path / 'run'}")
    assert_one_error_line(proc, expected)


@pytest.mark.slow
def test_bad_dataset_json_is_one_line_per_job(recipe_path, tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "dataset.json").write_text("{not json")
    proc = torchrun(recipe_path, f"data.train={tmp_path / 'bad'}", f"logging.run_dir={tmp_path / 'run'}")
    assert_one_error_line(proc, f"{tmp_path / 'bad' / 'dataset.json'}: not valid JSON")


@pytest.mark.slow
def test_world_size_mismatch_on_resume_is_one_line_per_job(recipe_path, tmp_path, one_thread):
    run = tmp_path / "run"
    assert train_main([str(recipe_path), "schedule.max_steps=2", f"logging.run_dir={run}"]) == 0
    proc = torchrun(recipe_path, f"logging.run_dir={run}")
    assert_one_error_line(proc, "saved with 1 processes, resuming with 2")
