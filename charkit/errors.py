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


def validation_message(source: str, err, *, known_fields=(), docs: str = "docs/config.md") -> str:
    """One line from a pydantic ``ValidationError``: the file, the field path of the first error, the fix.

    An unknown key is reported first (a typo'd ``promt`` also leaves ``prompt`` missing) with the
    closest known field name as a hint.
    """
    import difflib

    errors = err.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(first["loc"][-1]), sorted(known_fields), n=1)
        msg = (
            f"unknown field; did you mean '{close[0]}'?"
            if close
            else f"unknown field; check its spelling against {docs}"
        )
    elif first["type"] == "missing":
        msg = "required field is missing"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}: field '{loc}': {msg}{more}"
