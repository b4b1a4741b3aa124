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

import numpy as np
from spine_dfl.io.errors import InputError

__all__ = ["ImageReadError", "PathLike", "Radiograph", "RadiographMeta", "check_regular_file"]

PathLike = str | os.PathLike[str]


class ImageReadError(InputError):
    """A file is not a readable single-frame grayscale image.

    ``str(error)`` is ``"<path>: <reason in words>"``; ``error.path`` and ``error.reason`` hold the
    two parts.
    """

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class RadiographMeta:
    """What a reader learnt about one image besides its pixels (plain-Python values).

    UIDs, modality, photometric interpretation and the patient fields are None for NIfTI and
    PNG/TIFF/JPEG files, and for DICOM files whose tag is missing or empty. ``patient_id`` and
    ``patient_name`` are kept apart so that callers can drop identifying data (samples never carry them).
    """

    source: str  # 'dicom' | 'nifti' | 'image'
    path: str
    rows: int = -1
    cols: int = -1
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    modality: str | None = None
    photometric: str | None = None
    presentation_lut_shape: str | None = None
    inverted: bool = False
    voi: str | None = None  # 'window' | 'lut' | None: the VOI transform applied
    window: tuple[float, float] | None = None  # (center, width) applied
    spacing_source: str | None = None  # 'PixelSpacing' | 'ImagerPixelSpacing' | 'nifti' | None
    transfer_syntax: str | None = None
    bits_stored: int | None = None
    notes: list[str] = field(default_factory=list)  # what the reader assumed or ignored
    patient_id: str | None = None
    patient_name: str | None = None
    channels: int | None = None  # PNG/TIFF/JPEG: channels folded to gray
    nifti_spatial_unit: str | None = None


@dataclass(frozen=True)
class Radiograph:
    """One grayscale radiograph.

    pixels: float32 array, shape (rows, cols); higher value = more attenuation (bone bright).
    spacing_mm: (row spacing, column spacing) in mm, i.e. the distance between the centres of
        adjacent rows and of adjacent columns; None when unknown or degenerate (0, negative).
    meta: the reader's facts about the file (:class:`RadiographMeta`).
    """

    pixels: np.ndarray
    spacing_mm: tuple[float, float] | None
    meta: RadiographMeta


def check_regular_file(path: Path) -> None:
    """Raise ImageReadError when `path` is missing, a folder or not a regular file."""
    if not path.exists():
        raise ImageReadError(path, "file does not exist")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image file")
    if not path.is_file():
        raise ImageReadError(path, "is not a regular file")
