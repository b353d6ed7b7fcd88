"""Test the comprehensive study's claims on any multi-label vector set, in one command.

    python -m tools.study                                   # the default grid (docs/study.md)
    python -m tools.study yeast scene --losses mulsupcon,reg,bce --seeds 1 --epochs 5
    python -m tools.study --arff-dir DIR --fractions 0.1,0.3,1.0 --out runs/study-mine
    python -m tools.study --data delicious=TRAIN.arff,TEST.arff,LABELS.xml --losses jaccard,bce

Every (data set, loss, training fraction, seed) is one run of the paper's vector protocol, as
``tools.reproduce``: the ARFF pair is converted with train-set standardisation, a validation split
is carved from train with the run's seed, the MLP is pretrained with the loss (any ``loss.kind``;
the supervised ones, bce, asl and zlpr, are the baselines) on a seeded share of the remaining
rows (``--fractions``: the study's low-data regime), finetuned with a new linear layer (epoch
chosen on validation) and scored once on test, under the clean and the paper protocol.
Recipes: ``recipes/NAME.yaml`` and ``recipes/finetune/NAME.yaml`` where they exist, else the
vector bases at the paper's batch size (32 below 2,000 training samples, 256 otherwise).

Output in ``--out``: ``results.json`` (every run, every metric), ``results.md``, figures
(``gain_vs_labels.png``, ``gain_vs_fraction.png``, ``metrics_NAME.png``) and one folder per run;
a run whose stored result has the same fingerprint is reused, so an interrupted grid resumes and
a second call into the same folder adds to the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional, get_args, get_type_hints

from rich.console import Console

from mlcdist.cli import command
from mlcdist.config.schema import LossConfig
from tools.study.data import DEFAULT_MULAN, DataSource, StudyError, folder_sources, mulan_source, parse_source
from tools.study.recipes import derive

if TYPE_CHECKING:  # torch-heavy: imported when a grid runs, so that --help stays fast
    from tools.study.data import VectorSet
    from tools.study.jobs import Job

DEFAULT_SETS = ("emotions", "scene", "yeast", "bibtex")
DEFAULT_LOSSES = ("mulsupcon", "jaccard", "reg", "bce")
DEFAULT_FRACTIONS = (0.1, 1.0)


def loss_kinds() -> tuple[str, ...]:
    """Every ``loss.kind`` the trainer accepts."""
    return tuple(get_args(get_type_hints(LossConfig)["kind"]))


def plain(text: str) -> str:
    """Help text without docstring markup."""
    return text.replace("``", "")


def _csv(kind: type):
    def parse(text: str) -> list:
        try:
            return [kind(part) for part in text.split(",") if part]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list") from None
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.study", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description=plain(__doc__.split("\n\n", 1)[0] + "\n\n" + __doc__.split("\n\n", 2)[2]))
    p.add_argument("names", nargs="*", metavar="NAME|KEY=VALUE",
                   help=f"data sets in --mulan by name (default, without --arff-dir/--data: "
                        f"{' '.join(DEFAULT_SETS)}); a KEY=VALUE is a pretraining recipe override for every run")
    p.add_argument("--mulan", type=Path, default=DEFAULT_MULAN,
                   help="folder holding NAME/NAME-train.arff, NAME-test.arff, NAME.xml (default: %(default)s)")
    p.add_argument("--arff-dir", type=Path, action="append", default=[], metavar="DIR",
                   help="every NAME-train.arff in DIR with its NAME-test.arff and NAME.xml (repeatable)")
    p.add_argument("--data", action="append", default=[], metavar="NAME=TRAIN,TEST,XML",
                   help="one data set spelled out (repeatable)")
    p.add_argument("--losses", type=_csv(str), default=list(DEFAULT_LOSSES), metavar="A,B,..",
                   help=f"loss kinds (default: {','.join(DEFAULT_LOSSES)}; any of {','.join(loss_kinds())})")
    p.add_argument("--fractions", type=_csv(float), default=list(DEFAULT_FRACTIONS), metavar="F,..",
                   help="training fractions in (0, 1] (default: 0.1,1.0)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per cell (default 3)")
    p.add_argument("--epochs", type=int, default=None, help="pretraining epochs (default: the recipe's, 150)")
    p.add_argument("--finetune-epochs", type=int, default=None, help="finetune epoch cap (default: the recipe's)")
    p.add_argument("--candidates", choices=("moco", "batch"), default=None,
                   help="contrastive candidates: moco (recipes' default: own key, batch keys, queue) or "
                        "batch (the study's in-batch, one-view setting, for mulsupcon, jaccard, proto, msc, "
                        "reg and reg_plain; weighted, all and any keep moco)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="pretraining and finetune batch (default: the paper's, 32 below 2,000 train rows, else 256)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="validation share of train (default 0.1)")
    p.add_argument("--out", type=Path, default=Path("runs/study"), help="output folder (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs in parallel (default: CPU count)")
    p.add_argument("--fresh", action="store_true", help="recompute runs that have a stored result")
    p.add_argument("--no-progress", action="store_true", help="no live progress display")
    return p


def check_args(args: argparse.Namespace) -> None:
    kinds = loss_kinds()
    for loss in args.losses:
        if loss not in kinds:
            raise StudyError(f"--losses: {loss!r} is not a loss.kind; choose from {', '.join(kinds)}")
    if not args.losses or not args.fractions:
        raise StudyError("--losses and --fractions need at least one entry")
    for f in args.fractions:
        if not 0 < f <= 1:
            raise StudyError(f"--fractions: {f:g} must be in (0, 1]")
    for name in ("seeds", "jobs", "epochs", "finetune_epochs", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise StudyError(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 < args.val_fraction < 1:
        raise StudyError(f"--val-fraction {args.val_fraction} must be in (0, 1)")


def sources(args: argparse.Namespace) -> list[DataSource]:
    names = [n for n in args.names if "=" not in n]
    if not (names or args.arff_dir or args.data):
        names = list(DEFAULT_SETS)
    found = [mulan_source(args.mulan, n) for n in names]
    found += [s for folder in args.arff_dir for s in folder_sources(folder)]
    found += [parse_source(spec) for spec in args.data]
    seen: set[str] = set()
    for s in found:
        if s.name in seen:
            raise StudyError(f"data set {s.name!r} is named twice; rename one with --data NAME=...")
        seen.add(s.name)
    return found


def make_jobs(data: dict[str, VectorSet], methods: list[str], fractions: list[float], seeds: int,
              out: Path, args: argparse.Namespace, overrides: tuple[str, ...]) -> list[Job]:
    """One job per (data set, method, fraction, seed); ``args`` gives the shared settings."""
    from tools.study.jobs import Job, finetune_config, pretrain_config

    settings = json.dumps(call_settings(args, overrides), sort_keys=True)
    jobs = []
    for name, vectors in data.items():
        for method in methods:
            for fraction in fractions:
                # the paper's batch rule counts the rows a run trains on: 10% of bibtex is a small set
                recipes = derive(name, method, round(fraction * len(vectors.train_x)),
                                 getattr(args, "candidates", None), getattr(args, "batch_size", None))
                part = "" if fraction == 1.0 else f"/frac-{fraction:g}"
                for seed in range(seeds):
                    jobs.append(Job(name, method, seed, str(out / name / f"{method}{part}" / f"seed-{seed}"),
                                    args.epochs, args.finetune_epochs, args.val_fraction, recipes,
                                    overrides, fraction, settings))
    for job in jobs[:: max(seeds, 1)]:  # every recipe once, before any run
        pretrain_config(job, Path(job.run_dir))
        finetune_config(job)
    return jobs


def call_settings(args: argparse.Namespace, overrides: tuple[str, ...]) -> dict:
    """What a call sets for all its runs (not the data set, loss, fraction or seed): the tables of
    an output folder merge the stored runs made with the same settings, and only those."""
    names = ("epochs", "finetune_epochs", "val_fraction", "candidates", "batch_size", "no_standardize")
    return {name: getattr(args, name, None) for name in names} | {"overrides": list(overrides)}


def run_grid(jobs: list[Job], data: dict[str, VectorSet], workers: int, progress: bool, fresh: bool,
             console: Console, keep_checkpoints: bool = False) -> list[dict]:
    """Every job, ``workers`` processes at a time, with the progress board."""
    import torch

    from tools.study.board import ProgressBoard, expected_cost, run_all

    if workers == 1:
        torch.set_num_threads(1)  # these MLPs are too small for intra-op threads to pay off
    weights = {job.key: expected_cost(job, data) for job in jobs}
    with ProgressBoard(jobs, console, progress, weights) as board:
        return run_all(jobs, data, workers, board, fresh, keep_checkpoints)


def load_average() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.2f} (1 min) / {five:.2f} (5 min) on {os.cpu_count()} CPUs"


@command
def main(argv: Optional[list[str]] = None) -> int:
    """Run the grid; a user error is one ``error:`` line, exit 2 (``mlcdist.cli.command``)."""
    from tools.study.data import prepare
    from tools.study.report import write

    args = build_parser().parse_intermixed_args(argv)
    line = "python -m tools.study " + " ".join(sys.argv[1:] if argv is None else argv)
    console = Console(stderr=True)
    start, load = time.perf_counter(), load_average()
    check_args(args)
    data = {s.name: prepare(s, args.out / "shards", console) for s in sources(args)}
    overrides = tuple(n for n in args.names if "=" in n)
    jobs = make_jobs(data, args.losses, args.fractions, args.seeds, args.out, args, overrides)
    workers = min(args.jobs, len(jobs))
    console.print(f"[bold]study[/] {len(jobs)} runs ({len(data)} data sets x {len(args.losses)} losses x "
                  f"{len(args.fractions)} fractions x {args.seeds} seeds), {workers} process(es); {load}")
    run_grid(jobs, data, workers, not args.no_progress, args.fresh, console)
    seconds = time.perf_counter() - start
    write(args.out, line, seconds, f"{load} at start, {load_average()} at the end",
          Console(width=None if sys.stdout.isatty() else 160), call_settings(args, overrides))
    return 0
