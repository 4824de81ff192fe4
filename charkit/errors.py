"""User-facing errors.

Every problem with the user's input (a file, a config field, a CLI option) is a
:class:`CharkitError`: the CLI prints its one-line message to stderr and exits 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CharkitError(Exception):
    """Bad input: one line naming the file/field and the fix. CLI exit code 2."""

    exit_code = 2

    def __init__(self, message: str):
        # Keep the message on one line: the CLI contract is "one line on stderr".
        super().__init__(" ".join(str(message).split()))


class MissingModelError(CharkitError):
    """A model file or pack the user must provide (we never download silently)."""
