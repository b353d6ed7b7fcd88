"""The eval recipe: checkpoint recipe <- eval recipe <- flags <- overrides, and its checks.

The architecture always comes from the checkpoint. Splits named on the eval side replace the
checkpoint's one by one; with ``eval.transfer`` they all come from the eval side (a transfer
never mixes in the pretraining dataset's splits).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Optional

from torch import Tensor

from mlcdist.config import RecipeConfig, apply_overrides, from_dict, load_raw, merge
from mlcdist.data.info import DatasetInfo, split_info
from mlcdist.data.split import carve_mask, pretraining_hold_out
from mlcdist.eval.features import Checkpoint, EvalInputError

SPLITS = ("train", "val", "test")
ARCH_KEYS = ("arch", "mlp_dims")  # model keys that change the backbone's weights


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
    merged = merge(base, eval_side)
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
    return {split: split_info(f"data.{split}", getattr(cfg.data, split))
            for split in SPLITS if getattr(cfg.data, split)}


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
    if not cfg.eval.transfer:
        check_same_classes(cfg, ckpt, train)


def check_same_classes(cfg: RecipeConfig, ckpt: Checkpoint, train: DatasetInfo) -> None:
    """Without ``eval.transfer`` the data must have the pretraining data's classes (count and
    names, in order: a linear layer's row ``c`` means class ``c``)."""
    fix = ("evaluate on the pretraining data set, or pass --transfer (eval.transfer=true) to "
           "probe/finetune on another one")
    if ckpt.num_classes != train.num_classes:
        raise EvalInputError(
            f"class count mismatch: {ckpt.path} was pretrained on {ckpt.num_classes} classes "
            f"({ckpt.dataset}), but data.train {cfg.data.train} ({train.name}) has {train.num_classes}; {fix}")
    names = ckpt.class_names
    if names is None or list(names) == list(train.class_names):
        return
    only_ckpt = [n for n in names if n not in train.class_names]
    only_data = [n for n in train.class_names if n not in names]
    differ = (f"only in {ckpt.dataset}: {', '.join(only_ckpt[:5])}; only in {train.name}: "
              f"{', '.join(only_data[:5])}" if only_ckpt or only_data else "the same names in another order")
    raise EvalInputError(
        f"class names differ: {ckpt.path} was pretrained on {ckpt.dataset}, data.train {cfg.data.train} "
        f"is {train.name} ({differ}); {fix}")


def data_warnings(cfg: RecipeConfig, infos: dict[str, DatasetInfo]) -> list[str]:
    """Settings that run but mislead: a test split that is the training split."""
    train, test = infos["train"], infos["test"]
    same_place = Path(cfg.data.train).resolve() == Path(cfg.data.test).resolve() \
        if "://" not in cfg.data.train + cfg.data.test else cfg.data.train == cfg.data.test
    # copies of one split (same shard hashes) in two folders count too
    same_shards = all(s.sha256 for s in train.shards) and \
        [(s.file, s.sha256) for s in train.shards] == [(s.file, s.sha256) for s in test.shards]
    if same_place or same_shards:
        return [f"data.test is data.train ({cfg.data.test}, {test.name}): the test metrics measure the "
                "fit to the training data, not generalisation; name a held-out split with --test"]
    return []


def carve_seen_in_pretraining(cfg: RecipeConfig, ckpt: Optional[Checkpoint], val_mask: Optional[Tensor]) -> int:
    """How many validation rows the checkpoint was pretrained on (0: a clean carve).

    A carve from the very split the checkpoint was pretrained on is clean when pretraining held
    the same rows out (``data.hold_out_val``, the same ``eval.val_fraction`` and ``eval.seed``;
    ``data/split.py``). Otherwise the rows it trained on, labels included, shaped the encoder and
    the epoch and threshold choices made on them are optimistic."""
    pre = (ckpt.recipe.get("data") or {}).get("train") if ckpt is not None else None
    if val_mask is None or not pre or cfg.eval.transfer:
        return 0
    if "://" in pre + cfg.data.train:
        same = pre == cfg.data.train
    else:
        same = Path(pre).resolve() == Path(cfg.data.train).resolve()
    if not same:
        return 0
    held = pretraining_hold_out(ckpt.recipe)
    if held is None:
        return int(val_mask.sum())
    return int((val_mask & ~carve_mask(len(val_mask), *held)).sum())


def output_dir(args: argparse.Namespace, cfg: RecipeConfig, ckpt: Optional[Checkpoint],
               random_init: bool, train: DatasetInfo) -> Path:
    if args.out:
        return Path(args.out)
    name = cfg.eval.mode + (f"-transfer-{train.name}" if cfg.eval.transfer else "") + \
        ("-random" if random_init else "")
    return (ckpt.run_dir if ckpt else Path(cfg.logging.run_dir)) / "eval" / name


def flag_overrides(args: argparse.Namespace) -> list[str]:
    pairs = [("eval.mode", args.mode), ("data.train", args.train), ("data.val", args.val),
             ("data.test", args.test)]
    # JSON strings are YAML strings: a folder named e.g. "2007" or "on" stays a string
    return [f"{k}={json.dumps(str(v))}" for k, v in pairs if v is not None] + \
        (["eval.transfer=true"] if args.transfer else [])
