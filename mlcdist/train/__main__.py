"""``python -m mlcdist.train RECIPE [key=value ...]`` (the command is ``mlcdist.train.command``)."""

import sys

from mlcdist.train.command import main

if __name__ == "__main__":
    sys.exit(main())
