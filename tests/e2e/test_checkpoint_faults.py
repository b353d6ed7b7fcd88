"""Issue 16 item 4: a full disk during a save and a truncated ``state.pt`` name the file.

A full disk gave torch's ``unexpected pos 48384 vs 48304`` traceback; a truncated ``state.pt``
behind ``latest`` gave a zip-reader traceback on resume and in eval.
"""

from __future__ import annotations

import errno
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from support.paths import REPO
from support.vector_run import recipe

from mlcdist import checkpoint as ckpt
from mlcdist.config import from_dict
from mlcdist.train.trainer import Trainer

# A child process: one good checkpoint, then a save under a 16 KiB file-size limit. SIGXFSZ is
# ignored so that the write fails with EFBIG instead of killing the process (as a full disk does
# with ENOSPC); cli.run prints the error as it would for the command line.
FULL_DISK_CHILD = textwrap.dedent("""
    import json, resource, signal, sys
    from pathlib import Path
    import torch
    from mlcdist import cli
    from mlcdist.config import from_dict
    from mlcdist.train.trainer import Trainer

    torch.set_num_threads(1)
    trainer = Trainer(from_dict(json.loads(sys.argv[1])))
    trainer.fit(stop_at_step=2)

    def save_on_a_full_disk(argv):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16384, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        trainer.progress.step += 1
        trainer.save()
        return 0

    sys.exit(cli.run(save_on_a_full_disk))
""")


def published(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("step-*"))


def test_full_disk_save_names_file_cause_and_free_space(shards, tmp_path):
    import json

    run = tmp_path / "run"
    cfg = recipe(shards, run, model={"mlp_dims": [256, 256]})  # state.pt >> 16 KiB
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_CHILD, json.dumps(cfg)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    line = lines[0]
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
