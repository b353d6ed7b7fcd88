"""SIGTERM / SIGINT end a running pretraining with a checkpoint; the restart equals a straight run.

Real signals to real runs: ``tests/support/preempt_worker.py`` runs ``python -m mlcdist.train``'s
``main`` on tiny vector shards with a slowed-down loader, under torchrun (2 processes, gloo)
or alone.
"""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from support.paths import REPO, SUPPORT
from support.shardgen import write_split

from mlcdist.train.preempt import StopRequest

WORKER = SUPPORT / "preempt_worker.py"  # its subprocesses import this checkout's mlcdist (REPO on PYTHONPATH)
MESSAGE = "; checkpoint written; run the same command to resume"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("preempt") / "train"
    # 80 samples: pretraining holds out the 8 of the validation carve, 72 = 9 batches of 8 remain
    write_split(out, [27, 27, 26], modality="vector", feature_dim=8, num_classes=5)
    return out


def write_recipe(path: Path, shards: Path, run_dir: Path, batch_size: int) -> Path:
    recipe = {
        "data": {"train": str(shards), "batch_size": batch_size, "num_workers": 0, "shuffle_buffer": 16},
        "augment": {"mask_ratio": 0.3},
        "model": {"arch": "mlp", "mlp_dims": [16, 16], "dropout": 0.1, "head_dims": [16, 8],
                  "head_bn": False, "momentum": 0.9},
        "queue": {"size": 20},
        "optim": {"name": "adam", "lr": 0.003, "weight_decay": 0.0},
        "schedule": {"epochs": 2, "kind": "cosine", "warmup_epochs": 0.5},
        "checkpoint": {"every_epochs": 1, "keep_last": 3, "resume": "auto"},
        "logging": {"run_dir": str(run_dir), "progress": False, "every_steps": 1},
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def command(recipe: Path, nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable, str(WORKER), str(recipe)]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(29700 + os.getpid() % 1000), str(WORKER), str(recipe)]


def env() -> dict[str, str]:
    e = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
         "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for key in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        e.pop(key, None)
    return e


def logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line)["step"] for line in lines if line.strip()]


def run_and_signal(cmd: list[str], run_dir: Path, sig: int, target: str, after_step: int = 3):
    """Start ``cmd``, wait until ``after_step`` is logged, send ``sig`` to ``target`` (``rank1``:
    that worker only; ``launcher``: the launched process), wait; returns the finished process."""
    proc = subprocess.Popen(cmd, env=env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 240
    while not any(s >= after_step for s in logged_steps(run_dir)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "run did not reach the signal step"
        time.sleep(0.05)
    pid = int((run_dir / "pid-rank1").read_text()) if target == "rank1" else proc.pid
    os.kill(pid, sig)
    out, err = proc.communicate(timeout=120)  # ranks that disagree hang in a collective
    return proc.returncode, out, err


def final_state(run_dir: Path) -> dict:
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    return torch.load(run_dir / "checkpoints" / latest / "state.pt", weights_only=True)


def assert_same_run(a: Path, b: Path) -> None:
    sa, sb = final_state(a), final_state(b)
    assert sa["counters"] == sb["counters"]
    for part in ("model", "key"):
        for name in sa[part]:
            torch.testing.assert_close(sb[part][name], sa[part][name], msg=lambda m: f"{part}.{name}: {m}")
    torch.testing.assert_close(sb["queue"]["keys"], sa["queue"]["keys"])

    def losses(run: Path) -> dict[int, float]:
        records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        return {r["step"]: r["loss"] for r in records if "loss" in r}  # step records, not epoch ones

    la, lb = losses(a), losses(b)
    assert la.keys() == lb.keys()
    for step in la:
        assert lb[step] == pytest.approx(la[step], rel=1e-5), step


def check_interrupted(rc: int, err: str, run_dir: Path, expected_rc: int | None) -> int:
    """The run stopped with the one-line message at step N and a checkpoint of step N."""
    assert rc != 0, err[-3000:]
    if expected_rc is not None:
        assert rc == expected_rc, err[-3000:]
    lines = [line for line in err.splitlines() if line.endswith(MESSAGE)]
    assert len(lines) == 1, err[-3000:]
    step = int(lines[0].removeprefix("interrupted at step ").removesuffix(MESSAGE))
    assert 3 <= step < 18  # stopped mid-run, after the signal
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step-{step:08d}"
    state = final_state(run_dir)
    assert state["counters"]["step"] == step
    assert max(logged_steps(run_dir)) == step  # no step ran after the agreed one
    return step


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_both_at_one_step_and_resume_equals_straight_run(shards, tmp_path):
    straight = tmp_path / "straight"
    cmd = command(write_recipe(tmp_path / "straight.yaml", shards, straight, batch_size=4), 2)
    proc = subprocess.run(cmd, env={**env(), "PREEMPT_TEST_DELAY": "0"}, cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    run = tmp_path / "run"
    cmd = command(write_recipe(tmp_path / "run.yaml", shards, run, batch_size=4), 2)
    rc, out, err = run_and_signal(cmd, run, signal.SIGTERM, target="rank1")  # rank 0 is never signalled
    check_interrupted(rc, err, run, expected_rc=None)  # torchrun reports its own code for a failed worker
    proc = subprocess.run(cmd, env={**env(), "PREEMPT_TEST_DELAY": "0"}, cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr
    assert_same_run(straight, run)


def test_sigint_single_process_checkpoints_exits_130_and_resumes(shards, tmp_path):
    from mlcdist.config import load_recipe
    from mlcdist.train import Trainer

    straight = tmp_path / "straight"
    Trainer(load_recipe(write_recipe(tmp_path / "straight.yaml", shards, straight, batch_size=8))).fit()

    run = tmp_path / "run"
    cmd = command(write_recipe(tmp_path / "run.yaml", shards, run, batch_size=8), 1)
    rc, out, err = run_and_signal(cmd, run, signal.SIGINT, target="launcher")
    check_interrupted(rc, err, run, expected_rc=130)
    assert "KeyboardInterrupt" not in err and "Traceback" not in err
    proc = subprocess.run(cmd, env={**env(), "PREEMPT_TEST_DELAY": "0"}, cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(straight, run)


def test_second_signal_exits_at_once_and_handlers_are_restored(monkeypatch):
    exits: list[int] = []
    monkeypatch.setattr(os, "_exit", exits.append)
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest(repeat_grace_s=0.2) as stop:
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        assert stop.agreed() == 0
        stop._handle(signal.SIGTERM, None)
        stop._handle(signal.SIGTERM, None)  # the launcher's forwarded copy: same event
        assert stop.agreed() == signal.SIGTERM and exits == []
        time.sleep(0.3)
        stop._handle(signal.SIGINT, None)
        assert exits == [130]
    assert signal.getsignal(signal.SIGTERM) == before


def test_without_a_terminal_every_logging_step_prints_a_plain_line(shards, tmp_path, capsys):
    # progress.console is never made quiet globally (quiet callers pass their own Console), so
    # its plain lines reach pytest's capture
    from mlcdist.train import main

    recipe = write_recipe(tmp_path / "r.yaml", shards, tmp_path / "run", batch_size=8)
    assert main([str(recipe), "logging.progress=true", "logging.every_steps=4", "schedule.epochs=1"]) == 0
    out, err = capsys.readouterr()  # pytest's capture is no terminal, as a batch scheduler's log
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    # 9 steps: logged at 4, 8 and the last step
    assert [line.split()[1] for line in lines] == ["4/9", "8/9", "9/9"], out
    pattern = r"step \d+/9 \(\d+%\) epoch 0 loss \d+\.\d{4} lr \S+ samples/s \d+\.\d ETA \d:\d\d:\d\d"
    assert all(re.fullmatch(pattern, line) for line in lines), lines
    assert lines[-1].endswith("ETA 0:00:00")
    assert "━" not in err  # no progress bar in a log file
