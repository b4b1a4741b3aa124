"""Batch scoring of PACS exports: ``score(checkpoint, inputs, out_dir, ...)`` (``spine-dfl score``).

- ``files``: one file -> its file item (header, ROIs, decode, transforms); never raises;
- ``isolation``: decode workers, supervised so that a decoder that kills its process fails one file;
- ``scorer``: model batches over file items, rows of finished files;
- ``journal``: crash-safe partial outputs, ``--resume``, the final merge;
- ``dicom_jobs``: SR and Secondary Capture results (``--dicom-out``) in writer processes;
- ``run``: ``score()``, the library entry point (``prepare_scoring`` + ``score_prepared``: a model
  loaded once for many small batches of files, as the DICOM node scores studies); ``summary``: its outcome and exit status.

The library entry points of ``run`` (torch) load on first use of their names; the rest (numpy
and the standard library) is imported eagerly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spine_dfl.lazy import lazy_attributes
from spine_dfl.score.errors import DECODER_CRASHED, ScoreError, reason_category
from spine_dfl.score.files import FileSamples
from spine_dfl.score.isolation import DecodePool
from spine_dfl.score.journal import PARTIAL_DIR, PartWriter, collect_done
from spine_dfl.score.summary import EXIT_INPUTS_FAILED, EXIT_OK, EXIT_USAGE, ScoreSummary

if TYPE_CHECKING:  # the lazy names below, for editors and type checkers
    from spine_dfl.score.run import ScoringSetup, prepare_scoring, score, score_prepared

# name -> the submodule that defines it (torch: imported on first use)
_LAZY = {
    "score": "run",
    "prepare_scoring": "run",
    "score_prepared": "run",
    "ScoringSetup": "run",
}

__all__ = [
    "score", "prepare_scoring", "score_prepared", "ScoringSetup", "ScoreSummary", "EXIT_OK", "EXIT_INPUTS_FAILED",
    "EXIT_USAGE", "ScoreError", "DECODER_CRASHED", "reason_category", "FileSamples", "DecodePool", "PARTIAL_DIR",
    "PartWriter", "collect_done",
]

__getattr__ = lazy_attributes(__name__, _LAZY)
