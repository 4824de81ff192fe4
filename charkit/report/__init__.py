"""Identity-drift reports: report.json, report.csv and a self-contained report.html.

>>> from charkit.report import write_report, make_thumbnail  # doctest: +SKIP
>>> paths = write_report(verify_report, Path("out"), thumbnails={p: make_thumbnail(img)})  # doctest: +SKIP

See docs/reports.md for what each file holds.
"""

from .thumbnails import make_thumbnail, thumbnails_for
from .writer import (
    CSP,
    CSV_COLUMNS,
    REPORT_FILES,
    ReportPaths,
    build_view,
    csv_rows,
    render_csv,
    render_html,
    render_json,
    scene_slots,
    write_report,
)

__all__ = [
    "CSP",
    "CSV_COLUMNS",
    "REPORT_FILES",
    "ReportPaths",
    "build_view",
    "csv_rows",
    "make_thumbnail",
    "render_csv",
    "render_html",
    "render_json",
    "scene_slots",
    "thumbnails_for",
    "write_report",
]
