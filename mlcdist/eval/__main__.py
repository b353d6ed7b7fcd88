"""Evaluate a pretraining checkpoint (linear probe, finetune, transfer) and compare eval runs.

    python -m mlcdist.eval [run] CHECKPOINT [--recipe EVAL.yaml] [options] [dotted.key=value ...]
    python -m mlcdist.eval compare RUN_A RUN_B ... [--plot FILE]
    python -m mlcdist.eval plot RUN              # RUN/loss_curve.png from metrics.jsonl
    accelerate launch --config_file recipes/accelerate/ddp.yaml -m mlcdist.eval CHECKPOINT ...

``run`` is the default command: a first argument that is not a command name is a checkpoint.
Every command is one :class:`Command` in :data:`COMMANDS` (its arguments, and the
``module:function`` that receives the parsed arguments, imported only when the command runs),
so ``--help`` and argument errors never import torch. See ``docs/eval.md``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from typing import Callable, Optional

from mlcdist.cli import command

PROG = "python -m mlcdist.eval"
SPLITS = ("train", "val", "test")  # = mlcdist.eval.recipe.SPLITS (not imported: it loads torch)


@dataclass(frozen=True)
class Command:
    """A sub-command: ``configure(parser)`` adds its arguments; ``handler`` is
    ``"module:function"``, called with the parsed ``argparse.Namespace``; an ``int`` it returns
    is the exit code, anything else means 0."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    handler: str
    epilog: str = ""


def configure_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run folder, RUN/checkpoints, a step-NNNNNNNN folder, its state.pt, "
                                      "or 'random' (random encoder; needs --recipe)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides applied last, e.g. eval.lr=0.003 data.num_workers=0")
    p.add_argument("--recipe", "-r",
                   help="eval recipe (a normal recipe; its eval: section holds the settings)")
    p.add_argument("--mode", choices=("linear", "finetune"), help="eval.mode (default linear)")
    p.add_argument("--transfer", action="store_true",
                   help="eval.transfer=true: evaluate on another dataset (name it with --train/--test); "
                        "needed whenever the data's classes differ from the checkpoint's")
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


def configure_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="eval run folders (holding metrics.json) or metrics.json files")
    p.add_argument("--plot", metavar="FILE.png", help="also draw the test metrics side by side into FILE.png")


def configure_plot(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="training run folder (holding metrics.jsonl)")
    p.add_argument("--out", help="PNG to write (default RUN/loss_curve.png)")


RUN_EPILOG = (
    "examples:\n"
    f"  {PROG} runs/demo\n"
    f"  {PROG} runs/demo --random-init          # random-encoder baseline\n"
    f"  {PROG} runs/coco --recipe recipes/eval/coco_probe.yaml eval.epochs=50\n"
    f"  {PROG} runs/coco --recipe recipes/eval/coco_to_voc.yaml   # transfer\n"
    f"  {PROG} runs/yeast --recipe recipes/eval/vector_finetune.yaml\n"
    "  accelerate launch --config_file recipes/accelerate/ddp.yaml -m mlcdist.eval runs/coco \\\n"
    "      --mode finetune\n"
    "see docs/eval.md")

COMMANDS: list[Command] = [
    Command("run", "evaluate a checkpoint: linear probe, finetune or transfer (the default command)",
            configure_run, "mlcdist.eval.run:run_eval", RUN_EPILOG),
    Command("compare", "print the test metrics of eval runs side by side (and plot them with --plot)",
            configure_compare, "mlcdist.eval.compare:compare_command",
            f"example:\n  {PROG} compare runs/demo/eval/linear runs/demo/eval/linear-random --plot cmp.png"),
    Command("plot", "draw a training run's loss_curve.png from its metrics.jsonl",
            configure_plot, "mlcdist.report.loss_curve:plot_command",
            f"example:\n  {PROG} plot runs/demo"),
]
DEFAULT_COMMAND = "run"


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser (its help lists the commands) and each command's parser."""
    top = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Turn a pretraining checkpoint into test metrics: linear probe (frozen backbone, "
                    "projection head dropped), finetune, or transfer to another dataset. Model "
                    "selection on validation (carved from train when the dataset has none); the test "
                    "metrics of the selected epoch are reported under the clean, validation-tuned and "
                    f"(optimistic) paper protocols. `{PROG} CHECKPOINT ...` is short for "
                    f"`{PROG} run CHECKPOINT ...`; `{PROG} COMMAND --help` shows a command's options.",
        epilog="examples:\n"
               f"  {PROG} runs/demo\n"
               f"  {PROG} runs/demo --random-init\n"
               f"  {PROG} compare runs/demo/eval/linear runs/demo/eval/linear-random\n"
               "see docs/eval.md")
    sub = top.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    parsers = {}
    for cmd in COMMANDS:
        parsers[cmd.name] = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help[:1].upper() + cmd.help[1:],
                                           epilog=cmd.epilog or None,
                                           formatter_class=argparse.RawDescriptionHelpFormatter)
        cmd.configure(parsers[cmd.name])
    return top, parsers


def handler(cmd: Command) -> Callable[[argparse.Namespace], Optional[int]]:
    module, function = cmd.handler.split(":")
    return getattr(importlib.import_module(module), function)


@command
def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top, parsers = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        if not argv:
            top.error(f"name a checkpoint ({PROG} CHECKPOINT) or a command: {', '.join(parsers)}")
        top.parse_args(argv)  # prints the help and exits
    name = argv[0] if argv[0] in parsers else DEFAULT_COMMAND
    rest = argv[1:] if argv[0] in parsers else argv
    # intermixed: overrides may come before or after the options (argparse's sub-parsers cannot)
    args = parsers[name].parse_intermixed_args(rest)
    cmd = next(c for c in COMMANDS if c.name == name)
    code = handler(cmd)(args)
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
