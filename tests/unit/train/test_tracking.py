"""Tracker values and hparams: numeric records under tags, a nested recipe as flat scalars."""

from __future__ import annotations

from mlcdist.train.tracking import TRACKER_PACKAGES, flat_config, tracker_values


def test_tracker_values_tag_numbers_and_drop_step_and_time():
    record = {"time": 1.0, "step": 4, "loss": 2.5, "lr": 0.1, "momentum": 0.99, "data_wait_share": 0.2,
              "query_cosine": 0.3, "collapse_warning": True, "note": "text"}
    assert tracker_values(record) == {
        "train/loss": 2.5, "train/lr": 0.1, "train/momentum": 0.99, "perf/data_wait_share": 0.2,
        "collapse/query_cosine": 0.3, "collapse/warning": 1.0}


def test_flat_config_gives_scalar_hparams():
    flat = flat_config({"optim": {"lr": 0.1, "betas": [0.9, 0.99]}, "checkpoint": {"resume": None},
                        "logging": {"report_to": ["tensorboard"], "progress": True}})
    assert flat == {"optim.lr": 0.1, "optim.betas": "[0.9, 0.99]", "checkpoint.resume": "none",
                    "logging.report_to": "['tensorboard']", "logging.progress": True}


def test_every_schema_tracker_has_a_package():
    import typing

    from mlcdist.config.schema import LoggingConfig

    (item,) = typing.get_args(typing.get_type_hints(LoggingConfig)["report_to"])
    assert set(typing.get_args(item)) == set(TRACKER_PACKAGES)
