"""``python -m tools.reproduce DATASET ... [KEY=VALUE ...]`` (the command is
``tools.reproduce.command``)."""

import sys

from tools.reproduce.command import main

if __name__ == "__main__":
    sys.exit(main())
