"""The overlay Secondary Capture: an RGB 8-bit rendering in a new series of the source study.

``ConversionType`` WSD (workstation capture of a software rendering) and ``BurnedInAnnotation``
YES (boxes and captions are in the pixels); ``ImageComments`` says it is unverified machine output
for review.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from spine_dfl.dicom_out.codes import REVIEW_NOTE, SC_DERIVATION
from spine_dfl.dicom_out.findings import DicomOutputError
from spine_dfl.dicom_out.source import patient_orientation, result_series, with_study_context

__all__ = ["build_overlay_sc"]

# BodyPartExamined defined terms of unpaired structures (Laterality must then be absent).
_UNPAIRED_BODY_PARTS = frozenset(
    "SPINE CSPINE TSPINE LSPINE SSPINE COCCYX CTSPINE TLSPINE LSSPINE SACRUM CHEST THORAX ABDOMEN "
    "PELVIS ABDOMENPELVIS CHESTABDOMEN CHESTABDPELVIS SKULL HEAD HEADNECK NECK WHOLEBODY HEART".split()
)


def build_overlay_sc(
    source: Dataset, overlay_rgb: np.ndarray, run_key: str, derivation_description: str = SC_DERIVATION
) -> hd.sc.SCImage:
    """Secondary Capture (RGB, 8 bit) of ``overlay_rgb`` (rows, cols, 3) uint8 in a new series of the source study.

    Missing Type 2 patient and study attributes of the source are present and empty in the SC.
    """
    if overlay_rgb.ndim != 3 or overlay_rgb.shape[2] != 3 or overlay_rgb.dtype != np.uint8:
        raise DicomOutputError(f"overlay must be (rows, cols, 3) uint8, got {overlay_rgb.shape} {overlay_rgb.dtype}")
    source = with_study_context(source)
    orientation, orientation_known = patient_orientation(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.ascontiguousarray(overlay_rgb),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=orientation,
        **result_series(source, run_key, "sc"),
    )
    if not orientation_known:
        # Type 2 attribute: empty means "unknown", which is the truth for most CR/DX exports.
        sc.PatientOrientation = None
    _copy_laterality(source, sc)
    sc.ConversionType = "WSD"
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = REVIEW_NOTE
    sc.DerivationDescription = derivation_description
    if str(source.get("LossyImageCompression", "00")) == "01":
        sc.LossyImageCompression = "01"
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    return sc


def _copy_laterality(source: Dataset, sc: Dataset) -> None:
    """General Series Laterality (type 2C: required, possibly empty, unless the body part is unpaired,
    when it must be absent): copied when the source states L or R."""
    body_part = str(source.get("BodyPartExamined") or "").strip().upper()
    if body_part:
        sc.BodyPartExamined = body_part
    laterality = str(source.get("Laterality") or "")
    if laterality in ("L", "R"):
        sc.Laterality = laterality
    elif body_part not in _UNPAIRED_BODY_PARTS:
        sc.Laterality = None
