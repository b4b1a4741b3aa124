"""Batch scoring of PACS exports: ``score(checkpoint, inputs, out_dir, ...)`` (``spine-dfl score``).

- ``files``: one file -> its file item (header, ROIs, decode, transforms); never raises;
- ``isolation``: decode workers, supervised so that a decoder that kills its process fails one file;
- ``scorer``: model batches over file items, rows of finished files;
- ``journal``: crash-safe partial outputs, ``--resume``, the final merge;
- ``dicom_jobs``: SR and Secondary Capture results (``--dicom-out``) in writer processes;
- ``run``: ``score()``, the library entry point (``prepare_scoring`` + ``score_prepared``: a model
  loaded once for many small batches of files, as the DICOM node scores studies); ``summary``: its outcome and exit status.

Names load on first use, so that ``import spine_dfl.score`` costs nothing until something is used.
"""

from __future__ import annotations


from spine_dfl.lazy import lazy_attributes

_NAMES = {
    "score": "run",
    "prepare_scoring": "run",
    "score_prepared": "run",
    "ScoringSetup": "run",
    "ScoreSummary": "summary",
    "EXIT_OK": "summary",
    "EXIT_FAILURES": "summary",
    "EXIT_USAGE": "summary",
    "ScoreError": "errors",
    "DECODER_CRASHED": "errors",
    "reason_category": "errors",
    "FileSamples": "files",
    "DecodePool": "isolation",
    "PARTIAL_DIR": "journal",
    "PartWriter": "journal",
    "collect_done": "journal",
}

__all__ = list(_NAMES)


__getattr__ = lazy_attributes(__name__, _NAMES)
