"""Where the repository and the optional Mulan data are (one rule for every test)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUPPORT = Path(__file__).resolve().parent
# The official Mulan splits are not in the repository: MLCDIST_MULAN points at them, default the
# workspace's shared copy next to the checkout (docs: ../shared/data/mulan/README.md).
MULAN = Path(os.environ.get("MLCDIST_MULAN", REPO.parent / "shared" / "data" / "mulan"))
needs_mulan = pytest.mark.skipif(not (MULAN / "yeast" / "yeast-train.arff").is_file(),
                                 reason=f"Mulan data not present in {MULAN} (set MLCDIST_MULAN)")
