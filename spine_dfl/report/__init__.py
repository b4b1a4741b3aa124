"""Per-vertebra evaluation report from the predictions table alone.

- ``write_report(table_or_path, out_dir, ...) -> dict``: metrics.json, per_vertebra.csv, report.html.
- ``write_evaluation(table, out_dir, title, ...) -> dict``: the same, with the table as predictions.csv.
- ``render_html(arrays, metrics, title, ...) -> str``: the page itself.

The figures come from ``spine_dfl.metrics`` (metric definitions in ``metrics.scores``' docstring).
The report reads a predictions table: it imports no engine, locator, gate or scorer.
"""

from spine_dfl.report.document import render_html, write_evaluation, write_report

__all__ = ["render_html", "write_evaluation", "write_report"]
