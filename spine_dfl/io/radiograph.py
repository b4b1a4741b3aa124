"""The one in-memory form of a radiograph, and the one error every reader raises.

Every reader of :mod:`spine_dfl.io` returns a :class:`Radiograph` whose ``pixels`` are a 2-D
float32 array of shape (rows, cols) in which a higher value means more attenuation (bone bright),
as a radiologist views the image. Anything that is not a readable single-frame grayscale image
raises :class:`ImageReadError` (a ``ValueError``) whose message is ``"<path>: <reason in words>"``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ImageReadError", "PathLike", "Radiograph", "check_regular_file"]

PathLike = str | os.PathLike[str]


class ImageReadError(ValueError):
    """A file is not a readable single-frame grayscale image.

    ``str(error)`` is ``"<path>: <reason in words>"``; ``error.path`` and ``error.reason`` hold the
    two parts.
    """

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class Radiograph:
    """One grayscale radiograph.

    pixels: float32 array, shape (rows, cols); higher value = more attenuation (bone bright).
    spacing_mm: (row spacing, column spacing) in mm, i.e. the distance between the centres of
        adjacent rows and of adjacent columns; None when unknown or degenerate (0, negative).
    meta: plain-Python values. Always: ``sop_instance_uid``, ``study_instance_uid``,
        ``series_instance_uid``, ``modality``, ``photometric`` (None for NIfTI and PNG/TIFF/JPEG),
        ``source`` ('dicom' | 'nifti' | 'image'), ``spacing_source`` ('PixelSpacing' |
        'ImagerPixelSpacing' | 'nifti' | None), ``path``, ``rows``, ``cols``, ``window``
        ((center, width) applied, else None), ``voi`` ('window' | 'lut' | None), ``inverted``,
        ``transfer_syntax``, ``bits_stored``, ``sop_class_uid``, ``notes`` (list of str: what the
        reader assumed or ignored).
        DICOM only, and only when the file has a non-empty value: ``patient_id``,
        ``patient_name`` (separate keys so that callers can drop identifying data).
    """

    pixels: np.ndarray
    spacing_mm: tuple[float, float] | None
    meta: dict[str, Any] = field(default_factory=dict)


def check_regular_file(path: Path) -> None:
    """Raise ImageReadError when `path` is missing, a folder or not a regular file."""
    if not path.exists():
        raise ImageReadError(path, "file does not exist")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image file")
    if not path.is_file():
        raise ImageReadError(path, "is not a regular file")
