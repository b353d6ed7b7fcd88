"""The pretraining loop: MulSupCon (or a variant, or a supervised baseline) over any backend.

The trainer only loops: the loader's ``to_device`` delivers on-device views, ``parallel``
wraps and steps the encoders for the backend, ``train.objective`` computes the loss,
``train.state`` saves and resumes the stateful parts. The run folder (``logging.run_dir``)
receives ``config.yaml`` (the resolved recipe), ``metrics.jsonl``, ``run_info.json``
(``train/runinfo.py``), ``loss_curve.png`` (``report/loss_curve.py``) and ``checkpoints/``;
``logging.report_to`` trackers get the metrics too (``train/tracking.py``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Optional

import torch
from rich.console import Console

from mlcdist.config import RecipeConfig, dump_yaml, to_dict
from mlcdist.data.batch import PretrainLoader
from mlcdist.data.info import DatasetInfo, load_dataset_info
from mlcdist.errors import NON_FINITE_EXIT, MlcdistError
from mlcdist.models import build_model
from mlcdist.models.ema import ema_update_
from mlcdist.optim import build_optimizer, set_lr
from mlcdist.parallel import (
    EmaViews, ModuleState, OptimizerState, backward_and_step, detect_strategy, make_accelerator,
    restart_accumulation, wrap,
)
from mlcdist.queue import LabelledKeyQueue
from mlcdist.schedules import lr_at, momentum_at
from mlcdist.seeds import step_seed
from mlcdist.train.collapse import CollapseGuard, collapse_warning, mean_pairwise_cosine, uniform_loss
from mlcdist.train.health import checkpoint_hint, first_non_finite
from mlcdist.train.objective import contrastive_loss, supervised_loss
from mlcdist.train.preempt import StopRequest
from mlcdist.train import runinfo
from mlcdist.train.runlog import RunLog
from mlcdist.train.skips import check_skipped, job_counts, loader_skipped, skip_record
from mlcdist.train.state import RunState, ScalerState, TrainState
from mlcdist.train.tracking import Tracking, check_trackers


class NonFiniteLoss(MlcdistError):
    """The loss became NaN/inf; nothing is saved (exit code 3: lower the lr and resume)."""

    exit_code = NON_FINITE_EXIT


class NonFiniteState(NonFiniteLoss):
    """A parameter or buffer (e.g. BatchNorm ``running_var``) holds NaN/inf; nothing is saved."""


class Trainer:
    """Owns the model, key encoder, queue, optimizer and counters of one pretraining run."""

    def __init__(self, cfg: RecipeConfig, *, info: Optional[DatasetInfo] = None,
                 loader: Optional[PretrainLoader] = None, console: Optional[Console] = None,
                 invocation: Optional[dict[str, Any]] = None):
        """``info`` and ``loader`` default to the recipe's train shards; tests inject their own.
        ``console`` (default: stderr) receives the run's messages and progress. ``invocation``
        (``{"args", "recipe", "overrides"}``: the train command's; default: this process's
        command line) goes to run_info.json."""
        self.cfg = cfg
        self.console = console
        self.invocation = invocation or {"args": None, "recipe": None, "overrides": []}
        check_trackers(cfg.logging.report_to)  # a missing tracker package: one error, at start-up
        self.acc = make_accelerator(cfg.precision.mixed, cfg.optim.grad_accum, cfg.parallel.timeout_minutes,
                                    log_with=cfg.logging.report_to, run_dir=Path(cfg.logging.run_dir))
        self.strategy = detect_strategy(self.acc)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        if info is None and not cfg.data.train:
            raise MlcdistError("data.train is empty; set it to a shard folder holding dataset.json "
                               "(python -m tools.make_shards writes one), e.g. data.train=shards/coco/train")
        self.info = info or load_dataset_info(cfg.data.train)
        self.contrastive = not cfg.loss.supervised
        model = build_model(cfg.model, num_classes=self.info.num_classes, in_dim=self.info.feature_dim,
                            kind="contrastive" if self.contrastive else "supervised",
                            image_size=cfg.augment.image_size, prototypes=cfg.loss.prototypes)
        self.loader = loader if loader is not None else self._shard_loader()
        self.steps_per_epoch = len(self.loader) // cfg.optim.grad_accum
        if self.steps_per_epoch == 0:
            raise MlcdistError(
                f"data.train: {self.info.num_samples} samples give no full step of "
                f"{cfg.data.batch_size} x {self.world} processes x {cfg.optim.grad_accum} accumulation; "
                "lower data.batch_size")
        self.total_steps = cfg.schedule.max_steps or cfg.schedule.epochs * self.steps_per_epoch
        self.warmup_steps = int(cfg.schedule.warmup_epochs * self.steps_per_epoch)
        query = model.query if self.contrastive else model
        key = model.key if self.contrastive else torch.nn.Identity()
        self.query, self.key, self.optimizer = wrap(
            self.acc, self.strategy, query, key, lambda m: build_optimizer(cfg.optim, m),
            cfg.data.batch_size, cfg.optim.grad_clip, sync_bn=cfg.model.key_bn == "sync",
            channels_last=cfg.model.channels_last, compile=cfg.model.compile)
        self._ema_views = EmaViews(self.acc, self.strategy, self.query, self.key) if self.contrastive else None
        self.queue = LabelledKeyQueue(cfg.queue.size, cfg.model.head_dims[-1], self.info.num_classes,
                                      device=self.acc.device)
        self.progress = TrainState()
        self.run_dir = Path(cfg.logging.run_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        components = {"model": ModuleState(self.acc, self.strategy, self.query),
                      **({"key": ModuleState(self.acc, self.strategy, self.key)} if self.contrastive else {}),
                      "optimizer": OptimizerState(self.strategy, self.query, self.optimizer),
                      "queue": self.queue, "scaler": ScalerState(self.acc), "train": self.progress}
        self.state = RunState(self.ckpt_root, components, rank=self.rank, world=self.world,
                              barrier=self.acc.wait_for_everyone, keep_last=cfg.checkpoint.keep_last)
        self.collapse = CollapseGuard()
        self._last_out = None  # the latest StepLoss, read (host sync) on logging steps only

    def _shard_loader(self) -> PretrainLoader:
        from mlcdist.data.cpus import cap_num_workers
        from mlcdist.data.loaders import make_loader
        from mlcdist.data.split import pretraining_hold_out

        self.cfg.data.num_workers = cap_num_workers(self.cfg.data.num_workers)  # recorded in config.yaml
        return make_loader(self.cfg.data.train, self.cfg.data, self.cfg.augment, mode="pretrain",
                           rank=self.rank, world_size=self.world,
                           hold_out=pretraining_hold_out(to_dict(self.cfg)))

    # The counters live in ``self.progress`` (a stateful component); these read them.
    step = property(lambda self: self.progress.step)
    epoch = property(lambda self: self.progress.epoch)
    micro = property(lambda self: self.progress.micro)

    # -- checkpoints --------------------------------------------------------------------------

    def save(self) -> None:
        self._check_state()  # never publish a checkpoint holding NaN/inf tensors
        if getattr(self, "_last", None) is not None:
            self.progress.loss = float(self._last)  # what a restart of a finished run reports
        self.state.save(self.step, {"config": dump_yaml(self.cfg), "num_classes": self.info.num_classes,
                                    "feature_dim": self.info.feature_dim,
                                    "class_names": list(self.info.class_names), "dataset": self.info.name})

    def resume(self, path: Path) -> None:
        self.state.load(path)

    # -- the loop -----------------------------------------------------------------------------

    def train_step(self, batch: dict) -> torch.Tensor:
        cfg, progress = self.cfg, self.progress
        batch = self.loader.to_device(batch, self.acc.device, step=progress.step, micro=progress.micro,
                                      channels_last=cfg.model.channels_last)
        views, labels = batch["views"], batch["labels"]
        with self.acc.accumulate(self.query):
            set_lr(self.optimizer, lr_at(progress.step, self.total_steps, cfg.optim.lr, self.warmup_steps,
                                         cfg.schedule.kind, cfg.schedule.min_lr))
            with self.acc.autocast():
                if self.contrastive:
                    out = contrastive_loss(self.query, self.key, self.queue, views, labels, cfg.loss,
                                           shuffle_seed=step_seed(cfg.seed, progress.step, progress.micro),
                                           shuffle_bn=cfg.model.key_bn == "shuffle")
                else:
                    out = supervised_loss(self.query, views, labels, cfg.loss)
            backward_and_step(self.acc, self.strategy, self.query, self.optimizer, out.loss,
                              cfg.optim.grad_clip)
        if out.keys is not None:  # MoCo setting (in-batch: no keys, the queue stays empty)
            self.queue.enqueue_(out.keys, out.key_labels)
        if self.acc.sync_gradients:
            if self.contrastive:
                m = momentum_at(progress.step, self.total_steps, cfg.model.momentum,
                                cfg.model.momentum_schedule)
                with self._ema_views() as (k_params, q_params):
                    ema_update_(k_params, q_params, m)
            progress.step += 1
        self._last_out = out
        return out.value

    def fit(self, stop_at_step: Optional[int] = None, stop: Optional[StopRequest] = None) -> dict:
        """Train to ``schedule`` end; ``stop_at_step`` simulates a preemption (checkpoint, stop);
        ``stop`` (SIGTERM/SIGINT, ``mlcdist/train/preempt.py``) ends after the step all ranks agree on,
        with a checkpoint; the summary's ``interrupted`` is then that signal's number (else 0)."""
        cfg = self.cfg
        self._stop, self.interrupted = stop, 0
        last_step = min(self.total_steps, stop_at_step or self.total_steps)
        resume_from = self.state.latest(cfg.checkpoint.resume)
        if resume_from is not None:
            self.resume(resume_from)
        self._bad = torch.zeros((), dtype=torch.bool, device=self.acc.device)
        self._last = torch.tensor(self.progress.loss, device=self.acc.device)  # a finished run's loss
        if self.step >= self.total_steps:  # nothing to train: report the run, touch no file
            return self._summary(complete=True, wall=0.0, samples=0)
        log = RunLog(self.run_dir, cfg, main=self.acc.is_main_process, total_steps=self.total_steps,
                     progress=cfg.logging.progress, start_step=self.step, console=self.console)
        for warning in self.state.warnings:
            log.message(f"[bold yellow]warning:[/] {warning}")
        if resume_from is not None:
            log.message(f"resumed from {resume_from} at step {self.step} (epoch {self.epoch})")
        log.message(f"[bold]mlcdist[/] {self.strategy.value} x{self.world}, {self.info.name}: "
                    f"{self.info.num_samples} samples{self._held_out_note()}, {self.steps_per_epoch} steps/epoch, "
                    f"{self.total_steps} steps, run folder {self.run_dir}")
        self._start_session(log)
        status = "failed"
        try:
            while self.step < last_step and not self.interrupted:
                skipped, micro = loader_skipped(self.loader), self.micro
                self._run_epoch(log, last_step)
                self._report_skipped(log, loader_skipped(self.loader) - skipped, self.micro - micro)
                if self.micro >= self.steps_per_epoch * cfg.optim.grad_accum:  # epoch complete
                    self.progress.epoch += 1
                    self.progress.micro = 0
                    if cfg.checkpoint.every_epochs and self.epoch % cfg.checkpoint.every_epochs == 0:
                        self._check_finite()
                        self.save()
            self._check_finite()
            if not self.state.has(self.step):
                self.save()
            status = "interrupted" if self.interrupted else "stopped" if self.step < self.total_steps else "complete"
        finally:
            summary = self._end_session(log, status)
        return summary

    def _run_epoch(self, log: RunLog, last_step: int) -> None:
        """Micro-batches of the current epoch from ``self.micro`` on, until the epoch's last
        whole accumulation cycle or ``last_step``; the loss is read only when logging."""
        cfg = self.cfg
        micro_per_epoch = self.steps_per_epoch * cfg.optim.grad_accum
        self.loader.set_epoch(self.epoch, skip_batches=self.micro)
        restart_accumulation(self.acc)  # checkpoints sit on cycle ends, so epochs start one
        window_start, window_samples, self._wait = time.perf_counter(), 0, 0.0
        self._epoch_loss, self._epoch_micro = torch.zeros((), device=self.acc.device), 0
        for batch in self._timed(self.loader):
            if self.micro >= micro_per_epoch:
                break
            value = self.train_step(batch)
            self.progress.micro += 1
            self._epoch_loss += value.detach()  # on the device: read once, at the epoch's end
            self._epoch_micro += 1
            self._bad |= ~torch.isfinite(value)
            self._last = value
            window_samples += cfg.data.batch_size * self.world
            self._samples += cfg.data.batch_size * self.world
            if not self.acc.sync_gradients:
                continue
            log.advance(self.step)
            if self.step % cfg.logging.every_steps == 0 or self.step == last_step:
                self._check_finite()
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                record = self._record(self._last, window_samples / elapsed)
                record["data_wait_share"] = round(min(self._wait / elapsed, 1.0), 4)
                self._guard_collapse(log, record)
                log.log(record)
                self.tracking.log(record)
                window_start, window_samples, self._wait = time.perf_counter(), 0, 0.0
            if cfg.checkpoint.every_steps and self.step % cfg.checkpoint.every_steps == 0:
                self._check_finite()
                self.save()
            if self._stop is not None and self.step < self.total_steps:  # a finished run is not interrupted
                self.interrupted = self._stop.agreed()  # every step, all ranks (see preempt.py)
            if self.step >= last_step or self.interrupted:
                return

    def _report_skipped(self, log: RunLog, skipped: int, micro_batches: int) -> None:
        """The epoch pass's corrupt/missing samples over all ranks: a line, a metrics record,
        and a stop above ``data.max_skipped_fraction`` (mlcdist/train/skips.py)."""
        skipped, samples = job_counts(skipped, micro_batches * self.cfg.data.batch_size, self.acc.device)
        record = skip_record(self.epoch, self.step, skipped, samples)
        if self._epoch_micro:  # every micro-batch of this pass, not only the logged ones
            record["loss_mean"] = float(self._epoch_loss) / self._epoch_micro
        log.log(record, line=False)
        log.message(f"epoch {self.epoch}: {skipped} of {samples} samples skipped (corrupt or missing)")
        check_skipped(record, self.cfg.data.max_skipped_fraction, checkpoint_hint(self.ckpt_root))

    def _timed(self, loader: PretrainLoader):
        """The loader's batches; the host time spent waiting for each adds to ``self._wait``."""
        batches = iter(loader)
        try:
            while True:
                start = time.perf_counter()
                try:
                    batch = next(batches)
                except StopIteration:
                    return
                self._wait += time.perf_counter() - start
                yield batch
        finally:  # an epoch left early (break, error) shuts its loader workers down now
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    def _held(self):
        """The loader's held-out rows (``data/split.py``), None when it holds none out."""
        return getattr(getattr(self.loader, "stream", None), "held", None)

    def _held_out_note(self) -> str:
        held = self._held()
        if held is None:
            return ""
        return (f" ({held.count} held out as mlcdist.eval's validation carve: eval.val_fraction="
                f"{self.cfg.eval.val_fraction}, eval.seed={self.cfg.eval.seed}; data.hold_out_val=false trains on all)")

    # -- the run record -----------------------------------------------------------------------

    def _start_session(self, log: RunLog) -> None:
        """run_info.json (main process), the trackers, the clocks of the summary."""
        self._t0, self._samples, self._wait = time.perf_counter(), 0, 0.0
        self.tracking = Tracking(self.acc, self.cfg.logging.report_to, self.run_dir, to_dict(self.cfg))
        if self.acc.is_main_process:
            record = runinfo.start_record(
                args=self.invocation.get("args"), recipe=self.invocation.get("recipe"),
                overrides=self.invocation.get("overrides", []), world=self.world,
                backend=self.strategy.value, start_step=self.step)
            held = self._held()
            record["held_out"] = None if held is None else {
                "samples": held.count, "of": self.info.num_samples, "val_fraction": self.cfg.eval.val_fraction,
                "seed": self.cfg.eval.seed}
            self._info = runinfo.begin(self.run_dir, record)

    def _end_session(self, log: RunLog, status: str) -> dict:
        """Close the trackers and the log, draw loss_curve.png, finish run_info.json."""
        summary = self._summary(complete=False, wall=time.perf_counter() - self._t0, samples=self._samples)
        self.tracking.close()
        log.close()
        if self.acc.is_main_process:
            if self.cfg.logging.loss_curve:
                self._draw_loss_curve(log)
            self._info.update(end_time=runinfo.iso_time(time.time()), status=status,
                              summary={k: v for k, v in summary.items() if k != "interrupted"})
            runinfo.write_run_info(self.run_dir, self._info)
        return summary

    def _draw_loss_curve(self, log: RunLog) -> None:
        from mlcdist.report.loss_curve import plot_loss_curve

        try:
            plot_loss_curve(self.run_dir)
        except Exception as err:  # a plot never costs the run; say why there is none
            log.message(f"[yellow]no loss_curve.png: {type(err).__name__}: {err}[/]")

    def _summary(self, *, complete: bool, wall: float, samples: int) -> dict:
        loss = float(self._last)
        if complete and math.isnan(loss):  # a checkpoint from before the loss was kept in it
            logged = runinfo.logged_loss(self.run_dir, self.step)
            loss = float("nan") if logged is None else logged
        peak, kind = runinfo.peak_memory()
        return {"step": self.step, "total_steps": self.total_steps, "epoch": self.epoch,
                "loss": loss, "final_loss": None if math.isnan(loss) else loss,
                "interrupted": self.interrupted if not complete else 0, "already_complete": complete,
                "wall_s": round(wall, 3), "samples_per_s": round(samples / wall, 2) if wall > 0 else 0.0,
                "peak_mem_gib": round(peak, 3), "peak_mem_kind": kind}

    def _check_finite(self) -> None:
        if bool(self._bad):
            raise NonFiniteLoss(
                f"non-finite loss ({float(self._last)}) before step {self.step}; stopping, "
                f"{checkpoint_hint(self.ckpt_root)} (lower optim.lr, enable optim.grad_clip or "
                "use precision.mixed=bf16 instead of fp16)")
        self._check_state()

    def _check_state(self) -> None:
        """Stop (on every rank) when a parameter or buffer holds NaN/inf; logging/checkpoint steps only."""
        name = first_non_finite({"query": self.query, "key": self.key})
        if name is not None:
            raise NonFiniteState(
                f"non-finite values in {name} at step {self.step} (the loss can stay finite while the "
                f"model collapses); stopping without saving, {checkpoint_hint(self.ckpt_root)} "
                "(lower optim.lr, enable optim.grad_clip)")

    def _guard_collapse(self, log: RunLog, record: dict) -> None:
        """Warn loudly, once per run, when the query embeddings stay collapsed (mlcdist/train/collapse.py);
        the record of that window gets ``collapse_warning: true``."""
        if "query_cosine" in record and self.collapse.update(record["query_cosine"]):
            record["collapse_warning"] = True
            log.message("[bold red]" + collapse_warning(self.step, record["query_cosine"], record["loss"],
                                                        record["ln_candidates"], self.collapse.windows) + "[/]")

    def _record(self, value: torch.Tensor, samples_per_s: float) -> dict:
        record = {"step": self.step, "epoch": self.epoch, "loss": float(value),
                  "lr": self.optimizer.param_groups[0]["lr"], "samples_per_s": round(samples_per_s, 2)}
        if self.contrastive:  # the momentum of the last EMA update (step - 1)
            record["momentum"] = momentum_at(self.step - 1, self.total_steps, self.cfg.model.momentum,
                                             self.cfg.model.momentum_schedule)
            record["queue_fill"] = float(self.queue.fill_fraction())
            out = self._last_out
            if out is not None and out.anchors is not None and out.anchors.shape[0] >= 2:
                record["query_cosine"] = round(float(mean_pairwise_cosine(out.anchors)), 4)
                record["ln_candidates"] = round(uniform_loss(int(out.num_candidates)), 4)
        if torch.cuda.is_available():
            record["gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        return record
