"""The one error family of mlcdist: a user's problem, phrased so that it can be fixed.

Every command line runs through :func:`mlcdist.cli.run`, which prints an :class:`MlcdistError`
as one ``error: ...`` line (the file, the recipe key or the line, and the fix) and exits with
:data:`USER_ERROR`; anything else is a bug and keeps its traceback.

A subclass exists only where a caller must tell the kinds apart (e.g. eval refusing a
checkpoint vs a recipe typo); the message carries the detail.
"""

from __future__ import annotations

USER_ERROR = 2  # bad recipe, path, data or option: fix the input and run again
NON_FINITE_EXIT = 3  # training diverged (NaN/inf): lower the learning rate and resume


class MlcdistError(ValueError):
    """A problem with the user's input, phrased as ``WHERE: what is wrong; how to fix it``.

    A ``ValueError`` so that library callers that already catch bad values keep working."""

    exit_code = USER_ERROR
