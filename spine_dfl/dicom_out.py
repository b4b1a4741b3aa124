"""Scoring results back to PACS as DICOM: a Comprehensive SR and an overlay Secondary Capture.

For every scored DICOM image two new instances are written, both in the *source study*
(same StudyInstanceUID and patient/study attributes, which PACS needs to file them) but in
*new series* created by this software:

- a Comprehensive SR (TID 1500 Measurement Report via highdicom) with, per vertebra, one
  ``PlanarROIMeasurementsAndQualitativeEvaluations`` group: the ROI rectangle as a closed
  2-D SCOORD POLYLINE on the source image, the vertebra as tracking identifier and finding
  site, the predicted grade as a coded qualitative evaluation and its probability as a
  measurement, the model as algorithm identification;
- an RGB 8-bit Secondary Capture (``ConversionType`` WSD, ``BurnedInAnnotation`` YES) of
  the heatmap overlay: the windowed grey radiograph with, inside each vertebra's crop region
  (ROI + margin, what the network saw), the predicted grade's P-stream evidence map blended in
  ``inferno`` (the explain figures' map and colours, scaled per vertebra), and the ROI boxes and
  "level grade probability" captions burned in on top. Outside every crop region the image
  stays plain grey (R = G = B).

Both say they are unverified machine output for review: SR ``VerificationFlag``
UNVERIFIED and ``PreliminaryFlag`` PRELIMINARY, Manufacturer ``spine-dfl``,
SoftwareVersions, series descriptions "spine-dfl AI results - for review", and the SC's
ImageComments.

Codes (see ``CODES`` below). Standard codes where they exist: SCT vertebra codes
(C1..L5, e.g. 66794005 "L1 vertebra") as finding sites, SCT 421060004 "Spine" for a
whole-image result, SCT 168537006 "Plain radiography" as procedure reported, DCM 122157
"Probability" with UCUM "1" for the predicted grade's probability, DCM 121007 "Device" for
the observer. No standard code exists for the grading task or for the model's class names,
so they use the private coding scheme ``99SPINEDFL`` (declared in the
CodingSchemeIdentificationSequence): finding type ``VFX`` "Vertebral fracture assessment",
qualitative evaluation ``PREDGRADE`` "Predicted vertebral grade" whose value is the class
(code value = class name when it is a valid short string, else ``CLASS<i>``; meaning =
class name), and levels without a standard code (S1, unknown names) ``V-<level>``. The
per-class probabilities stay in predictions.csv (each SR content item costs highdicom time).

UIDs are derived deterministically from a caller-given ``run_key`` and the source UIDs, so
rerunning (or resuming) a scoring run rewrites the same instances instead of filing
duplicates in PACS.

Coordinates: ROIs are ``(x_min, y_min, x_max, y_max)`` in source pixels, continuous
(pixel column i covers [i, i+1)), x = column, y = row; the same convention as DICOM
image-relative SCOORDs (0,0 = top-left corner of the top-left pixel).
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from spine_dfl import __version__
from spine_dfl.atomic import atomic_output
from spine_dfl.vertebrae import LEVELS, normalize_level

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
# Heatmaps are resampled in horizontal strips of about this many pixels (bounded memory for
# whole-image models on large radiographs; the result is the same as in one piece).
_STRIP_PIXELS = 1 << 20
_WRITER_PROCESS = False  # set by init_writer_process in the processes of a writer pool


def _private(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)


CODES: dict[str, hd.sr.CodedConcept] = {
    "finding_type": _private("VFX", "Vertebral fracture assessment"),
    "predicted_grade": _private("PREDGRADE", "Predicted vertebral grade"),
    "procedure": hd.sr.CodedConcept(*codes.SCT.PlainRadiography),
    "probability": hd.sr.CodedConcept(*codes.DCM.Probability),
    "no_units": hd.sr.CodedConcept(*codes.UCUM.NoUnits),
    "whole_spine": hd.sr.CodedConcept(*codes.SCT.Spine),
}

# SNOMED CT codes of the levels pydicom knows (C1..L5; S1 has none there).
_SCT_VERTEBRA_CODES = {
    level: code for level in LEVELS if (code := getattr(codes.SCT, f"{level}Vertebra", None)) is not None
}
# BodyPartExamined defined terms of unpaired structures (Laterality must then be absent).
_UNPAIRED_BODY_PARTS = frozenset(
    "SPINE CSPINE TSPINE LSPINE SSPINE COCCYX CTSPINE TLSPINE LSSPINE SACRUM CHEST THORAX ABDOMEN "
    "PELVIS ABDOMENPELVIS CHESTABDOMEN CHESTABDPELVIS SKULL HEAD HEADNECK NECK WHOLEBODY HEART".split()
)
_SHORT_CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,14}$")


class DicomOutputError(ValueError):
    """A result object could not be built or written for a source image (message says why)."""


@dataclass(frozen=True)
class EvidenceMap:
    """The predicted class's P-stream evidence of one sample, small enough to send to a writer process.

    values: (H, W) float32 on the model's conv4 feature grid: max over the predicted class's k
        filter response maps (as ``spine_dfl.explain`` computes it).
    to_original: (3, 3) float64 affine, network input continuous (x, y, 1) -> source continuous (x, y, 1).
    region: (x0, y0, x1, y1) integer source pixels, max exclusive: what the network saw (the ROI +
        margin crop box clipped to the image, ``spine_dfl.explain.display_region``); the heatmap
        is drawn only there.
    input_size: S (the network input is S x S).
    stride, center_offset: the feature grid's geometry in input pixels (location (row, col) is
        centred at (center_offset + stride*col, center_offset + stride*row)).
    """

    values: np.ndarray
    to_original: np.ndarray
    region: tuple[int, int, int, int]
    input_size: int
    stride: float
    center_offset: float


@dataclass(frozen=True)
class VertebraFinding:
    """One scored sample of one source image.

    vertebra: level name such as "L1"; "" for a whole-image result.
    roi: (x_min, y_min, x_max, y_max) in source pixels (continuous, x = column), or None for
         the whole image.
    predicted: predicted class name (one of the checkpoint's class names).
    probabilities: class name -> softmax probability (0..1).
    evidence: the predicted class's evidence map for the overlay's heatmap, or None (no heatmap).
    """

    vertebra: str
    roi: tuple[float, float, float, float] | None
    predicted: str
    probabilities: Mapping[str, float]
    evidence: EvidenceMap | None = None


@dataclass(frozen=True)
class DicomResultFiles:
    sr_path: Path
    sc_path: Path
    sr_sop_instance_uid: str
    sc_sop_instance_uid: str


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
    text = level
    value = f"V-{text}" if _SHORT_CODE.match(text) else f"V-{zlib.crc32(text.encode()):08X}"
    return _private(value[:16], f"{text} vertebra"[:64])


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


def _coding_scheme_item() -> hd.coding_schemes.CodingSchemeIdentificationItem:
    return hd.coding_schemes.CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name="spine-dfl private codes",
        responsible_organization="spine-dfl project",
    )


def _rectangle(roi: tuple[float, float, float, float] | None, rows: int, cols: int) -> np.ndarray:
    """Closed polyline (5, 2) of (column, row) points of the ROI clipped to the image, or the whole image."""
    if roi is None:
        x0, y0, x1, y1 = 0.0, 0.0, float(cols), float(rows)
    else:
        x0, x1 = (float(np.clip(v, 0.0, cols)) for v in (roi[0], roi[2]))
        y0, y1 = (float(np.clip(v, 0.0, rows)) for v in (roi[1], roi[3]))
    if not (x1 > x0 and y1 > y0):
        raise DicomOutputError(f"ROI {roi} does not overlap the {cols} x {rows} image")
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


def build_sr(
    source: Dataset,
    findings: Sequence[VertebraFinding],
    class_names: Sequence[str],
    run_key: str,
    algorithm_parameters: Sequence[str] = (),
) -> hd.sr.ComprehensiveSR:
    """Comprehensive SR (TID 1500) of ``findings`` on ``source`` (a header dataset of the scored image)."""
    if not findings:
        raise DicomOutputError("no findings to report")
    uids = result_uids(run_key, source)
    rows, cols = int(source.Rows), int(source.Columns)
    source_ref = hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=str(source.SOPClassUID),
        referenced_sop_instance_uid=str(source.SOPInstanceUID),
    )
    algorithm = hd.sr.AlgorithmIdentification(
        name=MODEL_NAME, version=__version__, parameters=list(algorithm_parameters) or None
    )
    groups = []
    for number, finding in enumerate(findings, start=1):
        label = finding.vertebra.strip() or "whole image"
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=_rectangle(finding.roi, rows, cols),
            source_image=source_ref,
        )
        # Only the predicted grade's probability: every extra content item costs highdicom
        # noticeable time per vertebra, and the full distribution is in predictions.csv.
        measurements = [
            hd.sr.Measurement(
                name=CODES["probability"],
                value=float(finding.probabilities[finding.predicted]),
                unit=CODES["no_units"],
            )
        ]
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=generate_uid(entropy_srcs=[uids["tracking"], str(number), label]),
                    identifier=f"vertebra {label}",
                ),
                referenced_region=region,
                finding_type=CODES["finding_type"],
                algorithm_id=algorithm,
                finding_sites=[hd.sr.FindingSite(anatomic_location=vertebra_code(finding.vertebra))],
                measurements=measurements,
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(
                        name=CODES["predicted_grade"],
                        value=class_code(class_names, finding.predicted),
                    )
                ],
            )
        )
    observer = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept(*codes.DCM.Device),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=DEVICE_OBSERVER_UID,
            name=MANUFACTURER,
            manufacturer_name=MANUFACTURER,
            model_name=MODEL_NAME,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CODES["procedure"],
        imaging_measurements=groups,
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report,
        series_instance_uid=uids["sr_series"],
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids["sr_instance"],
        instance_number=int(source.get("InstanceNumber") or 1),
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=SR_SERIES_DESCRIPTION,
        manufacturer_model_name=MODEL_NAME,
        software_versions=__version__,
        coding_schemes=[_coding_scheme_item()],
    )
    return sr


def _patient_orientation(source: Dataset) -> tuple[tuple[str, str], bool]:
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


def build_overlay_sc(
    source: Dataset, overlay_rgb: np.ndarray, run_key: str, derivation_description: str = SC_DERIVATION
) -> hd.sc.SCImage:
    """Secondary Capture (RGB, 8 bit) of ``overlay_rgb`` (rows, cols, 3) uint8 in a new series of the source study."""
    if overlay_rgb.ndim != 3 or overlay_rgb.shape[2] != 3 or overlay_rgb.dtype != np.uint8:
        raise DicomOutputError(f"overlay must be (rows, cols, 3) uint8, got {overlay_rgb.shape} {overlay_rgb.dtype}")
    uids = result_uids(run_key, source)
    orientation, orientation_known = _patient_orientation(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.ascontiguousarray(overlay_rgb),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=uids["sc_series"],
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=uids["sc_instance"],
        instance_number=int(source.get("InstanceNumber") or 1),
        manufacturer=MANUFACTURER,
        patient_orientation=orientation,
        series_description=SC_SERIES_DESCRIPTION,
        manufacturer_model_name=MODEL_NAME,
        software_versions=__version__,
    )
    if not orientation_known:
        # Type 2 attribute: empty means "unknown", which is the truth for most CR/DX exports.
        sc.PatientOrientation = None
    # General Series Laterality (type 2C: required, possibly empty, unless the body part is
    # unpaired, when it must be absent): copied when the source states L or R.
    body_part = str(source.get("BodyPartExamined") or "").strip().upper()
    if body_part:
        sc.BodyPartExamined = body_part
    laterality = str(source.get("Laterality") or "")
    if laterality in ("L", "R"):
        sc.Laterality = laterality
    elif body_part not in _UNPAIRED_BODY_PARTS:
        sc.Laterality = None
    # Workstation capture of a software rendering with burned-in text and boxes.
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


# Colours by grade rank: first class green, last red, the ones between from yellow to orange.
def _grade_colour(index: int, count: int) -> tuple[int, int, int]:
    if count <= 1:
        return (0, 220, 0)
    t = index / (count - 1)
    return (int(round(255 * min(1.0, 2 * t))), int(round(220 * min(1.0, 2 * (1 - t)))), 0)


def to_display_uint8(image: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """(rows, cols) float image (bone bright) -> uint8 (rows, cols) stretched between intensity percentiles."""
    image = np.asarray(image, dtype=np.float32)
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return np.zeros(image.shape, dtype=np.uint8)
    low, high = np.percentile(finite, percentiles)
    if high <= low:
        high = low + 1.0
    scaled = (np.nan_to_num(image, nan=low) - low) / (high - low)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def init_writer_process() -> None:
    """Initializer of the processes of a writer pool: one intra-op thread for the heatmap resampling.

    The resampling is small, and the cores belong to the scoring process and its decode workers
    (busy OpenMP pools on shared cores are very slow). Torch is imported there only on the first heatmap.
    """
    global _WRITER_PROCESS
    _WRITER_PROCESS = True
    os.environ["OMP_NUM_THREADS"] = "1"


def evidence_in_source(
    evidence: EvidenceMap, image_shape: tuple[int, int]
) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """An evidence map on source pixels: (region clipped to the image, (h, w) float32 map), or None.

    The mapping is ``spine_dfl.explain``'s (``feature_map_to_tensor_space`` then
    ``tensor_map_to_original``): bilinear between receptive-field centres on the S x S input grid,
    then through ``to_original`` onto source pixel centres; source pixels the network never saw
    (e.g. beyond the symmetric padding) are NaN. None when the region misses the image.
    Computed in horizontal strips (same values as in one piece) so large regions stay small in memory.
    """
    import torch

    from spine_dfl.explain import feature_map_to_tensor_space, tensor_map_to_original

    if _WRITER_PROCESS and torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    rows, cols = image_shape
    x0, y0, x1, y1 = (int(v) for v in evidence.region)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(cols, x1), min(rows, y1)
    values = np.asarray(evidence.values, dtype=np.float32)
    if values.ndim != 2 or values.size == 0:
        raise DicomOutputError(f"evidence map must be a non-empty (H, W) array, got shape {values.shape}")
    if x1 <= x0 or y1 <= y0:
        return None
    grid = torch.from_numpy(np.ascontiguousarray(values))[None, None]
    in_input = feature_map_to_tensor_space(
        grid, int(evidence.input_size), float(evidence.stride), float(evidence.center_offset)
    )[0]  # (1, S, S)
    to_original = np.asarray(evidence.to_original, dtype=np.float64)
    out = np.empty((y1 - y0, x1 - x0), dtype=np.float32)
    step = max(1, _STRIP_PIXELS // (x1 - x0))
    for top in range(y0, y1, step):
        bottom = min(y1, top + step)
        out[top - y0 : bottom - y0] = tensor_map_to_original(in_input, to_original, (x0, top, x1, bottom))[0]
    return (x0, y0, x1, y1), out


def _evidence_cmap() -> Any:
    import matplotlib

    from spine_dfl.explain import HEATMAP_CMAP

    return matplotlib.colormaps[HEATMAP_CMAP]


def blend_evidence(gray: np.ndarray, findings: Sequence[VertebraFinding]) -> tuple[np.ndarray, bool]:
    """(rows, cols) uint8 grey -> ((rows, cols, 3) uint8 RGB, whether any heatmap was drawn).

    Each finding's evidence map is blended over the grey image inside its region with
    ``spine_dfl.explain.heat_overlay`` (the explain figures' ``inferno`` map and opacities, colour
    scale = that map's own min..max, i.e. per vertebra). Where regions of neighbouring vertebrae
    overlap, each pixel shows the map that is relatively hottest there. Every pixel outside all
    regions (and every pixel its maps never saw) keeps R = G = B = the grey value.
    """
    rgb = np.repeat(gray[..., None], 3, axis=2)
    mapped = []
    for finding in findings:
        if finding.evidence is not None:
            on_source = evidence_in_source(finding.evidence, gray.shape)
            if on_source is not None:
                mapped.append(on_source)
    if not mapped:
        return rgb, False
    from spine_dfl.explain import heat_overlay

    cmap = _evidence_cmap()
    ux0, uy0 = min(r[0] for r, _ in mapped), min(r[1] for r, _ in mapped)
    ux1, uy1 = max(r[2] for r, _ in mapped), max(r[3] for r, _ in mapped)
    best = np.full((uy1 - uy0, ux1 - ux0), -np.inf, dtype=np.float32)  # relative value shown so far
    for (x0, y0, x1, y1), values in mapped:
        finite = values[np.isfinite(values)]
        value_range = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        step = max(1, _STRIP_PIXELS // (x1 - x0))
        for top in range(0, y1 - y0, step):
            part = values[top : top + step]
            grey = gray[y0 + top : y0 + top + part.shape[0], x0:x1].astype(np.float32) / 255.0
            # The map's own range for every strip: the same as heat_overlay on the whole map.
            blended, vmin, vmax = heat_overlay(np.repeat(grey[..., None], 3, axis=2), part, cmap, value_range)
            relative = np.where(np.isfinite(part), np.clip((part - vmin) / (vmax - vmin), 0.0, 1.0), -1.0)
            window = best[y0 + top - uy0 : y0 + top + part.shape[0] - uy0, x0 - ux0 : x1 - ux0]
            take = relative > window
            target = rgb[y0 + top : y0 + top + part.shape[0], x0:x1]
            target[take] = (np.clip(blended[take], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
            window[take] = relative[take]
    return rgb, True


def _draw_colour_legend(canvas: Any, draw: Any, font: Any, x: int, y: int, font_size: int) -> None:
    """ "evidence for predicted grade: low [inferno ramp] high" at (x, y) (top-left of the line)."""
    from PIL import Image

    label = "heatmap: evidence for the predicted grade (per vertebra)  low"
    style = {"font": font, "stroke_width": 1, "stroke_fill": (0, 0, 0)}
    draw.text((x, y), label, fill=(255, 255, 255), **style)
    left = int(draw.textbbox((x, y), label, font=font, stroke_width=1)[2]) + font_size // 2
    width, height = max(20, 5 * font_size), max(4, int(font_size * 0.8))
    ramp = (_evidence_cmap()(np.linspace(0.0, 1.0, width))[:, :3] * 255.0 + 0.5).astype(np.uint8)
    canvas.paste(Image.fromarray(np.ascontiguousarray(np.repeat(ramp[None], height, axis=0))),
                 (left, y + max(0, (font_size - height) // 2)))
    draw.text((left + width + font_size // 2, y), "high", fill=(255, 255, 255), **style)


def render_roi_overlay(
    image: np.ndarray,
    findings: Sequence[VertebraFinding],
    class_names: Sequence[str],
    banner: str | None = "spine-dfl AI result - for review",
) -> np.ndarray:
    """The heatmap overlay as (rows, cols, 3) uint8 RGB: evidence heatmaps, ROI boxes, captions.

    image: (rows, cols) float or uint8, bone bright; findings' ROIs in the same pixel grid.
    Grey = the radiograph windowed between robust percentiles (``to_display_uint8``). Findings
    with an ``evidence`` map get it blended in inside their region (``blend_evidence``). Boxes are
    coloured by predicted grade (first class green ... last class red), each captioned "level
    grade probability". ``banner`` (bottom left) says it is for review; with heatmaps a colour
    legend line goes above it.
    """
    from PIL import Image, ImageDraw, ImageFont

    gray = image if image.dtype == np.uint8 else to_display_uint8(image)
    rows, cols = gray.shape
    rgb, heatmaps = blend_evidence(gray, findings)
    canvas = Image.fromarray(rgb)
    del rgb
    draw = ImageDraw.Draw(canvas)
    short_side = min(rows, cols)
    line_width = max(1, round(short_side / 400))
    font_size = max(10, round(short_side / 45))
    try:
        font = ImageFont.load_default(size=font_size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed bitmap font
        font = ImageFont.load_default()
    for finding in findings:
        colour = _grade_colour(list(class_names).index(finding.predicted), len(class_names))
        x0, y0, x1, y1 = (0.0, 0.0, float(cols), float(rows)) if finding.roi is None else finding.roi
        # Continuous box -> inclusive pixel rectangle, clipped so boxes at the border stay visible.
        box = (
            max(0, int(np.floor(x0))),
            max(0, int(np.floor(y0))),
            min(cols - 1, int(np.ceil(x1)) - 1),
            min(rows - 1, int(np.ceil(y1)) - 1),
        )
        if box[2] < box[0] or box[3] < box[1]:
            continue
        draw.rectangle(box, outline=colour, width=line_width)
        probability = float(finding.probabilities.get(finding.predicted, float("nan")))
        caption = f"{finding.vertebra or 'image'} {finding.predicted} {probability:.2f}"
        text_x = box[2] + 2 * line_width if box[2] + font_size * 6 < cols else max(0, box[0] - font_size * 6)
        text_y = box[1] if finding.roi is not None else box[1] + font_size
        draw.text((text_x, text_y), caption, fill=colour, font=font, stroke_width=1, stroke_fill=(0, 0, 0))
    if banner:
        # Bottom-left, where whole-image captions (top-left) and ROI captions do not go.
        banner_y = rows - font_size - 4 * line_width
        draw.text((line_width * 2, banner_y), banner, fill=(255, 255, 0), font=font, stroke_width=1,
                  stroke_fill=(0, 0, 0))
        if heatmaps:
            _draw_colour_legend(canvas, draw, font, line_width * 2, banner_y - font_size - 4 * line_width, font_size)
    return np.asarray(canvas, dtype=np.uint8)


def _atomic_dcmwrite(dataset: Dataset, path: Path) -> None:
    """Temporary file, then rename (spine_dfl.atomic): a PACS forwarder watching the folder never sees half a file."""
    with atomic_output(path, "wb") as handle:
        pydicom.dcmwrite(handle, dataset, enforce_file_format=True)


OverlayRenderer = Callable[[np.ndarray, Sequence[VertebraFinding], Sequence[str]], np.ndarray]


class DicomResultWriter:
    """Writes ``<out_dir>/<source SOPInstanceUID>_SR.dcm`` and ``..._SC.dcm`` per scored DICOM image.

    run_key: any string identifying the scoring run's model and output (UIDs derive from it).
    render_overlay: (image (rows, cols) float, findings, class_names) -> (rows, cols, 3) uint8;
                    defaults to :func:`render_roi_overlay` (heatmaps of findings with evidence maps,
                    ROI boxes, captions).
    """

    def __init__(
        self,
        out_dir: str | Path,
        class_names: Sequence[str],
        run_key: str,
        algorithm_parameters: Sequence[str] = (),
        render_overlay: OverlayRenderer | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.class_names = list(class_names)
        self.run_key = run_key
        self.algorithm_parameters = list(algorithm_parameters)
        self.render_overlay = render_overlay or render_roi_overlay
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # highdicom logs every copied module at INFO, naming source instances: noise in batch runs.
        logging.getLogger("highdicom").setLevel(max(logging.getLogger("highdicom").level, logging.WARNING))

    def write(
        self,
        source_path: str | Path,
        findings: Sequence[VertebraFinding],
        display_image: np.ndarray | None = None,
        source_header: Dataset | None = None,
    ) -> DicomResultFiles:
        """SR + SC for one source image.

        display_image: (rows, cols) float, bone bright, in the source's pixel grid (e.g.
        ``io.read_image(path).pixels``); read from ``source_path`` when None.
        Raises DicomOutputError (or ImageReadError) with the reason.
        """
        source = source_header
        if source is None:
            try:
                source = pydicom.dcmread(source_path, stop_before_pixels=True, force=True)
            except Exception as exc:  # pydicom raises many types for broken files
                raise DicomOutputError(f"cannot read the source header ({type(exc).__name__}: {exc})") from exc
        missing = [k for k in ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID", "Rows", "Columns") if k not in source]
        if missing:
            raise DicomOutputError(f"source is not a DICOM image with study context (missing {', '.join(missing)})")
        if display_image is None:
            from spine_dfl.io import read_image

            display_image = read_image(source_path).pixels
        if tuple(display_image.shape[:2]) != (int(source.Rows), int(source.Columns)):
            raise DicomOutputError(
                f"display image {display_image.shape} does not match the source's {source.Rows} x {source.Columns}"
            )
        try:
            sr = build_sr(source, findings, self.class_names, self.run_key, self.algorithm_parameters)
            overlay = self.render_overlay(display_image, findings, self.class_names)
            with_heatmap = any(finding.evidence is not None for finding in findings)
            sc = build_overlay_sc(source, overlay, self.run_key,
                                  SC_DERIVATION_HEATMAP if with_heatmap else SC_DERIVATION)
        except DicomOutputError:
            raise
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            # highdicom validates values (names, codes, orientations) and raises these.
            raise DicomOutputError(f"cannot build result objects ({type(exc).__name__}: {exc})") from exc
        stem = str(source.SOPInstanceUID)
        sr_path = self.out_dir / f"{stem}_SR.dcm"
        sc_path = self.out_dir / f"{stem}_SC.dcm"
        _atomic_dcmwrite(sr, sr_path)
        _atomic_dcmwrite(sc, sc_path)
        return DicomResultFiles(sr_path, sc_path, str(sr.SOPInstanceUID), str(sc.SOPInstanceUID))


@dataclass(frozen=True)
class DicomOutConfig:
    """Arguments of a DicomResultWriter, picklable: sent to the processes that write results."""

    out_dir: str
    class_names: tuple[str, ...]
    run_key: str
    algorithm_parameters: tuple[str, ...] = ()

    def writer(self) -> DicomResultWriter:
        return DicomResultWriter(self.out_dir, self.class_names, self.run_key, self.algorithm_parameters)


_WRITERS: dict[DicomOutConfig, DicomResultWriter] = {}


def write_results_job(config: DicomOutConfig, source_path: str, findings: Sequence[VertebraFinding]) -> str:
    """SR + SC for one file: "written" or "error: <reason>"; never raises (one file must not stop a run).

    A module-level function so a process pool can run it; the writer is built once per process.
    """
    writer = _WRITERS.get(config)
    if writer is None:
        writer = _WRITERS[config] = config.writer()
    try:
        writer.write(source_path, findings)
    except DicomOutputError as exc:
        reason = str(exc)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the file's DICOM-output status
        # ImageReadError carries the reason without the path; anything else: type and message.
        reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
    else:
        return "written"
    return "error: " + " ".join(str(reason).split())
