"""Pretrain an encoder with MulSupCon (or a variant, or the BCE baseline).

    python -m mlcdist.train RECIPE [dotted.key=value ...]
    accelerate launch --config_file recipes/accelerate/ddp.yaml -m mlcdist.train RECIPE [...]

The backend (DDP, FSDP2, DeepSpeed ZeRO-1/2/3) comes from the Accelerate config; see
``mlcdist/parallel.py``. The run folder (``logging.run_dir``) receives ``config.yaml`` (the
resolved recipe), ``metrics.jsonl`` and ``checkpoints/``; an interrupted run resumes from the
newest checkpoint when started again with the same recipe (``checkpoint.resume: auto``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from rich.console import Console

from mlcdist import checkpoint as ckpt
from mlcdist.collapse import CollapseGuard, collapse_warning, mean_pairwise_cosine, uniform_loss
from mlcdist.config import ConfigError, RecipeConfig, dump_yaml, load_recipe
from mlcdist.data.info import DatasetInfo, load_dataset_info
from mlcdist.health import checkpoint_hint, first_non_finite
from mlcdist.models import build_model
from mlcdist.models.ema import ema_update_
from mlcdist.optim import build_optimizer, set_lr
from mlcdist.preempt import StopRequest, exit_code
from mlcdist.parallel import (
    Strategy,
    backward_and_step,
    detect_strategy,
    ema_views,
    full_optimizer_state,
    full_state_dict,
    load_full_state_dict,
    load_optimizer_state,
    make_accelerator,
    wrap,
)
from mlcdist.queue import LabelledKeyQueue
from mlcdist.runlog import RunLog
from mlcdist.schedules import lr_at, momentum_at
from mlcdist.step import contrastive_loss, supervised_loss


class NonFiniteLoss(RuntimeError):
    pass


class NonFiniteState(NonFiniteLoss):
    """A parameter or buffer (e.g. BatchNorm ``running_var``) holds NaN/inf; nothing is saved."""


class Trainer:
    """Owns the model, key encoder, queue, optimizer and counters of one pretraining run."""

    def __init__(self, cfg: RecipeConfig, *, info: Optional[DatasetInfo] = None, loader=None,
                 console: Optional[Console] = None):
        """``info`` and ``loader`` default to the recipe's train shards; tests inject their own.
        ``console`` (default: stderr) receives the run's messages and progress."""
        self.cfg = cfg
        self.console = console
        self.acc = make_accelerator(cfg.precision.mixed, cfg.optim.grad_accum)
        self.strategy = detect_strategy(self.acc)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.info = info or load_dataset_info(cfg.data.train)
        self.contrastive = cfg.loss.kind != "bce"
        model = build_model(cfg.model, num_classes=self.info.num_classes, in_dim=self.info.feature_dim,
                            kind="contrastive" if self.contrastive else "supervised",
                            image_size=cfg.augment.image_size)
        if loader is None:
            from mlcdist.data.cpus import cap_num_workers
            from mlcdist.data.pipeline import make_loader

            cfg.data.num_workers = cap_num_workers(cfg.data.num_workers)  # recorded in config.yaml
            loader = make_loader(cfg.data.train, cfg.data, cfg.augment, mode="pretrain",
                                 rank=self.rank, world_size=self.world)
        self.loader = loader
        self.steps_per_epoch = len(self.loader) // cfg.optim.grad_accum
        if self.steps_per_epoch == 0:
            raise ValueError(
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
        self.queue = LabelledKeyQueue(cfg.queue.size, cfg.model.head_dims[-1], self.info.num_classes,
                                      device=self.acc.device)
        self.step = 0  # optimizer steps taken
        self.micro = 0  # micro-batches consumed in the current epoch
        self.epoch = 0
        self.run_dir = Path(cfg.logging.run_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.collapse = CollapseGuard()
        self._last_out = None  # the latest StepLoss, read (host sync) on logging steps only

    # -- checkpoints --------------------------------------------------------------------------

    def save(self) -> None:
        self._check_state()  # never publish a checkpoint holding NaN/inf tensors
        model_state = full_state_dict(self.acc, self.strategy, self.query)
        key_state = full_state_dict(self.acc, self.strategy, self.key) if self.contrastive else {}
        optim_state = full_optimizer_state(self.strategy, self.query, self.optimizer)
        if self.acc.is_main_process:
            ckpt.staging_dir(self.ckpt_root, self.step)
        self.acc.wait_for_everyone()
        tmp = ckpt.staging_path(self.ckpt_root, self.step)
        if self.strategy == Strategy.DEEPSPEED:
            self.query.save_checkpoint(str(tmp / "deepspeed"), tag="engine")
        ckpt.save_file(ckpt.rng_state(), tmp / f"rng-rank{self.rank}.pt")
        if self.acc.is_main_process:
            scaler = self.acc.scaler.state_dict() if self.acc.scaler is not None else {}
            ckpt.save_file({
                "model": model_state, "key": key_state, "optimizer": optim_state,
                "queue": self.queue.state_dict(), "scaler": scaler,
                "counters": {"step": self.step, "epoch": self.epoch, "micro": self.micro},
                "world_size": self.world, "config": dump_yaml(self.cfg),
                "num_classes": self.info.num_classes, "feature_dim": self.info.feature_dim,
                "arch": self.cfg.model.arch, "loss": self.cfg.loss.kind,
            }, tmp / "state.pt")
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            ckpt.publish(self.ckpt_root, self.step, self.cfg.checkpoint.keep_last)
        self.acc.wait_for_everyone()

    def resume(self, path: Path) -> None:
        state = ckpt.load_file(path / "state.pt")
        if state["world_size"] != self.world:
            raise ValueError(f"{path}: saved with {state['world_size']} processes, resuming with "
                             f"{self.world}; the data order would differ, so exact resume needs the same count")
        load_full_state_dict(self.strategy, self.query, state["model"])
        if self.contrastive:
            load_full_state_dict(self.strategy, self.key, state["key"])
        if self.strategy == Strategy.DEEPSPEED:
            self.query.load_checkpoint(str(path / "deepspeed"), tag="engine")
        else:
            load_optimizer_state(self.strategy, self.query, self.optimizer, state["optimizer"])
        self.queue.load_state_dict(state["queue"])
        if self.acc.scaler is not None and state["scaler"]:
            self.acc.scaler.load_state_dict(state["scaler"])
        counters = state["counters"]
        self.step, self.epoch, self.micro = counters["step"], counters["epoch"], counters["micro"]
        rng_file = path / f"rng-rank{self.rank}.pt"
        if rng_file.exists():
            ckpt.set_rng_state(ckpt.load_file(rng_file))

    # -- the loop -----------------------------------------------------------------------------

    def train_step(self, batch: dict) -> torch.Tensor:
        cfg = self.cfg
        device = self.acc.device
        if cfg.augment.device == "gpu" and "jpeg" in batch:  # raw JPEGs: decode + views on device
            from mlcdist.data.gpu_augment import device_views
            from mlcdist.data.plan import mix_seed

            batch = device_views(batch, cfg.augment, device,
                                 mix_seed(cfg.data.seed, self.epoch, self.step, self.micro, self.rank))
        views = tuple(v.to(device, non_blocking=True) for v in batch["views"])
        if cfg.model.channels_last and views[0].dim() == 4:
            views = tuple(v.contiguous(memory_format=torch.channels_last) for v in views)
        labels = batch["labels"].to(device, non_blocking=True)
        with self.acc.accumulate(self.query):
            set_lr(self.optimizer, lr_at(self.step, self.total_steps, cfg.optim.lr, self.warmup_steps,
                                         cfg.schedule.kind, cfg.schedule.min_lr))
            with self.acc.autocast():
                if self.contrastive:
                    out = contrastive_loss(self.query, self.key, self.queue, views, labels, cfg.loss,
                                           shuffle_seed=cfg.seed * 1_000_003 + self.step * 7919 + self.micro,
                                           shuffle_bn=cfg.model.key_bn == "shuffle")
                else:
                    out = supervised_loss(self.query, views, labels)
            backward_and_step(self.acc, self.strategy, self.query, self.optimizer, out.loss,
                              cfg.optim.grad_clip)
        if self.acc.sync_gradients:
            if self.contrastive:
                m = momentum_at(self.step, self.total_steps, cfg.model.momentum, cfg.model.momentum_schedule)
                with ema_views(self.acc, self.strategy, self.query, self.key) as (k_params, q_params):
                    ema_update_(k_params, q_params, m)
            self.step += 1
        self._last_out = out
        return out.value

    def fit(self, stop_at_step: Optional[int] = None, stop: Optional[StopRequest] = None) -> dict:
        """Train to ``schedule`` end; ``stop_at_step`` simulates a preemption (checkpoint, stop);
        ``stop`` (SIGTERM/SIGINT, ``mlcdist/preempt.py``) ends after the step all ranks agree on,
        with a checkpoint; the summary's ``interrupted`` is then that signal's number (else 0)."""
        cfg = self.cfg
        self._stop, self.interrupted = stop, 0
        last_step = min(self.total_steps, stop_at_step or self.total_steps)
        resume_from = ckpt.find_resume(self.ckpt_root, cfg.checkpoint.resume)
        if resume_from is not None:
            self.resume(resume_from)
        log = RunLog(self.run_dir, cfg, main=self.acc.is_main_process, total_steps=self.total_steps,
                     progress=cfg.logging.progress, start_step=self.step, console=self.console)
        if resume_from is not None:
            log.message(f"resumed from {resume_from} at step {self.step} (epoch {self.epoch})")
        log.message(f"[bold]mlcdist[/] {self.strategy.value} x{self.world}, {self.info.name}: "
                    f"{self.info.num_samples} samples, {self.steps_per_epoch} steps/epoch, "
                    f"{self.total_steps} steps, run folder {self.run_dir}")
        self._bad = torch.zeros((), dtype=torch.bool, device=self.acc.device)
        self._last = torch.zeros((), device=self.acc.device)
        try:
            while self.step < last_step and not self.interrupted:
                self._run_epoch(log, last_step)
                if self.micro >= self.steps_per_epoch * cfg.optim.grad_accum:  # epoch complete
                    self.epoch += 1
                    self.micro = 0
                    if cfg.checkpoint.every_epochs and self.epoch % cfg.checkpoint.every_epochs == 0:
                        self._check_finite()
                        self.save()
            self._check_finite()
            if not (self.ckpt_root / ckpt.checkpoint_name(self.step)).exists():
                self.save()
        finally:
            log.close()
        return {"step": self.step, "epoch": self.epoch, "loss": float(self._last),
                "interrupted": self.interrupted}

    def _run_epoch(self, log: RunLog, last_step: int) -> None:
        """Micro-batches of the current epoch from ``self.micro`` on, until the epoch's last
        whole accumulation cycle or ``last_step``; the loss is read only when logging."""
        cfg = self.cfg
        micro_per_epoch = self.steps_per_epoch * cfg.optim.grad_accum
        self.loader.set_epoch(self.epoch, skip_batches=self.micro)
        self.acc.step = 0  # accumulation cycles restart with the epoch (checkpoints sit on cycle ends)
        window_start, window_samples = time.perf_counter(), 0
        for batch in self.loader:
            if self.micro >= micro_per_epoch:
                break
            value = self.train_step(batch)
            self.micro += 1
            self._bad |= ~torch.isfinite(value)
            self._last = value
            window_samples += cfg.data.batch_size * self.world
            if not self.acc.sync_gradients:
                continue
            log.advance(self.step)
            if self.step % cfg.logging.every_steps == 0 or self.step == last_step:
                self._check_finite()
                elapsed = time.perf_counter() - window_start
                record = self._record(self._last, window_samples / max(elapsed, 1e-9))
                self._guard_collapse(log, record)
                log.log(record)
                window_start, window_samples = time.perf_counter(), 0
            if cfg.checkpoint.every_steps and self.step % cfg.checkpoint.every_steps == 0:
                self._check_finite()
                self.save()
            if self._stop is not None and self.step < self.total_steps:  # a finished run is not interrupted
                self.interrupted = self._stop.agreed()  # every step, all ranks (see preempt.py)
            if self.step >= last_step or self.interrupted:
                return

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
        """Warn loudly, once per run, when the query embeddings stay collapsed (mlcdist/collapse.py);
        the record of that window gets ``collapse_warning: true``."""
        if "query_cosine" in record and self.collapse.update(record["query_cosine"]):
            record["collapse_warning"] = True
            log.message("[bold red]" + collapse_warning(self.step, record["query_cosine"], record["loss"],
                                                        record["ln_candidates"], self.collapse.windows) + "[/]")

    def _record(self, value: torch.Tensor, samples_per_s: float) -> dict:
        record = {"step": self.step, "epoch": self.epoch, "loss": float(value),
                  "lr": self.optimizer.param_groups[0]["lr"], "samples_per_s": round(samples_per_s, 2)}
        if self.contrastive:
            record["queue_fill"] = float(self.queue.fill_fraction())
            out = self._last_out
            if out is not None and out.anchors is not None and out.anchors.shape[0] >= 2:
                record["query_cosine"] = round(float(mean_pairwise_cosine(out.anchors)), 4)
                record["ln_candidates"] = round(uniform_loss(int(out.num_candidates)), 4)
        if torch.cuda.is_available():
            record["gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        return record


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mlcdist.train",
        description="Pretrain an encoder with multi-label supervised contrastive learning (MulSupCon).",
        epilog="examples:\n"
               "  python -m mlcdist.train recipes/demo.yaml\n"
               "  python -m mlcdist.train recipes/yeast.yaml optim.lr=0.001 data.batch_size=64\n"
               "  accelerate launch --config_file recipes/accelerate/ddp.yaml -m mlcdist.train recipes/coco.yaml\n"
               "  python -m mlcdist.train recipes/coco.yaml --print-config",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="YAML recipe (may extend a base recipe with `base:`)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides, e.g. optim.lr=0.05 data.batch_size=128")
    parser.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    return parser.parse_intermixed_args(argv)  # overrides may come before or after --print-config


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_recipe(args.recipe, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    with StopRequest() as stop:  # handlers stay installed until the process reports and returns
        try:
            trainer = Trainer(cfg)
        except ConfigError as err:  # a setting this machine or backend cannot run, before step 1
            print(f"error: {err}", file=sys.stderr)
            return 2
        try:
            summary = trainer.fit(stop=stop)
        except NonFiniteLoss as err:
            print(f"error: {err}", file=sys.stderr)
            return 3
        finally:
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
        if summary["interrupted"]:
            if trainer.acc.is_main_process:
                print(f"interrupted at step {summary['step']}; checkpoint written; "
                      "run the same command to resume", file=sys.stderr)
            return exit_code(summary["interrupted"])
    if trainer.acc.is_main_process:
        print(f"done: step {summary['step']}, loss {summary['loss']:.4f}, run folder {cfg.logging.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
