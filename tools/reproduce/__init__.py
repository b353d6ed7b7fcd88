"""Reproduce the MulSupCon paper's vector results (Tables 2 and 3) on Mulan yeast and scene.

``python -m tools.reproduce --help`` (``command.py``) tells the protocol. This is the paper-table
preset of ``tools.study``: the same data preparation, recipes, runs, process pool and progress
board (``tools/study/``), with the paper's four methods, the full training set and the paper's
numbers beside ours (``tools/study/tables.py``).
"""

from tools.reproduce.command import build_parser, main
from tools.study.data import ReproduceError, load_vectors
from tools.study.tables import PAPER_MULSUPCON

__all__ = ["PAPER_MULSUPCON", "ReproduceError", "build_parser", "load_vectors", "main"]
