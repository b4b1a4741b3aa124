"""The DX dataset of a DRR: Digital X-Ray Image Storage - For Presentation, MONOCHROME2.

The exposure geometry goes into the header exactly: ImagerPixelSpacing (the detector pitch),
DistanceSourceToDetector, DistanceSourceToPatient (source to isocentre), the magnification, the
view (ViewPosition, PatientOrientation) and BodyPartExamined.  UIDs derive from the caller's
entropy, so the same inputs give the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

from spine_dfl.drr.geometry import DrrGeometry

__all__ = ["DrrIdentity", "drr_dataset"]


@dataclass(frozen=True)
class DrrIdentity:
    """Patient and study of a DRR, from the CT where it has them."""

    patient_id: str
    patient_name: str = ""
    study_instance_uid: str | None = None
    study_date: date = date(2024, 1, 1)
    sex: str = "O"
    age_years: int | None = None


def _ds(value: float) -> str:
    return f"{value:.6g}"


def drr_dataset(image: np.ndarray, g: DrrGeometry, identity: DrrIdentity, orientation: tuple[str, str],
                entropy: list[str], *, body_part: str = "SPINE", bits: int = 12, series_number: int = 1,
                description: str = "") -> Dataset:
    """A DX For Presentation dataset of ``image`` (float in [0, 1], bone bright; stored rows x cols)."""
    top = 2**bits - 1
    pixels = np.clip(np.rint(image * top), 0, top).astype(np.uint16)
    study_uid = identity.study_instance_uid or generate_uid(entropy_srcs=[*entropy[:1], "study"])
    sop_uid = generate_uid(entropy_srcs=[*entropy, "sop"])
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY", ""]
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.ContentDate = ds.SeriesDate = identity.study_date.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = ds.SeriesTime = "093000"
    ds.AccessionNumber = ""
    ds.Modality = "DX"
    ds.Manufacturer = "spine-dfl"
    ds.ManufacturerModelName = "DRR"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "DRR spine"
    ds.SeriesDescription = description or f"DRR {g.view_position}"
    ds.PatientName = identity.patient_name or identity.patient_id
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = identity.sex
    if identity.age_years is not None:
        ds.PatientAge = f"{int(identity.age_years):03d}Y"
    ds.BodyPartExamined = body_part
    ds.ViewPosition = g.view_position
    ds.PatientOrientation = list(orientation)
    ds.ImagerPixelSpacing = [_ds(g.pixel_mm), _ds(g.pixel_mm)]
    ds.DistanceSourceToDetector = _ds(g.sid_mm)
    ds.DistanceSourceToPatient = _ds(g.sod_mm)
    ds.EstimatedRadiographicMagnificationFactor = _ds(g.magnification)
    ds.PositionerType = "NONE"
    ds.DetectorType = "DIRECT"
    ds.KVP = "80"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[*entropy[:1], "series", str(series_number)])
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.BurnedInAnnotation = "NO"
    ds.Laterality = ""
    ds.ImageLaterality = "U"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.WindowCenter, ds.WindowWidth = _ds(top / 2), _ds(top)
    ds.PixelData = pixels.tobytes()
    return ds
