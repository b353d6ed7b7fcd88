"""One evaluation, start to end: encoder, features or finetune, report.

:func:`run_eval` resolves the recipe (``eval/recipe.py``), builds the encoder
(:func:`build_encoder`), trains the linear probe on cached features (:func:`linear`) or
finetunes (:func:`finetune_run`), then writes ``metrics.json``, ``metrics.md`` and plots
(:func:`write_outputs`).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from mlcdist.config import RecipeConfig, dump_yaml
from mlcdist.data.info import DatasetInfo
from mlcdist.eval.features import (
    Checkpoint, EvalInputError, FeatureSet, cache_key, cached_features, carve_validation,
    extract_features, load_backbone_state, load_checkpoint,
)
from mlcdist.eval.probe import FinetuneData, ProbeResult, check_select_metric, finetune, train_linear_probe
from mlcdist.eval.recipe import (
    carve_seen_in_pretraining, check_compatible, data_warnings, flag_overrides, output_dir, resolve_recipe,
    split_infos,
)
from mlcdist.eval.report import build_report, rich_table, write_report


FINETUNED_FILE = "finetuned.pt"


@dataclasses.dataclass
class EvalJob:
    """What one evaluation works on (built by :func:`run_eval`, read by the steps below)."""

    cfg: RecipeConfig
    ckpt: Optional[Checkpoint]
    infos: dict[str, DatasetInfo]
    random_init: bool
    out: Path
    acc: object
    val_mask: Optional[torch.Tensor]
    log: Callable[[str], None]
    warnings: list[str] = dataclasses.field(default_factory=list)  # the data's (recipe.data_warnings)
    val_seen_in_pretraining: int = 0  # validation rows pretraining trained on (recipe.carve_seen_in_pretraining)

    def loader(self, split: str):
        from mlcdist.data.cpus import cap_num_workers
        from mlcdist.data.loaders import make_loader

        cfg = self.cfg
        data_cfg = dataclasses.replace(cfg.data, batch_size=cfg.eval.batch_size,
                                       num_workers=cap_num_workers(cfg.data.num_workers))
        return make_loader(getattr(cfg.data, split), data_cfg, cfg.augment, mode="eval",
                           rank=self.acc.process_index, world_size=self.acc.num_processes)


def build_encoder(job: EvalJob) -> tuple[nn.Module, int]:
    """The backbone (checkpoint weights, or the pretraining run's random initial ones) on the
    device, and its feature width."""
    from mlcdist.models import build_backbone

    cfg = job.cfg
    torch.manual_seed(cfg.seed)  # a random encoder gets the pretraining run's initial weights
    backbone, width = build_backbone(dataclasses.replace(cfg.model, weights=None),
                                     in_dim=job.infos["train"].feature_dim, image_size=cfg.augment.image_size)
    if not job.random_init:
        load_backbone_state(backbone, job.ckpt, cfg.model.arch)
    return backbone.to(job.acc.device), width


def extract_all(job: EvalJob, backbone: nn.Module, use_cache: bool) -> dict[str, FeatureSet]:
    """Frozen features of every split, from the cache when the key matches."""
    cfg, device = job.cfg, job.acc.device
    settings = {"image_size": cfg.augment.image_size, "mixed": cfg.precision.mixed,
                "random_seed": cfg.seed if job.random_init else None, "model": dataclasses.asdict(cfg.model)}
    features: dict[str, FeatureSet] = {}
    for split, info in job.infos.items():
        # dataset.json (shard hashes included) in the key: re-converted shards miss the cache
        key = cache_key(None if job.random_init else job.ckpt.path, getattr(cfg.data, split),
                        {**settings, "dataset": info.to_json()})
        path = out_path = job.out / "features" / f"{split}-{key}.pt" if use_cache else None
        features[split], hit = cached_features(
            path, lambda s=split: extract_features(backbone, job.loader(s), device, job.acc.autocast,
                                                      progress=f"features {s}"),
            device=device)
        job.log(f"{split}: {len(features[split].index)} feature rows {'from cache ' if hit else ''}"
                f"{out_path or ''}")
    return features


def linear(job: EvalJob, features: dict[str, FeatureSet]) -> ProbeResult:
    """The linear probe on frozen features (validation carved from train when there is none)."""
    if job.val_mask is not None:
        carved = job.val_mask[features["train"].index]
        features["val"] = features["train"].subset(carved)
        features["train"] = features["train"].subset(~carved)
    return train_linear_probe(features["train"], features["val"], features["test"], job.cfg.eval,
                              job.acc.device, job.log)


def finetune_run(job: EvalJob, backbone: nn.Module, width: int, strategy) -> ProbeResult:
    val_loader = job.loader("val") if "val" in job.infos else None
    data = FinetuneData(job.loader("train"), val_loader, job.loader("test"), job.val_mask)
    return finetune(job.acc, strategy, backbone, width, job.infos["train"].num_classes, data, job.cfg.eval,
                    job.log)


def save_finetuned(job: EvalJob, result: ProbeResult) -> Path:
    """``OUT/finetuned.pt``: the selected epoch's model in the keys ``checkpoint.read`` requires
    (``model``: ``backbone.*`` + ``classifier.*``), so eval and ``python -m mlcdist.export`` read it."""
    from mlcdist import checkpoint

    train = job.infos["train"]
    path = job.out / FINETUNED_FILE
    checkpoint.save_file({
        "model": result.model_state, "kind": "finetuned", "config": dump_yaml(job.cfg),
        "num_classes": train.num_classes, "feature_dim": train.feature_dim,
        "class_names": list(train.class_names), "selected_epoch": result.selected_epoch,
        "pretrain_checkpoint": None if job.ckpt is None else str(job.ckpt.path)}, path)
    return path


def write_outputs(job: EvalJob, result: ProbeResult, plots: bool) -> dict:
    """``metrics.json`` / ``metrics.md`` / plots / the resolved recipe in the eval folder."""
    cfg, infos, ckpt, train = job.cfg, job.infos, job.ckpt, job.infos["train"]
    num_train = train.num_samples - (int(job.val_mask.sum()) if job.val_mask is not None else 0)
    datasets = {split: {"path": getattr(cfg.data, split), "name": info.name,
                        "num_samples": info.num_samples} for split, info in infos.items()}
    if job.val_mask is not None:
        datasets["val"] = {"path": cfg.data.train, "name": f"{train.name} (carved)",
                           "carved_fraction": cfg.eval.val_fraction, "seed": cfg.eval.seed,
                           "seen_in_pretraining": job.val_seen_in_pretraining > 0,
                           "seen_in_pretraining_rows": job.val_seen_in_pretraining}
    report = build_report(
        result, cfg.eval, train.class_names, mode=cfg.eval.mode, transfer=cfg.eval.transfer,
        random_init=job.random_init, checkpoint="random" if ckpt is None else str(ckpt.path),
        pretrain_data=ckpt.recipe.get("data", {}).get("train") if ckpt else None, datasets=datasets,
        num_rows={"train": num_train, "val": len(result.val_scores), "test": len(result.test_scores)},
        warnings=job.warnings)
    job.out.mkdir(parents=True, exist_ok=True)
    (job.out / "config.yaml").write_text(dump_yaml(cfg))
    if result.head_state:
        torch.save(result.head_state, job.out / "linear_head.pt")
    if result.model_state:
        save_finetuned(job, result)
    safe = write_report(job.out, report, train.class_names, result.test_features, result.test_targets,
                        plots=plots)
    return safe


def run_eval(args: argparse.Namespace) -> Optional[dict]:
    """The whole evaluation; returns the report on the main process (None elsewhere)."""
    from rich.console import Console

    from mlcdist.parallel import detect_strategy, make_accelerator

    ckpt = None if args.checkpoint == "random" else load_checkpoint(args.checkpoint)
    if ckpt is None and not args.recipe:
        raise EvalInputError("CHECKPOINT=random needs --recipe naming model: and data: (e.g. the "
                             "pretraining recipe)")
    cfg, named = resolve_recipe(ckpt, args.recipe, flag_overrides(args) + list(args.overrides))
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return None
    check_select_metric(cfg.eval.select_metric)
    if cfg.eval.transfer and not named:
        raise EvalInputError("eval.transfer=true needs the target dataset: name data.train and data.test "
                             "(and data.val) in the eval recipe or with --train/--test")
    infos = split_infos(cfg)
    check_compatible(cfg, ckpt, infos)
    random_init = ckpt is None or args.random_init
    acc = make_accelerator(cfg.precision.mixed, timeout_minutes=cfg.parallel.timeout_minutes)
    strategy, main = detect_strategy(acc), acc.is_main_process
    console = Console(stderr=True, quiet=not main)
    val_mask = None if "val" in infos else carve_validation(infos["train"].num_samples, cfg.eval.val_fraction,
                                                             cfg.eval.seed)
    job = EvalJob(cfg, ckpt, infos, random_init, output_dir(args, cfg, ckpt, random_init, infos["train"]),
                  acc, val_mask, console.print, data_warnings(cfg, infos),
                  carve_seen_in_pretraining(cfg, None if random_init else ckpt, val_mask))
    for warning in job.warnings:
        console.print(f"[bold yellow]warning:[/] {warning}", soft_wrap=True)
    if job.val_seen_in_pretraining:
        console.print(f"[bold]note:[/] the validation split is carved from data.train ({cfg.data.train}), the "
                      f"split this checkpoint was pretrained on, and {job.val_seen_in_pretraining} of its "
                      f"{int(val_mask.sum())} rows were in pretraining: their rows and labels shaped the encoder, "
                      "so the epoch and threshold choices are optimistic; pretrain with data.hold_out_val=true "
                      "and the eval.val_fraction and eval.seed used here, or name a held-out data.val",
                      soft_wrap=True)
    backbone, width = build_encoder(job)
    console.print(f"[bold]mlcdist.eval[/] {cfg.eval.mode}{' transfer' if cfg.eval.transfer else ''} of "
                  f"{'a random encoder' if random_init else ckpt.path} on {infos['train'].name} "
                  f"({strategy.value} x{acc.num_processes}), output {job.out}")
    if cfg.eval.mode == "linear" or args.features_only:
        features = extract_all(job, backbone, use_cache=not args.no_cache)
        if args.features_only or not main:
            return None
        result = linear(job, features)
    else:
        result = finetune_run(job, backbone, width, strategy)
        if not main:
            return None
    safe = write_outputs(job, result, plots=not args.no_plots)
    console.print(rich_table(safe))
    console.print(f"wrote {job.out / 'metrics.json'}, metrics.md" + ("" if args.no_plots else
                  ", per_class_ap.png, class_similarity.png, curves.png") +
                  (f", {FINETUNED_FILE} (python -m mlcdist.export {job.out / FINETUNED_FILE})"
                   if result.model_state else ""))
    return safe
