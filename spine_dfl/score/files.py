"""One input file -> one *file item*: its DICOM identifiers, its ROIs and its network inputs.

This is the decode + transforms stage of scoring. It runs in the decode worker processes
(``score.isolation``), so an item holds numpy arrays only (pickled back to the scoring process)
and never raises: a file that cannot be scored becomes an item with ``ok=False`` and its reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spine_dfl.io.orientation import CANONICAL, Orientation, canonical_box
from spine_dfl.io.rois import RoiTable
from spine_dfl.score.errors import reason_of

if TYPE_CHECKING:
    from monai.transforms import Compose
    from pydicom import Dataset

    from spine_dfl.data.transforms.load import LoadRadiographd
    from spine_dfl.data.transforms.settings import Preprocessing
    from spine_dfl.gate.view import LoadedView
    from spine_dfl.locate.checkpoint import LoadedLocator
    from spine_dfl.locate.locating import LocatorSource

Box = tuple[float, float, float, float]  # (x_min, y_min, x_max, y_max) in original pixels, x = column


def failed_item(index: int, file: str, input_size: int, reason: str, **ids: str) -> dict[str, Any]:
    """The item of a file that cannot be scored (no samples, ``reason`` in ``error``)."""
    return {
        "index": index, "file": file, "ok": False, "error": reason,
        "sop_instance_uid": ids.get("sop_instance_uid", ""), "study_instance_uid": ids.get("study_instance_uid", ""),
        "patient_id": ids.get("patient_id", ""), "vertebrae": [], "rois": [], "extras": [],
        "images": np.zeros((0, 1, input_size, input_size), np.float32), "roi_input": np.zeros((0, 4), np.float32),
        "to_original": None, "regions": [],
    }


class FileSamples:
    """Map-style dataset over input files; item i is one *file item* (a dict; never raises).

    Item keys: ``index`` (position in ``files``), ``file`` (str), ``ok`` (bool), ``error`` (reason
    or ""), ``sop_instance_uid``, ``study_instance_uid``, ``patient_id`` ("" unless keep_ids),
    ``vertebrae`` (list[str], one per sample), ``rois`` (list of 4-tuples or None), ``images``
    (float32 numpy (n, 1, S, S); (0, 1, S, S) when not ok), ``extras`` (per sample the predictions
    table's ``roi_source`` / ``locator_confidence`` / morphometry cells; [] for a whole-image model).
    With ``locator`` (a ``locate.locating.LocatorSource``) and no ``rois``, the vertebrae are the
    locator's (loaded once per process; a radiograph where it finds none fails with
    ``no vertebrae found``). A DICOM whose header the input gate refuses (``gate.header``: not a
    projection radiograph, another body part, a frontal view; the view hints not with
    ``ignore_view_tags``) fails with that reason before anything else. With ``geometry`` (for the DICOM
    overlay's heatmaps) also ``to_original`` (float64 (n, 3, 3): each sample's network input ->
    original pixel affine; None otherwise) and ``regions`` (per sample the integer (x0, y0, x1, y1)
    original-pixel region the network saw, ``heatmap.geometry.display_region``; [] otherwise).
    """

    def __init__(
        self, files: Sequence[str | Path], preprocessing: Preprocessing, rois: RoiTable | None, keep_ids: bool,
        geometry: bool = False, locator: LocatorSource | None = None, ignore_view_tags: bool = False,
    ) -> None:
        self.files = [Path(f) for f in files]
        self.preprocessing = preprocessing
        self.rois = rois
        self.keep_ids = keep_ids
        self.geometry = geometry
        self.locator = locator
        self.ignore_view_tags = ignore_view_tags
        self._transforms: Compose | None = None  # built lazily, in the process that decodes
        self._locator: LoadedLocator | None = None  # loaded lazily, in the process that decodes
        self._view: LoadedView | None = None  # the locator's view classifier (gate.view), loaded with it

    def __len__(self) -> int:
        return len(self.files)

    @property
    def input_size(self) -> int:
        return int(self.preprocessing.input_size)

    def __getstate__(self) -> dict[str, Any]:
        # MONAI transforms are rebuilt and the locator reloaded per process (only its path travels)
        return {**self.__dict__, "_transforms": None, "_locator": None, "_view": None}

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        ids = {"sop_instance_uid": "", "study_instance_uid": "", "patient_id": ""}
        try:
            return self._item(index, path, ids)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - a decoder panic (pyo3: a BaseException) fails this file only
            return failed_item(index, str(path), self.input_size, reason_of(exc) or type(exc).__name__, **ids)

    def _item(self, index: int, path: Path, ids: dict[str, str]) -> dict[str, Any]:
        from spine_dfl.gate.header import header_refusal
        from spine_dfl.gate.orientation import choose_orientation
        from spine_dfl.io import ImageReadError, is_dicom, read_dicom_header, read_image

        header = None
        if path.is_file() and is_dicom(path):
            header = read_dicom_header(path)
            ids["sop_instance_uid"] = str(header.get("SOPInstanceUID", "") or "")
            ids["study_instance_uid"] = str(header.get("StudyInstanceUID", "") or "")
            if self.keep_ids:
                ids["patient_id"] = str(header.get("PatientID", "") or "")
            refusal = header_refusal(header, self.ignore_view_tags)
            if refusal is not None:
                raise ImageReadError(path, refusal)  # before any ROI lookup, locator or decode
        extras: list[dict[str, Any]] = []
        if self.rois is not None:
            rois: list[tuple[str, Box | None]] = list(self.rois.lookup(ids["sop_instance_uid"], path))
            if not rois:
                if header is None or not ("Rows" in header and "Columns" in header):
                    read_image(path)  # not an image at all: its own reason is the better one
                raise ImageReadError(path, "no ROIs for this image in the ROI CSV (matched by sop_instance_uid or image path)")
            orientation = choose_orientation(None if header is None else header.get("PatientOrientation"))
            extras = [{"roi_source": "file", "orientation": orientation.name} for _ in rois]
            crops = _canonical_boxes([roi for _, roi in rois], orientation, header)
        elif self.locator is not None:
            rois, extras, crops, orientation = self._located(path, header)
        else:
            rois, crops, orientation = [("", None)], [None], CANONICAL
        images, roi_input, affines, regions = self._transform(path, crops, orientation, [roi for _, roi in rois])
        return {
            "index": index, "file": str(path), "ok": True, "error": "", **ids,
            "vertebrae": [vertebra for vertebra, _ in rois], "rois": [roi for _, roi in rois], "extras": extras,
            "images": images, "roi_input": roi_input, "to_original": affines, "regions": regions,
        }

    def _located(self, path: Path, header: Dataset | None) -> tuple[list[tuple[str, Box | None]], list[dict[str, Any]],
                                                      list[Box], Orientation]:
        """The locator's (level, stored box) pairs of ``path``, their table cells, the boxes on the canonical
        film and the orientation that makes it canonical (``locate.locating.locate_film``); ImageReadError
        when it finds none, or when what it found is not a lateral column (``gate.column``)."""
        from spine_dfl.io import ImageReadError
        from spine_dfl.locate.locating import NO_VERTEBRAE, locate_film, view_of

        if self._locator is None:
            self._locator = self.locator.load()  # type: ignore[union-attr]  # _item calls this only with a locator
            self._view = view_of(self._locator)
        radiograph = self._loader()._read(str(path))  # decoded once: the crops reuse it
        words = None if header is None else header.get("PatientOrientation")
        found = locate_film(self._locator, self._view, radiograph, words)
        if not found.vertebrae:
            raise ImageReadError(path, NO_VERTEBRAE)
        if found.refusal:
            raise ImageReadError(path, found.refusal)
        extras = [{"roi_source": "locator", "locator_confidence": confidence, **cells}
                  for confidence, cells in zip(found.confidence, found.morphometry)]
        return list(zip(found.vertebrae, found.boxes)), extras, list(found.crop_boxes), found.orientation

    def _loader(self) -> LoadRadiographd:
        """The pipeline's LoadRadiographd: its per-process cache holds the radiograph just read."""
        from spine_dfl.data.transforms import eval_transforms
        from spine_dfl.data.transforms.load import LoadRadiographd

        if self._transforms is None:
            self._transforms = eval_transforms(self.preprocessing)
        return next(t for t in self._transforms.transforms if isinstance(t, LoadRadiographd))

    def _transform(
        self, path: Path, rois: list[Box | None], orientation: Orientation = CANONICAL,
        stored_rois: list[Box | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[tuple[int, int, int, int] | None]]:
        """(n, 1, S, S) float32 network inputs of ``path`` turned by ``orientation`` and cropped to each
        ROI (canonical pixels; None = whole image) and (n, 4) float32 ROI boxes in input pixels; with
        ``geometry`` also their (n, 3, 3) input -> original (stored) affines and displayed regions
        (``stored_rois``: the same ROIs in stored pixels; ``rois`` when not given)."""
        import torch

        from spine_dfl.data.transforms import eval_transforms
        from spine_dfl.data.transforms.geometry import roi_in_input

        if self._transforms is None:
            self._transforms = eval_transforms(self.preprocessing)
        size = self.input_size
        images = np.empty((len(rois), 1, size, size), np.float32)
        roi_input = np.empty((len(rois), 4), np.float32)
        affines: list[np.ndarray] = []
        regions: list[tuple[int, int, int, int] | None] = []
        stored_rois = rois if stored_rois is None else stored_rois
        for j, (roi, stored_roi) in enumerate(zip(rois, stored_rois)):
            sample = self._transforms({"image": str(path), "roi": roi, "orientation": orientation})
            image = sample["image"]
            image = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
            images[j] = image.float().reshape(1, size, size).numpy()
            roi_input[j] = roi_in_input(stored_roi, sample["to_original"], size).numpy()
            if self.geometry:
                affine, region = self._geometry(sample, stored_roi)
                affines.append(affine)
                regions.append(region)
        return images, roi_input, (np.stack(affines) if affines else None), regions

    def _geometry(self, sample: Mapping[str, Any], roi: Box | None) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
        """A sample's input -> original affine and the region it shows; no region (so no heatmap)
        when the reader did not report the image size."""
        import torch

        from spine_dfl.heatmap.geometry import display_region

        affine = torch.as_tensor(sample["to_original"], dtype=torch.float64).numpy()
        meta = sample.get("meta") or {}
        shape = (int(meta.get("rows", -1)), int(meta.get("cols", -1)))
        if min(shape) < 1:
            return affine, None
        return affine, tuple(int(v) for v in display_region(affine, self.preprocessing, roi, shape))


def _canonical_boxes(boxes: list[Box | None], orientation: Orientation, header: Dataset | None) -> list[Box | None]:
    """Stored-pixel ROIs on the canonical film (the stored size from the header's Rows/Columns)."""
    if orientation.is_identity:
        return boxes
    shape = (int(header.Rows), int(header.Columns))  # type: ignore[union-attr]  # only a DICOM header turns a film
    return [None if b is None else canonical_box(b, orientation, shape) for b in boxes]
