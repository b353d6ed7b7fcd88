"""The training step reads nothing back to the host: a value read (``.item()``, ``float()``,
``bool()``, ``int()``, ``.tolist()``) happens on logging / checkpoint / epoch boundaries only, so
the count of reads does not grow with the number of steps between them."""

from __future__ import annotations

import pytest
import torch

from mlcdist.config import from_dict
from mlcdist.train import Trainer

from support.vector_run import recipe

READS = ("item", "tolist", "__float__", "__bool__", "__int__")


def host_reads_of_a_run(shards, run_dir, monkeypatch, steps: int, **sections) -> int:
    cfg = from_dict(recipe(shards, run_dir, schedule={"epochs": 1, "max_steps": steps},
                           logging={"every_steps": 1000, "progress": False, "run_dir": str(run_dir)},
                           checkpoint={"every_epochs": 0}, **sections))
    trainer = Trainer(cfg)
    reads = []
    for name in READS:
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name):
            reads.append(_name)
            return _real(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    trainer.fit()
    monkeypatch.undo()
    return len(reads)


@pytest.mark.parametrize("sections", [{}, {"optim": {"name": "lars", "lr": 0.1}},
                                      {"loss": {"kind": "bce"}}], ids=["adam", "lars", "bce"])
def test_step_count_does_not_change_the_host_reads(shards, tmp_path, monkeypatch, sections):
    short = host_reads_of_a_run(shards, tmp_path / "short", monkeypatch, 2, **sections)
    long = host_reads_of_a_run(shards, tmp_path / "long", monkeypatch, 7, **sections)
    assert short > 0  # the counting works: the final logging step reads the loss
    assert long == short, f"{long - short} host reads in 5 more steps"
