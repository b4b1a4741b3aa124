"""The input gate from the header, before any model: is this file a lateral spine radiograph?

:func:`header_refusal` takes a DICOM header (a ``pydicom.Dataset``, no pixels needed) and returns a
one-line reason to refuse the file, or None to go on. It refuses:

- what is not a projection radiograph: the Modality must be CR, DX or RG and the SOP class CR Image
  Storage or DX Image Storage (for presentation or for processing), e.g. ``modality CT: not a
  projection radiograph``. Where the modality is missing the SOP class is named (in words where
  pydicom knows it, else its UID). A Secondary Capture (single- or multi-frame) goes on: only the
  image can tell what it shows (the image gate);
- a header that says another body part (BodyPartExamined CHEST, SKULL, HAND, EXTREMITY, PELVIS, ...)
  or a frontal view (ViewPosition AP or PA; where ViewPosition names no view, a PatientOrientation
  of one left/right and one head/foot direction), e.g. ``body part CHEST, view PA: not a lateral
  spine radiograph``.

Header words are hints, often missing and sometimes wrong: a missing or unknown value goes on, and
``ignore_view_tags=True`` (``--ignore-view-tags``) drops the body-part and view hints for a site
whose tags are wrong (the modality / SOP class check stays). A header without an image matrix (no
Rows and Columns: an SR, an RT plan, a waveform) goes on too, so the reader says "no pixel data".

Every reason ends with :data:`NOT_PROJECTION` or :data:`NOT_LATERAL_SPINE` and names header values
only (never a patient identifier), so ``summary.json`` counts refusals by their reason text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydicom import Dataset

__all__ = [
    "GATE_TAGS",
    "NOT_LATERAL_SPINE",
    "NOT_PROJECTION",
    "file_refusal",
    "header_refusal",
    "is_gate_reason",
]

NOT_PROJECTION = "not a projection radiograph"
NOT_LATERAL_SPINE = "not a lateral spine radiograph"

# What the gate reads (read_dicom_header's specific_tags, for callers that read only these).
GATE_TAGS = ("SOPClassUID", "Modality", "BodyPartExamined", "ViewPosition", "PatientOrientation", "Rows", "Columns")

PROJECTION_MODALITIES = frozenset({"CR", "DX", "RG"})
PROJECTION_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
})
SECONDARY_CAPTURE_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
})

# BodyPartExamined words (DICOM CID 4031 and what sites write) of a spine film, and of anything else.
SPINE_WORDS = frozenset({
    "SPINE", "CSPINE", "TSPINE", "LSPINE", "SSPINE", "TLSPINE", "CTSPINE", "LSSPINE", "WHOLESPINE",
    "THORACOLUMBAR", "LUMBOSACRAL", "CERVICOTHORACIC", "LUMBAR", "THORACIC", "CERVICAL", "SACRUM",
    "COCCYX", "VERTEBRA", "VERTEBRAE",
})
OTHER_BODY_PARTS = frozenset({
    "CHEST", "THORAX", "LUNG", "LUNGS", "RIB", "RIBS", "STERNUM", "HEART", "BREAST", "MAMMA",
    "SKULL", "HEAD", "BRAIN", "FACE", "SINUS", "ORBIT", "NOSE", "JAW", "MANDIBLE", "TMJ", "TEETH", "TOOTH",
    "HAND", "FINGER", "THUMB", "WRIST", "FOREARM", "ELBOW", "ARM", "UPPERARM", "HUMERUS", "SHOULDER",
    "CLAVICLE", "SCAPULA", "FOOT", "TOE", "HEEL", "CALCANEUS", "ANKLE", "LEG", "LOWERLEG", "TIBIA",
    "FIBULA", "KNEE", "PATELLA", "FEMUR", "THIGH", "HIP", "PELVIS", "EXTREMITY", "EXTREMITIES",
    "UPPEREXTREMITY", "LOWEREXTREMITY", "ABDOMEN", "KIDNEY", "LIVER", "PANCREAS", "BLADDER",
})
FRONTAL_VIEWS = frozenset({"AP", "PA", "FRONTAL"})
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLAT", "RLAT"})


def header_refusal(dataset: Dataset | Mapping[str, Any], ignore_view_tags: bool = False) -> str | None:
    """Why the file of this header is not a lateral spine radiograph, or None to go on (see the module).

    dataset: a ``pydicom.Dataset`` (or any mapping with ``get(keyword)``), read without pixels.
    ignore_view_tags: ignore BodyPartExamined, ViewPosition and PatientOrientation.
    """
    if dataset.get("Rows") is None or dataset.get("Columns") is None:
        return None  # not an image at all: the reader's "no pixel data" says so
    sop_class = _text(dataset.get("SOPClassUID"))
    if sop_class in SECONDARY_CAPTURE_SOP_CLASSES:
        return None  # the image gate judges what a Secondary Capture shows
    refusal = _modality_refusal(_text(dataset.get("Modality")).upper(), sop_class)
    if refusal is not None or ignore_view_tags:
        return refusal
    return _view_refusal(dataset)


def _modality_refusal(modality: str, sop_class: str) -> str | None:
    wrong_modality = bool(modality) and modality not in PROJECTION_MODALITIES
    wrong_class = bool(sop_class) and sop_class not in PROJECTION_SOP_CLASSES
    if wrong_modality:
        return f"modality {modality}: {NOT_PROJECTION}"
    if wrong_class:
        named = f"modality {modality}, " if modality else ""
        return f"{named}SOP class {_sop_class_name(sop_class)}: {NOT_PROJECTION}"
    return None


def _view_refusal(dataset: Dataset | Mapping[str, Any]) -> str | None:
    """'body part X', 'view Y' and (where ViewPosition names neither a frontal nor a lateral view)
    'patient orientation A\\B (frontal)' hints."""
    hints = []
    body_part = _text(dataset.get("BodyPartExamined")).upper()
    if _is_other_body_part(body_part):
        hints.append(f"body part {body_part}")
    view = _text(dataset.get("ViewPosition")).upper()
    words = re.findall(r"[A-Z]+", view)
    if words and words[0] in FRONTAL_VIEWS:
        hints.append(f"view {view}")
    elif not (words and words[0] in LATERAL_VIEWS):  # a lateral view outweighs a contradicting orientation
        orientation = _orientation(dataset.get("PatientOrientation"))
        if _is_frontal_orientation(orientation):
            shown = "\\".join(orientation)
            hints.append(f"patient orientation {shown} (frontal)")
    return f"{', '.join(hints)}: {NOT_LATERAL_SPINE}" if hints else None


def _is_other_body_part(body_part: str) -> bool:
    """True when BodyPartExamined names a body part that is not the spine (unknown or missing: False)."""
    words = re.findall(r"[A-Z]+", body_part)
    if not words:
        return False
    joined = "".join(words)
    if joined in SPINE_WORDS or any(w in SPINE_WORDS or "SPINE" in w for w in words):
        return False
    return joined in OTHER_BODY_PARTS or any(w in OTHER_BODY_PARTS for w in words)


def _orientation(value: Any) -> list[str]:
    """PatientOrientation's values (a MultiValue, or one string with backslashes), upper case."""
    if value is None:
        return []
    values = value.split("\\") if isinstance(value, str) else [str(v) for v in value]
    return [v.strip().upper() for v in values]


def _is_frontal_orientation(values: Sequence[str]) -> bool:
    """Two directions, one mainly left/right and one mainly head/foot: the film faces the patient's front or back."""
    if len(values) != 2 or not all(v and v[0] in "LRAPHF" for v in values):
        return False
    kinds = sorted("LR" if v[0] in "LR" else "HF" if v[0] in "HF" else "AP" for v in values)
    return kinds == ["HF", "LR"]


def _text(value: object) -> str:
    """A header value as one stripped line ('' when missing); a multi-valued one joined by backslashes."""
    if value is None:
        return ""
    if not isinstance(value, (str, bytes)) and isinstance(value, Sequence):
        value = "\\".join(str(v) for v in value)
    elif isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return " ".join(str(value).split())


def _sop_class_name(uid: str) -> str:
    """The SOP class in words ('CT Image Storage') where pydicom knows it, else its UID."""
    try:
        from pydicom.uid import UID

        name = str(UID(uid).name)
    except Exception:  # noqa: BLE001 - a malformed UID is named as it is
        return uid
    return name if name and name != uid else uid


def is_gate_reason(reason: str) -> bool:
    """Whether a failed file's reason is one of this gate's refusals (summary.json counts them by their text)."""
    return reason.endswith((NOT_PROJECTION, NOT_LATERAL_SPINE))


def file_refusal(path: str | Path, ignore_view_tags: bool = False) -> str | None:
    """:func:`header_refusal` of the DICOM file at ``path``; None for other files and for a header that
    cannot be read (the reader then says what is wrong with it)."""
    from spine_dfl.io import ImageReadError, is_dicom, read_dicom_header

    try:
        if not Path(path).is_file() or not is_dicom(path):
            return None
        header = read_dicom_header(path, specific_tags=list(GATE_TAGS))
    except (ImageReadError, OSError):
        return None
    return header_refusal(header, ignore_view_tags)
