"""Stop the image build when the image's torch or torchvision is not the one pinned in
docker/constraints.txt (a new BASE_IMAGE needs new pins).

    python docker/check_pins.py     # the Dockerfile runs it before and after pip install
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

CONSTRAINTS = Path(__file__).with_name("constraints.txt")
BASE = ("torch", "torchvision")  # come with the base image; pip must not replace them


def pins(text: str) -> dict[str, str]:
    """name -> version of every `name==version` line (comments and blank lines skipped)."""
    return {m[1].lower(): m[2] for m in re.finditer(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", text, re.M)}


def main() -> int:
    pinned = pins(CONSTRAINTS.read_text())
    problems = []
    for name in BASE:
        try:
            have = version(name)
        except PackageNotFoundError:
            have = "none"
        if have.split("+")[0] != pinned.get(name):
            problems.append(f"{name} {have} in the image, {pinned.get(name)} in {CONSTRAINTS}")
    if problems:
        print("error: " + "; ".join(problems) + " (change the pins with BASE_IMAGE)", file=sys.stderr)
        return 1
    print(" ".join(f"{name} {version(name)}" for name in BASE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
