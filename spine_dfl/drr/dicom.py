"""A DRR as a DX DICOM file (Digital X-Ray Image Storage - For Presentation, MONOCHROME2).

The projection geometry goes into the DX Detector and Positioning attributes exactly:
ImagerPixelSpacing (the detector pitch), DistanceSourceToDetector, DistanceSourceToPatient (source
to isocentre), their ratio as EstimatedRadiographicMagnificationFactor, ViewPosition (RL / LL / AP)
and PatientOrientation (the caller's: ``geometry.patient_orientation``, or after a stored turn
``reoriented_orientation``).  The display-domain image (``render.expose``: [0, 1], bone bright) is
stored in 12-16 bits, slope 1 / intercept 0 as DX requires, with a full-range and a bone window.
UIDs derive from the caller's entropy (the last entry names the film, the others its study), so
the same inputs give the same bytes; identity (patient, study) comes from the CT where it has it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from spine_dfl import __version__
from spine_dfl.atomic import atomic_output
from spine_dfl.drr.geometry import DrrGeometry
from spine_dfl.synth.dicom import spine_region_sequence

__all__ = ["BODY_PARTS", "DrrIdentity", "drr_dataset", "write_dx"]

BODY_PARTS = ("SPINE", "TSPINE", "LSPINE")
_VIEW_CODES = {"RL": ("399198007", "right lateral"), "LL": ("399173006", "left lateral"),
               "AP": ("399348003", "antero-posterior"), "PA": ("272479007", "postero-anterior")}
_VIEW_WORDS = {"RL": "LATERAL", "LL": "LATERAL", "AP": "AP", "PA": "PA"}


@dataclass(frozen=True)
class DrrIdentity:
    """Patient and study of a DRR, from the CT where it has them (empty / None: not known)."""

    patient_id: str
    patient_name: str = ""
    study_instance_uid: str | None = None
    study_date: date | None = None
    sex: str = ""
    age_years: int | None = None
    source: str = ""  # the CT's file name, for DerivationDescription


def _ds(value: float) -> str:
    text = f"{value:.6g}"
    return text if len(text) <= 16 else f"{value:.8e}"


def drr_dataset(image: np.ndarray, g: DrrGeometry, identity: DrrIdentity, orientation: tuple[str, str],
                entropy: list[str], *, body_part: str = "SPINE", bits: int = 12, series_number: int = 1,
                description: str = "") -> Dataset:
    """A DX For Presentation dataset of ``image`` (float in [0, 1], bone bright; as stored, rows x cols).

    ``entropy``: the film's sources for its UIDs; the last entry names the film (SOP instance), the
    others the study (study, frame of reference) and, with ``series_number``, the series.
    """
    if body_part not in BODY_PARTS:
        raise ValueError(f"body part must be one of {BODY_PARTS}, got {body_part!r}")
    if not 12 <= int(bits) <= 16:
        raise ValueError(f"stored bits must be 12-16, got {bits}")
    study_sources = [str(e) for e in entropy[:-1]] or ["spine-dfl drr"]
    uids = {
        "study": identity.study_instance_uid or generate_uid(entropy_srcs=[*study_sources, "study"]),
        "frame": generate_uid(entropy_srcs=[*study_sources, "frame"]),
        "series": generate_uid(entropy_srcs=[*study_sources, "series", str(series_number)]),
        "sop": generate_uid(entropy_srcs=[*(str(e) for e in entropy), "sop"]),
    }
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = uids["sop"]
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = f"SPINEDFL_{__version__}".replace(".", "_")[:16]
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY", ""]
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = uids["sop"]
    _set_identity(ds, identity, uids, g, series_number, description)
    _set_geometry(ds, g, orientation, body_part)
    _set_image(ds, image, int(bits))
    return ds


def _set_identity(ds: Dataset, identity: DrrIdentity, uids: dict[str, str], g: DrrGeometry, series_number: int,
                  description: str) -> None:
    """Patient, study, series, equipment and instance identification."""
    day = identity.study_date.strftime("%Y%m%d") if identity.study_date else ""
    # a known name as given; else the ID as the family name in PN's component form (as synth's SYNTH^nnnn)
    ds.PatientName = identity.patient_name or f"DRR^{identity.patient_id}"
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = identity.sex if identity.sex in ("M", "F", "O") else ""
    if identity.age_years is not None:
        ds.PatientAge = f"{int(identity.age_years):03d}Y"
    ds.StudyInstanceUID = uids["study"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = day
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "093000" if day else ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.StudyDescription = "DRR SPINE"
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SeriesInstanceUID = uids["series"]
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description or f"DRR {_VIEW_WORDS.get(g.view_position, g.view_position)} {g.view_position}"
    ds.FrameOfReferenceUID = uids["frame"]
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = 1
    ds.Manufacturer = "spine-dfl"
    ds.ManufacturerModelName = "spine-dfl drr"
    ds.SoftwareVersions = __version__
    source = f" of CT {identity.source}" if identity.source else " of a CT"
    ds.DerivationDescription = f"Digitally reconstructed radiograph (cone-beam){source}"[:1024]
    ds.ImageComments = "Digitally reconstructed radiograph made by spine-dfl; not an acquired image."


def _set_geometry(ds: Dataset, g: DrrGeometry, orientation: tuple[str, str], body_part: str) -> None:
    """Anatomy imaged, detector and positioning: the projection's distances, pitch and view."""
    ds.BodyPartExamined = body_part
    ds.ImageLaterality = "U"
    ds.AnatomicRegionSequence = spine_region_sequence()
    ds.PatientOrientation = list(orientation)
    ds.ViewPosition = g.view_position
    view = Dataset()  # CID 4010: the projection ViewPosition names, as a code (dciodvfy asks for it)
    view.CodeValue, view.CodeMeaning = _VIEW_CODES[g.view_position]
    view.CodingSchemeDesignator = "SCT"
    view.ViewModifierCodeSequence = DicomSequence([])
    ds.ViewCodeSequence = DicomSequence([view])
    ds.DistanceSourceToDetector = _ds(round(g.sid_mm, 3))
    ds.DistanceSourceToPatient = _ds(round(g.sod_mm, 3))
    ds.EstimatedRadiographicMagnificationFactor = _ds(round(g.magnification, 6))
    ds.ImagerPixelSpacing = [_ds(round(g.pixel_mm, 6))] * 2
    ds.DetectorType = ""
    ds.PositionerType = "NONE"
    if g.rotation_deg:
        ds.PositionerPrimaryAngle = _ds(round(g.rotation_deg, 3))


def _set_image(ds: Dataset, image: np.ndarray, bits: int) -> None:
    """Image pixel, DX image (log, bone bright), modality and VOI LUT attributes, native pixels."""
    top = 2**bits - 1
    pixels = np.clip(np.rint(np.asarray(image, dtype=np.float64) * top), 0, top).astype(np.uint16)
    rows, cols = pixels.shape
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = -1  # higher values: less beam intensity (bone bright)
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    bone_lo = float(np.percentile(pixels, 60.0))
    ds.WindowCenter = [_ds(round(top / 2.0, 1)), _ds(round((bone_lo + top) / 2.0, 1))]
    ds.WindowWidth = [_ds(float(top)), _ds(round(max(top - bone_lo, 2.0), 1))]
    ds.WindowCenterWidthExplanation = ["FULL", "BONE"]
    ds.VOILUTFunction = "LINEAR"
    ds.PresentationLUTShape = "IDENTITY"
    ds.AcquisitionContextSequence = DicomSequence([])
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds["PixelData"].VR = "OW"


def write_dx(path: str | Path, ds: Dataset) -> None:
    """Save ``ds`` as a DICOM file (preamble and meta), atomically."""
    with atomic_output(path) as fh:
        ds.save_as(fh, enforce_file_format=True)
