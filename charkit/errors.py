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


class EnvironmentProblem(CharkitError):
    """The machine, not the input: a folder that cannot be created or written, a full disk. Exit code 2."""


class StopRequested(CharkitError):
    """Ctrl-C / SIGTERM: the run stopped at a step boundary, keeping only complete outputs. Exit code 130.

    The message says what was finished and how to continue (see :mod:`charkit.interrupts`).
    """

    exit_code = 130


class CharkitWarning(UserWarning):
    """Something the user should know that does not stop the run (the CLI prints it as one ``warning:`` line)."""


def warn(message: str) -> None:
    """Issue a one-line :class:`CharkitWarning` (shown once per distinct message).

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as seen:
    ...     warnings.simplefilter("always")
    ...     warn("tiny model: rendering at 64x96 px")
    >>> str(seen[0].message)
    'tiny model: rendering at 64x96 px'
    """
    import warnings

    warnings.warn(" ".join(str(message).split()), CharkitWarning, stacklevel=2)


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


class InputProblems(CharkitError):
    """Several independent problems found in one pass over an input (a storyboard, say): all of them at once.

    ``str()`` is one line (the first problem and how many more); ``problems`` holds every one, and the CLI
    prints one line per problem, so a user fixes them all before the next run instead of one per run.
    """

    def __init__(self, problems: list[str]):
        self.problems = [" ".join(str(p).split()) for p in problems]
        more = f" (and {len(self.problems) - 1} more problems)" if len(self.problems) > 1 else ""
        super().__init__(self.problems[0] + more)

    def lines(self) -> list[str]:
        return list(self.problems)


class Problems:
    """Collects the :class:`CharkitError` s of independent checks, then raises them together.

    >>> problems = Problems()
    >>> with problems.check():
    ...     raise CharkitError("scene 's01': field 'size': 500x500 is not a multiple of 8")
    >>> problems.items
    ["scene 's01': field 'size': 500x500 is not a multiple of 8"]
    """

    def __init__(self) -> None:
        self.items: list[str] = []
        self.errors: list[CharkitError] = []  # the errors behind ``items`` (their types: missing vs. wrong)

    def check(self):
        return _Check(self)

    def add(self, error: CharkitError) -> None:
        for line in error.lines() if isinstance(error, InputProblems) else [str(error)]:
            self.items.append(line)
            self.errors.append(error)

    def extend(self, other: Problems) -> None:
        """Take over every problem of ``other`` (a scene's own checks, say)."""
        self.items.extend(other.items)
        self.errors.extend(other.errors + [CharkitError(i) for i in other.items[len(other.errors) :]])

    def only_missing(self) -> bool:
        """True when every problem is something not installed yet (a :class:`MissingModelError`), no mistake."""
        return len(self.errors) == len(self.items) and all(isinstance(e, MissingModelError) for e in self.errors)

    def raise_any(self) -> None:
        if self.items:
            raise InputProblems(self.items)


class _Check:
    def __init__(self, problems: Problems):
        self.problems = problems

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, CharkitError) and not issubclass(exc_type, StopRequested):
            self.problems.add(exc)
            return True
        return False
