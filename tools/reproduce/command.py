"""Reproduce the MulSupCon paper's vector results (Tables 2 and 3) on Mulan yeast and scene.

    python -m tools.reproduce yeast scene                  # 4 methods x 3 seeds, ~10 min, 2 cores
    python -m tools.reproduce yeast --seeds 1 --epochs 5   # a quick look
    python -m tools.reproduce yeast scene --methods mulsupcon bce --jobs 2
    python -m tools.reproduce yeast scene --methods mulsupcon --seeds 1 --no-standardize \
        model.head_bn=false --out runs/ablation/raw-nobn   # an ablation

For every data set: the Mulan ARFF files are converted to shards with train-set standardisation
(``tools.make_shards arff --standardize-with TRAIN.arff``, the authors' ``StandardScaler``), a
validation split is carved from train with the run's seed, and for every method (MulSupCon,
the BCE baseline, ALL, ANY) and seed the MLP is pretrained on the remaining train rows
(``recipes/DATASET[_METHOD].yaml``), finetuned with a new linear layer
(``recipes/finetune/DATASET.yaml``: epoch selected on the validation split) and scored once on
the test split. The table gives mean and spread (sample standard deviation) over the seeds,
beside the paper's reported MulSupCon numbers, under two protocols:

* ``paper``: the MulSupCon / C-GMVAE code's protocol: per metric, the best threshold of
  0.1..0.9 chosen on the TEST set itself (optimistic; ``mlcdist.metrics.paper_protocol_metrics``);
* ``clean``: thresholds chosen per metric on the validation split, then applied to test
  (``validation_tuned_metrics``): no decision sees test labels.

Runs are independent processes (``--jobs``, one torch thread each): on a 2-core machine two at
a time. Each run writes ``OUT/DATASET/METHOD/seed-S/`` (``pretrain/`` with the trainer's
config and logged losses, and its final checkpoint with ``--keep-checkpoints``;
``finetune/metrics.json``, ``metrics.md``; ``result.json``); a run
whose ``result.json`` matches its settings is reused (``--fresh`` recomputes). The table goes to
the console and to ``OUT/results.md`` and ``OUT/results.json``. See ``docs/results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Optional

from rich.console import Console

from mlcdist.cli import command
from tools.study.command import call_settings, load_average, make_jobs, plain, run_grid
from tools.study.report import stored_results
from tools.study.data import DEFAULT_MULAN, ReproduceError, mulan_source
from tools.study.recipes import RECIPES
from tools.study.tables import (
    PAPER_MULSUPCON,
    PAPER_NOTE,
    TOLERANCE,
    markdown,
    rich_tables,
    summarise,
)

EXAMPLES = ("examples:\n"
            "  python -m tools.reproduce yeast scene\n"
            "  python -m tools.reproduce yeast --seeds 1 --epochs 5 --out runs/quick\n"
            "  python -m tools.reproduce scene --methods mulsupcon bce --jobs 1\n"
            "  python -m tools.reproduce yeast --methods mulsupcon --seeds 1 --no-standardize \\\n"
            "      model.head_bn=false --out runs/ablation/raw-nobn\n"
            "results: OUT/results.md, OUT/results.json; per run OUT/DATASET/METHOD/seed-S/")


METHODS = ("mulsupcon", "bce", "all", "any")


def available_datasets(mulan: Path = DEFAULT_MULAN) -> list[str]:
    """The Mulan sets in ``mulan`` (a folder per set holding NAME-train.arff); any of them runs:
    recipes come from ``recipes/NAME.yaml`` or are derived from the vector base (``tools.study``)."""
    return sorted(p.parent.name for p in mulan.glob("*/*-train.arff") if p.name == f"{p.parent.name}-train.arff")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.reproduce", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=plain(__doc__.split("\n\n", 2)[0] + "\n\n" + __doc__.split("\n\n", 2)[2]),
        epilog=EXAMPLES)
    p.add_argument("targets", nargs="+", metavar="DATASET|KEY=VALUE",
                   help="Mulan sets to run (the paper's: yeast scene; any set in --mulan runs); a KEY=VALUE is an "
                        "extra pretraining recipe override for every run, e.g. "
                        "model.head_bn=false (ablations; use another --out)")
    p.add_argument("--mulan", type=Path, default=DEFAULT_MULAN,
                   help="folder holding NAME/NAME-train.arff, NAME-test.arff, NAME.xml "
                        "(default: %(default)s; read in place, never copied)")
    p.add_argument("--out", type=Path, default=Path("runs/reproduce"),
                   help="output folder: shards/, one folder per run, results.md/json "
                        "(default: %(default)s)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per method (default 3)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                   help="default: all four")
    p.add_argument("--epochs", type=int, default=None,
                   help="pretraining epochs (default: the recipe's, the paper's 150); lower for a "
                        "quick run")
    p.add_argument("--finetune-epochs", type=int, default=None,
                   help="finetune epoch cap (default: the finetune recipe's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="the same as a positional KEY=VALUE (kept as an alias), repeatable")
    p.add_argument("--no-standardize", action="store_true",
                   help="ablation: convert without --standardize-with (raw ARFF features, shards "
                        "in OUT/shards-raw); the paper's protocol standardises")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of train carved as validation, seeded per run (default 0.1)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="runs in parallel, one process each (default: CPU count, %(default)s)")
    p.add_argument("--fresh", action="store_true", help="recompute runs that have a stored result")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each run's final pretraining checkpoint (~7 MB; deleted by default "
                        "once finetuned: e.g. python -m mlcdist.eval RUN/pretrain ... needs it)")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    return p


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Options anywhere on the line; positionals split into ``datasets`` and ``overrides``
    (``--set`` ones first, then the positional ``KEY=VALUE`` in their order)."""
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    args.datasets = [t for t in args.targets if "=" not in t]
    args.overrides = args.overrides + [t for t in args.targets if "=" in t]
    known = available_datasets(args.mulan)
    known = sorted(set(known) | {p.stem for p in (RECIPES / "finetune").glob("*.yaml")})  # the paper's sets
    for name in args.datasets:  # an unknown name here; a known set with missing files fails in check_args
        if name not in known:
            parser.error(f"DATASET {name!r}: no {args.mulan / name / (name + '-train.arff')} (with "
                         f"{name}-test.arff and {name}.xml beside it); sets in {args.mulan}: "
                         f"{', '.join(known) or 'none'}; pass --mulan PATH, or use python -m tools.study "
                         "--arff-dir/--data for files elsewhere; an override needs KEY=VALUE")
    if not args.datasets:
        parser.error(f"name at least one DATASET ({', '.join(known)})")
    return args


def check_args(args: argparse.Namespace) -> None:
    """Every option and recipe, before any data is converted or run trained."""
    if args.seeds < 1 or args.jobs < 1:
        raise ReproduceError("--seeds and --jobs must be >= 1")
    if args.epochs is not None and args.epochs < 1:
        raise ReproduceError("--epochs must be >= 1")
    if args.finetune_epochs is not None and args.finetune_epochs < 1:
        raise ReproduceError("--finetune-epochs must be >= 1")
    if not 0 < args.val_fraction < 1:
        raise ReproduceError(f"--val-fraction {args.val_fraction} must be in (0, 1)")
    if not args.mulan.is_dir():
        raise ReproduceError(f"{args.mulan}: no such folder; pass --mulan PATH, the folder holding "
                             "yeast/ and scene/ with their ARFF and XML files")
    for name in args.datasets:
        mulan_source(args.mulan, name)


def report(args: argparse.Namespace, results: list[dict], command: str, seconds: float,
           load: str) -> None:
    """The tables on stdout, ``OUT/results.md`` and ``OUT/results.json``: this call's runs and
    every run stored in ``OUT`` by an earlier call with the same settings (other sets or methods)."""
    merged = {(r["dataset"], r["method"], r["seed"]): r
              for r in stored_results(args.out, call_settings(args, tuple(args.overrides)))
              if r.get("fraction", 1.0) == 1.0 and r["method"] in METHODS}
    merged.update({(r["dataset"], r["method"], r["seed"]): r for r in results})
    datasets = args.datasets + sorted({d for d, _, _ in merged} - set(args.datasets))
    methods = [m for m in METHODS if any(key[1] == m for key in merged)]
    summary = summarise(list(merged.values()), datasets, methods)
    seeds = max((len(e["seeds"]) for ms in summary.values() for e in ms.values()), default=args.seeds)
    out = Console(width=None if sys.stdout.isatty() else 150)  # a log file gets the full table
    for table in rich_tables(summary, seeds):
        out.print(table)
    out.print(f"wall time {seconds / 60:.1f} min ({seconds:.0f} s); {load}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(markdown(summary, seeds, command, seconds, load))
    payload = {"command": command, "date": datetime.now().isoformat(timespec="seconds"),
               "wall_seconds": round(seconds, 1), "load": load, "seeds": seeds,
               "paper_mulsupcon": {d: PAPER_MULSUPCON[d] for d in datasets
                                   if d in PAPER_MULSUPCON},
               "tolerance": TOLERANCE, "protocols": {"paper": PAPER_NOTE}, "summary": summary}
    (args.out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    out.print(f"wrote {args.out / 'results.md'}, {args.out / 'results.json'}")


@command
def main(argv: Optional[list[str]] = None) -> int:
    """Run; a user error (missing data, bad option or recipe) is one ``error:`` line, exit 2
    (``mlcdist.cli.command``)."""
    args = parse_args(argv)
    console = Console(stderr=True)
    line = "python -m tools.reproduce " + " ".join(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    load_before = load_average()
    check_args(args)
    from tools.study.data import prepare

    shards = args.out / ("shards-raw" if args.no_standardize else "shards")
    data = {ds: prepare(mulan_source(args.mulan, ds), shards, console, not args.no_standardize)
            for ds in args.datasets}
    jobs = make_jobs(data, args.methods, [1.0], args.seeds, args.out, args, tuple(args.overrides))
    workers = min(args.jobs, len(jobs))
    console.print(f"[bold]reproduce[/] {len(jobs)} runs ({', '.join(args.datasets)} x "
                  f"{', '.join(args.methods)} x {args.seeds} seed(s)), {workers} process(es); "
                  f"{load_before}")
    results = run_grid(jobs, data, workers, not args.no_progress, args.fresh, console,
                       args.keep_checkpoints)
    seconds = time.perf_counter() - start
    report(args, results, line, seconds, f"{load_before} at start, {load_average()} at the end")
    return 0

