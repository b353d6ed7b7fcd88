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
import sys
from typing import Optional

from mlcdist.cli import command
from mlcdist.eval.recipe import SPLITS
from mlcdist.eval.report import compare_table


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

    Console().print(compare_table(args.runs))  # a bad folder: MlcdistError -> one error line
    return 0


@command
def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        return compare_main(argv[1:])
    args = build_parser().parse_intermixed_args(argv)
    from mlcdist.eval.run import run_eval

    run_eval(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
