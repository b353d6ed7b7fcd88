"""Evaluate a pretraining checkpoint: linear probe, finetune or transfer; compare runs.

    python -m mlcdist.eval CHECKPOINT [--recipe EVAL.yaml] [options] [dotted.key=value ...]
    python -m mlcdist.eval compare RUN_A RUN_B ...
    accelerate launch --config_file recipes/accelerate/ddp.yaml -m mlcdist.eval CHECKPOINT ...

The recipe is the checkpoint's own (resolved pretraining recipe), updated by ``--recipe`` (a
normal recipe file; its ``eval:`` section is :class:`mlcdist.config.EvalConfig`), then by the
flags, then by ``key=value`` overrides. The architecture always comes from the checkpoint.
Splits named on the eval side replace the checkpoint's one by one; with ``eval.transfer`` they
all come from the eval side (a transfer never mixes in the pretraining dataset's splits).
See ``docs/eval.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional

import torch

from mlcdist.config import ConfigError, RecipeConfig, apply_overrides, dump_yaml, from_dict, load_raw
from mlcdist.data.info import DatasetInfo, index_location, load_dataset_info
from mlcdist.eval.features import (
    Checkpoint, EvalInputError, FeatureSet, cache_key, cached_features, carve_validation,
    extract_features, load_backbone_state, load_checkpoint,
)
from mlcdist.eval.probe import FinetuneData, check_select_metric, finetune, train_linear_probe
from mlcdist.eval.report import compare_table, rich_table, score_report, write_report

SPLITS = ("train", "val", "test")
ARCH_KEYS = ("arch", "mlp_dims")  # model keys that change the backbone's weights


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else value
    return out


def resolve_recipe(ckpt: Optional[Checkpoint], recipe: Optional[str],
                   overrides: list[str]) -> tuple[RecipeConfig, bool]:
    """``(config, data_named)``: checkpoint recipe <- eval recipe <- overrides (module docstring)."""
    eval_side = apply_overrides(load_raw(recipe) if recipe else {}, overrides)
    base = ckpt.recipe if ckpt else {}
    if ckpt is not None:
        wanted = eval_side.get("model", {}) if isinstance(eval_side.get("model"), dict) else {}
        pretrained = {**dataclasses.asdict(RecipeConfig().model), **base.get("model", {})}
        clashes = [f"model.{k}: checkpoint {pretrained.get(k)!r}, eval side {wanted[k]!r}"
                   for k in ARCH_KEYS if k in wanted and wanted[k] != pretrained.get(k)]
        if clashes:
            raise EvalInputError(f"{ckpt.path}: architecture mismatch ({'; '.join(clashes)}); the "
                                 "architecture comes from the checkpoint, drop model.* from the eval recipe")
    merged = _merge(base, eval_side)
    data_side = eval_side.get("data", {}) if isinstance(eval_side.get("data"), dict) else {}
    named = any(split in data_side for split in SPLITS)
    if named and merged.get("eval", {}).get("transfer"):  # never mix in the pretraining splits
        merged.setdefault("data", {}).update({split: data_side.get(split, "") for split in SPLITS})
    source = " + ".join(([f"{ckpt.path} (config)"] if ckpt else []) + ([recipe] if recipe else []))
    if overrides:
        source += f" (with overrides {' '.join(overrides)})"
    return from_dict(merged, source or "<defaults>"), named


def split_infos(cfg: RecipeConfig) -> dict[str, DatasetInfo]:
    """``dataset.json`` of each named split; a missing one names the expected file and the fix."""
    if not cfg.data.train:
        raise EvalInputError("data.train: no train split named; set it in the eval recipe or with --train")
    if not cfg.data.test:
        raise EvalInputError("data.test: no test split named; results are reported on a test split, "
                             "set data.test in the eval recipe or with --test")
    infos = {}
    for split in SPLITS:
        location = getattr(cfg.data, split)
        if not location:
            continue
        try:
            infos[split] = load_dataset_info(location)
        except FileNotFoundError:
            expected = index_location(location)[1]
            raise EvalInputError(
                f"data.{split}: {expected} not found; make the shards first, e.g. "
                f"`python -m tools.make_shards digits --out shards/digits` for the demo, or "
                f"`python -m tools.make_shards SOURCE ... --out {location}` "
                "(see python -m tools.make_shards --help)") from None
    return infos


def check_compatible(cfg: RecipeConfig, ckpt: Optional[Checkpoint], infos: dict[str, DatasetInfo]) -> None:
    """Modality, vector length, class count and class names agree (errors name both sides)."""
    train = infos["train"]
    for split, info in infos.items():
        if info.class_names != train.class_names:
            raise EvalInputError(f"data.{split} ({info.name}, {info.num_classes} classes) and data.train "
                                 f"({train.name}, {train.num_classes} classes) have different classes; "
                                 "all eval splits must come from one dataset")
        if (info.modality, info.feature_dim) != (train.modality, train.feature_dim):
            raise EvalInputError(f"data.{split} ({info.name}) holds {info.modality} data"
                                 f"{f' of {info.feature_dim}-d' if info.feature_dim else ''}, data.train "
                                 f"({train.name}) {train.modality}"
                                 f"{f' of {train.feature_dim}-d' if train.feature_dim else ''}; "
                                 "all eval splits must come from one dataset")
    vector = cfg.model.arch == "mlp"
    if (train.modality == "vector") != vector:
        raise EvalInputError(f"model.arch {cfg.model.arch} takes {'vector' if vector else 'image'} data, "
                             f"but {cfg.data.train} ({train.name}) holds {train.modality} data")
    if ckpt is None:
        return
    if ckpt.arch != cfg.model.arch:
        raise EvalInputError(f"{ckpt.path}: architecture mismatch: checkpoint {ckpt.arch}, recipe "
                             f"model.arch {cfg.model.arch}")
    if vector and ckpt.feature_dim != train.feature_dim:
        raise EvalInputError(f"{ckpt.path}: the encoder takes {ckpt.feature_dim}-d vectors, but "
                             f"{cfg.data.train} ({train.name}) holds {train.feature_dim}-d vectors")
    if not cfg.eval.transfer and ckpt.num_classes != train.num_classes:
        raise EvalInputError(
            f"class count mismatch: {ckpt.path} was pretrained on {ckpt.num_classes} classes, but "
            f"{cfg.data.train} ({train.name}) has {train.num_classes}; evaluate on the pretraining "
            "dataset, or pass --transfer (eval.transfer=true) to probe/finetune on another one")


def output_dir(args: argparse.Namespace, cfg: RecipeConfig, ckpt: Optional[Checkpoint],
               random_init: bool, train: DatasetInfo) -> Path:
    if args.out:
        return Path(args.out)
    name = cfg.eval.mode + (f"-transfer-{train.name}" if cfg.eval.transfer else "") + \
        ("-random" if random_init else "")
    return (ckpt.run_dir if ckpt else Path(cfg.logging.run_dir)) / "eval" / name


def run_eval(args: argparse.Namespace) -> Optional[dict]:
    """The whole evaluation; returns the report on the main process (None elsewhere)."""
    from rich.console import Console

    from mlcdist.data.cpus import cap_num_workers
    from mlcdist.data.pipeline import make_loader
    from mlcdist.models import build_backbone
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

    acc = make_accelerator(cfg.precision.mixed)
    strategy, device, main = detect_strategy(acc), acc.device, acc.is_main_process
    console = Console(stderr=True, quiet=not main)
    out = output_dir(args, cfg, ckpt, random_init, infos["train"])
    torch.manual_seed(cfg.seed)  # a random encoder gets the pretraining run's initial weights
    model_cfg = dataclasses.replace(cfg.model, weights=None)
    backbone, width = build_backbone(model_cfg, in_dim=infos["train"].feature_dim,
                                     image_size=cfg.augment.image_size)
    if not random_init:
        load_backbone_state(backbone, ckpt, cfg.model.arch)
    backbone.to(device)
    data_cfg = dataclasses.replace(cfg.data, batch_size=cfg.eval.batch_size,
                                   num_workers=cap_num_workers(cfg.data.num_workers))

    def loader(split: str):
        return make_loader(getattr(cfg.data, split), data_cfg, cfg.augment, mode="eval",
                           rank=acc.process_index, world_size=acc.num_processes)

    num_train = infos["train"].num_samples
    val_mask = None if "val" in infos else carve_validation(num_train, cfg.eval.val_fraction, cfg.eval.seed)
    console.print(f"[bold]mlcdist.eval[/] {cfg.eval.mode}{' transfer' if cfg.eval.transfer else ''} of "
                  f"{'a random encoder' if random_init else ckpt.path} on {infos['train'].name} "
                  f"({strategy.value} x{acc.num_processes}), output {out}")
    if cfg.eval.mode == "linear" or args.features_only:
        settings = {"image_size": cfg.augment.image_size, "mixed": cfg.precision.mixed,
                    "random_seed": cfg.seed if random_init else None, "model": dataclasses.asdict(cfg.model)}
        features: dict[str, FeatureSet] = {}
        for split, info in infos.items():
            # dataset.json (shard hashes included) in the key: re-converted shards miss the cache
            key = cache_key(None if random_init else ckpt.path, getattr(cfg.data, split),
                            {**settings, "dataset": info.to_json()})
            path = None if args.no_cache else out / "features" / f"{split}-{key}.pt"
            features[split], hit = cached_features(
                path, lambda s=split: extract_features(backbone, loader(s), device, acc.autocast,
                                                          progress=f"features {s}"),
                device=device)
            console.print(f"{split}: {len(features[split].index)} feature rows "
                          f"{'from cache ' if hit else ''}{path or ''}")
        if args.features_only or not main:
            return None
        if val_mask is not None:
            carved = val_mask[features["train"].index]
            features["val"] = features["train"].subset(carved)
            features["train"] = features["train"].subset(~carved)
        result = train_linear_probe(features["train"], features["val"], features["test"], cfg.eval,
                                    device, console.print)
    else:
        val_loader = loader("val") if "val" in infos else None
        data = FinetuneData(loader("train"), val_loader, loader("test"), val_mask)
        result = finetune(acc, strategy, backbone, width, infos["train"].num_classes, data, cfg.eval,
                          console.print)
        if not main:
            return None
    report = {
        "mode": cfg.eval.mode, "transfer": cfg.eval.transfer, "random_init": random_init,
        "checkpoint": "random" if ckpt is None else str(ckpt.path),
        "pretrain_data": ckpt.recipe.get("data", {}).get("train") if ckpt else None,
        "selected_epoch": result.selected_epoch, "epochs_run": result.epochs_run,
        "select_metric": cfg.eval.select_metric,
        "datasets": {split: {"path": getattr(cfg.data, split), "name": info.name,
                             "num_samples": info.num_samples} for split, info in infos.items()},
        "num_rows": {"train": num_train - int(val_mask.sum()) if val_mask is not None else num_train,
                     "val": len(result.val_scores), "test": len(result.test_scores)},
        **score_report(result.val_scores, result.val_targets, result.test_scores, result.test_targets,
                       infos["train"].class_names),
        "eval": dataclasses.asdict(cfg.eval), "history": result.history,
    }
    if val_mask is not None:
        report["datasets"]["val"] = {"path": cfg.data.train, "name": f"{infos['train'].name} (carved)",
                                     "carved_fraction": cfg.eval.val_fraction, "seed": cfg.eval.seed}
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_yaml(cfg))
    if result.head_state:
        torch.save(result.head_state, out / "linear_head.pt")
    safe = write_report(out, report, infos["train"].class_names, result.test_features,
                        result.test_targets, plots=not args.no_plots)
    console.print(rich_table(safe))
    console.print(f"wrote {out / 'metrics.json'}, metrics.md" + ("" if args.no_plots else
                  ", per_class_ap.png, class_similarity.png"))
    return safe


def flag_overrides(args: argparse.Namespace) -> list[str]:
    pairs = [("eval.mode", args.mode), ("data.train", args.train), ("data.val", args.val),
             ("data.test", args.test)]
    # JSON strings are YAML strings: a folder named e.g. "2007" or "on" stays a string
    return [f"{k}={json.dumps(str(v))}" for k, v in pairs if v is not None] + \
        (["eval.transfer=true"] if args.transfer else [])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mlcdist.eval", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Turn a pretraining checkpoint into test metrics: linear probe (frozen backbone, "
                    "projection head dropped), finetune, or transfer to another dataset. Model "
                    "selection on validation (carved from train when the dataset has none); the test "
                    "metrics of the selected epoch are reported under the clean, validation-tuned and "
                    "(optimistic) paper protocols. Runs side by side: "
                    "python -m mlcdist.eval compare RUN_A RUN_B ...",
        epilog="examples:\n"
               "  python -m mlcdist.eval runs/demo\n"
               "  python -m mlcdist.eval runs/demo --random-init          # random-encoder baseline\n"
               "  python -m mlcdist.eval runs/coco --recipe recipes/eval/coco_probe.yaml eval.epochs=50\n"
               "  python -m mlcdist.eval runs/coco --recipe recipes/eval/coco_to_voc.yaml   # transfer\n"
               "  python -m mlcdist.eval runs/yeast --recipe recipes/eval/vector_finetune.yaml\n"
               "  accelerate launch --config_file recipes/accelerate/ddp.yaml -m mlcdist.eval runs/coco \\\n"
               "      --mode finetune\n"
               "  python -m mlcdist.eval compare runs/demo/eval/linear runs/demo/eval/linear-random\n"
               "see docs/eval.md")
    p.add_argument("checkpoint", help="run folder, RUN/checkpoints, a step-NNNNNNNN folder, its state.pt, "
                                      "or 'random' (random encoder; needs --recipe)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides applied last, e.g. eval.lr=0.003 data.num_workers=0")
    p.add_argument("--recipe", "-r",
                   help="eval recipe (a normal recipe; its eval: section holds the settings)")
    p.add_argument("--mode", choices=("linear", "finetune"), help="eval.mode (default linear)")
    p.add_argument("--transfer", action="store_true",
                   help="eval.transfer=true: evaluate on another dataset (name it with --train/--test)")
    for split in SPLITS:
        p.add_argument(f"--{split}", metavar="SHARDS", help=f"data.{split} shard folder")
    p.add_argument("--random-init", action="store_true",
                   help="ignore the checkpoint's weights: random encoder of the same architecture (baseline)")
    p.add_argument("--out", help="eval run folder (default RUN/eval/MODE[-transfer-DATASET][-random])")
    p.add_argument("--no-cache", action="store_true", help="always re-extract features, write no cache")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--features-only", action="store_true",
                   help="extract (and cache) the features of every split, then stop")
    p.add_argument("--print-config", action="store_true", help="print the resolved eval recipe and exit")
    return p


def compare_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m mlcdist.eval compare",
                                description="Print the test metrics of eval runs side by side.")
    p.add_argument("runs", nargs="+", help="eval run folders (holding metrics.json) or metrics.json files")
    args = p.parse_args(argv)
    from rich.console import Console

    try:
        table = compare_table(args.runs)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    Console().print(table)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        return compare_main(argv[1:])
    args = build_parser().parse_intermixed_args(argv)
    import torch.distributed as dist

    try:
        run_eval(args)
    except (ConfigError, EvalInputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
