"""The verify stage: score folders of images against characters and write identity-drift reports.

    lifecycle.py   check_inputs -> check_independence -> load_profiles -> score -> look_profiles -> summarize -> record
    results.py     typed results: RunSummary, CharacterCount, VerifyReport (what report.json holds)
    look.py        the look profile of a run: matched faces measured, set against the references
    report.py      report.json, report.csv and report.html (through the shared report toolkit)
    look_view.py   what report.html draws of the look profile (tables and a small plot)
    cli.py         ``charkit verify`` and ``charkit calibrate``

The identity engine (``charkit.identity``) detects, embeds and scores, with one backend or several
(a panel); the look engine (``charkit.look``) measures. This stage decides what to score, in which
runs and scene order, which model may judge which image, and records it.
"""

from __future__ import annotations

from .lifecycle import (
    check_independence,
    check_inputs,
    collect,
    load_profiles,
    look_profiles,
    score,
    summarize,
    verify,
)
from .results import CharacterCount, RunSummary, VerifyReport

__all__ = [
    "CharacterCount",
    "RunSummary",
    "VerifyReport",
    "check_independence",
    "check_inputs",
    "collect",
    "load_profiles",
    "look_profiles",
    "score",
    "summarize",
    "verify",
]
