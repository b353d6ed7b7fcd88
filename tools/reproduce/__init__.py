"""Reproduce the MulSupCon paper's vector results (Tables 2 and 3) on Mulan yeast and scene.

``python -m tools.reproduce --help`` (``command.py``) tells the protocol. The package:

============  ===============================================================================
module        holds
============  ===============================================================================
command.py    the command line: parser, checks, jobs, ``main`` (``__main__.py`` runs it)
data.py       Mulan ARFF -> shards by library calls (``list_arff`` + ``write_shards``), tensors
jobs.py       one run: ``Job``, its recipes and fingerprint, pretrain -> finetune -> score
board.py      the process pool and the rich progress board fed by the runs' events
tables.py     the paper's numbers, summaries over seeds, console and markdown tables
============  ===============================================================================
"""

from tools.reproduce.command import build_parser, main
from tools.reproduce.data import ReproduceError, load_vectors
from tools.reproduce.tables import PAPER_MULSUPCON

__all__ = ["PAPER_MULSUPCON", "ReproduceError", "build_parser", "load_vectors", "main"]
