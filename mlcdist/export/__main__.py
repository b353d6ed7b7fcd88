"""Export a run's query backbone for plain torchvision / timm / safetensors users.

    python -m mlcdist.export RUN [--format torchvision|timm|safetensors] [--out DIR]

RUN is anything ``mlcdist.checkpoint.resolve`` accepts (run folder, ``checkpoints``, a
``step-N`` folder, a ``state.pt``) or eval's ``finetuned.pt``. DIR (default
``RUN/export/FORMAT``) receives the weights, ``README.md`` (the model card: the load line, data
set, recipe, commit, steps, probe metrics) and ``recipe.yaml``. See ``mlcdist/export/formats.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from mlcdist.cli import command
from mlcdist.export import FORMATS


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m mlcdist.export", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write a run's query backbone (no projection head, no key encoder) as weights a "
                    "plain torchvision or timm model loads, with a model card (README.md).",
        epilog="examples:\n"
               "  python -m mlcdist.export runs/coco\n"
               "  python -m mlcdist.export runs/coco --format timm --out exports/coco-r50\n"
               "  python -m mlcdist.export runs/coco/eval/finetune/finetuned.pt   # with its classifier")
    p.add_argument("run", help="run folder, RUN/checkpoints, a step-NNNNNNNN folder, its state.pt, or "
                               "eval's finetuned.pt")
    p.add_argument("--format", choices=FORMATS, default="torchvision",
                   help="torchvision (default): a .pth state dict; timm: the same for timm.create_model "
                        "(needs timm); safetensors: model.safetensors")
    p.add_argument("--out", help="output folder (default RUN/export/FORMAT)")
    return p.parse_args(argv)


@command
def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    from mlcdist.export.run import export

    out = export(Path(args.run), args.format, Path(args.out) if args.out else None)
    print(f"wrote {out / 'README.md'} and the weights it describes in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
