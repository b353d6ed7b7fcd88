"""data.num_workers is capped at the CPUs available per local process, with a one-line note."""

from __future__ import annotations

import os

import pytest

from support.shardgen import write_split

from mlcdist.config import from_dict
from mlcdist.data import cpus
from mlcdist.data.cpus import available_cpus, cap_num_workers


def test_available_cpus_is_the_affinity_mask():
    assert available_cpus() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("requested, cpus_, processes, expected", [
    (8, 2, 1, 2), (8, 2, 2, 1), (8, 3, 2, 1), (8, 1, 2, 0), (2, 16, 1, 2), (0, 1, 4, 0), (8, 64, 8, 8),
])
def test_cap_is_cpus_per_local_process(requested, cpus_, processes, expected, capsys):
    assert cap_num_workers(requested, cpus=cpus_, processes=processes) == expected
    err = capsys.readouterr().err
    if expected < requested:
        cpu_s = "CPU" if cpus_ == 1 else "CPUs"
        processes_s = "process" if processes == 1 else "processes"
        assert err == (f"note: data.num_workers={requested} capped at {expected}: {cpus_} {cpu_s} "
                       f"available to {processes} {processes_s} on this machine\n")
    else:
        assert err == ""


def test_local_world_size_comes_from_the_launcher(monkeypatch, capsys):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")  # only local rank 0 prints the note
    assert cap_num_workers(8, cpus=8) == 2
    assert capsys.readouterr().err == ""


def test_trainer_records_the_capped_count(tmp_path, monkeypatch, capsys):
    from mlcdist.train import Trainer

    write_split(tmp_path / "train", [16, 16], modality="vector", feature_dim=8)
    monkeypatch.setattr(cpus, "available_cpus", lambda: 1)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cfg = from_dict({
        "data": {"train": str(tmp_path / "train"), "batch_size": 8, "num_workers": 4},
        "model": {"arch": "mlp", "mlp_dims": [16], "head_dims": [16, 8]},
        "queue": {"size": 16}, "optim": {"name": "adam", "lr": 0.001},
        "logging": {"run_dir": str(tmp_path / "run"), "progress": False},
    })
    trainer = Trainer(cfg)
    assert trainer.cfg.data.num_workers == 1 and trainer.loader.stream.data.num_workers == 1
    assert "note: data.num_workers=4 capped at 1: 1 CPU available to 1 process" in capsys.readouterr().err
