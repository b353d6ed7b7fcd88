"""Experiment trackers (``logging.report_to``) through Accelerate's tracking API.

``report_to: [tensorboard]`` writes event files under ``RUN/tensorboard/RUN_NAME``
(``tensorboard --logdir runs``); ``wandb`` and the others log where their package is set up to
(``WANDB_MODE=offline`` keeps wandb off the network; ``wandb sync`` uploads later). A tracker
whose package is missing stops the run at start-up (:func:`check_trackers`), since Accelerate
itself would drop it silently. Values are the records of ``metrics.jsonl``, i.e. logging steps
only: tracking adds no host sync to the other steps.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Sequence

from mlcdist.errors import MlcdistError

# report_to name -> (importable module(s), pip package); names are Accelerate's LoggerType values
TRACKER_PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
    "mlflow": (("mlflow",), "mlflow"),
    "comet_ml": (("comet_ml",), "comet_ml"),
    "aim": (("aim",), "aim"),
    "clearml": (("clearml",), "clearml"),
    "dvclive": (("dvclive",), "dvclive"),
    "swanlab": (("swanlab",), "swanlab"),
    "trackio": (("trackio",), "trackio"),
}
TRACKERS = tuple(TRACKER_PACKAGES)

# metrics.jsonl key -> tracker tag (grouped into panels by the prefix)
TAGS = {
    "loss": "train/loss", "lr": "train/lr", "momentum": "train/momentum", "epoch": "train/epoch",
    "samples_per_s": "perf/samples_per_s", "data_wait_share": "perf/data_wait_share",
    "gpu_mem_gib": "perf/gpu_mem_gib", "queue_fill": "train/queue_fill",
    "query_cosine": "collapse/query_cosine", "ln_candidates": "collapse/ln_candidates",
    "collapse_warning": "collapse/warning",
}


def check_trackers(names: Sequence[str]) -> None:
    """One clear error, before anything heavy starts, for a tracker whose package is missing."""
    for name in names:
        modules, package = TRACKER_PACKAGES[name]
        if not any(importlib.util.find_spec(m) is not None for m in modules):
            raise MlcdistError(
                f"logging.report_to: {name} needs the {package} package, which is not installed; "
                f"pip install {package} (or pip install 'mlcdist[track]'), or remove it from "
                "logging.report_to")


def flat_config(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested recipe as ``{"optim.lr": 0.1, ...}`` with scalar values (TensorBoard's hparams
    take ``bool | int | float | str`` only; lists become their text)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{name}."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[name] = "none" if value is None else value
        else:
            flat[name] = str(value)
    return flat


def tracker_values(record: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics record under their tracker tags."""
    return {TAGS.get(k, f"train/{k}"): float(v) for k, v in record.items()
            if k not in ("step", "time") and isinstance(v, (int, float))}


class Tracking:
    """The run's trackers (none when ``report_to`` is empty); main process only, like Accelerate."""

    def __init__(self, accelerator, report_to: Sequence[str], run_dir: Path, config: dict):
        self.acc, self.enabled = accelerator, bool(report_to)
        if not self.enabled:
            return
        name = Path(run_dir).resolve().name
        accelerator.init_trackers(name, config=flat_config(config), init_kwargs={
            "wandb": {"dir": str(run_dir), "name": name, "resume": "allow"},
        })

    def log(self, record: dict[str, Any]) -> None:
        if self.enabled:
            self.acc.log(tracker_values(record), step=int(record["step"]))

    def close(self) -> None:
        """Flush and close each tracker. Not ``Accelerator.end_training``: that also destroys
        the process group, which the command line owns (``mlcdist.cli.teardown``)."""
        if self.enabled and self.acc.is_main_process:
            for tracker in self.acc.trackers:
                tracker.finish()
            self.acc.trackers = []
