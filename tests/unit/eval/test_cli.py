"""``python -m mlcdist.eval``: sub-commands, ``run`` by default, help without importing torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support.paths import REPO

NO_TORCH = """
import sys
from mlcdist.eval.__main__ import main
try:
    rc = main({argv!r})
except SystemExit as stop:  # argparse's --help and usage errors
    rc = stop.code
assert "torch" not in sys.modules, "torch imported"
sys.exit(rc)
"""


def run_without_torch(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH.format(argv=argv)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_help_lists_the_commands_without_importing_torch():
    proc = run_without_torch(["--help"])
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "run evaluate a checkpoint" in text and "compare print the test metrics" in text
    assert "(the default command)" in text
    proc = run_without_torch(["compare", "--help"])
    assert proc.returncode == 0 and "--plot" in proc.stdout
    proc = run_without_torch(["run", "--help"])
    assert proc.returncode == 0 and "--transfer" in proc.stdout and "KEY=VALUE" in proc.stdout


def test_bad_arguments_fail_before_torch():
    proc = run_without_torch(["runs/x", "--no-such-flag"])
    assert proc.returncode == 2 and "unrecognized arguments: --no-such-flag" in proc.stderr
    proc = run_without_torch([])
    assert proc.returncode == 2 and "name a checkpoint" in proc.stderr and "compare" in proc.stderr


@pytest.mark.parametrize("argv", [["CKPT", "--mode", "finetune", "eval.lr=0.1"],
                                  ["run", "--mode", "finetune", "CKPT", "eval.lr=0.1"],
                                  ["CKPT", "eval.lr=0.1", "--mode", "finetune"]])
def test_run_is_the_default_command_with_intermixed_overrides(argv, monkeypatch):
    import mlcdist.eval.run as run

    seen = []
    monkeypatch.setattr(run, "run_eval", seen.append)
    from mlcdist.eval.__main__ import main

    assert main(argv) == 0
    (args,) = seen
    assert args.checkpoint == "CKPT" and args.mode == "finetune" and args.overrides == ["eval.lr=0.1"]
