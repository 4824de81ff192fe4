"""The verify stage: score folders of images against characters and write identity-drift reports.

    lifecycle.py   check_inputs -> load_profiles -> collect -> score -> summarize -> record (``verify``)
    results.py     typed results: RunSummary, VerifyReport (what report.json holds)
    report.py      report.json, report.csv and report.html (through the shared report toolkit)
    cli.py         ``charkit verify`` and ``charkit calibrate``

The identity engine (``charkit.identity``) detects, embeds and scores; this stage decides what
to score, in which runs and scene order, and records it.
"""

from __future__ import annotations

from .lifecycle import check_inputs, collect, load_profiles, score, summarize, verify
from .results import RunSummary, VerifyReport

__all__ = ["RunSummary", "VerifyReport", "check_inputs", "collect", "load_profiles", "score", "summarize", "verify"]
