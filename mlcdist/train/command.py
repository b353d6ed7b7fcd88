"""Pretrain an encoder with MulSupCon (or a variant, or a supervised baseline).

    python -m mlcdist.train RECIPE [dotted.key=value ...]
    accelerate launch --config_file recipes/accelerate/ddp.yaml -m mlcdist.train RECIPE [...]

The backend (DDP, FSDP2, DeepSpeed ZeRO-1/2/3) comes from the Accelerate config; see
``mlcdist/parallel/``. An interrupted run resumes from the newest checkpoint when started again
with the same recipe (``checkpoint.resume: auto``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from mlcdist.cli import command
from mlcdist.config import dump_yaml, load_recipe
from mlcdist.data.info import split_info


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


@command
def main(argv: Optional[list[str]] = None) -> int:
    """Train; user errors (recipe, paths, a setting this machine cannot run, NaN) are raised as
    ``MlcdistError`` and printed by ``mlcdist.cli.run`` as one ``error:`` line."""
    args = parse_args(argv)
    cfg = load_recipe(args.recipe, args.overrides)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    from mlcdist.parallel.backend import check_precision
    from mlcdist.train.tracking import check_trackers

    check_precision(cfg.precision.mixed)  # settings this machine cannot run, then paths: one line each
    check_trackers(cfg.logging.report_to)
    split_info("data.train", cfg.data.train)
    from mlcdist.train.preempt import StopRequest, exit_code
    from mlcdist.train.runinfo import summary_line
    from mlcdist.train.trainer import Trainer

    invocation = {"args": list(sys.argv[1:] if argv is None else argv), "recipe": args.recipe,
                  "overrides": list(args.overrides)}
    with StopRequest() as stop:  # handlers stay installed until the process reports and returns
        trainer = Trainer(cfg, invocation=invocation)
        summary = trainer.fit(stop=stop)
        if summary["interrupted"]:
            if trainer.acc.is_main_process:
                print(f"interrupted at step {summary['step']}; checkpoint written; "
                      "run the same command to resume", file=sys.stderr)
            return exit_code(summary["interrupted"])
    if not trainer.acc.is_main_process:
        return 0
    if summary["already_complete"]:
        loss = summary["final_loss"]
        print(f"complete: {cfg.logging.run_dir} already finished at step {summary['step']}/"
              f"{summary['total_steps']}, final loss {'unknown' if loss is None else f'{loss:.4f}'}; "
              "nothing to train (raise schedule.max_steps or schedule.epochs to train on, or set "
              "logging.run_dir to start a new run)")
    else:
        print(f"done: {summary_line(summary)}, run folder {cfg.logging.run_dir}")
    return 0
