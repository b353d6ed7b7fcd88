"""The Trainer end to end on real (tiny) vector shards: resume, run folder, non-finite stop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mlcdist.config import from_dict, load_recipe
from mlcdist.parallel import full_state_dict
from mlcdist.train import NonFiniteLoss, Trainer, main

from support.vector_run import CLASSES, KEPT, recipe


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    q = full_state_dict(trainer.acc, trainer.strategy, trainer.query)
    k = full_state_dict(trainer.acc, trainer.strategy, trainer.key)
    return {**{f"q.{n}": v for n, v in q.items()}, **{f"k.{n}": v for n, v in k.items()},
            "queue": trainer.queue.keys.cpu().clone()}


def test_stop_and_resume_equals_uninterrupted_run(shards, tmp_path):
    straight = Trainer(from_dict(recipe(shards, tmp_path / "straight")))
    straight.fit()
    expected = weights(straight)
    assert straight.step == 3 * (KEPT // 8)

    first = Trainer(from_dict(recipe(shards, tmp_path / "resumed")))
    first.fit(stop_at_step=13)  # mid-epoch 2 (9 steps per epoch)
    assert first.step == 13
    second = Trainer(from_dict(recipe(shards, tmp_path / "resumed")))
    second.fit()
    assert second.step == straight.step
    got = weights(second)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=lambda m: f"{name}: {m}")
    # the resumed run's logged losses continue the straight run's
    def losses(run: str) -> dict[int, float]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}  # step records

    a, b = losses("straight"), losses("resumed")
    assert a.keys() <= b.keys()  # the stopped run also logged its last step, 13
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5)


def test_run_folder_has_resolved_config_metrics_and_checkpoints(shards, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(from_dict(recipe(shards, run, schedule={"epochs": 2})))
    trainer.fit()
    assert load_recipe(run / "config.yaml") == trainer.cfg
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in records if r.get("event") == "epoch"] == [0, 0]
    records = [r for r in records if "loss" in r]
    assert {"step", "epoch", "loss", "lr", "samples_per_s", "queue_fill"} <= records[-1].keys()
    assert records[-1]["queue_fill"] == 1.0
    checkpoints = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    assert checkpoints == ["step-00000009", "step-00000018"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000018"
    state = torch.load(run / "checkpoints" / "step-00000018" / "state.pt", weights_only=True)
    assert state["counters"]["step"] == 18 and state["num_classes"] == CLASSES


def test_keep_last_prunes_and_crash_mid_save_keeps_latest(shards, tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = recipe(shards, run, schedule={"epochs": 3}, checkpoint={"every_epochs": 1, "keep_last": 1})
    Trainer(from_dict(cfg)).fit(stop_at_step=9)
    assert [p.name for p in (run / "checkpoints").glob("step-*")] == ["step-00000009"]
    from mlcdist import checkpoint

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "publish", crash)
    with pytest.raises(OSError):
        Trainer(from_dict(cfg)).fit(stop_at_step=18)
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000009"
    monkeypatch.undo()
    resumed = Trainer(from_dict(cfg))
    resumed.fit(stop_at_step=10)
    assert resumed.step == 10  # restarted from step 9, not from the broken save


def test_non_finite_loss_stops_with_message_and_keeps_checkpoint(shards, tmp_path):
    run = tmp_path / "run"
    cfg = recipe(shards, run, schedule={"epochs": 3})
    Trainer(from_dict(cfg)).fit(stop_at_step=9)
    cfg["checkpoint"]["resume"] = None  # start over in the same run folder, with poisoned weights
    broken = Trainer(from_dict(cfg))
    for p in broken.query.parameters():
        p.data.fill_(float("nan"))
    with pytest.raises(NonFiniteLoss, match="non-finite loss"):
        broken.fit()
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000009"


def test_bce_baseline_trains(shards, tmp_path):
    trainer = Trainer(from_dict(recipe(shards, tmp_path / "bce", loss={"kind": "bce"},
                                       schedule={"epochs": 1})))
    summary = trainer.fit()
    assert np.isfinite(summary["loss"]) and summary["step"] == KEPT // 8


def test_cli_reports_config_errors(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lrr: 0.1\n")
    assert main([str(path)]) == 2
    assert "optim.lrr: unknown key; did you mean optim.lr?" in capsys.readouterr().err


def test_key_encoder_moves_in_bf16(shards, tmp_path):
    cfg = recipe(shards, tmp_path / "bf16", precision={"mixed": "bf16"}, model={"momentum": 0.999},
                 schedule={"epochs": 1}, checkpoint={"every_epochs": 0})
    trainer = Trainer(from_dict(cfg))
    before = {n: p.detach().clone() for n, p in trainer.key.named_parameters()}
    trainer.fit()
    moved = [n for n, p in trainer.key.named_parameters() if not torch.equal(p, before[n])]
    assert moved == list(before)  # every key tensor moved; 1 - m = 1e-3 is not lost to rounding
    assert all(p.dtype == torch.float32 for p in trainer.key.parameters())
    # and by the EMA amount: at most 9 steps x 1e-3 of the query-key gap
    q = dict(trainer.query.named_parameters())
    for n, p in trainer.key.named_parameters():
        assert (p - before[n]).abs().max() <= 9 * 1e-3 * (q[n].detach() - before[n]).abs().max() + 1e-6


def test_gradient_accumulation_counts_optimizer_steps(shards, tmp_path):
    cfg = recipe(shards, tmp_path / "accum", optim={"grad_accum": 2}, schedule={"epochs": 2},
                 checkpoint={"every_epochs": 0})
    trainer = Trainer(from_dict(cfg))
    before = [p.detach().clone() for p in trainer.query.parameters()]
    summary = trainer.fit()
    assert trainer.steps_per_epoch == (KEPT // 8) // 2 and summary["step"] == 2 * trainer.steps_per_epoch
    assert summary["epoch"] == 2 and trainer.micro == 0  # the odd 9th micro-batch is not carried over
    assert np.isfinite(summary["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.query.parameters()))


def test_cli_checks_data_train_before_training(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    (tmp_path / "no-index").mkdir()
    path.write_text(f"data:\n  train: {tmp_path / 'no-index'}\n")
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: data.train: ")
    assert str(tmp_path / "no-index" / "dataset.json") in err and "tools.make_shards" in err


def test_short_shard_stops_training_unless_allow_missing(shards, tmp_path, capsys):
    import shutil

    short = tmp_path / "short"
    shutil.copytree(shards, short)
    index = json.loads((short / "dataset.json").read_text())
    index["shards"][0]["num_samples"] += 3  # promises 3 samples the shard does not hold
    index["num_samples"] += 3
    (short / "dataset.json").write_text(json.dumps(index))
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(recipe(short, tmp_path / "run", schedule={"epochs": 1})))
    assert main([str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and index["shards"][0]["file"] in err and "data.allow_missing" in err
    assert main([str(path), "data.allow_missing=true", "data.max_skipped_fraction=1",
                 f"logging.run_dir={tmp_path / 'run2'}"]) == 0  # the share check still applies


def test_every_epoch_record_carries_the_mean_loss_of_all_its_steps(shards, tmp_path):
    """metrics.jsonl's "event": "epoch" record has loss_mean = the mean of every micro-batch's
    loss of that epoch (read once per epoch; tools.study's epoch curves use it)."""
    run = tmp_path / "run"
    Trainer(from_dict(recipe(shards, run, logging={"every_steps": 1}))).fit()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r and "event" not in r]
    epochs = [r for r in records if r.get("event") == "epoch"]
    assert len(epochs) == 3 and len(steps) == 3 * (KEPT // 8)
    for e in epochs:
        losses = [r["loss"] for r in steps if r["epoch"] == e["epoch"]]
        assert len(losses) == KEPT // 8
        assert e["loss_mean"] == pytest.approx(np.mean(losses), rel=1e-6)


def test_logging_loss_curve_false_draws_no_png(shards, tmp_path):
    run = tmp_path / "run"
    Trainer(from_dict(recipe(shards, run, logging={"loss_curve": False}, schedule={"epochs": 1}))).fit()
    assert (run / "metrics.jsonl").exists() and not (run / "loss_curve.png").exists()
