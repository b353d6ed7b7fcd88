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

from rich.console import Console
from rich.table import Table

from mlcdist.data.info import DatasetInfo
from mlcdist.data.encode import EncodeSettings
from mlcdist.data.shards import parse_size, write_shards
from mlcdist.data.verify import verify
from mlcdist.data.sources.common import Listing

console = Console(stderr=True)

CMD = "python -m tools.make_shards"
EXAMPLES = {
    "coco": f"{CMD} coco --images coco/train2014 \\\n"
    "      --annotations coco/annotations/instances_train2014.json --out shards/coco/train",
    "voc": f"{CMD} voc --root VOCdevkit/VOC2007 --split trainval --out shards/voc07/trainval",
    "nuswide": f"{CMD} nuswide --images NUS-WIDE/Flickr \\\n"
    "      --image-list NUS-WIDE/ImageList/TrainImagelist.txt \\\n"
    "      --labels-dir NUS-WIDE/TrainTestLabels --concepts NUS-WIDE/Concepts81.txt \\\n"
    "      --split Train --out shards/nuswide/train",
    "mirflickr": f"{CMD} mirflickr --images mirflickr \\\n"
    "      --annotations mirflickr25k_annotations_v080 --out shards/mirflickr/all",
    "manifest": f"{CMD} manifest --manifest my_data/train.csv --out shards/mine/train",
    "arff": f"{CMD} arff --arff ../shared/data/mulan/yeast/yeast-test.arff \\\n"
    "      --xml ../shared/data/mulan/yeast/yeast.xml \\\n"
    "      --standardize-with ../shared/data/mulan/yeast/yeast-train.arff --out shards/yeast/test",
    "digits": f"{CMD} digits --out shards/digits   # writes train/ and test/",
    "verify": f"{CMD} verify shards/coco/train",
}


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


def convert(listing: Listing, out: Path, args: argparse.Namespace, name: str) -> DatasetInfo:
    """The shared tail of every image/vector converter: options -> :func:`write_shards`."""
    if getattr(args, "drop_unlabelled", False):
        listing = listing.without_unlabelled()
    info = write_shards(
        listing.specs,
        out,
        listing.class_names,
        name=name,
        modality=listing.modality,
        source=listing.source,
        feature_dim=listing.feature_dim,
        encode=EncodeSettings(args.shorter_side or None, args.quality),
        workers=args.workers,
        max_samples_per_shard=args.max_samples_per_shard,
        max_shard_bytes=parse_size(args.shard_size),
        resume=not args.no_resume,
        progress=not args.no_progress,
    )
    _summary(info)
    return info


def _default_name(out: Path) -> str:
    return f"{out.parent.name}-{out.name}" if out.parent.name else out.name


def _one(list_fn: Callable[[argparse.Namespace], Listing]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        out = Path(args.out)
        convert(list_fn(args), out, args, args.name or _default_name(out))
        return 0

    return run


def _listing(module: str, fn: str, **kwargs: str) -> Callable[[argparse.Namespace], Listing]:
    """Lazy reader call: ``module.fn(**{param: args.<attr>})`` (keeps start-up fast)."""

    def make(args: argparse.Namespace) -> Listing:
        import importlib

        reader = getattr(importlib.import_module(f"mlcdist.data.sources.{module}"), fn)
        return reader(**{param: getattr(args, attr) for param, attr in kwargs.items()})

    return make


def cmd_digits(args: argparse.Namespace) -> int:
    from mlcdist.data.sources.digits import list_digits

    for split, count in (("train", args.train), ("test", args.test)):
        listing = list_digits(split, count, size=args.size, seed=args.seed, tile_prob=args.tile_prob,
                              vectors=args.vectors)
        args.shorter_side = args.size  # synthetic mosaics are already at their final size
        convert(listing, Path(args.out) / split, args, f"digits-{split}")
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
        "--drop-unlabelled", action="store_true", help="leave out samples with an empty label set"
    )
    g.add_argument(
        "--no-resume", action="store_true", help="ignore a previous interrupted run and start over"
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="python -m tools.make_shards",
        description=__doc__,
        formatter_class=fmt,
        epilog="examples:\n  " + "\n  ".join(EXAMPLES.values()),
    )
    sub = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")

    def add(
        name: str, help_text: str, doc_module: str | None, run: Callable
    ) -> argparse.ArgumentParser:
        description = help_text
        if doc_module:
            import importlib

            description += "\n\n" + (
                importlib.import_module(f"mlcdist.data.sources.{doc_module}").__doc__ or ""
            )
        p = sub.add_parser(
            name,
            help=help_text,
            description=description,
            formatter_class=fmt,
            epilog="example:\n  " + EXAMPLES[name],
        )
        p.set_defaults(run=run)
        return p

    p = add(
        "coco",
        "COCO-format JSON (MS-COCO, Objects365)",
        "coco",
        _one(_listing("coco", "list_coco", images="images", annotations="annotations")),
    )
    p.add_argument(
        "--images", required=True, help="folder that the JSON's file_name entries are relative to"
    )
    p.add_argument("--annotations", required=True, help="instances_*.json (COCO format)")
    _common(p)

    p = add(
        "voc",
        "PASCAL VOC 2007/2012",
        "voc",
        _one(_listing("voc", "list_voc", root="root", split="split", difficult="difficult")),
    )
    p.add_argument("--root", required=True, help="e.g. VOCdevkit/VOC2007")
    p.add_argument(
        "--split", default="trainval", help="ImageSets/Main/SPLIT.txt (default trainval)"
    )
    p.add_argument(
        "--difficult",
        choices=["ignore", "positive"],
        default="ignore",
        help="a class seen only in difficult objects: ignore (default) or count as positive",
    )
    _common(p)

    p = add(
        "nuswide",
        "NUS-WIDE (81 concepts)",
        "nuswide",
        _one(
            _listing(
                "nuswide",
                "list_nuswide",
                images="images",
                image_list="image_list",
                labels_dir="labels_dir",
                concepts="concepts",
                split="split",
            )
        ),
    )
    p.add_argument(
        "--images", required=True, help="the Flickr folder (image list paths are relative to it)"
    )
    p.add_argument(
        "--image-list", required=True, help="ImageList/TrainImagelist.txt or TestImagelist.txt"
    )
    p.add_argument(
        "--labels-dir", required=True, help="folder of Labels_<concept>_{Train,Test}.txt"
    )
    p.add_argument("--concepts", required=True, help="Concepts81.txt (class order)")
    p.add_argument(
        "--split",
        choices=["Train", "Test"],
        default="Train",
        help="label file suffix (default Train)",
    )
    _common(p)

    p = add(
        "mirflickr",
        "MIRFLICKR-25k (24 concepts)",
        "mirflickr",
        _one(
            _listing(
                "mirflickr",
                "list_mirflickr",
                images="images",
                annotations="annotations",
                split_file="split_file",
                include_r1="include_r1",
            )
        ),
    )
    p.add_argument("--images", required=True, help="folder of im1.jpg .. imN.jpg")
    p.add_argument("--annotations", required=True, help="folder of <concept>.txt files")
    p.add_argument(
        "--split-file", default=None, help="image numbers to convert, one per line (default: all)"
    )
    p.add_argument(
        "--include-r1", action="store_true", help="also use the <concept>_r1.txt files as classes"
    )
    _common(p)

    p = add(
        "manifest",
        "generic CSV (path,labels) or JSONL manifest",
        "manifest",
        _one(
            _listing(
                "manifest", "list_manifest", manifest="manifest", classes="classes", root="root"
            )
        ),
    )
    p.add_argument("--manifest", required=True, help="a .csv or .jsonl file")
    p.add_argument(
        "--classes",
        default=None,
        help="class names, one per line (default: sorted union of labels)",
    )
    p.add_argument(
        "--root", default=None, help="folder relative paths start from (default: the manifest's)"
    )
    _common(p)

    p = add(
        "arff",
        "Mulan ARFF (dense or sparse) to vector shards",
        "arff",
        _one(_listing("arff", "list_arff", arff="arff", xml="xml",
                      standardize_with="standardize_with")),
    )
    p.add_argument("--arff", required=True, help="NAME-train.arff or NAME-test.arff")
    p.add_argument("--xml", required=True, help="NAME.xml listing the label attributes")
    p.add_argument(
        "--standardize-with",
        default=None,
        metavar="TRAIN.arff",
        help="standardise every feature with the mean/std of this TRAIN split (std 0 -> 1; "
        "recorded in dataset.json as source.standardize); pass the same train file for the "
        "train and the test split, as the MulSupCon authors' StandardScaler does",
    )
    _common(p)

    p = add("digits", "built-in demo: 2x2 mosaics of scikit-learn digits", "digits", cmd_digits)
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

    p = add("verify", "re-read shards and check them against dataset.json", None, cmd_verify)
    p.add_argument("location", help="shard folder holding dataset.json")
    p.add_argument("--decode", action="store_true", help="also decode every JPEG (slower)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as err:  # AnnotationError is a ValueError
        console.print(f"[red]error:[/] {err}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
