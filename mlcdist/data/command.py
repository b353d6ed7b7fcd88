"""Convert a multi-label dataset to WebDataset shards + dataset.json (format: shards/README.md).

Every converter shares one writer: images are resized once (shorter side, never upscaled) and
re-encoded as JPEG in parallel worker processes, samples keep a documented order, output is
byte-identical for the same input, and an interrupted run resumes after its last complete shard.
Missing or corrupt images are skipped and listed in dataset.json; malformed annotations are errors.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.table import Table

from mlcdist.cli import command
from mlcdist.data.convert import DEFAULT_MAX_SKIPPED, WriterOptions, convert
from mlcdist.data.encode import EncodeSettings
from mlcdist.data.info import DatasetInfo
from mlcdist.data.shards import parse_size
from mlcdist.data.sources import SOURCES, Source
from mlcdist.data.verify import verify
from mlcdist.errors import MlcdistError

console = Console(stderr=True)

CMD = "python -m tools.make_shards"  # from a checkout; the installed command is mlcdist-shards
INSTALLED = "mlcdist-shards"


def examples(cmd: str = CMD) -> dict[str, str]:
    """One example line per sub-command, spelled with the command that was run."""
    return {
        "coco": f"{cmd} coco --images coco/train2014 \\\n"
        "      --annotations coco/annotations/instances_train2014.json --out shards/coco/train",
        "voc": f"{cmd} voc --root VOCdevkit/VOC2007 --split trainval --out shards/voc07/trainval",
        "nuswide": f"{cmd} nuswide --images NUS-WIDE/Flickr \\\n"
        "      --image-list NUS-WIDE/ImageList/TrainImagelist.txt \\\n"
        "      --labels-dir NUS-WIDE/TrainTestLabels --concepts NUS-WIDE/Concepts81.txt \\\n"
        "      --split Train --out shards/nuswide/train",
        "mirflickr": f"{cmd} mirflickr --images mirflickr \\\n"
        "      --annotations mirflickr25k_annotations_v080 --out shards/mirflickr/all",
        "manifest": f"{cmd} manifest --manifest my_data/train.csv --out shards/mine/train",
        "arff": f"{cmd} arff --arff ../shared/data/mulan/yeast/yeast-test.arff \\\n"
        "      --xml ../shared/data/mulan/yeast/yeast.xml \\\n"
        "      --standardize-with ../shared/data/mulan/yeast/yeast-train.arff --out shards/yeast/test",
        "digits": f"{cmd} digits --out shards/digits   # writes train/ and test/",
        "verify": f"{cmd} verify shards/coco/train",
    }


EXAMPLES = examples()


def _summary(info: DatasetInfo) -> None:
    table = Table(title=f"{info.name} -> {info.root}")
    for col in ("samples", "classes", "labels/sample", "shards", "skipped"):
        table.add_column(col, justify="right")
    table.add_row(
        str(info.num_samples),
        str(info.num_classes),
        f"{info.label_cardinality:.3f}",
        str(len(info.shards)),
        str(len(info.skipped)),
    )
    console.print(table)
    for item in info.skipped[:20]:
        console.print(f"  [yellow]skipped[/] {item['source']}: {item['reason']}")
    if len(info.skipped) > 20:
        console.print(f"  ... and {len(info.skipped) - 20} more (all listed in dataset.json)")


def writer_options(args: argparse.Namespace) -> WriterOptions:
    return WriterOptions(
        encode=EncodeSettings(args.shorter_side or None, args.quality),
        workers=args.workers,
        max_samples_per_shard=args.max_samples_per_shard,
        max_shard_bytes=parse_size(args.shard_size),
        drop_unlabelled=args.drop_unlabelled,
        resume=not args.no_resume,
        progress=not args.no_progress,
        max_skipped=args.max_skipped,
    )


def _default_name(out: Path) -> str:
    return f"{out.parent.name}-{out.name}" if out.parent.name else out.name


def _converter(source: Source) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        out = Path(args.out)
        convert(source.listing(args), out, writer_options(args), args.name or _default_name(out),
                report=_summary)
        return 0

    return run


def cmd_digits(args: argparse.Namespace) -> int:
    from mlcdist.data.sources.digits import list_digits

    args.shorter_side = args.size  # synthetic mosaics are already at their final size
    for split, count in (("train", args.train), ("test", args.test)):
        listing = list_digits(split, count, size=args.size, seed=args.seed, tile_prob=args.tile_prob,
                              vectors=args.vectors)
        convert(listing, Path(args.out) / split, writer_options(args), f"digits-{split}",
                report=_summary)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    report = verify(args.location, decode_images=args.decode)
    table = Table(title=f"verify {args.location}")
    for col in ("shard", "samples (index)", "samples (found)", "sha256", "problems"):
        table.add_column(col)
    for s in report.shards:
        table.add_row(
            s.file,
            str(s.expected),
            str(s.found),
            "[green]ok[/]" if s.sha256_ok else "[red]BAD[/]",
            "; ".join(s.problems[:3]) + (" ..." if len(s.problems) > 3 else "") or "-",
        )
    console.print(table)
    for problem in report.problems:
        console.print(f"[red]FAIL[/] {problem}")
    console.print(
        "[green]OK[/]: shards match dataset.json" if report.ok else "[red]verify failed[/]"
    )
    return 0 if report.ok else 1


def _common(
    p: argparse.ArgumentParser, out_help: str = "output shard folder, e.g. shards/NAME/train"
) -> None:
    g = p.add_argument_group("writer options (shared by every converter)")
    g.add_argument("--out", required=True, help=out_help)
    g.add_argument(
        "--name",
        default=None,
        help="dataset name in dataset.json (default: PARENT-FOLDER of --out)",
    )
    g.add_argument(
        "--shorter-side",
        type=int,
        default=256,
        help="scale down so the shorter side is at most this (never up; 0 = keep; default 256)",
    )
    g.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    g.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="decode/resize worker processes (default min(8, cpu count))",
    )
    g.add_argument(
        "--shard-size", default="256MB", help="target shard size, e.g. 256MB, 1GiB (default 256MB)"
    )
    g.add_argument("--max-samples-per-shard", type=int, default=10_000, help="default 10000")
    g.add_argument(
        "--max-skipped",
        type=float,
        default=DEFAULT_MAX_SKIPPED,
        metavar="FRACTION",
        help="fail when more than this fraction of the listed samples is skipped (missing or "
        f"corrupt images, non-finite vectors; default {DEFAULT_MAX_SKIPPED:g})",
    )
    g.add_argument(
        "--drop-unlabelled", action="store_true", help="leave out samples with an empty label set"
    )
    g.add_argument(
        "--no-resume", action="store_true", help="ignore a previous interrupted run and start over"
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser(prog: str = CMD) -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    lines = examples(prog)
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        formatter_class=fmt,
        epilog="examples:\n  " + "\n  ".join(lines.values()),
    )
    sub = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")

    def add(name: str, help_text: str, description: str, run: Callable) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=description, formatter_class=fmt,
                           epilog="example:\n  " + lines[name])
        p.set_defaults(run=run)
        return p

    for name, source in SOURCES.items():
        p = add(name, source.help, source.help + "\n\n" + source.doc(), _converter(source))
        for option in source.options:
            option.add_to(p)
        _common(p)

    from mlcdist.data.sources import digits

    help_text = "built-in demo: 2x2 mosaics of scikit-learn digits"
    p = add("digits", help_text, help_text + "\n\n" + (digits.__doc__ or ""), cmd_digits)
    p.add_argument("--train", type=int, default=2000, help="train mosaics (default 2000)")
    p.add_argument("--test", type=int, default=500, help="test mosaics (default 500)")
    p.add_argument(
        "--size", type=int, default=64, help="mosaic side in pixels, no further resize (default 64)"
    )
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--tile-prob", type=float, default=0.45,
                   help="chance each of the 4 tiles shows a digit, else black; at least one does "
                        "(default 0.45: about 1.8 labels per mosaic)")
    p.add_argument("--vectors", action="store_true",
                   help="write each 16x16 mosaic as a 256-d vector of grey levels in [0, 1] "
                        "(the vector demo, recipes/demo.yaml) instead of a JPEG")
    _common(p, out_help="writes OUT/train and OUT/test")
    p.set_defaults(max_samples_per_shard=500)

    help_text = "re-read shards and check them against dataset.json"
    p = add("verify", help_text, help_text, cmd_verify)
    p.add_argument("location", help="shard folder holding dataset.json")
    p.add_argument("--decode", action="store_true", help="also decode every JPEG (slower)")
    return parser


def _run(argv: Optional[list[str]], prog: str) -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        return args.run(args)
    except MlcdistError:
        raise
    except ValueError as err:  # the readers' and writer's remaining ValueErrors are input problems
        raise MlcdistError(str(err)) from None


@command
def main(argv: Optional[list[str]] = None) -> int:
    """Run one sub-command; user errors print as one ``error:`` line (``mlcdist.cli``)."""
    return _run(argv, CMD)


@command
def installed_main(argv: Optional[list[str]] = None) -> int:
    """The ``mlcdist-shards`` console script: the same command under its installed name."""
    return _run(argv, INSTALLED)


if __name__ == "__main__":
    sys.exit(installed_main())
