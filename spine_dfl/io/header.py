"""DICOM headers without pixels, and the cheap header-only facts of any supported image.

Every DICOM header read in spine_dfl goes through here: :func:`read_dicom_header` (a
``pydicom.Dataset`` read with ``stop_before_pixels``), :func:`dicom_uid` (SOP Instance UID or None),
:func:`read_header` / :func:`image_size` (rows, cols, spacing and UIDs of a DICOM, NIfTI or
PNG/TIFF/JPEG file without decoding its pixels, for checks such as ``spine-dfl validate``).

Imports nothing heavier than numpy at module level; pydicom, nibabel and Pillow are imported when
first used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spine_dfl.io.discovery import (
    DICOMDIR_SOP_CLASS,
    has_dicm_preamble,
    is_dicom,
    image_format,
    read_head,
    starts_like_headerless_dicom,
)
from spine_dfl.io.radiograph import ImageReadError, PathLike, check_regular_file

if TYPE_CHECKING:
    from pydicom import Dataset, FileDataset

__all__ = [
    "ImageHeader",
    "dicom_uid",
    "image_size",
    "read_dicom_header",
    "read_header",
    "spacing_from_dataset",
]

# What read_header needs from a DICOM header (specific_tags keeps the parse short).
_HEADER_TAGS = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns",
    "NumberOfFrames", "SamplesPerPixel", "PhotometricInterpretation", "PixelSpacing",
    "ImagerPixelSpacing", "DirectoryRecordSequence",
)


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says about its image, read without decoding pixels.

    rows, cols: the shape ``read_image(path).pixels`` will have (for NIfTI after the transpose
        described in :mod:`spine_dfl.io.raster`).
    spacing_mm: (row, column) spacing in mm as ``read_image`` reports it, or None.
    source: 'dicom' | 'nifti' | 'image'.
    sop_instance_uid, study_instance_uid, series_instance_uid: DICOM only (None otherwise or
        when absent).
    """

    path: str
    source: str
    rows: int
    cols: int
    spacing_mm: tuple[float, float] | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None


def dcmread(path: Path, *, stop_before_pixels: bool, specific_tags: Sequence[str] | None = None) -> FileDataset:
    """Parse a DICOM file, with ``force=True`` only when the preamble is missing."""
    import pydicom

    head = read_head(path)
    force = not has_dicm_preamble(head)
    if force and not starts_like_headerless_dicom(head):
        raise ImageReadError(path, "not a DICOM file (no 'DICM' preamble and no DICOM tags at the start)")
    try:
        return pydicom.dcmread(
            path, force=force, stop_before_pixels=stop_before_pixels, specific_tags=specific_tags
        )
    except Exception as error:  # noqa: BLE001 - every parser failure becomes a reason
        raise ImageReadError(
            path, f"cannot be parsed as DICOM (corrupt or truncated file): {type(error).__name__}: {error}"
        ) from error


def read_dicom_header(path: PathLike, specific_tags: Sequence[str] | None = None) -> FileDataset:
    """The DICOM header of `path` as a ``pydicom.Dataset`` (read with ``stop_before_pixels``).

    specific_tags: keywords to read (pydicom ``specific_tags``), all when None; fewer tags parse
    faster. Raises ImageReadError when the file is missing, not DICOM or cannot be parsed.
    """
    file_path = Path(path)
    check_regular_file(file_path)
    try:
        if not is_dicom(file_path):
            raise ImageReadError(file_path, "not a DICOM file")
        return dcmread(file_path, stop_before_pixels=True, specific_tags=specific_tags)
    except ImageReadError:
        raise
    except Exception as error:  # noqa: BLE001
        raise ImageReadError(file_path, f"cannot read the DICOM header: {type(error).__name__}: {error}") from error


def dicom_uid(path: PathLike) -> str | None:
    """SOP Instance UID from the header of `path`, or None when it is not a readable DICOM file or has none.

    Never raises ImageReadError: reading the pixels later says what is wrong with such a file.
    """
    try:
        header = read_dicom_header(path, specific_tags=["SOPInstanceUID"])
    except ImageReadError:
        return None
    return str_or_none(header.get("SOPInstanceUID", None))


def int_attribute(path: Path, dataset: Dataset, keyword: str, words: str, default: int | None = None) -> int | None:
    """Integer value of an image-module attribute, with a reason in words when it is unusable."""
    if keyword not in dataset or dataset[keyword].value in (None, ""):
        return default
    value = dataset[keyword].value
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ImageReadError(path, f"has an invalid {words} value {value!r}") from None


def float_values(element_value: Any) -> list[float] | None:
    """Numeric values of a DS element (single or multi-valued); None when any is not a number."""
    if element_value is None or element_value == "":
        return None
    if isinstance(element_value, (str, bytes)) or not isinstance(element_value, Sequence):
        values = [element_value]
    else:
        values = list(element_value)
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None


def spacing_from_dataset(dataset: Dataset) -> tuple[tuple[float, float] | None, str | None]:
    """(row, col) spacing in mm from PixelSpacing, else ImagerPixelSpacing, with the tag used."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword not in dataset:
            continue
        values = float_values(dataset[keyword].value)
        if values is None or len(values) != 2:
            continue
        row, col = values
        if math.isfinite(row) and math.isfinite(col) and row > 0 and col > 0:
            return (row, col), keyword
    return None, None


def str_or_none(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _dicom_header(path: Path) -> ImageHeader:
    dataset = read_dicom_header(path, specific_tags=_HEADER_TAGS)
    file_meta = getattr(dataset, "file_meta", None)
    media_class = str(file_meta.get("MediaStorageSOPClassUID", "")) if file_meta is not None else ""
    if media_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in dataset:
        raise ImageReadError(path, "is a DICOMDIR index, not an image (pass it to find_inputs to get its files)")
    check_single_grayscale_frame(path, dataset)
    rows = int_attribute(path, dataset, "Rows", "Rows")
    cols = int_attribute(path, dataset, "Columns", "Columns")
    if rows is None or cols is None:
        raise ImageReadError(path, "has no Rows/Columns in its header, so it is not an image object")
    if not rows or not cols:
        raise ImageReadError(path, f"has an empty image ({rows} x {cols} pixels)")
    spacing, _ = spacing_from_dataset(dataset)
    return ImageHeader(
        path=str(path),
        source="dicom",
        rows=rows,
        cols=cols,
        spacing_mm=spacing,
        sop_instance_uid=str_or_none(dataset.get("SOPInstanceUID", None)),
        study_instance_uid=str_or_none(dataset.get("StudyInstanceUID", None)),
        series_instance_uid=str_or_none(dataset.get("SeriesInstanceUID", None)),
    )


def check_single_grayscale_frame(path: Path, dataset: Dataset) -> str:
    """Raise unless the header describes one grayscale frame; returns the Photometric Interpretation ("" if none)."""
    frames = int_attribute(path, dataset, "NumberOfFrames", "Number of Frames", default=1)
    if frames is not None and frames > 1:
        raise ImageReadError(
            path, f"is a multi-frame image ({frames} frames); only single-frame radiographs are supported"
        )
    samples = int_attribute(path, dataset, "SamplesPerPixel", "Samples per Pixel", default=1)
    photometric = str(dataset.get("PhotometricInterpretation", "") or "").strip().upper()
    if samples != 1 or photometric not in ("", "MONOCHROME1", "MONOCHROME2"):
        described = photometric or "no Photometric Interpretation"
        raise ImageReadError(
            path,
            f"is a colour image ({described}, {samples} sample(s) per pixel); only grayscale "
            "(MONOCHROME1/MONOCHROME2) radiographs are supported",
        )
    return photometric


def read_header(path: PathLike) -> ImageHeader:
    """Header-only facts of a DICOM, NIfTI or PNG/TIFF/JPEG file; pixel data is not decoded.

    DICOM: Rows, Columns, PixelSpacing (else ImagerPixelSpacing) and the UIDs; a multi-frame,
    colour or DICOMDIR file raises as ``read_image`` would. NIfTI: the header's shape and zooms.
    PNG/TIFF/JPEG: the size Pillow reads from the header; a file Pillow cannot size from its header
    alone (multi-page, unusual TIFF) is read whole with ``read_image``. Raises ImageReadError
    ("<path>: <reason>") for anything that is not a readable single-frame grayscale image as far as
    its header tells; a file whose header is fine can still fail to decode later.
    """
    file_path = Path(path)
    kind = image_format(file_path)
    if kind == "dicom":
        return _dicom_header(file_path)
    from spine_dfl.io import raster

    if kind == "nifti":
        return raster.nifti_header(file_path)
    return raster.raster_header(file_path)


def image_size(path: PathLike) -> tuple[int, int]:
    """(rows, cols) of the image in `path` from its header alone; see :func:`read_header`."""
    header = read_header(path)
    return header.rows, header.cols
