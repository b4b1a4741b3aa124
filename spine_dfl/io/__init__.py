"""Reading radiographs: DICOM, NIfTI and PNG/TIFF/JPEG into one grayscale form, and the tables that point at them.

The first stage of ``file -> Radiograph -> samples -> model -> predictions``. Imports nothing else
of spine_dfl, and nothing heavier than numpy at import time (pydicom, nibabel, scikit-image and
Pillow are imported when first used).

- :mod:`~spine_dfl.io.radiograph`: :class:`Radiograph` (float32 pixels, bone bright) and
  :class:`ImageReadError` (``"<path>: <reason>"``), the only error a reader raises.
- :mod:`~spine_dfl.io.discovery`: :func:`is_dicom`, :func:`is_dicomdir`, :func:`find_inputs`.
- :mod:`~spine_dfl.io.header`: :func:`read_dicom_header`, :func:`dicom_uid`, and header-only facts of
  any supported file (:func:`read_header`, :func:`image_size`).
- :mod:`~spine_dfl.io.dicom`: DICOM pixels (decode, modality LUT, VOI, inversion).
- :mod:`~spine_dfl.io.raster`: NIfTI and PNG/TIFF/JPEG.
- :mod:`~spine_dfl.io.read`: :func:`read_image`, the one entry point for pixels.
- :mod:`~spine_dfl.io.rois`: :data:`ROI_COLUMNS` and :func:`read_rois`, the one ROI-table reader.
- :mod:`~spine_dfl.io.vocabulary`: vertebral :data:`LEVELS` and :data:`GENANT_GRADES`.
- :mod:`~spine_dfl.io.errors`: the project's error model (:class:`SpineDflError` and its kinds) and
  the exit statuses; here, at the bottom, so every package can raise them.
"""

from __future__ import annotations

from spine_dfl.io.discovery import DICOMDIR_SOP_CLASS, find_inputs, is_dicom, is_dicomdir
from spine_dfl.io.header import ImageHeader, dicom_uid, image_size, read_dicom_header, read_header
from spine_dfl.io.radiograph import ImageReadError, Radiograph, RadiographMeta
from spine_dfl.io.read import read_image
from spine_dfl.io.rois import ROI_COLUMNS, ROI_KEY_COLUMNS, RoiRow, RoiTable, RoiTableError, read_rois
from spine_dfl.io.vocabulary import GENANT_GRADES, LEVELS, level_sort_key, normalize_level, sort_levels

__all__ = [
    "DICOMDIR_SOP_CLASS",
    "GENANT_GRADES",
    "LEVELS",
    "ROI_COLUMNS",
    "ROI_KEY_COLUMNS",
    "ImageHeader",
    "ImageReadError",
    "Radiograph",
    "RadiographMeta",
    "RoiRow",
    "RoiTable",
    "RoiTableError",
    "dicom_uid",
    "find_inputs",
    "image_size",
    "is_dicom",
    "is_dicomdir",
    "level_sort_key",
    "normalize_level",
    "read_dicom_header",
    "read_header",
    "read_image",
    "read_rois",
    "sort_levels",
]
