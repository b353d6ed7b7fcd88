"""Helpers shared by the tests (importable as ``support.*``: pytest puts ``tests/`` on the path,
see ``pythonpath`` in pyproject.toml). Workers here also run as scripts under torchrun."""
