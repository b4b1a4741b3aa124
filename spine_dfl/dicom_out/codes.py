"""Who the results say made them, and the codes they use.

Standard codes where they exist: SCT vertebra codes (C1..L5, e.g. 66794005 "L1 vertebra") as finding
sites, SCT 421060004 "Spine" for a whole-image result, SCT 168537006 "Plain radiography" as procedure
reported, DCM 122157 "Probability" with UCUM "1" for the predicted grade's probability, DCM 121007
"Device" for the observer. No standard code exists for the grading task or for the model's class
names, so they use the private coding scheme ``99SPINEDFL`` (declared in the
CodingSchemeIdentificationSequence): finding type ``VFX`` "Vertebral fracture assessment",
qualitative evaluation ``PREDGRADE`` "Predicted vertebral grade" whose value is the class (code value
= class name when it is a valid short string, else ``CLASS<i>``; meaning = class name), and levels
without a standard code (S1, unknown names) ``V-<level>``. The training-distribution check (``engine.shift``)
is an image-level group: finding type ``SHIFT``, the score ``SHIFTSCORE`` and its threshold ``SHIFTTHRESH``
(UCUM "1"), and the qualitative evaluation ``LIKETRAIN`` "Image like the training images" valued SCT
373066001 "Yes" or 373067005 "No".
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import highdicom as hd
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from spine_dfl.io import LEVELS, normalize_level

__all__ = [
    "CODES", "DEVICE_OBSERVER_UID", "MANUFACTURER", "MODEL_NAME", "PRIVATE_SCHEME", "REVIEW_NOTE",
    "SC_DERIVATION", "SC_DERIVATION_HEATMAP", "SC_SERIES_DESCRIPTION", "SC_SERIES_NUMBER",
    "SR_SERIES_DESCRIPTION", "SR_SERIES_NUMBER", "class_code", "coding_scheme_item", "vertebra_code",
]

PRIVATE_SCHEME = "99SPINEDFL"
MANUFACTURER = "spine-dfl"
MODEL_NAME = "spine-dfl DFL-CNN vertebral grading"
SR_SERIES_NUMBER = 7701
SC_SERIES_NUMBER = 7702
SR_SERIES_DESCRIPTION = "spine-dfl AI results - for review"
SC_SERIES_DESCRIPTION = "spine-dfl AI overlay - for review"
REVIEW_NOTE = (
    "AI result produced by spine-dfl (unverified, for review by a qualified reader; "
    "not a diagnosis)"
)
# A fixed UID for the software as an SR device observer (same for every run and version).
DEVICE_OBSERVER_UID = generate_uid(entropy_srcs=["spine-dfl device observer"])
SC_DERIVATION = "spine-dfl overlay of vertebra ROIs and predicted grades on the source radiograph"
SC_DERIVATION_HEATMAP = (
    "spine-dfl overlay on the source radiograph: per vertebra ROI the P-stream evidence heatmap of the "
    "predicted grade (max of its filter responses, inferno colour map scaled per vertebra, inside the region "
    "the network saw), ROI boxes, predicted grades and probabilities"
)
_SHORT_CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,14}$")


def _private(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)


CODES: dict[str, hd.sr.CodedConcept] = {
    "finding_type": _private("VFX", "Vertebral fracture assessment"),
    "predicted_grade": _private("PREDGRADE", "Predicted vertebral grade"),
    "procedure": hd.sr.CodedConcept(*codes.SCT.PlainRadiography),
    "probability": hd.sr.CodedConcept(*codes.DCM.Probability),
    "no_units": hd.sr.CodedConcept(*codes.UCUM.NoUnits),
    "whole_spine": hd.sr.CodedConcept(*codes.SCT.Spine),
    # six-point morphometry (Genant) and the locator: no standard codes exist
    "ha": _private("HA", "Anterior vertebral body height"),
    "hm": _private("HM", "Middle vertebral body height"),
    "hp": _private("HP", "Posterior vertebral body height"),
    "wedge_ratio": _private("WEDGE", "Wedge ratio Ha/Hp"),
    "biconcave_ratio": _private("BICONCAVE", "Biconcave ratio Hm/Hp"),
    "crush_ratio": _private("CRUSH", "Crush ratio Hp/adjacent Hp"),
    "height_loss": _private("HEIGHTLOSS", "Vertebral height loss"),
    "morph_grade": _private("MORPHGRADE", "Morphometric grade (Genant)"),
    "locator_confidence": _private("LOCCONF", "Vertebra locator confidence"),
    "located_region": _private("LOCATED", "Region found by the vertebra locator"),
    # the training-distribution check (engine.shift): no standard codes exist
    "shift_check": _private("SHIFT", "Training distribution check"),
    "shift_method": _private("MAHALANOBIS", "Mahalanobis distance of grader features to its training images"),
    "shift_score": _private("SHIFTSCORE", "Training distribution shift score"),
    "shift_threshold": _private("SHIFTTHRESH", "Shift score threshold"),
    "like_training": _private("LIKETRAIN", "Image like the training images"),
    # how the vertebral levels were counted (locate.anchors)
    "level_identification": _private("LEVELID", "Vertebral level identification"),
    "levels_anchored": _private("ANCHORED", "Levels counted from an anchor visible in the image"),
    "level_confidence": _private("LEVELCONF", "Vertebral level confidence"),
    "anchor_sacrum": _private("ANCHORSACRUM", "Counted upwards from the sacrum (L5 the last mobile vertebra)"),
    "anchor_c7t1": _private("ANCHORC7T1", "Counted downwards from C7/T1"),
    "anchor_both": _private("ANCHORBOTH", "Counted from C7/T1 and from the sacrum, the two counts agreeing"),
    "anchor_none": _private("UNANCHORED", "No anchor visible: relative names V1, V2, ... top to bottom"),
    "transitional": _private("TRANSITIONAL", "Transitional anatomy the level count went through"),
    "yes": hd.sr.CodedConcept(*codes.SCT.Yes),
    "no": hd.sr.CodedConcept(*codes.SCT.No),
    "mm": hd.sr.CodedConcept("mm", "UCUM", "millimeter"),
    "pixels": hd.sr.CodedConcept("{pixels}", "UCUM", "pixels"),
    "ratio": hd.sr.CodedConcept("{ratio}", "UCUM", "ratio"),
    "detector mm": _private("DETECTORMM", "Six-point morphometry in the detector plane (ImagerPixelSpacing)"),
    "patient mm": _private("PATIENTMM", "Six-point morphometry calibrated to the patient (PixelSpacing)"),
}

# SNOMED CT codes of the levels pydicom knows (C1..L5; S1 has none there).
_SCT_VERTEBRA_CODES = {
    level: code for level in LEVELS if (code := getattr(codes.SCT, f"{level}Vertebra", None)) is not None
}


def class_code(class_names: Sequence[str], name: str) -> hd.sr.CodedConcept:
    """Private coded concept for a class: code value = the name when short and plain, else CLASS<i>."""
    index = list(class_names).index(name)
    value = name if _SHORT_CODE.match(name) else f"CLASS{index}"
    return _private(value, name[:64])


def vertebra_code(vertebra: str) -> hd.sr.CodedConcept:
    """SCT code of a vertebral level when one exists, the whole spine for "", else a private code."""
    level = normalize_level(vertebra)
    if not level:
        return CODES["whole_spine"]
    if level in _SCT_VERTEBRA_CODES:
        return hd.sr.CodedConcept(*_SCT_VERTEBRA_CODES[level])
    value = f"V-{level}" if _SHORT_CODE.match(level) else f"V-{zlib.crc32(level.encode()):08X}"
    return _private(value[:16], f"{level} vertebra"[:64])


def coding_scheme_item() -> hd.coding_schemes.CodingSchemeIdentificationItem:
    """The CodingSchemeIdentificationSequence item declaring the private scheme."""
    return hd.coding_schemes.CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name="spine-dfl private codes",
        responsible_organization="spine-dfl project",
    )
