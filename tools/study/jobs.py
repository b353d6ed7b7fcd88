"""One run: pretrain -> finetune -> score a (data set, method, seed), in any process.

A run reports its progress as events to a sink (``board.ProgressBoard.handle`` or a process
queue's ``put``): ``("start", key, phase, total_epochs)``, ``("epoch", key)`` at the start of
every epoch, ``("done", key, seconds)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console
from torch import Tensor

from mlcdist.fileio import write_text
from mlcdist.seeds import mix_seed
from tools.study.data import StudyError, VectorSet
from tools.study.recipes import LOG_EVERY, RunRecipes


BACKBONE = "backbone.pt"  # the pretrained query backbone a run keeps for its finetune
Event = tuple  # ("start", key, phase, total) | ("epoch", key) | ("done", key, seconds)
EventSink = Callable[[Event], None]


@dataclass(frozen=True)
class Job:
    """One (data set, method, training fraction, seed) run and the settings that decide its result."""

    dataset: str
    method: str  # a loss.kind
    seed: int
    run_dir: str
    epochs: int | None  # pretraining epochs (None: the recipe's)
    finetune_epochs: int | None  # finetune epoch cap (None: the recipe's)
    val_fraction: float
    recipes: RunRecipes
    overrides: tuple[str, ...] = ()  # extra pretraining recipe overrides (ablations)
    fraction: float = 1.0  # share of the training rows (after the validation carve) used
    settings: str = "{}"  # the call's shared settings as JSON: summaries merge only runs that share them

    @property
    def key(self) -> str:
        part = "" if self.fraction == 1.0 else f"/frac-{self.fraction:g}"
        return f"{self.dataset}/{self.method}{part}/seed-{self.seed}"


def _quoted(value: Any) -> str:
    """A recipe override value that YAML reads back as exactly this string/number."""
    return json.dumps(value if not isinstance(value, Path) else str(value))


def pretrain_config(job: Job, out: Path):
    """The method's recipe with this run's seed, folder and logging (a record every ``LOG_EVERY``
    steps for the loss curve and the collapse guard, each a host sync; the epoch means come from
    every step, ``epoch_losses``; no ``loss_curve.png``, ~1 s of matplotlib per run: ``python -m
    mlcdist.eval plot RUN/pretrain`` draws it); checkpoints only at the end; no resume."""
    from mlcdist.config import load_recipe

    overrides = [f"seed={job.seed}", f"data.seed={job.seed}", f"logging.run_dir={_quoted(out)}",
                 "logging.progress=false", f"logging.every_steps={LOG_EVERY}", "logging.loss_curve=false",
                 "checkpoint.every_epochs=0",
                 "checkpoint.every_steps=0", "checkpoint.keep_last=1", "checkpoint.resume=null",
                 "data.num_workers=0"]
    if job.epochs is not None:
        overrides.append(f"schedule.epochs={job.epochs}")
    return load_recipe(job.recipes.pretrain, list(job.recipes.pretrain_overrides) + overrides
                       + list(job.overrides))


def finetune_config(job: Job):
    """The data set's finetune recipe with this run's seed (head init, batch order)."""
    from mlcdist.config import load_recipe

    overrides = [f"eval.seed={job.seed}", f"eval.val_fraction={job.val_fraction}"]
    if job.finetune_epochs is not None:
        overrides.append(f"eval.epochs={job.finetune_epochs}")
    return load_recipe(job.recipes.finetune, list(job.recipes.finetune_overrides) + overrides)


def _hash(ident: dict) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def pretrain_fingerprint(job: Job, data_fp: str) -> str:
    """Hash of everything that decides the pretrained backbone: the job minus its finetune
    settings, the resolved pretraining recipe (minus the output folder) and the shards."""
    from mlcdist.config import to_dict

    fields = dataclasses.asdict(job) | {"run_dir": None, "finetune_epochs": None, "settings": None,
                                        "recipes": {"pretrain": job.recipes.pretrain,
                                                    "pretrain_overrides": job.recipes.pretrain_overrides}}
    return _hash({"job": fields, "pretrain": to_dict(pretrain_config(job, Path("RUN"))), "data": data_fp,
                  "version": 2})


def fingerprint(job: Job, pretrain_stamp: str) -> str:
    """Hash of everything that decides a run's numbers: the pretraining fingerprint
    (``pretrain_fingerprint``) plus the resolved finetune recipe; a stored result with another
    hash is recomputed (and only the finetune when the pretraining fingerprint still matches)."""
    from mlcdist.config import to_dict

    return _hash({"pretrain": pretrain_stamp, "finetune_epochs": job.finetune_epochs,
                  "finetune": to_dict(finetune_config(job).eval), "version": 2})


def epoch_losses(metrics_jsonl: Path) -> list[float]:
    """Mean training loss of every epoch: the ``loss_mean`` the trainer's ``"event": "epoch"``
    records carry (over all the epoch's micro-batches). Read right after a run trains: a reused
    pretraining keeps its curve in ``pretrain.json``."""
    epochs = {}
    for line in metrics_jsonl.read_text().splitlines():
        record = json.loads(line)
        if record.get("event") == "epoch":
            epochs[int(record["epoch"])] = float(record["loss_mean"])
    return [v for _, v in sorted(epochs.items())]


def pretrain(job: Job, data: VectorSet, train_rows: Tensor, out: Path, sink: EventSink) -> dict:
    """Train the method's MLP on the train rows (validation rows excluded); returns the loss
    curve summary. ``ln_candidates`` is the loss of uninformative embeddings (all similarities
    equal) for the contrastive methods: a loss that stays there learned nothing. The trainer's
    console is quiet: its lines would tear the progress display (the run's ``metrics.jsonl``
    and ``config.yaml`` keep everything they say)."""
    from mlcdist.data.info import DatasetInfo
    from mlcdist.data.memory import TensorPretrainLoader
    from mlcdist.train import Trainer

    cfg = pretrain_config(job, out)
    x, y = data.train_x[train_rows], data.train_y[train_rows]
    loader = TensorPretrainLoader(x, y, cfg.data.batch_size, cfg.augment.mask_ratio, job.seed,
                                  on_epoch=lambda: sink(("epoch", job.key)))
    sink(("start", job.key, "pretrain", cfg.schedule.epochs))
    info = DatasetInfo.for_tensors(data.name, data.class_names, x, y)
    trainer = Trainer(cfg, info=info, loader=loader, console=Console(quiet=True))
    summary = trainer.fit()
    curve = epoch_losses(out / "metrics.jsonl")
    if cfg.loss.supervised:  # bce, asl, zlpr
        uninformative = None
    elif cfg.loss.candidates == "batch":  # the rest of the batch
        uninformative = math.log(max(cfg.data.batch_size - 1, 1))
    else:  # own key, the batch's keys and the queue
        uninformative = math.log(cfg.data.batch_size + cfg.queue.size)
    return {"loss": cfg.loss.kind, "steps": summary["step"], "epochs": summary["epoch"],
            "epoch_loss": curve, "ln_candidates": uninformative}


def finetune_and_score(job: Job, data: VectorSet, train_rows: Tensor, val_rows: Tensor,
                       pretrain_dir: Path, out: Path, sink: EventSink) -> dict:
    """Backbone of the final pretraining checkpoint + a new linear layer, finetuned with the
    recipe's protocol (epoch selected on the validation rows); the test split is scored once."""
    from mlcdist.data.memory import TensorEvalLoader
    from mlcdist.eval.probe import FinetuneData, finetune
    from mlcdist.eval.report import build_report, write_report
    from mlcdist.models import build_backbone
    from mlcdist.models.state import load_state_strict
    from mlcdist.parallel import detect_strategy, make_accelerator

    cfg = finetune_config(job)
    model_cfg = pretrain_config(job, pretrain_dir).model
    torch.manual_seed(job.seed)
    backbone, width = build_backbone(dataclasses.replace(model_cfg, weights=None),
                                     in_dim=data.train_x.shape[1])
    weights = pretrain_dir / BACKBONE
    load_state_strict(backbone, torch.load(weights, map_location="cpu", weights_only=True), source=str(weights),
                      error=lambda why: StudyError(f"{weights}: does not fit the {model_cfg.arch} backbone "
                                                   f"({why}); delete the run folder or pass --fresh"))
    batch = cfg.eval.batch_size
    loaders = FinetuneData(
        train=TensorEvalLoader(data.train_x[train_rows], data.train_y[train_rows], batch,
                               shuffle_seed=job.seed, on_epoch=lambda: sink(("epoch", job.key))),
        val=TensorEvalLoader(data.train_x[val_rows], data.train_y[val_rows], 512),
        test=TensorEvalLoader(data.test_x, data.test_y, 512), val_mask=None)
    sink(("start", job.key, "finetune", cfg.eval.epochs))
    acc = make_accelerator("no")
    result = finetune(acc, detect_strategy(acc), backbone, width, len(data.class_names), loaders,
                      cfg.eval)
    report = build_report(
        result, cfg.eval, list(data.class_names), mode="finetune", checkpoint=str(weights),
        pretrain_data=data.name,
        datasets={"train": {"name": f"{data.name} train (minus validation)", "num_samples": len(train_rows)},
                  "val": {"name": f"{data.name} train (carved)", "num_samples": len(val_rows),
                          "carved_fraction": job.val_fraction, "seed": job.seed},
                  "test": {"name": f"{data.name} test", "num_samples": len(data.test_x)}},
        num_rows={"train": len(train_rows), "val": len(val_rows), "test": len(data.test_x)})
    return write_report(out, report, list(data.class_names), result.test_features,
                        result.test_targets, plots=False)


def subset(rows: Tensor, fraction: float, seed: int) -> Tensor:
    """Ids of ``fraction`` of the True rows of a mask (at least one), seeded, in dataset order:
    the study's low-data regime. The validation rows stay the same for every fraction."""
    ids = rows.nonzero().squeeze(1)
    if fraction >= 1.0:
        return ids
    g = torch.Generator().manual_seed(mix_seed(seed, 0x5EED))
    keep = max(1, round(fraction * len(ids)))
    return ids[torch.randperm(len(ids), generator=g)[:keep].sort().values]


def _stored(run_dir: Path, stamp: str) -> dict | None:
    """The run's stored ``result.json`` if it was made with these settings (``stamp``)."""
    stored = run_dir / "result.json"
    if stored.is_file():
        result = json.loads(stored.read_text())
        if result.get("fingerprint") == stamp:
            return result
    return None


def keep_backbone(pretrain_dir: Path, stamp: str, curve: dict, keep_checkpoints: bool) -> None:
    """The final checkpoint's query backbone as ``backbone.pt`` (what finetuning needs, a few MB)
    and ``pretrain.json`` (its fingerprint and loss curve); the checkpoint goes unless kept."""
    from mlcdist.eval.features import load_checkpoint

    torch.save(load_checkpoint(pretrain_dir).backbone_state, pretrain_dir / BACKBONE)
    if not keep_checkpoints:
        shutil.rmtree(pretrain_dir / "checkpoints")
    write_text(pretrain_dir / "pretrain.json", json.dumps({"fingerprint": stamp, **curve}, indent=2) + "\n")


def _stored_pretraining(pretrain_dir: Path, stamp: str) -> dict | None:
    stored = pretrain_dir / "pretrain.json"
    if stored.is_file() and (pretrain_dir / BACKBONE).is_file():
        summary = json.loads(stored.read_text())
        if summary.pop("fingerprint", None) == stamp:
            return summary
    return None


def run_job(job: Job, data: VectorSet, sink: EventSink, fresh: bool,
            keep_checkpoints: bool = False) -> dict:
    """Pretrain, finetune and score one run; reuse a stored result with the same fingerprint,
    and a stored pretraining (``pretrain/backbone.pt``) when only the finetune settings changed.

    The pretraining checkpoint (~7 MB: both encoders and Adam's moments) is deleted once its
    query backbone is saved, unless ``keep_checkpoints``."""
    from mlcdist.eval.features import carve_validation

    run_dir = Path(job.run_dir)
    pre_stamp = pretrain_fingerprint(job, data.fingerprint)
    stamp = fingerprint(job, pre_stamp)
    result = None if fresh else _stored(run_dir, stamp)
    if result is not None:
        sink(("done", job.key, 0.0))
        return result
    start = time.perf_counter()
    val_mask = carve_validation(len(data.train_x), job.val_fraction, job.seed)
    train_rows = subset(~val_mask, job.fraction, job.seed)
    val_rows = val_mask.nonzero().squeeze(1)
    curve = None if fresh else _stored_pretraining(run_dir / "pretrain", pre_stamp)
    if curve is None:
        shutil.rmtree(run_dir, ignore_errors=True)
        curve = pretrain(job, data, train_rows, run_dir / "pretrain", sink)
        keep_backbone(run_dir / "pretrain", pre_stamp, curve, keep_checkpoints)
    else:
        shutil.rmtree(run_dir / "finetune", ignore_errors=True)
    pretrain_s = time.perf_counter() - start
    report = finetune_and_score(job, data, train_rows, val_rows, run_dir / "pretrain",
                                run_dir / "finetune", sink)
    seconds = time.perf_counter() - start
    result = {"fingerprint": stamp, "dataset": job.dataset, "method": job.method, "seed": job.seed,
              "fraction": job.fraction, "train_rows": len(train_rows), "num_labels": len(data.class_names),
              "settings": json.loads(job.settings),
              "test": report["test"], "val": report["val"],
              "selected_epoch": report["selected_epoch"], "epochs_run": report["epochs_run"],
              "pretrain": curve, "seconds": {"pretrain": round(pretrain_s, 1),
                                             "total": round(seconds, 1)}}
    write_text(run_dir / "result.json", json.dumps(result, indent=2) + "\n")  # the reuse marker: never half
    sink(("done", job.key, seconds))
    return result
