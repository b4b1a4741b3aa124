"""Metrics of a predictions table, shared by training (validation figures) and the report.

- ``table``: validate a predictions table (labels, predictions, probabilities) into
  ``PredictionArrays``; ``load_predictions(path)``; ``ReportError`` for a table that cannot be
  evaluated.
- ``scores``: ``compute_metrics`` (metrics.json content, definitions in its module docstring),
  ``group_metrics`` (the figures a training epoch selects on), ``per_vertebra_table``, bootstrap
  intervals, calibration bins.

Imports numpy, pandas, scikit-learn, ``io`` and ``predictions`` only (no torch, no matplotlib).
"""

from spine_dfl.metrics.scores import SMALL_SAMPLE, compute_metrics, group_metrics, per_vertebra_table
from spine_dfl.metrics.table import MISSING_LEVEL, PredictionArrays, ReportError, load_predictions, prepare

__all__ = [
    "MISSING_LEVEL", "SMALL_SAMPLE", "PredictionArrays", "ReportError", "compute_metrics", "group_metrics",
    "load_predictions", "per_vertebra_table", "prepare",
]
