"""Convert datasets to mlcdist WebDataset shards (format: shards/README.md).

    python -m tools.make_shards digits --out shards/digits
    python -m tools.make_shards arff --arff ../shared/data/mulan/yeast/yeast-train.arff \\
        --xml ../shared/data/mulan/yeast/yeast.xml --out shards/yeast/train
    python -m tools.make_shards verify shards/yeast/train
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import track
from rich.table import Table

from mlcdist.data.shards import verify, write_dataset

console = Console()


def _summary(info) -> None:
    table = Table(title=f"{info.name}: {info.root}")
    for col in ("samples", "classes", "labels/sample", "shards", "skipped"):
        table.add_column(col, justify="right")
    table.add_row(str(info.num_samples), str(info.num_classes), f"{info.label_cardinality:.3f}",
                  str(len(info.shards)), str(len(info.skipped)))
    console.print(table)
    for item in info.skipped[:20]:
        console.print(f"  skipped {item['source']}: {item['reason']}")


def cmd_digits(args: argparse.Namespace) -> int:
    from mlcdist.data.sources.digits import CLASS_NAMES, digit_mosaics

    for split, count in (("train", args.train), ("test", args.test)):
        samples = track(digit_mosaics(split, count, size=args.size, seed=args.seed, quality=args.quality),
                        total=count, description=f"digits/{split}", console=console)
        info = write_dataset(samples, Path(args.out) / split, name=f"digits-{split}", class_names=CLASS_NAMES,
                             modality="image", image={"size": args.size, "quality": args.quality},
                             source={"kind": "digits", "seed": args.seed},
                             max_samples_per_shard=args.max_samples_per_shard)
        _summary(info)
    return 0


def cmd_arff(args: argparse.Namespace) -> int:
    from mlcdist.data.sources.arff import arff_samples

    samples, names, dim, count = arff_samples(args.arff, args.xml)
    out = Path(args.out)
    info = write_dataset(track(samples, total=count, description=out.name, console=console), out,
                         name=args.name or f"{Path(args.arff).stem}", class_names=names, modality="vector",
                         feature_dim=dim, source={"kind": "arff", "arff": Path(args.arff).name,
                                                  "xml": Path(args.xml).name},
                         max_samples_per_shard=args.max_samples_per_shard)
    _summary(info)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    problems = verify(args.location)
    if problems:
        for p in problems:
            console.print(f"[red]FAIL[/] {p}")
        return 1
    console.print(f"[green]OK[/] {args.location}: shards match dataset.json")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.make_shards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="source", required=True)

    p = sub.add_parser("digits", help="built-in demo: 2x2 mosaics of scikit-learn digits")
    p.add_argument("--out", required=True, help="writes OUT/train and OUT/test")
    p.add_argument("--train", type=int, default=2000, help="train mosaics (default 2000)")
    p.add_argument("--test", type=int, default=500, help="test mosaics (default 500)")
    p.add_argument("--size", type=int, default=64, help="mosaic side in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--max-samples-per-shard", type=int, default=500)
    p.set_defaults(run=cmd_digits)

    p = sub.add_parser("arff", help="Mulan ARFF (dense or sparse) to vector shards")
    p.add_argument("--arff", required=True, help="NAME-train.arff or NAME-test.arff")
    p.add_argument("--xml", required=True, help="NAME.xml listing the label attributes")
    p.add_argument("--out", required=True, help="output shard folder, e.g. shards/yeast/train")
    p.add_argument("--name", default=None, help="dataset name in dataset.json (default: file stem)")
    p.add_argument("--max-samples-per-shard", type=int, default=10_000)
    p.set_defaults(run=cmd_arff)

    p = sub.add_parser("verify", help="re-read shards and check them against dataset.json")
    p.add_argument("location", help="shard folder holding dataset.json")
    p.set_defaults(run=cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as err:
        console.print(f"[red]error:[/] {err}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
