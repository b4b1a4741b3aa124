"""The vertebrae of a radiograph without an ROI file: the locator's boxes, levels, confidence and morphometry.

Runs in the decode workers (``score.files``), on one intra-op thread per worker: the locator's
CPU inference is per radiograph, like decoding, so it scales with the workers and a locator that
crashes its process fails one file like a decoder would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

NO_VERTEBRAE = "no vertebrae found"


@dataclass(frozen=True)
class LocatorSource:
    """Where the locator comes from: its own checkpoint, or the one embedded in the grader's (``embedded``).

    Only the path travels to the worker processes; each loads the locator once, on first use.
    """

    path: str
    embedded: bool = False

    def load(self) -> Any:
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
    """One radiograph's located vertebrae, cranial first: level names, boxes (x_min, y_min, x_max, y_max)
    in original pixels, confidences, each vertebra's morphometry cells (``predictions.morphometry_cells``,
    plus ``points``: the six points as ((x, y), ...) for the SC overlay, and ``points_refined``: how many
    of them were snapped to an endplate edge, ``locate.refine``; cells not a table column are not written
    to predictions.csv) and its six points ((6, 2) arrays sa, sm, sp, ia, im, ip; (x, y) original pixels)."""

    vertebrae: list[str]
    boxes: list[tuple[float, float, float, float]]
    confidence: list[float]
    morphometry: list[dict[str, Any]]
    points: list[np.ndarray] = field(default_factory=list)


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def locate_rois(loaded: Any, radiograph: Any) -> LocatedRois:
    """The locator's vertebrae of one decoded radiograph (``io.Radiograph``), with six-point morphometry."""
    from spine_dfl.data.threads import single_thread
    from spine_dfl.heatmap.geometry import clip_boxes
    from spine_dfl.locate.checkpoint import locate_radiograph
    from spine_dfl.locate.morphometry import UNIT_BY_SPACING_SOURCE, spine_morphometry
    from spine_dfl.predictions import morphometry_cells

    with single_thread():
        found = locate_radiograph(loaded, np.asarray(radiograph.pixels))
    if not len(found):
        return LocatedRois([], [], [], [])
    # A box is clipped to the image; one that keeps less than half its area there (a peak in the
    # letterbox padding, or a body cut by the field of view) is not a vertebra to grade.
    raw = found.detections.boxes
    clipped = clip_boxes(raw, np.asarray(radiograph.pixels).shape[:2])
    keep = np.flatnonzero(_area(clipped) >= 0.5 * np.maximum(_area(raw), 1e-9))
    if not keep.size:
        return LocatedRois([], [], [], [])
    vertebrae = [found.levels[k] for k in keep]
    boxes = [tuple(float(v) for v in clipped[k]) for k in keep]
    # The locator's levels are consecutive in anatomical order: their indices give the crush ratio's neighbours.
    source = radiograph.meta.get("spacing_source")
    spacing = radiograph.spacing_mm if source in UNIT_BY_SPACING_SOURCE else None  # unknown source: pixels
    measured = spine_morphometry(found.detections.points[keep], [loaded.levels.index(name) for name in vertebrae],
                                 spacing, source if spacing is not None else None)
    cells = morphometry_cells(measured)
    for k, cell in zip(keep, cells):
        cell["points"] = tuple((float(x), float(y)) for x, y in found.detections.points[k])
        if found.refined is not None:
            cell["points_refined"] = int(found.refined[k].sum())
    return LocatedRois(vertebrae, boxes, [float(found.confidence[k]) for k in keep], cells,
                       [found.detections.points[k] for k in keep])
