"""The comprehensive study as one command: losses x data sets x training fractions x seeds.

``python -m tools.study --help`` (``command.py``) tells the protocol; ``tools.reproduce`` is its
paper-table preset. The package:

============  ===============================================================================
module        holds
============  ===============================================================================
command.py    the command line: parser, checks, the grid of jobs, ``main``
data.py       data sets (Mulan folder, ``--arff-dir``, ``--data``) -> shards -> tensors
recipes.py    a run's two recipes: the set's own files, else derived from the vector bases
jobs.py       one run: ``Job``, its configs and fingerprint, pretrain -> finetune -> score
board.py      the process pool and the progress board fed by the runs' events
tables.py     summaries over seeds; the paper's numbers and its console/markdown tables
report.py     the study's results.json, results.md and console tables, from every stored run
plots.py      gain over BCE against labels and fraction; per-set bars of the six metrics
============  ===============================================================================
"""
