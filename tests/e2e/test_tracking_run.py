"""``logging.report_to``: TensorBoard through Accelerate's trackers, and a missing tracker
package as one ``error:`` line at start-up."""

from __future__ import annotations

import importlib.util

import pytest
import yaml

from mlcdist.config import from_dict
from mlcdist.errors import MlcdistError
from mlcdist.train import Trainer, main

from support.vector_run import recipe


def test_tensorboard_receives_loss_lr_momentum_throughput_and_collapse_statistics(shards, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb-run"
    cfg = recipe(shards, run, schedule={"epochs": 1}, logging={"report_to": ["tensorboard"], "every_steps": 3})
    Trainer(from_dict(cfg)).fit()
    (events,) = (run / "tensorboard" / "tb-run").glob("events.out.tfevents.*")
    scalars = EventAccumulator(str(events)).Reload().Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/momentum", "perf/samples_per_s", "perf/data_wait_share",
            "collapse/query_cosine", "collapse/ln_candidates", "train/queue_fill"} <= set(scalars)
    loss = EventAccumulator(str(events)).Reload().Scalars("train/loss")
    assert [e.step for e in loss] == [3, 6, 9]  # the logging steps of metrics.jsonl


def test_missing_tracker_package_is_one_error_line_naming_the_key_and_pip(shards, tmp_path, capsys,
                                                                         monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",  # as on a machine without tensorboard
                        lambda name, *a: None if name in ("tensorboard", "tensorboardX") else real(name, *a))
    recipe_file = tmp_path / "toy.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe(shards, tmp_path / "run")))
    assert main([str(recipe_file), "logging.report_to=[tensorboard]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: logging.report_to: tensorboard needs the tensorboard package")
    assert "pip install tensorboard" in err[0]
    assert not (tmp_path / "run").exists()  # refused before the run folder is made
    with pytest.raises(MlcdistError, match="logging.report_to: tensorboard"):
        Trainer(from_dict(recipe(shards, tmp_path / "run", logging={"report_to": ["tensorboard"]})))
