"""``python -m tools.make_shards``: the shard converters from a checkout.

The command itself lives in the package (``mlcdist/data/command.py``), so the installed
``mlcdist-shards`` runs the same code; this module keeps the repository spelling working.
"""

from __future__ import annotations

import sys

from mlcdist.data.command import CMD, EXAMPLES, build_parser, examples, main, writer_options

__all__ = ["CMD", "EXAMPLES", "build_parser", "examples", "main", "writer_options"]

if __name__ == "__main__":
    sys.exit(main())
