"""DICOM writing for the synthetic cohort: quantisation, the CR / DX dataset, lossless encoding.

The rendered display-domain image becomes 12-16 stored bits.  MONOCHROME1 files store
``max - value``; RescaleSlope/Intercept and a VOI window are chosen so that after modality
LUT, VOI window and MONOCHROME1 inversion bone is bright.  Pixel spacing is consistent with
the anatomy (about 0.4-0.55 mm in the patient plane, ImagerPixelSpacing larger by the
geometric magnification).  This module writes with pydicom; reading goes through ``spine_dfl.io``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from spine_dfl.synth.anatomy import SYNTH_VERSION, PatientAnatomy
from spine_dfl.synth.render import RenderedPatient

SYNTAX_NAMES: dict[str, str] = {
    ExplicitVRLittleEndian: "explicit_vr_little_endian",
    ImplicitVRLittleEndian: "implicit_vr_little_endian",
    DeflatedExplicitVRLittleEndian: "deflated_explicit_vr_little_endian",
    RLELossless: "rle_lossless",
    JPEG2000Lossless: "jpeg2000_lossless",
}
# Dealt to patients in a shuffled order, so even a 4-patient cohort has both compressed kinds.
SYNTAX_CYCLE: tuple[str, ...] = (
    ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, ExplicitVRLittleEndian,
    ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless, DeflatedExplicitVRLittleEndian,
)
NATIVE_SYNTAX_CYCLE: tuple[str, ...] = (ExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)


@dataclass(frozen=True)
class Acquisition:
    """How one patient's image is stored: CR or DX, photometric, transfer syntax, file name."""

    modality: str
    photometric: str
    transfer_syntax: str
    bare_name: bool


@dataclass(frozen=True)
class StoredImage:
    pixels: np.ndarray  # uint16 (rows, cols), as stored
    bits_stored: int
    slope: float
    intercept: float
    windows: tuple[tuple[float, float], ...]  # (centre, width) in rescaled units, first = default
    window_names: tuple[str, ...]


def quantise(rendered: RenderedPatient, photometric: str, modality: str, rng: np.random.Generator) -> StoredImage:
    """Display-domain float -> stored integers, rescale and VOI window (bone bright after chain).

    DX for-presentation images must have slope 1 and intercept 0 (PS3.3 DX Image module); CR
    files get a vendor-like mix of rescales.
    """
    bits = int(rng.choice([12, 12, 14, 15, 16]))
    top = 2**bits - 1
    image = rendered.image
    region = rendered.body_region if rendered.body_region.any() else np.ones(image.shape, dtype=bool)
    lo = float(np.percentile(image, 0.2))
    hi = float(max(np.percentile(image, 99.95), np.percentile(image[rendered.bone_mask], 99.9) if rendered.bone_mask.any() else lo + 1))
    s_lo, s_hi = rng.uniform(0.01, 0.08) * top, rng.uniform(0.80, 0.97) * top
    gain = (s_hi - s_lo) / max(hi - lo, 1e-6)
    mono2 = np.clip(np.rint(s_lo + (image - lo) * gain), 0, top).astype(np.uint16)
    # window: from soft tissue to the densest bone, with a little room on both sides
    tissue_lo = float(np.percentile(mono2[region], 1.0))
    bone_hi = float(np.percentile(mono2[rendered.bone_mask], 99.9)) if rendered.bone_mask.any() else float(mono2.max())
    margin = 0.06 * (bone_hi - tissue_lo)
    w_lo, w_hi = tissue_lo - margin, min(bone_hi + margin, top)
    bone_lo = float(np.percentile(mono2[rendered.bone_mask], 2.0)) if rendered.bone_mask.any() else tissue_lo
    b_lo, b_hi = bone_lo - 3 * margin, bone_hi + margin
    slope, intercept = [(1.0, 0.0), (1.0, 0.0), (0.5, 0.0), (1.0, -1024.0), (0.25, 100.0)][int(rng.integers(0, 5))]
    if modality == "DX":
        slope, intercept = 1.0, 0.0
    if photometric == "MONOCHROME1":
        stored = (top - mono2).astype(np.uint16)
        to_rescaled = lambda s: slope * (top - s) + intercept  # noqa: E731 - stored MONO2 value -> rescaled MONO1
    else:
        stored = mono2
        to_rescaled = lambda s: slope * s + intercept  # noqa: E731
    windows = []
    for a, b in ((w_lo, w_hi), (b_lo, b_hi)):
        centre = (to_rescaled(a) + to_rescaled(b)) / 2.0
        width = abs(to_rescaled(b) - to_rescaled(a))
        windows.append((round(float(centre), 1), round(float(max(width, 2.0)), 1)))
    return StoredImage(stored, bits, slope, intercept, tuple(windows), ("SPINE", "BONE"))



def _ds_number(value: float) -> str:
    text = f"{value:.6g}"
    return text if len(text) <= 16 else f"{value:.8e}"


def build_dataset(
    *, patient_index: int, patient_id: str, seed: int, acquisition: Acquisition, stored: StoredImage,
    rendered: RenderedPatient, rng: np.random.Generator, study_date: date, uids: dict[str, UID],
) -> Dataset:
    """The CR or DX (For Presentation) dataset of one patient, pixels native (see ``encode``).

    Draws from ``rng`` in a fixed order: times, birth date, then the exposure details.
    """
    is_dx = acquisition.modality == "DX"
    sop_class = DigitalXRayImageStorageForPresentation if is_dx else ComputedRadiographyImageStorage
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class, uids["sop"])
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"] if not is_dx else ["ORIGINAL", "PRIMARY", ""]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uids["sop"]
    _set_study(ds, patient_index=patient_index, seed=seed, is_dx=is_dx, study_date=study_date, uids=uids, rng=rng)
    ds.Modality = acquisition.modality
    if is_dx:
        ds.PresentationIntentType = "FOR PRESENTATION"
    _set_patient(ds, patient_index, patient_id, rendered.anatomy, study_date, rng)
    _set_exposure(ds, is_dx, rendered, rng)
    _set_image(ds, acquisition, stored)
    return ds


def _file_meta(sop_class: str, sop_instance_uid: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"SPINEDFL_{SYNTH_VERSION}".replace(".", "_")[:16]
    return meta


def _set_study(ds: Dataset, *, patient_index: int, seed: int, is_dx: bool, study_date: date,
               uids: dict[str, UID], rng: np.random.Generator) -> None:
    """Study, series and instance identification, dates and times, descriptions."""
    study_time = f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}"
    content_time = f"{study_time[:2]}{min(int(study_time[2:4]) + 3, 59):02d}{study_time[4:]}"
    ds.InstanceCreationDate = study_date.strftime("%Y%m%d")
    ds.InstanceCreationTime = content_time
    ds.StudyDate = study_date.strftime("%Y%m%d")
    ds.SeriesDate = ds.StudyDate
    ds.AcquisitionDate = ds.StudyDate
    ds.ContentDate = ds.StudyDate
    ds.StudyTime = study_time
    ds.SeriesTime = study_time
    ds.AcquisitionTime = content_time
    ds.ContentTime = content_time
    if is_dx:
        ds.AcquisitionDateTime = ds.StudyDate + content_time
    ds.AccessionNumber = f"SYN{seed % 100000:05d}{patient_index:05d}"
    ds.Manufacturer = "spine-dfl synthetic"
    ds.InstitutionName = "Synthetic General Hospital"
    ds.ReferringPhysicianName = ""
    ds.StationName = f"SYNXR{1 + patient_index % 3}"
    ds.StudyDescription = "XR SPINE THORACOLUMBAR LATERAL"
    ds.SeriesDescription = "LAT"
    ds.ManufacturerModelName = "SynthDX 2" if is_dx else "SynthCR 1"
    ds.ImageComments = "Synthetic image generated by spine-dfl; not from a real patient."
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.StudyID = f"{patient_index + 1}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1


def _set_patient(ds: Dataset, patient_index: int, patient_id: str, anat: PatientAnatomy, study_date: date,
                 rng: np.random.Generator) -> None:
    ds.PatientName = f"SYNTH^{patient_index:04d}"
    ds.PatientID = patient_id
    birth = study_date - timedelta(days=int(anat.age_years * 365.25 + rng.integers(0, 365)))
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = anat.sex
    ds.PatientAge = f"{anat.age_years:03d}Y"
    ds.PatientSize = _ds_number(round((1.72 if anat.sex == "M" else 1.60) * anat.scale, 2))
    ds.PatientWeight = _ds_number(round(72.0 * anat.habitus**2 * anat.scale**2, 1))


def _set_exposure(ds: Dataset, is_dx: bool, rendered: RenderedPatient, rng: np.random.Generator) -> None:
    """Technique, geometry (distances, magnification, pixel spacing) and detector, CR or DX."""
    anat = rendered.anatomy
    ds.BodyPartExamined = "SPINE"
    ds.KVP = _ds_number(round(rendered.kvp, 1))
    sid = float(rng.choice([1000.0, 1150.0, 1500.0, 1800.0]))
    object_distance = 180.0 + 60.0 * (anat.habitus - 1.0)
    magnification = sid / (sid - object_distance)
    ds.DistanceSourceToDetector = _ds_number(sid)
    exposure_ms = int(round(rng.uniform(80, 400)))
    ds.ExposureTime = exposure_ms
    ds.XRayTubeCurrent = int(round(rendered.mas / (exposure_ms / 1000.0)))
    ds.Exposure = int(round(rendered.mas))
    ds.ImagerPixelSpacing = [_ds_number(round(rendered.mm_per_px * magnification, 4))] * 2
    if is_dx:
        ds.DetectorType = "SCINTILLATOR" if rng.random() < 0.7 else "DIRECT"
        ds.DistanceSourceToPatient = _ds_number(sid - object_distance)
        ds.EstimatedRadiographicMagnificationFactor = _ds_number(round(magnification, 4))
        ds.ExposureIndex = _ds_number(round(float(rng.uniform(250, 500)), 1))
        ds.PositionerType = "NONE"
        if rng.random() < 0.5:
            ds.PixelSpacing = [_ds_number(round(rendered.mm_per_px, 4))] * 2
            ds.PixelSpacingCalibrationType = "GEOMETRY"
            ds.PixelSpacingCalibrationDescription = "Magnification-corrected at the spine"
    else:
        ds.PlateType = "ST-VI"
        ds.Sensitivity = _ds_number(round(float(rng.uniform(150, 450))))
        if rng.random() < 0.4:
            # many CR readers copy the detector spacing into PixelSpacing (uncalibrated)
            ds.PixelSpacing = list(ds.ImagerPixelSpacing)
    ds.ViewPosition = "LL"
    ds.PatientOrientation = ["P", "F"]
    ds.ImageLaterality = "U"
    ds.AnatomicRegionSequence = spine_region_sequence()


def spine_region_sequence() -> DicomSequence:
    """AnatomicRegionSequence of a spine radiograph (SCT 421060004 Spine), for every generator's files."""
    region = Dataset()
    region.CodeValue = "421060004"
    region.CodingSchemeDesignator = "SCT"
    region.CodeMeaning = "Spine"
    return DicomSequence([region])


def _set_image(ds: Dataset, acquisition: Acquisition, stored: StoredImage) -> None:
    """Image pixel, modality LUT, VOI LUT and presentation attributes, and the native pixels."""
    is_dx = acquisition.modality == "DX"
    rows, cols = stored.pixels.shape
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = acquisition.photometric
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = stored.bits_stored
    ds.HighBit = stored.bits_stored - 1
    ds.PixelRepresentation = 0
    if is_dx:
        ds.PixelIntensityRelationship = "LOG"
        # +1: lower values = less beam intensity (MONOCHROME1 stores exposure-like values)
        ds.PixelIntensityRelationshipSign = 1 if acquisition.photometric == "MONOCHROME1" else -1
    ds.RescaleIntercept = _ds_number(stored.intercept)
    ds.RescaleSlope = _ds_number(stored.slope)
    ds.RescaleType = "US"
    ds.WindowCenter = [_ds_number(c) for c, _ in stored.windows]
    ds.WindowWidth = [_ds_number(w) for _, w in stored.windows]
    ds.WindowCenterWidthExplanation = list(stored.window_names)
    ds.VOILUTFunction = "LINEAR"
    if is_dx:
        # DX requires it; INVERSE restates MONOCHROME1 (one inversion, not two: PS3.3 C.8.11.6.1.2)
        ds.PresentationLUTShape = "INVERSE" if acquisition.photometric == "MONOCHROME1" else "IDENTITY"
        ds.AcquisitionContextSequence = DicomSequence([])
    ds.PixelData = stored.pixels.astype("<u2").tobytes()
    ds["PixelData"].VR = "OW"


def encode(ds: Dataset, stored: StoredImage, syntax: str) -> None:
    """Set the transfer syntax; compress lossless in place for RLE / JPEG 2000."""
    if syntax in (RLELossless, JPEG2000Lossless):
        from pydicom.pixels.encoders import JPEG2000LosslessEncoder, RLELosslessEncoder

        encoder = RLELosslessEncoder if syntax == RLELossless else JPEG2000LosslessEncoder
        plugin = "pylibjpeg" if "pylibjpeg" in encoder.available_plugins else ""
        if not encoder.is_available:
            raise RuntimeError(f"cannot encode {syntax.name}: {encoder.missing_dependencies}")
        # openjpeg logs every tile at INFO; keep a CLI's INFO log readable
        codec_logger = logging.getLogger("openjpeg")
        level = codec_logger.level
        codec_logger.setLevel(max(level, logging.WARNING))
        try:
            # generate_instance_uid=False: pydicom would otherwise draw a random SOPInstanceUID.
            ds.compress(syntax, stored.pixels, encoding_plugin=plugin, generate_instance_uid=False)
        finally:
            codec_logger.setLevel(level)
    else:
        ds.file_meta.TransferSyntaxUID = syntax


