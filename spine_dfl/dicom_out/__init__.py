"""Scoring results back to PACS as DICOM: a Comprehensive SR and an overlay Secondary Capture.

For every scored DICOM image two new instances are written, both in the *source study* (same
StudyInstanceUID and patient / study attributes, which PACS needs to file them; missing Type 2
ones present and empty) but in *new series* created by this software:

- :mod:`~spine_dfl.dicom_out.sr`: the Comprehensive SR (TID 1500), one ROI group per vertebra;
- :mod:`~spine_dfl.dicom_out.overlay` and :mod:`~spine_dfl.dicom_out.sc`: the RGB Secondary Capture
  of the heatmap overlay (evidence maps, ROI boxes, captions);
- :mod:`~spine_dfl.dicom_out.codes`: the standard and private codes and the software's identity;
- :mod:`~spine_dfl.dicom_out.source`: study context, deterministic UIDs, orientation of the source;
- :mod:`~spine_dfl.dicom_out.writer`: atomic files per source, the process-pool job.

Both say they are unverified machine output for review. No torch at import time (writer processes
start quickly; torch loads with the first heatmap).
"""

from spine_dfl.dicom_out.codes import CODES, PRIVATE_SCHEME, class_code, vertebra_code
from spine_dfl.dicom_out.findings import DicomOutputError, DicomResultFiles, VertebraFinding
from spine_dfl.dicom_out.overlay import blend_evidence, render_roi_overlay
from spine_dfl.dicom_out.sc import build_overlay_sc
from spine_dfl.dicom_out.source import result_uids, with_study_context
from spine_dfl.dicom_out.sr import build_sr
from spine_dfl.dicom_out.writer import (
    DicomOutConfig,
    DicomResultWriter,
    OverlayRenderer,
    init_writer_process,
    write_results_job,
)

__all__ = [
    "CODES",
    "PRIVATE_SCHEME",
    "DicomOutConfig",
    "DicomOutputError",
    "DicomResultFiles",
    "DicomResultWriter",
    "OverlayRenderer",
    "VertebraFinding",
    "blend_evidence",
    "build_overlay_sc",
    "build_sr",
    "class_code",
    "init_writer_process",
    "render_roi_overlay",
    "result_uids",
    "vertebra_code",
    "with_study_context",
    "write_results_job",
]
