"""``python -m tools.study [NAME ...] [options]`` (the command is ``tools.study.command``)."""

import sys

from tools.study.command import main

if __name__ == "__main__":
    sys.exit(main())
