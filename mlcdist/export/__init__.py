"""``python -m mlcdist.export RUN``: the query backbone as torchvision / timm / safetensors
weights with a model card.

==============  =============================================================================
module          holds
==============  =============================================================================
``__main__``    the command line (through ``mlcdist.cli.command``)
``run``         one export: checkpoint (``mlcdist.checkpoint.resolve`` / ``read``) -> files
``formats``     backbone and trained-classifier state, the writers, the load line, load checks
``card``        README.md: load line, data set, recipe, provenance, probe metrics
==============  =============================================================================
"""

FORMATS = ("torchvision", "timm", "safetensors")  # here, not in formats.py: --help needs no torch
