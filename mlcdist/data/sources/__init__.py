"""One reader per source format, and :data:`SOURCES`: the registry the converter is built from.

Each reader (``coco.list_coco``, ``voc.list_voc``, ...) turns a source's files into a
:class:`~mlcdist.data.sources.common.Listing`; a :class:`Source` names the reader, its command
line options (one per reader parameter, ``--image-list`` -> ``image_list``) and its help text.
``python -m tools.make_shards NAME`` builds its sub-command from ``SOURCES[NAME]`` and hands the
listing to the one writer (``mlcdist.data.convert``). Readers are imported only when used, so
the command starts fast. The built-in ``digits`` demo writes two splits and has its own
sub-command.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from mlcdist.errors import MlcdistError


@dataclass(frozen=True)
class Option:
    """One reader parameter as a command line option; ``folder``: must be an existing folder
    (checked before listing: a wrong folder would otherwise skip every image as missing)."""

    flag: str
    help: str
    required: bool = False
    default: Any = None
    choices: Optional[tuple[str, ...]] = None
    switch: bool = False  # a store_true flag
    metavar: Optional[str] = None
    folder: bool = False

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        if self.switch:
            parser.add_argument(self.flag, action="store_true", help=self.help)
            return
        extra = {"metavar": self.metavar} if self.metavar else {}
        parser.add_argument(self.flag, required=self.required, default=self.default,
                            choices=self.choices, help=self.help, **extra)


@dataclass(frozen=True)
class Source:
    """A source format: ``mlcdist.data.sources.<module>.<reader>(**options)`` -> Listing."""

    help: str
    module: str
    reader: str
    options: tuple[Option, ...]

    def doc(self) -> str:
        return importlib.import_module(f"mlcdist.data.sources.{self.module}").__doc__ or ""

    def listing(self, args: argparse.Namespace):
        """The reader's listing for parsed ``args`` (folder options checked first)."""
        for option in self.options:
            value = getattr(args, option.dest)
            if option.folder and value is not None and not Path(value).is_dir():
                raise MlcdistError(f"{option.flag} {value}: no such folder; check the path")
        reader = getattr(importlib.import_module(f"mlcdist.data.sources.{self.module}"), self.reader)
        return reader(**{option.dest: getattr(args, option.dest) for option in self.options})


SOURCES: dict[str, Source] = {
    "coco": Source("COCO-format JSON (MS-COCO, Objects365)", "coco", "list_coco", (
        Option("--images", "folder that the JSON's file_name entries are relative to",
               required=True, folder=True),
        Option("--annotations", "instances_*.json (COCO format)", required=True),
    )),
    "voc": Source("PASCAL VOC 2007/2012", "voc", "list_voc", (
        Option("--root", "e.g. VOCdevkit/VOC2007", required=True, folder=True),
        Option("--split", "ImageSets/Main/SPLIT.txt (default trainval)", default="trainval"),
        Option("--difficult", "a class seen only in difficult objects: ignore (default) or count "
               "as positive", default="ignore", choices=("ignore", "positive")),
    )),
    "nuswide": Source("NUS-WIDE (81 concepts)", "nuswide", "list_nuswide", (
        Option("--images", "the Flickr folder (image list paths are relative to it)",
               required=True, folder=True),
        Option("--image-list", "ImageList/TrainImagelist.txt or TestImagelist.txt", required=True),
        Option("--labels-dir", "folder of Labels_<concept>_{Train,Test}.txt", required=True),
        Option("--concepts", "Concepts81.txt (class order)", required=True),
        Option("--split", "label file suffix (default Train)", default="Train",
               choices=("Train", "Test")),
    )),
    "mirflickr": Source("MIRFLICKR-25k (24 concepts)", "mirflickr", "list_mirflickr", (
        Option("--images", "folder of im1.jpg .. imN.jpg", required=True, folder=True),
        Option("--annotations", "folder of <concept>.txt files", required=True),
        Option("--split-file", "image numbers to convert, one per line (default: all)"),
        Option("--include-r1", "also use the <concept>_r1.txt files as classes", switch=True),
    )),
    "manifest": Source("generic CSV (path,labels) or JSONL manifest", "manifest", "list_manifest", (
        Option("--manifest", "a .csv or .jsonl file", required=True),
        Option("--classes", "class names, one per line (default: sorted union of labels)"),
        Option("--root", "folder relative paths start from (default: the manifest's)",
               folder=True),
    )),
    "arff": Source("Mulan ARFF (dense or sparse) to vector shards", "arff", "list_arff", (
        Option("--arff", "NAME-train.arff or NAME-test.arff", required=True),
        Option("--xml", "NAME.xml listing the label attributes", required=True),
        Option("--standardize-with", "standardise every feature with the mean/std of this TRAIN "
               "split (std 0 -> 1; recorded in dataset.json as source.standardize); pass the same "
               "train file for the train and the test split, as the MulSupCon authors' "
               "StandardScaler does", metavar="TRAIN.arff"),
    )),
}
