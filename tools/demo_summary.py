"""The last line of ``make demo-image``: the pretrained probe against the random-encoder probe.

    python -m tools.demo_summary runs/demo-image [--min-gap 0.10]

Prints ``demo-image: probe mAP pretrained P vs random R`` (test mAP, clean protocol, of
``RUN/eval/linear`` and ``RUN/eval/linear-random``) and exits 1 when ``P - R`` is below
``--min-gap`` or when the trainer's collapse guard fired (a ``collapse_warning`` record in
``RUN/metrics.jsonl``), so the demo fails loudly instead of printing a number nobody reads.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlcdist.cli import command
from mlcdist.errors import MlcdistError


def probe_map(eval_dir: Path) -> float:
    path = eval_dir / "metrics.json"
    if not path.is_file():
        raise MlcdistError(f"{path}: missing; run python -m mlcdist.eval {eval_dir.parent.parent} "
                           "--recipe recipes/eval/demo_image.yaml first")
    return float(json.loads(path.read_text())["test"]["clean"]["mAP"])


def collapse_steps(run: Path) -> list[int]:
    """Steps whose ``metrics.jsonl`` record carries ``collapse_warning: true``."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise MlcdistError(f"{path}: missing; is {run} a training run folder?")
    records = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return [r.get("step", -1) for r in records if r.get("collapse_warning")]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.demo_summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="training run folder (e.g. runs/demo-image)")
    parser.add_argument("--min-gap", type=float, default=0.10,
                        help="fail when pretrained mAP - random mAP is below this (default 0.10)")
    return parser.parse_args(argv)


@command
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pretrained = probe_map(args.run / "eval" / "linear")
    random = probe_map(args.run / "eval" / "linear-random")
    print(f"demo-image: probe mAP pretrained {pretrained:.4f} vs random {random:.4f}")
    collapsed = collapse_steps(args.run)
    if collapsed:
        print(f"demo-image: FAILED: the collapse guard fired at step {collapsed[0]}", file=sys.stderr)
        return 1
    if pretrained - random < args.min_gap:
        print(f"demo-image: FAILED: gap {pretrained - random:.4f} is below --min-gap {args.min_gap}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
