"""The Comprehensive SR (TID 1500 Measurement Report via highdicom) of one scored image.

Per vertebra one ``PlanarROIMeasurementsAndQualitativeEvaluations`` group: the ROI rectangle as a
closed 2-D SCOORD POLYLINE on the source image, the vertebra as tracking identifier and finding
site, the predicted grade as a coded qualitative evaluation and its probability as a measurement,
the model as algorithm identification (TID 4019: name, software version, and the caller's
parameters, for ``score`` and the node the checkpoint's file name and SHA-256); where known, the
six-point morphometry as numeric measurements with units (Ha, Hm, Hp in mm with the method saying
detector or patient mm, or in {pixels} without spacing; wedge, biconcave, crush ratios and height
loss in {ratio}), the
morphometric grade as a coded evaluation, and for a located vertebra the locator's confidence with
the group's method "Region found by the vertebra locator". ``VerificationFlag`` UNVERIFIED and ``PreliminaryFlag``
PRELIMINARY: unverified machine output for review. Where the findings carry the
image's training-distribution check (``cells["in_distribution"]``, ``engine.shift``), one image-level group
(TID 1501) says whether the image is like the training images (coded Yes / No) with its shift score and
threshold as numeric measurements. The per-class probabilities stay in
predictions.csv (each SR content item costs highdicom time).

Coordinates: ROIs are ``(x_min, y_min, x_max, y_max)`` in source pixels, continuous (pixel column i
covers [i, i+1)), x = column, y = row; the same convention as DICOM image-relative SCOORDs (0,0 =
top-left corner of the top-left pixel).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from spine_dfl import __version__
from spine_dfl.dicom_out.codes import (
    CODES,
    DEVICE_OBSERVER_UID,
    MANUFACTURER,
    MODEL_NAME,
    PRIVATE_SCHEME,
    class_code,
    coding_scheme_item,
    vertebra_code,
)
from spine_dfl.dicom_out.findings import DicomOutputError, VertebraFinding
from spine_dfl.dicom_out.source import result_series, result_uids, with_study_context

__all__ = ["build_sr", "roi_polyline"]


def roi_polyline(roi: tuple[float, float, float, float] | None, rows: int, cols: int) -> np.ndarray:
    """Closed polyline (5, 2) of (column, row) points of the ROI clipped to the image, or the whole image."""
    from spine_dfl.heatmap.geometry import clip_boxes

    box = (0.0, 0.0, float(cols), float(rows)) if roi is None else tuple(float(v) for v in roi)
    x0, y0, x1, y1 = (float(v) for v in clip_boxes(np.asarray(box, dtype=np.float64), (rows, cols)))
    if not (x1 > x0 and y1 > y0):
        raise DicomOutputError(f"ROI {roi} does not overlap the {cols} x {rows} image")
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


def _measurement_group(
    finding: VertebraFinding,
    number: int,
    source: Dataset,
    class_names: Sequence[str],
    algorithm: hd.sr.AlgorithmIdentification,
    tracking_root: str,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """The SR group of one finding: region, tracking, finding site, probability, predicted grade."""
    label = finding.vertebra.strip() or "whole image"
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=roi_polyline(finding.roi, int(source.Rows), int(source.Columns)),
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=str(source.SOPClassUID),
            referenced_sop_instance_uid=str(source.SOPInstanceUID),
        ),
    )
    # Only the predicted grade's probability: every extra content item costs highdicom
    # noticeable time per vertebra, and the full distribution is in predictions.csv.
    probability = hd.sr.Measurement(
        name=CODES["probability"],
        value=float(finding.probabilities[finding.predicted]),
        unit=CODES["no_units"],
    )
    located = finding.cells.get("roi_source") == "locator"
    evaluations = [hd.sr.QualitativeEvaluation(name=CODES["predicted_grade"], value=class_code(class_names, finding.predicted))]
    if finding.cells.get("morph_grade"):
        evaluations.append(hd.sr.QualitativeEvaluation(
            name=CODES["morph_grade"], value=_private_value(str(finding.cells["morph_grade"]))))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=[tracking_root, str(number), label]),
            identifier=f"vertebra {label}" + (" (located)" if located else ""),
        ),
        referenced_region=region,
        finding_type=CODES["finding_type"],
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(anatomic_location=vertebra_code(finding.vertebra))],
        measurements=[probability, *_morphometry_measurements(finding.cells)],
        qualitative_evaluations=evaluations,
        method=CODES["located_region"] if located else None,
    )


def _shift_group(
    findings: Sequence[VertebraFinding], source: Dataset, algorithm: hd.sr.AlgorithmIdentification, tracking_root: str,
) -> hd.sr.MeasurementsAndQualitativeEvaluations | None:
    """The image's training-distribution check (TID 1501), or None when the findings do not carry one."""
    cells = findings[0].cells
    verdict = str(cells.get("in_distribution") or "")
    if verdict not in ("yes", "no"):
        return None
    measurements = [
        hd.sr.Measurement(name=CODES[key], value=float(cells[key]), unit=CODES["no_units"])
        for key in ("shift_score", "shift_threshold")
        if cells.get(key) not in (None, "") and np.isfinite(float(cells[key]))
    ]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=[tracking_root, "training distribution check"]),
            identifier="image: training distribution check",
        ),
        finding_type=CODES["shift_check"],
        method=CODES["shift_method"],
        algorithm_id=algorithm,
        measurements=measurements or None,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=CODES["like_training"], value=CODES[verdict])],
        source_images=[hd.sr.SourceImageForMeasurementGroup(
            referenced_sop_class_uid=str(source.SOPClassUID), referenced_sop_instance_uid=str(source.SOPInstanceUID))],
    )


_ANCHOR_METHODS = {"sacrum": "anchor_sacrum", "C7/T1": "anchor_c7t1", "C7/T1 and sacrum": "anchor_both", "": "anchor_none"}


def _levels_group(
    findings: Sequence[VertebraFinding], source: Dataset, algorithm: hd.sr.AlgorithmIdentification, tracking_root: str,
) -> hd.sr.MeasurementsAndQualitativeEvaluations | None:
    """How the levels were counted (``locate.anchors``): anchored (yes / no) and from what, so a reader
    of ``V3`` knows it is the third vertebra from the top of the film, not a level; None when the
    findings are not located ones."""
    anchored = str(findings[0].cells.get("level_anchored") or "")
    if anchored not in ("yes", "no"):
        return None
    anchor = str(findings[0].cells.get("level_anchor") or "") if anchored == "yes" else ""
    evaluations = [hd.sr.QualitativeEvaluation(name=CODES["levels_anchored"], value=CODES[anchored])]
    transitional = str(findings[0].cells.get("transitional") or "")
    if transitional:
        evaluations.append(hd.sr.QualitativeEvaluation(name=CODES["transitional"], value=_private_value(transitional)))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=[tracking_root, "level identification"]),
            identifier="image: vertebral level identification",
        ),
        finding_type=CODES["level_identification"],
        method=CODES[_ANCHOR_METHODS.get(anchor, "anchor_none")],
        algorithm_id=algorithm,
        qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup(
            referenced_sop_class_uid=str(source.SOPClassUID), referenced_sop_instance_uid=str(source.SOPInstanceUID))],
    )


def _private_value(name: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=name.upper()[:16], scheme_designator=PRIVATE_SCHEME, meaning=name)


def _morphometry_measurements(cells: Mapping[str, Any]) -> list[hd.sr.Measurement]:
    """Ha, Hm, Hp (mm, or pixels without spacing; the method says detector or patient mm), the three
    ratios and the height loss ({ratio}), and the locator's confidence, where the cells give them."""
    out = []
    unit = str(cells.get("height_unit") or "pixels")
    for key in ("ha", "hm", "hp", "wedge_ratio", "biconcave_ratio", "crush_ratio", "height_loss", "locator_confidence",
                "level_confidence"):
        value = cells.get(key)
        if value is None or value == "" or not np.isfinite(float(value)):
            continue
        height = key in ("ha", "hm", "hp")
        out.append(hd.sr.Measurement(
            name=CODES[key], value=float(value),
            unit=CODES["pixels" if height and unit == "pixels" else "mm" if height else "ratio"],
            method=CODES[unit] if height and unit != "pixels" else None,
        ))
    return out


def _device_observer() -> hd.sr.ObserverContext:
    return hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept(*codes.DCM.Device),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=DEVICE_OBSERVER_UID,
            name=MANUFACTURER,
            manufacturer_name=MANUFACTURER,
            model_name=MODEL_NAME,
        ),
    )


def build_sr(
    source: Dataset,
    findings: Sequence[VertebraFinding],
    class_names: Sequence[str],
    run_key: str,
    algorithm_parameters: Sequence[str] = (),
) -> hd.sr.ComprehensiveSR:
    """Comprehensive SR (TID 1500) of ``findings`` on ``source`` (a header dataset of the scored image).

    Missing Type 2 patient and study attributes of the source are present and empty in the SR.
    """
    if not findings:
        raise DicomOutputError("no findings to report")
    source = with_study_context(source)
    uids = result_uids(run_key, source)
    algorithm = hd.sr.AlgorithmIdentification(
        name=MODEL_NAME, version=__version__, parameters=list(algorithm_parameters) or None
    )
    groups = [_measurement_group(finding, number, source, class_names, algorithm, uids["tracking"])
              for number, finding in enumerate(findings, start=1)]
    for extra in (_shift_group(findings, source, algorithm, uids["tracking"]),
                  _levels_group(findings, source, algorithm, uids["tracking"])):
        if extra is not None:
            groups.append(extra)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=_device_observer()),
        procedure_reported=CODES["procedure"],
        imaging_measurements=groups,
    )
    return hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report,
        is_complete=True,
        is_final=False,
        is_verified=False,
        coding_schemes=[coding_scheme_item()],
        **result_series(source, run_key, "sr"),
    )
