"""One factory for the small grayscale DICOM files the tests write by hand.

Tests import it as ``from dicom_factory import make_gray_dicom`` (pytest puts ``tests/`` on
``sys.path``, as for ``conftest``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid


def make_gray_dicom(
    path: Path | None,
    pixels: np.ndarray,
    *,
    sop_class_uid: str = ComputedRadiographyImageStorage,
    modality: str = "CR",
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    pixel_spacing: Sequence[float] | None = None,
    patient_name: str | None = None,
    patient_id: str | None = None,
    **attributes: object,
) -> Dataset:
    """An uncompressed one-sample-per-pixel image, 16 bits allocated, unsigned; saved to `path` unless None.

    pixels: (rows, cols), or (frames, rows, cols) for a multi-frame file (``NumberOfFrames`` is set
        only when there is more than one frame); values are stored as ``uint16``.
    pixel_spacing: ``PixelSpacing`` (row, column) in mm; left out when None.
    patient_name, patient_id: left out when None.
    attributes: any further elements by keyword (``ImagerPixelSpacing=[0.2, 0.2]``, ``StudyDate=...``).
    Fresh SOP instance, study and series UIDs each call. Returns the dataset (with its file meta).
    """
    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    if patient_name is not None:
        ds.PatientName = patient_name
    if patient_id is not None:
        ds.PatientID = patient_id
    ds.Rows, ds.Columns = pixels.shape[-2:]
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    for keyword, value in attributes.items():
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"not a DICOM keyword: {keyword!r}")
        setattr(ds, keyword, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
    return ds
