"""Issue 16 item 6: the skipped-sample count of every epoch (the last one too) reaches the user,
and a run above ``data.max_skipped_fraction`` fails (a whole shard deleted ended ``done``, rc 0)."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path

import pytest
import yaml

from support.vector_run import KEPT, SAMPLES, recipe

from mlcdist.data.split import carve_mask
from mlcdist.train.command import main as train_main


@pytest.fixture
def one_shard_gone(shards, tmp_path) -> Path:
    """The toy set (shards of 25, 25, 25, 5 samples) with its second shard deleted."""
    copy = tmp_path / "train"
    shutil.copytree(shards, copy)
    (copy / "shard-000001.tar").unlink()
    return copy


# the deleted shard's rows that pretraining reads (the others are eval's validation carve)
GONE = int((~carve_mask(SAMPLES, 0.1, 0)[25:50]).sum())
SHARE = f"{100 * GONE / KEPT:.2f}%"


def train(tmp_path: Path, data: Path, *overrides: str) -> tuple[int, Path]:
    run = tmp_path / "run"
    path = tmp_path / "recipe.yaml"
    # allow_missing: a deleted shard would otherwise stop the loader at once (ShardShortfallError);
    # here its samples are skipped and counted, so the per-epoch share is what is tested
    data_cfg = {"shuffle_buffer": 100, "allow_missing": True}
    path.write_text(yaml.safe_dump(recipe(data, run, data=data_cfg)))  # 3 epochs x 9 steps, batch 8
    return train_main([str(path), *overrides]), run


def epoch_records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("event") == "epoch"]


def test_deleted_shard_fails_the_run_after_its_epoch(one_shard_gone, tmp_path, capsys, one_thread):
    rc, run = train(tmp_path, one_shard_gone)
    err = capsys.readouterr().err
    assert rc == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith(f"error: epoch 0: {GONE} of {KEPT} samples ({SHARE}) were corrupt or missing and "
                               "skipped, above data.max_skipped_fraction=0.01")
    assert "no checkpoint was written yet" in lines[0]
    assert [(r["epoch"], r["skipped"], r["samples"]) for r in epoch_records(run)] == [(0, GONE, KEPT)]
    assert not (run / "checkpoints" / "latest").exists()  # the damaged epoch is not published


def test_every_epoch_reports_its_count_including_a_partial_last_one(one_shard_gone, tmp_path, capsys,
                                                                     one_thread):
    rc, run = train(tmp_path, one_shard_gone, "data.max_skipped_fraction=0.5", "schedule.max_steps=13")
    assert rc == 0
    records = epoch_records(run)
    assert [(r["epoch"], r["step"], r["samples"]) for r in records] == [(0, 9, KEPT), (1, 13, 32)]
    assert records[0]["skipped"] == GONE and 0 < records[1]["skipped"] <= GONE
    assert records[0]["skipped_fraction"] == pytest.approx(GONE / KEPT, abs=1e-6)
    text = capsys.readouterr()
    assert f"epoch 0: {GONE} of {KEPT} samples skipped (corrupt or missing)" in text.out + text.err
    assert f"epoch 1: {records[1]['skipped']} of 32 samples skipped" in text.out + text.err


def test_clean_data_reports_zero(shards, tmp_path, one_thread):
    rc, run = train(tmp_path, shards, "schedule.epochs=1")
    assert rc == 0
    assert [(r["epoch"], r["skipped"], r["samples"]) for r in epoch_records(run)] == [(0, 0, KEPT)]


@pytest.mark.parametrize("workers", [0, 1])
def test_a_whole_unreadable_batch_is_one_error_line(one_shard_gone, tmp_path, capsys, workers):
    rc, _ = train(tmp_path, one_shard_gone, "data.shuffle_buffer=0", "data.max_skipped_fraction=1",
                  f"data.num_workers={workers}")
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err[-3000:]
    # the failed pass shut its workers down: they ignore SIGTERM, so a live one would hang the
    # exit handler of multiprocessing (the CI run that timed out after pytest's summary)
    assert multiprocessing.active_children() == []
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "error: a whole batch of 8 samples around index " in lines[0] and "is unreadable" in lines[0], err[-3000:]
