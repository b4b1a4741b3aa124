"""The outcome of a scoring run: ``summary.json`` and the exit status it implies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from spine_dfl.io.errors import EXIT_INPUTS_FAILED, EXIT_OK, EXIT_USAGE

__all__ = ["EXIT_INPUTS_FAILED", "EXIT_OK", "EXIT_USAGE", "PREDICTIONS", "SUMMARY", "ScoreSummary"]
PREDICTIONS = "predictions.csv"
SUMMARY = "summary.json"


@dataclass
class ScoreSummary:
    """Outcome of a scoring run (all ranks see rank 0's merged numbers).

    ``strict``: the run was asked to count failed files as a failure of the run (``exit_status``).
    ``shifted``: images unlike the training images (``in_distribution`` no; refused ones included);
    ``shift_check``: ``available``, or why not (the checkpoint has no training-distribution statistics).
    """

    found: int
    scored: int
    failed: int
    failed_by_reason: dict[str, int]
    rows: int
    predictions_csv: str
    summary_json: str
    scored_this_run: int = 0
    from_earlier_runs: int = 0
    elapsed_s: float = 0.0
    files_per_s: float = 0.0
    device: str = "cpu"
    world_size: int = 1
    checkpoint: str = ""
    class_names: list[str] = field(default_factory=list)
    dicom_out: dict[str, Any] | None = None
    strict: bool = False
    shifted: int = 0
    shift_check: str = ""

    def exit_status(self, strict: bool | None = None) -> int:
        """0, or 3 (``EXIT_INPUTS_FAILED``) when failed files count (``strict``, by default the run's own
        setting) and some failed: the command line's status."""
        strict = self.strict if strict is None else strict
        return EXIT_INPUTS_FAILED if strict and self.failed > 0 else EXIT_OK
