"""Non-finite parameters/buffers stop the run and are never published as a checkpoint
(issue 16 item 2: at optim.lr=1e6 BatchNorm running_var reached inf, the loss stayed finite,
the run exited 0 and every kept checkpoint held inf)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from support.vector_run import recipe

from mlcdist import checkpoint as ckpt
from mlcdist.config import from_dict
from mlcdist.train.health import first_non_finite
from mlcdist.train import NonFiniteState, Trainer, main

# finite loss, inf BatchNorm running_var within a few steps; 1e6 left running_var at 7e36 after the
# 9 resumed steps of the second test with some dropout draws, two orders short of float32 overflow
COLLAPSE = {"name": "sgd", "lr": 1e8}


def published(run: Path) -> list[Path]:
    return sorted((run / "checkpoints").glob("step-*"))


def assert_all_finite(folder: Path) -> None:
    state = ckpt.load_file(folder / "state.pt")
    for part in ("model", "key"):
        for name, t in state[part].items():
            if t.is_floating_point():
                assert torch.isfinite(t).all(), f"{folder.name}: {part}.{name} is not finite"


def test_high_lr_collapse_stops_and_publishes_nothing(shards, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = recipe(shards, run, optim=COLLAPSE, schedule={"epochs": 2, "warmup_epochs": 0})
    path = tmp_path / "collapse.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main([str(path)]) == 3
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and err[0].startswith("error: non-finite values in ")
    assert "running_var at step " in err[0] and "no checkpoint was written yet" in err[0]
    assert published(run) == [] and not (run / "checkpoints" / "latest").exists()


def test_collapse_after_a_good_checkpoint_keeps_it(shards, tmp_path):
    run = tmp_path / "run"
    good = recipe(shards, run, optim={"name": "sgd", "lr": 0.05}, schedule={"epochs": 2, "warmup_epochs": 0})
    Trainer(from_dict(good)).fit(stop_at_step=9)  # publishes step-00000009
    bad = recipe(shards, run, optim=COLLAPSE, schedule={"epochs": 2, "warmup_epochs": 0})
    with pytest.raises(NonFiniteState, match=r"running_var at step \d+ .*step-00000009 is intact"):
        Trainer(from_dict(bad)).fit()
    assert [p.name for p in published(run)] == ["step-00000009"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000009"
    for folder in published(run):
        assert_all_finite(folder)


def test_save_refuses_non_finite_buffer(shards, tmp_path):
    trainer = Trainer(from_dict(recipe(shards, tmp_path / "run")))
    name, buf = next((n, b) for n, b in trainer.key.named_buffers() if n.endswith("running_var"))
    buf[0] = float("nan")
    assert first_non_finite({"query": trainer.query, "key": trainer.key}) == f"key.{name}"
    with pytest.raises(NonFiniteState, match=rf"key\.{name} at step 0"):
        trainer.save()
    assert published(tmp_path / "run") == []


def test_non_finite_loss_without_checkpoint_says_so(shards, tmp_path):
    """Issue 16 item 8: the message promised a checkpoint that did not exist yet."""
    trainer = Trainer(from_dict(recipe(shards, tmp_path / "run")))
    for p in trainer.query.parameters():
        p.data.fill_(float("nan"))
    with pytest.raises(Exception, match="non-finite loss .*no checkpoint was written yet") as err:
        trainer.fit()
    assert "is intact" not in str(err.value)
