"""Per-vertebra evaluation report from the predictions table alone.

- ``load_predictions(path) -> (table, classes)``: read and validate ``predictions.csv``.
- ``compute_metrics(table, classes=None, n_bootstrap=1000, seed=0) -> dict``: metrics.json content.
- ``per_vertebra_table(metrics) -> DataFrame``: per_vertebra.csv content (C1..S1, unknown, ``all``).
- ``write_report(table_or_path, out_dir, ...) -> dict``: metrics.json, per_vertebra.csv, report.html.
- ``ReportError(ValueError)``: invalid table; the message names what and where.

Metric definitions: ``spine_dfl.report.metrics`` module docstring.
"""

from spine_dfl.report.document import render_html, write_report
from spine_dfl.report.metrics import SMALL_SAMPLE, compute_metrics, per_vertebra_table
from spine_dfl.report.table import MISSING_LEVEL, ReportError, load_predictions

__all__ = [
    "MISSING_LEVEL", "SMALL_SAMPLE", "ReportError", "compute_metrics", "load_predictions", "per_vertebra_table",
    "render_html", "write_report",
]
