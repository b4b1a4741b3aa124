"""The vertebrae of a radiograph without an ROI file: the locator's boxes, levels, confidence and morphometry.

Runs in score's decode workers (``score.files``), on one intra-op thread per worker: the locator's
CPU inference is per radiograph, like decoding, so it scales with the workers and a locator that
crashes its process fails one file like a decoder would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spine_dfl.io.orientation import CANONICAL, Orientation

if TYPE_CHECKING:
    from spine_dfl.gate.view import LoadedView
    from spine_dfl.io.radiograph import Radiograph
    from spine_dfl.locate.checkpoint import LoadedLocator

NO_VERTEBRAE = "no vertebrae found"


@dataclass(frozen=True)
class LocatorSource:
    """Where the locator comes from: its own checkpoint, or the one embedded in the grader's (``embedded``).

    Only the path travels to the worker processes; each loads the locator once, on first use.
    """

    path: str
    embedded: bool = False

    def load(self) -> LoadedLocator:
        from spine_dfl.engine.checkpoint import CheckpointError, read_checkpoint
        from spine_dfl.locate.checkpoint import embedded_locator_payload, load_locator, locator_from_payload

        if not self.embedded:
            return load_locator(self.path)
        payload = embedded_locator_payload(read_checkpoint(self.path))
        if payload is None:
            raise CheckpointError(f"{self.path}: the grader checkpoint embeds no locator")
        return locator_from_payload(payload, f"{self.path} (embedded locator)")


def resolve_locator(locator: str | Path | None, grader_raw: dict[str, Any], grader_path: str | Path) -> LocatorSource | None:
    """The locator to use: ``locator`` when given (kind-checked now: a usage error, not N file errors),
    else the grader checkpoint's embedded one, else None."""
    from spine_dfl.locate.checkpoint import embedded_locator_payload, load_locator

    if locator is not None:
        load_locator(locator)  # CheckpointError in one line: missing, damaged, or a grader given as locator
        return LocatorSource(str(Path(locator).resolve()))
    if embedded_locator_payload(grader_raw) is not None:
        return LocatorSource(str(Path(grader_path).resolve()), embedded=True)
    return None


@dataclass(frozen=True)
class LocatedRois:
    """One radiograph's located vertebrae, cranial first: level names (``V1``.. where no anchor is
    visible, ``locate.anchors``), boxes (x_min, y_min, x_max, y_max) in the file's own (stored) pixels,
    confidences, each vertebra's morphometry cells (``predictions.morphometry_cells`` plus
    ``level_confidence``, ``level_anchored`` and ``orientation``; plus ``points``: the six points as
    ((x, y), ...) in stored pixels for the SC overlay, and ``points_refined``: how many of them were
    snapped to an endplate edge, ``locate.refine``; cells not a table column are not written to
    predictions.csv) and its six points ((6, 2) arrays sa, sm, sp, ia, im, ip; (x, y) stored pixels).

    ``crop_boxes``: the boxes on the canonical film (what the grader's crop is cut from, turned by
    ``orientation``); ``refusal``: the image gate's reason when the chain is not a lateral column
    (``gate.column``; the vertebrae are then not to be graded); ``anchor``/``anchored``: what the
    levels were counted from.
    """

    vertebrae: list[str]
    boxes: list[tuple[float, float, float, float]]
    confidence: list[float]
    morphometry: list[dict[str, Any]]
    points: list[np.ndarray] = field(default_factory=list)
    crop_boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    orientation: Orientation = CANONICAL
    refusal: str = ""
    anchored: bool = False
    anchor: str = ""


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def locate_rois(loaded: LoadedLocator, radiograph: Radiograph, orientation: Orientation = CANONICAL,
                view_probability: float | None = None, orientation_sure: bool = True) -> LocatedRois:
    """The locator's vertebrae of one decoded radiograph (``io.Radiograph``), with six-point morphometry.

    The locator, the anchoring and the column gate work on the canonical film (``orientation`` turns
    the stored pixels to it); boxes and points come back in stored pixels. ``view_probability``: the
    view classifier's lateral-spine probability, for the gate (None: not available). With
    ``orientation_sure`` False (``gate.orientation.head_axis_is_sure``) no level is named: V1.. .
    """
    from spine_dfl.data.threads import single_thread
    from spine_dfl.gate.column import column_refusal
    from spine_dfl.heatmap.geometry import clip_boxes
    from spine_dfl.locate.anchors import anchor_levels
    from spine_dfl.locate.checkpoint import locate_radiograph
    from spine_dfl.locate.morphometry import UNIT_BY_SPACING_SOURCE, spine_morphometry
    from spine_dfl.predictions import morphometry_cells

    stored = np.asarray(radiograph.pixels)
    pixels = orientation.apply(stored)
    with single_thread():
        found = locate_radiograph(loaded, pixels)
    if not len(found):
        return LocatedRois([], [], [], [], orientation=orientation)
    # A box is clipped to the image; one that keeps less than half its area there (a peak in the
    # letterbox padding, or a body cut by the field of view) is not a vertebra to grade.
    raw = found.detections.boxes
    clipped = clip_boxes(raw, pixels.shape[:2])
    keep = np.flatnonzero(_area(clipped) >= 0.5 * np.maximum(_area(raw), 1e-9))
    if not keep.size:
        return LocatedRois([], [], [], [], orientation=orientation)
    source = radiograph.meta.spacing_source
    spacing = orientation.spacing_to_canonical(radiograph.spacing_mm) if source in UNIT_BY_SPACING_SOURCE else None
    points = found.detections.points[keep]
    refusal = column_refusal(points, clipped[keep], spacing, view_probability) or ""
    named = anchor_levels(found.detections.centres[keep], clipped[keep], found.detections.level_logits[keep],
                          loaded.levels, pixels.shape[0], found.head_up, orientation_sure)
    # Neighbours for the crush ratio: anchored levels, else the chain's own order (consecutive).
    neighbours = list(named.levels) if named.anchored else list(range(len(keep)))
    measured = spine_morphometry(points, neighbours, spacing, source if spacing is not None else None)
    stored_points = orientation.points_to_stored(points, stored.shape)
    cells = morphometry_cells(measured, stored_points)
    for j, (k, cell) in enumerate(zip(keep, cells)):
        cell["points"] = tuple((float(x), float(y)) for x, y in stored_points[j])
        cell["level_confidence"] = float(named.level_confidence[j])
        cell["level_anchored"] = "yes" if named.anchored else "no"
        cell["level_anchor"] = named.anchor  # for the SR's level-identification group; not a table column
        cell["transitional"] = named.transitional
        cell["orientation"] = orientation.name
        if found.refined is not None:
            cell["points_refined"] = int(found.refined[k].sum())
    stored_boxes = orientation.boxes_to_stored(clipped[keep], stored.shape)
    return LocatedRois(
        list(named.names), [tuple(float(v) for v in b) for b in stored_boxes],
        [float(found.detections.scores[k]) * float(c) for k, c in zip(keep, named.level_confidence)], cells,
        list(stored_points), [tuple(float(v) for v in clipped[k]) for k in keep], orientation, refusal,
        named.anchored, named.anchor)


def view_of(locator: LoadedLocator) -> LoadedView | None:
    """The view classifier a loaded locator's checkpoint carries (``gate.view``), or None."""
    from spine_dfl.gate.view_checkpoint import view_from_locator_payload

    return view_from_locator_payload(getattr(locator, "raw", None) or {})


def locate_film(loaded: LoadedLocator, view: LoadedView | None, radiograph: Radiograph,
                patient_orientation: Sequence[str] | None = None) -> LocatedRois:
    """``locate_rois`` on the film turned to canonical: the orientation from the header's
    PatientOrientation and the view classifier ``view`` (``gate.orientation.choose_orientation``;
    None: the header alone), whose lateral-spine probability also goes to the column gate."""
    from spine_dfl.gate.orientation import choose_orientation, head_axis_is_sure

    prediction = None
    if view is not None:
        from spine_dfl.gate.view import predict_view

        prediction = predict_view(view, np.asarray(radiograph.pixels))
    orientation = choose_orientation(patient_orientation, prediction)
    return locate_rois(loaded, radiograph, orientation,
                       None if prediction is None else float(prediction.lateral_probability),
                       head_axis_is_sure(patient_orientation, prediction, orientation))
