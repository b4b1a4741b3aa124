"""The scored source image as the results see it: its study context, UIDs and orientation.

Both results go into the *source study* (same StudyInstanceUID and patient / study attributes,
which PACS needs to file them) but into *new series* created by this software. UIDs are derived
deterministically from a caller-given ``run_key`` and the source UIDs, so rerunning (or resuming) a
scoring run rewrites the same instances instead of filing duplicates in PACS.
"""

from __future__ import annotations

from typing import Any, Literal

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from spine_dfl import __version__
from spine_dfl.dicom_out.codes import (
    MANUFACTURER,
    MODEL_NAME,
    SC_SERIES_DESCRIPTION,
    SC_SERIES_NUMBER,
    SR_SERIES_DESCRIPTION,
    SR_SERIES_NUMBER,
)
from spine_dfl.dicom_out.findings import DicomOutputError

__all__ = ["REQUIRED_SOURCE_ATTRIBUTES", "TYPE2_STUDY_CONTEXT", "check_source", "patient_orientation",
           "result_series", "result_uids", "with_study_context"]

REQUIRED_SOURCE_ATTRIBUTES = ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID", "Rows", "Columns")
# Type 2 attributes of the Patient and General Study modules that both results copy from the source.
# De-identified exports (PS3.15 Basic Profile) often remove them; the standard allows them present
# and empty ("unknown"), which is what the results then carry (never an invented value).
TYPE2_STUDY_CONTEXT = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
)


def check_source(source: Dataset) -> None:
    """Raise DicomOutputError unless `source` is a DICOM image with study context."""
    missing = [k for k in REQUIRED_SOURCE_ATTRIBUTES if k not in source]
    if missing:
        raise DicomOutputError(f"source is not a DICOM image with study context (missing {', '.join(missing)})")


def with_study_context(source: Dataset) -> Dataset:
    """`source`, or a copy of it in which every missing ``TYPE2_STUDY_CONTEXT`` attribute is present and empty.

    The copy shares the source's elements (no pixel data is copied); the caller's dataset is unchanged.
    """
    missing = [keyword for keyword in TYPE2_STUDY_CONTEXT if keyword not in source]
    if not missing:
        return source
    completed = Dataset(dict(source.items()))
    if hasattr(source, "file_meta"):
        completed.file_meta = source.file_meta
    for keyword in missing:
        setattr(completed, keyword, None)
    return completed


def result_uids(run_key: str, source: Dataset) -> dict[str, str]:
    """Deterministic UIDs of the SR/SC series (one per study and run) and instances (one per source)."""
    study = str(source.StudyInstanceUID)
    sop = str(source.SOPInstanceUID)
    return {
        "sr_series": generate_uid(entropy_srcs=[run_key, study, "SR series"]),
        "sc_series": generate_uid(entropy_srcs=[run_key, study, "SC series"]),
        "sr_instance": generate_uid(entropy_srcs=[run_key, sop, "SR instance"]),
        "sc_instance": generate_uid(entropy_srcs=[run_key, sop, "SC instance"]),
        "tracking": generate_uid(entropy_srcs=[run_key, sop, "tracking"]),
    }


def result_series(source: Dataset, run_key: str, kind: Literal["sr", "sc"]) -> dict[str, Any]:
    """The series, instance and equipment arguments of a highdicom SR or SC of `source`."""
    uids = result_uids(run_key, source)
    number, description = (SR_SERIES_NUMBER, SR_SERIES_DESCRIPTION) if kind == "sr" else \
        (SC_SERIES_NUMBER, SC_SERIES_DESCRIPTION)
    return {
        "series_instance_uid": uids[f"{kind}_series"],
        "series_number": number,
        "sop_instance_uid": uids[f"{kind}_instance"],
        "instance_number": int(source.get("InstanceNumber") or 1),
        "manufacturer": MANUFACTURER,
        "series_description": description,
        "manufacturer_model_name": MODEL_NAME,
        "software_versions": __version__,
    }


def patient_orientation(source: Dataset) -> tuple[tuple[str, str], bool]:
    """The source's PatientOrientation when it holds two valid values; else a placeholder and False."""
    value = source.get("PatientOrientation")
    if value is not None and not isinstance(value, str) and len(value) == 2:
        pair = (str(value[0]), str(value[1]))
        try:
            hd.PatientOrientationValuesBiped(pair[0])
            hd.PatientOrientationValuesBiped(pair[1])
            return pair, True
        except ValueError:
            pass
    return ("L", "F"), False
