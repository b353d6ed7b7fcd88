"""Issue 16 item 4: a full disk during a save and a truncated ``state.pt`` name the file.

A full disk gave torch's ``unexpected pos 48384 vs 48304`` traceback; a truncated ``state.pt``
behind ``latest`` gave a zip-reader traceback on resume and in eval.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support.paths import REPO, SUPPORT
from support.vector_run import recipe

from mlcdist import checkpoint as ckpt
from mlcdist.config import from_dict
from mlcdist.train.trainer import Trainer

WORKER = SUPPORT / "full_disk_worker.py"


def published(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("step-*"))


def full_disk_run(shards, tmp_path, nproc: int) -> tuple[str, Path]:
    """The worker's output (stderr + stdout) and run folder; asserts one line, no worker traceback."""
    run = tmp_path / "run"
    cfg = json.dumps(recipe(shards, run, model={"mlp_dims": [256, 256]}))  # state.pt >> 16 KiB
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for key in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        env.pop(key, None)
    launch = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_port", str(26500 + os.getpid() % 1000)]
    proc = subprocess.run([*launch, str(WORKER), cfg], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    output = proc.stderr + proc.stdout
    assert proc.returncode != 0, output[-3000:]
    assert output.count("Traceback (most recent call last)") == output.count("errors.ChildFailedError"), \
        output[-3000:]  # only torchrun's own report of the failed worker
    lines = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, output[-3000:]
    return lines[0], run


@pytest.mark.parametrize("nproc", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_full_disk_save_names_file_cause_and_free_space(shards, tmp_path, nproc):
    line, run = full_disk_run(shards, tmp_path, nproc)
    staged = run / "checkpoints" / ".tmp-step-00000003"
    assert f"{staged}/" in line and "could not write the checkpoint" in line
    assert "EFBIG" in line and "file-size limit" in line
    assert " GiB free on " in line
    assert f"the previous checkpoint {run / 'checkpoints' / 'step-00000002'} is intact" in line
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000002"
    assert published(run) == ["step-00000002"]
    assert ckpt.read(run / "checkpoints" / "step-00000002" / ckpt.STATE_FILE)["counters"]["step"] == 2
    assert not list(staged.glob("*.partial"))  # the partial file is removed (space given back)


def test_enospc_says_the_disk_is_full(tmp_path, monkeypatch):
    def no_space(obj, stream):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    target = tmp_path / "checkpoints" / ".tmp-step-00000005" / ckpt.STATE_FILE
    target.parent.mkdir(parents=True)
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.save_file({"x": 1}, target)
    message = str(err.value)
    assert message.startswith(f"{target}: could not write the checkpoint: the disk is full (ENOSPC: No space")
    assert "GiB free on" in message and "no checkpoint was published yet" in message
    assert not target.with_suffix(".pt.partial").exists()


def trained_run(shards, run: Path) -> Path:
    """Two checkpoints (steps 9 and 18: epochs 1 and 2); ``latest`` names step 18."""
    Trainer(from_dict(recipe(shards, run, schedule={"epochs": 2}))).fit()
    root = run / "checkpoints"
    assert (root / "latest").read_text().strip() == "step-00000018", published(run)
    return root


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_latest_falls_back_on_resume_with_a_warning(shards, tmp_path, one_thread, capsys):
    root = trained_run(shards, tmp_path / "run")
    truncate(root / "step-00000018" / ckpt.STATE_FILE)
    trainer = Trainer(from_dict(recipe(shards, tmp_path / "run", schedule={"epochs": 3})))
    trainer.fit()
    err = capsys.readouterr()
    text = err.out + err.err
    assert f"{root / 'step-00000018' / ckpt.STATE_FILE} is truncated or unreadable" in text
    assert f"resuming from the previous complete checkpoint {root / 'step-00000009'}" in text
    assert f"resumed from {root / 'step-00000009'} at step 9" in text
    assert trainer.step == 27


def test_truncated_latest_is_named_with_the_previous_one_for_eval(shards, tmp_path, one_thread):
    root = trained_run(shards, tmp_path / "run")
    broken = root / "step-00000018" / ckpt.STATE_FILE
    truncate(broken)
    for location in (tmp_path / "run", root, root / "step-00000018", broken):
        with pytest.raises(ckpt.CheckpointError) as err:
            ckpt.read(ckpt.resolve(location))
        message = str(err.value)
        assert message.startswith(f"{broken}: truncated or unreadable"), message
        assert f"the previous complete checkpoint is {root / 'step-00000009'}" in message


def test_truncated_explicit_resume_names_file_and_offers_previous(shards, tmp_path, one_thread):
    root = trained_run(shards, tmp_path / "run")
    truncate(root / "step-00000018" / ckpt.STATE_FILE)
    cfg = recipe(shards, tmp_path / "run", checkpoint={"resume": str(root / "step-00000018")})
    with pytest.raises(ckpt.CheckpointError, match=r"step-00000018/state.pt: truncated or unreadable.*"
                                                   r"the previous complete checkpoint is .*step-00000009"):
        Trainer(from_dict(cfg)).fit()
