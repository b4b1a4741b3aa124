"""VinDr-SpineXR with ``--locator``: the locator's vertebrae of each image, weakly labelled by the lesion boxes.

The locator runs as ``spine-dfl score`` runs it (``locate.locating.locate_film``: the header's
PatientOrientation and the checkpoint's view classifier turn the film, the column gate refuses what is
not a lateral column); boxes and points come back in the DICOM's stored pixels, the grid of VinDr's boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spine_dfl.datasets.common import Unmapped
from spine_dfl.datasets.vindr import WEAK, ImageLesions, covers
from spine_dfl.io import ImageReadError, read_image
from spine_dfl.io.vocabulary import POINT_COLUMNS

if TYPE_CHECKING:
    from pydicom import Dataset

    from spine_dfl.io.radiograph import Radiograph
    from spine_dfl.locate.checkpoint import LoadedLocator
    from spine_dfl.locate.locating import LocatedRois

__all__ = ["located_rows"]


def _located(loaded: Any, view: Any, path: Path) -> tuple[LocatedRois, Radiograph, Dataset]:
    import pydicom

    from spine_dfl.locate.locating import locate_film

    radiograph = read_image(path)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    return locate_film(loaded, view, radiograph, header.get("PatientOrientation")), radiograph, header


def _point_cells(points: np.ndarray, shape: tuple[int, int]) -> dict[str, float] | None:
    rows, cols = shape
    inside = (points[:, 0] >= 0).all() and (points[:, 0] <= cols).all() and (points[:, 1] >= 0).all() \
        and (points[:, 1] <= rows).all()
    return dict(zip(POINT_COLUMNS, (float(v) for v in points.reshape(-1)))) if inside else None


def _image_rows(image: ImageLesions, base: dict[str, Any], found: LocatedRois, shape: tuple[int, int],
                unmapped: Unmapped) -> list[dict[str, Any]]:
    covered: dict[int, list[int]] = {}
    for k, box in enumerate(found.boxes):
        covered[k] = [row for lesion, row in image.fracture_boxes if covers(lesion, box)]
    for lesion, row in image.fracture_boxes:
        if not any(row in rows for rows in covered.values()):
            unmapped.add(base["image"], "collapse/fracture box covers no located vertebra", row=str(row),
                         part=image.part, image_id=image.image_id)
    out = []
    for k, (level, box) in enumerate(zip(found.vertebrae, found.boxes)):
        cells = _point_cells(np.asarray(found.points[k]), shape) if k < len(found.points) else None
        if cells is None:
            unmapped.add(base["image"], "located points outside the image: vertebra kept without points",
                         vertebra=level, image_id=image.image_id)
        out.append({**base, "vertebra": level, "label": "abnormal" if covered[k] else "normal",
                    **dict(zip(("x_min", "y_min", "x_max", "y_max"), (float(v) for v in box))), **(cells or {}),
                    "label_source": WEAK, "locator_confidence": f"{found.confidence[k]:.4f}",
                    "level_anchored": "yes" if found.anchored else "no"})
    return out


def _load(path: Path) -> LoadedLocator:
    """A locator checkpoint, or a grader checkpoint with one embedded (``spine-dfl embed-locator``)."""
    from spine_dfl.engine.checkpoint import read_checkpoint
    from spine_dfl.locate.checkpoint import embedded_locator_payload
    from spine_dfl.locate.locating import LocatorSource

    raw = read_checkpoint(path)
    embedded = raw.get("kind", "grader") == "grader" and embedded_locator_payload(raw) is not None
    return LocatorSource(str(path), embedded=embedded).load()


def located_rows(locator: str | Path, images: Sequence[ImageLesions], image_rows: Sequence[dict[str, Any]],
                 unmapped: Unmapped) -> list[dict[str, Any]]:
    """Per-vertebra rows of every image the locator finds a lateral column on; the rest is reported."""
    from spine_dfl.locate.locating import NO_VERTEBRAE, view_of

    loaded = _load(Path(locator))
    view = view_of(loaded)
    rows: list[dict[str, Any]] = []
    for image, base in zip(images, image_rows):
        path = Path(base["image"])
        try:
            found, radiograph, header = _located(loaded, view, path)
        except ImageReadError as exc:
            unmapped.add(path, f"unreadable: {exc}", image_id=image.image_id)
            continue
        uid = str(header.get("SOPInstanceUID", ""))
        if uid != image.image_id:
            unmapped.add(path, "SOPInstanceUID differs from image_id", image_id=image.image_id)
            continue
        if not found.vertebrae or found.refusal:
            unmapped.add(path, found.refusal or NO_VERTEBRAE, image_id=image.image_id)
            continue
        kept = {k: v for k, v in base.items() if k not in ("label", "label_source")}
        rows.extend(_image_rows(image, kept, found, tuple(np.shape(radiograph.pixels))[:2], unmapped))
    return rows
