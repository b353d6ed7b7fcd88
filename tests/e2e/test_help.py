"""Every command answers --help in plain words without importing torch (which takes seconds)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support.paths import REPO

COMMANDS = ["mlcdist.train", "mlcdist.eval", "mlcdist.export", "tools.make_shards", "tools.study",
            "tools.reproduce"]


@pytest.mark.parametrize("module", COMMANDS)
def test_help_is_plain_and_needs_no_torch(module):
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", module, "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:") and "``" not in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "torchvision" not in imported, module


def installed_scripts() -> dict[str, str]:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("name", sorted(installed_scripts()))
def test_installed_commands_point_into_the_package(name):
    """Each [project.scripts] entry imports from mlcdist (tools/ is not installed) and answers
    --help as itself, without torch."""
    module, _, func = installed_scripts()[name].partition(":")
    assert module.split(".")[0] == "mlcdist", name
    code = f"import sys; sys.argv = [{name!r}, '--help']; from {module} import {func}; sys.exit({func}())"
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:") and "``" not in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "torchvision" not in imported, name
