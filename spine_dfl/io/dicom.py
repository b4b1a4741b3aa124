"""DICOM pixel reading: decode, modality LUT, VOI and inversion into a :class:`Radiograph`.

DICOM pixel pipeline (pydicom 3, ``pydicom.pixels``), in the order PS3.3 C.11 / PS3.4 N.2 define:

1. decode ``PixelData`` (native, deflate, RLE, JPEG, JPEG-LS, JPEG 2000 through pydicom and the
   pylibjpeg plugins);
2. modality LUT (``apply_modality_lut``: RescaleSlope/Intercept or a Modality LUT Sequence);
3. VOI (``apply_voi_lut`` with index 0) only when the file carries a window (WindowCenter and
   WindowWidth) or a VOI LUT Sequence; a VOI LUT Sequence wins over a window when both are present
   (pydicom's default). A window or LUT pydicom rejects (e.g. width < 1) is skipped and the reason
   recorded in ``meta['notes']``: the stored values are still a valid image.
4. inversion when PhotometricInterpretation is MONOCHROME1 or PresentationLUTShape is INVERSE.
   The two are one statement, not two inversions: for DX/MG/IO the standard requires INVERSE
   exactly when the image is MONOCHROME1 (PS3.3 C.8.11.6.1.2), so a file carrying both is
   inverted once.

Inversion convention: ``inverted = lo + hi - x`` where ``[lo, hi]`` is the output range the header
declares, never the range of this image's content: every stored value BitsStored /
PixelRepresentation allows, pushed through the same modality LUT and VOI, and for a window the
window's whole output range (PS3.3 C.11.2.1.2 y_min..y_max as pydicom's ``apply_windowing`` uses
it, e.g. 0..1023 for a 10-bit image without rescale). So a value the display shows white comes out
at the top of that range, the result depends on the header alone (a lossless-compressed file reads
bit-identical to its uncompressed twin, a crop inverts like the whole image), and the output stays
inside the same range as before inversion.

Warnings that pydicom emits (invalid VR values, excess padding) are left to the caller's warning
filters: capturing them would swap process-wide warning state, which is not thread-safe, and
datasets read files from worker threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from spine_dfl.io.discovery import DICOMDIR_SOP_CLASS
from spine_dfl.io.header import (
    check_single_grayscale_frame,
    dcmread,
    float_values,
    int_attribute,
    spacing_from_dataset,
    str_or_none,
)
from spine_dfl.io.radiograph import ImageReadError, Radiograph, RadiographMeta

if TYPE_CHECKING:
    from pydicom import Dataset, FileDataset

__all__ = ["read_dicom"]

_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Exceptions that are the user's or the interpreter's, never the file's: they must propagate.
_NOT_THE_FILES_FAULT = (KeyboardInterrupt, SystemExit, GeneratorExit)

# pip packages that give pydicom a decoder for each compressed transfer syntax family; pydicom's own
# list names version ranges of the same packages (``Decoder.missing_dependencies``).
_LIBJPEG_PLUGIN = "pylibjpeg pylibjpeg-libjpeg"
_OPENJPEG_PLUGIN = "pylibjpeg pylibjpeg-openjpeg"
_PLUGINS_BY_TRANSFER_SYNTAX: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": _LIBJPEG_PLUGIN,  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": _LIBJPEG_PLUGIN,  # JPEG Extended
    "1.2.840.10008.1.2.4.57": _LIBJPEG_PLUGIN,  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": _LIBJPEG_PLUGIN,  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": _LIBJPEG_PLUGIN,  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": _LIBJPEG_PLUGIN,  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90": _OPENJPEG_PLUGIN,  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": _OPENJPEG_PLUGIN,  # JPEG 2000
    "1.2.840.10008.1.2.4.201": _OPENJPEG_PLUGIN,  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": _OPENJPEG_PLUGIN,  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": _OPENJPEG_PLUGIN,  # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",  # RLE (pydicom also decodes it natively)
}


def _sop_class_words(dataset: Dataset) -> str:
    """'Comprehensive SR' for 1.2.840.10008.5.1.4.1.1.88.33, 'SOP class <uid>' when unknown."""
    from pydicom.uid import UID

    value = dataset.get("SOPClassUID", None)
    if value is None:
        file_meta = getattr(dataset, "file_meta", None)
        value = file_meta.get("MediaStorageSOPClassUID", None) if file_meta is not None else None
    if value is None or str(value).strip() == "":
        return "the file (no SOP Class UID)"
    uid = UID(str(value))
    name = uid.name
    if not name or name == str(uid):
        return f"SOP class {uid}"
    for suffix in (" Storage", " - For Presentation", " - For Processing"):
        name = name.replace(suffix, "")
    return name


def _truncation_evidence(path: Path, dataset: Dataset) -> str | None:
    """Why the parsed dataset looks cut short, or None.

    pydicom stops quietly at the end of a file: a value shorter than its declared length, or bytes
    left over after the last element it kept, mean the file was cut (or is corrupt there).
    Must run before elements are accessed (it inspects the raw, unconverted last element).
    """
    from pydicom.dataelem import RawDataElement

    tags = list(dataset.keys())
    if not tags:
        return "it contains no data elements after the file-meta header"
    last = dataset.get_item(max(tags))
    if not isinstance(last, RawDataElement) or last.length == 0xFFFFFFFF:
        return None
    value_length = len(last.value) if last.value is not None else 0
    if value_length < last.length:
        return f"element {last.tag} holds {value_length} of its {last.length} bytes"
    file_meta = getattr(dataset, "file_meta", None)
    transfer_syntax = str(file_meta.get("TransferSyntaxUID", "")) if file_meta is not None else ""
    if transfer_syntax == "1.2.840.10008.1.2.1.99":  # deflated: offsets are in the inflated stream
        return None
    leftover = path.stat().st_size - (last.value_tell + last.length)
    if leftover > 0:
        # pydicom stopped before the end: the next element (often encapsulated pixel data whose
        # sequence delimiter never comes) ran past the end of the file.
        return f"{leftover} byte(s) after element {last.tag} could not be parsed as a whole element"
    return None


def _guess_transfer_syntax(path: Path, dataset: Dataset, notes: list[str]) -> None:
    """Give a dataset read without a file-meta Transfer Syntax UID the one its encoding implies.

    Only native (uncompressed) pixel data can be guessed: encapsulated pixel data does not say which
    codec made it.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    file_meta = getattr(dataset, "file_meta", None)
    if file_meta is not None and file_meta.get("TransferSyntaxUID", None):
        return
    pixel_element = dataset["PixelData"] if "PixelData" in dataset else None
    if pixel_element is not None and pixel_element.is_undefined_length:
        raise ImageReadError(
            path,
            "has compressed (encapsulated) pixel data but no Transfer Syntax UID in a file-meta header, "
            "so the codec is unknown",
        )
    implicit, little = dataset.original_encoding
    if implicit is None or little is None:
        implicit, little = True, True
    if implicit:
        guessed = ImplicitVRLittleEndian
    else:
        guessed = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    if file_meta is None:
        dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = guessed
    notes.append(f"no Transfer Syntax UID in the file; assumed {guessed.name} from the encoding")


def _check_decoder(path: Path, transfer_syntax: str) -> None:
    """Raise with the plugin to install when pydicom cannot decode this transfer syntax here."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(str(transfer_syntax))
    if not uid.is_transfer_syntax:
        raise ImageReadError(path, f"has an unknown transfer syntax {uid}; pydicom cannot decode its pixel data")
    if not uid.is_compressed:
        return
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise ImageReadError(
            path,
            f"uses transfer syntax '{uid.name}' ({uid}), for which pydicom has no decoder at all; convert it "
            "to an uncompressed transfer syntax first (e.g. dcmtk dcmconv/dcmdjpeg or gdcmconv --raw)",
        ) from None
    if decoder.is_available:
        return
    packages = _PLUGINS_BY_TRANSFER_SYNTAX.get(str(uid))
    pydicom_says = "; ".join(decoder.missing_dependencies)
    install = f"install the decoder plugin: pip install {packages}" if packages else "install a decoder plugin"
    detail = f" (pydicom: {pydicom_says})" if pydicom_says else ""
    raise ImageReadError(
        path, f"pixel data is compressed as '{uid.name}' ({uid}) and no decoder is installed; {install}{detail}"
    )


def _decode(path: Path, dataset: Dataset, transfer_syntax_name: str) -> np.ndarray:
    """Stored values as decoded by pydicom, with decode failures turned into reasons."""
    try:
        return np.asarray(dataset.pixel_array)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(path, "not enough memory to decode the pixel data") from None
    except _NOT_THE_FILES_FAULT:
        raise
    except Exception as error:  # noqa: BLE001 - every decoder failure becomes a reason
        raise ImageReadError(path, _decode_failure_reason(error, dataset, transfer_syntax_name)) from error
    except BaseException as error:  # noqa: BLE001 - a Rust decoder's panic (pyo3 PanicException) is a BaseException
        first_line = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
        reason = (
            f"compressed '{transfer_syntax_name}' pixel data is corrupt: the decoder failed with "
            f"{type(error).__name__}: {first_line}"
        )
        raise ImageReadError(path, reason) from error


def _decode_failure_reason(error: Exception, dataset: Dataset, transfer_syntax_name: str) -> str:
    """A decoder's exception in words: missing plugin, truncated data, corrupt data, or as raised."""
    text = str(error).strip()
    lowered = text.lower()
    if "missing dependencies" in lowered:
        packages = _PLUGINS_BY_TRANSFER_SYNTAX.get(str(dataset.file_meta.TransferSyntaxUID))
        install = f"pip install {packages}" if packages else "install a decoder plugin"
        reason = f"no decoder is installed for '{transfer_syntax_name}' pixel data; {install} ({text})"
    elif "less than expected" in lowered or "end of file" in lowered or "too short" in lowered:
        reason = f"pixel data is truncated (file cut short or corrupt): {text}"
    elif "missing required element" in lowered:
        reason = f"pixel data cannot be interpreted: {text}"
    elif "unable to decode" in lowered or "unable to decompress" in lowered:
        first_lines = " ".join(line.strip() for line in text.splitlines()[:3])
        reason = (
            f"compressed '{transfer_syntax_name}' pixel data is corrupt or truncated and cannot be decoded: "
            f"{first_lines}"
        )
    else:
        reason = f"pixel data cannot be decoded: {type(error).__name__}: {text}"
    return reason


def _possible_stored_values(bits_stored: int, signed: bool) -> np.ndarray:
    """Every stored value the header allows (up to 16 bits), else the two extremes.

    Above 16 bits no LUT can index the values, so the pipeline is monotonic and the extremes
    bound its output.
    """
    low = -(2 ** (bits_stored - 1)) if signed else 0
    high = 2 ** (bits_stored - 1) - 1 if signed else 2**bits_stored - 1
    if bits_stored <= 16:
        return np.arange(low, high + 1, dtype=np.int64)
    return np.array([low, high], dtype=np.int64)


@dataclass
class _VoiChoice:
    kind: str | None  # 'window' | 'lut' | None
    window: tuple[float, float] | None


def _choose_voi(dataset: Dataset) -> _VoiChoice:
    """Which VOI transform ``apply_voi_lut(index=0)`` will apply, mirroring pydicom's rule."""
    sequence = dataset.get("VOILUTSequence", None)
    if sequence:
        item = sequence[0]
        if item.get("LUTDescriptor", None) is not None and item.get("LUTData", None) is not None:
            return _VoiChoice("lut", None)
    centers = float_values(dataset.get("WindowCenter", None))
    widths = float_values(dataset.get("WindowWidth", None))
    if centers and widths:
        return _VoiChoice("window", (centers[0], widths[0]))
    return _VoiChoice(None, None)


def _modality_and_voi(values: np.ndarray, dataset: Dataset, voi: _VoiChoice) -> np.ndarray:
    """Modality LUT then (when chosen) VOI, as float64. Pure function of values and header."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    output = np.asarray(apply_modality_lut(values, dataset))
    if voi.kind == "lut":
        # A VOI LUT is indexed by integers; rescaled values are rounded to the nearest entry.
        if not np.issubdtype(output.dtype, np.integer):
            output = np.rint(output).astype(np.int64)
        output = np.asarray(apply_voi_lut(output, dataset, index=0))
    elif voi.kind == "window":
        output = np.asarray(apply_voi_lut(output, dataset, index=0))
    return output.astype(np.float64, copy=False)


def _window_output_range(dataset: Dataset) -> tuple[float, float]:
    """The output range a window maps onto (PS3.3 C.11.2.1.2 y_min..y_max), as pydicom defines it.

    Values far below and far above any window land on the two ends for LINEAR, LINEAR_EXACT and
    (as limits) SIGMOID windows.
    """
    from pydicom.pixels import apply_voi_lut

    with np.errstate(over="ignore", invalid="ignore"):
        ends = np.asarray(apply_voi_lut(np.array([-1e300, 1e300]), dataset, index=0), dtype=np.float64)
    return float(np.min(ends)), float(np.max(ends))


def _check_rescale(path: Path, dataset: Dataset) -> None:
    for keyword, words in (("RescaleSlope", "Rescale Slope"), ("RescaleIntercept", "Rescale Intercept")):
        if keyword in dataset and dataset[keyword].value not in (None, ""):
            values = float_values(dataset[keyword].value)
            if values is None or len(values) != 1:
                raise ImageReadError(path, f"has an invalid {words} value {dataset[keyword].value!r}")


@dataclass(frozen=True)
class _ImageModule:
    """The Image Pixel module attributes the value pipeline needs, checked."""

    photometric: str
    bits_stored: int
    signed: bool


def _parse_image_object(path: Path) -> tuple[FileDataset, list[str]]:
    """Parse `path` and check it is an image object with pixel data; returns (dataset, notes)."""
    dataset = dcmread(path, stop_before_pixels=False)
    notes: list[str] = []
    truncated_because = _truncation_evidence(path, dataset)

    file_meta = getattr(dataset, "file_meta", None)
    media_class = str(file_meta.get("MediaStorageSOPClassUID", "")) if file_meta is not None else ""
    if media_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in dataset:
        raise ImageReadError(path, "is a DICOMDIR index, not an image (pass it to find_inputs to get its files)")

    if not any(keyword in dataset for keyword in _PIXEL_DATA_KEYWORDS):
        what = _sop_class_words(dataset)
        if truncated_because:
            raise ImageReadError(path, f"{what} has no pixel data and the file is truncated: {truncated_because}")
        if ("Rows" in dataset and "Columns" in dataset) or " Image" in f" {what}":
            # An image object without pixels: cut exactly between two elements, or stripped.
            raise ImageReadError(
                path, f"{what} has no pixel data although it is an image object (file truncated or pixel data removed)"
            )
        raise ImageReadError(path, f"{what} has no pixel data")

    if truncated_because:
        # The pixel data may still be whole (the cut hit a trailing element); decoding decides.
        notes.append(f"file is truncated after its pixel data: {truncated_because}")
    return dataset, notes


def _check_image_module(path: Path, dataset: Dataset, notes: list[str]) -> _ImageModule:
    """One grayscale frame with usable size, bit depth and rescale; assumes MONOCHROME2 when unstated."""
    photometric = check_single_grayscale_frame(path, dataset)
    if photometric == "":
        dataset.PhotometricInterpretation = "MONOCHROME2"
        photometric = "MONOCHROME2"
        notes.append("no Photometric Interpretation in the file; assumed MONOCHROME2")

    for keyword, words in (("Rows", "Rows"), ("Columns", "Columns"), ("BitsAllocated", "Bits Allocated")):
        if keyword not in dataset or dataset[keyword].value in (None, ""):
            raise ImageReadError(path, f"has pixel data but no {words} element, so it cannot be interpreted")
    rows = int_attribute(path, dataset, "Rows", "Rows")
    cols = int_attribute(path, dataset, "Columns", "Columns")
    if not rows or not cols:
        raise ImageReadError(path, f"has an empty image ({rows} x {cols} pixels)")
    bits_allocated = int_attribute(path, dataset, "BitsAllocated", "Bits Allocated")
    bits_stored = int_attribute(path, dataset, "BitsStored", "Bits Stored", default=bits_allocated)
    pixel_representation = int_attribute(path, dataset, "PixelRepresentation", "Pixel Representation", default=0)
    if not bits_stored or bits_stored < 1 or bits_stored > 64:
        raise ImageReadError(path, f"has an invalid Bits Stored value {bits_stored!r}")
    _check_rescale(path, dataset)
    return _ImageModule(photometric=photometric, bits_stored=int(bits_stored), signed=pixel_representation == 1)


def _stored_values(path: Path, dataset: Dataset, notes: list[str]) -> tuple[np.ndarray, str]:
    """(decoded stored values, one 2-D frame; the transfer syntax UID)."""
    from pydicom.uid import UID

    _guess_transfer_syntax(path, dataset, notes)
    transfer_syntax = UID(str(dataset.file_meta.TransferSyntaxUID))
    if "PixelData" in dataset:
        _check_decoder(path, transfer_syntax)

    stored = _decode(path, dataset, transfer_syntax.name)
    if stored.size == 0:
        raise ImageReadError(path, "decoded to an empty pixel array")
    if stored.ndim != 2:
        raise ImageReadError(
            path, f"decoded to an array of shape {stored.shape}, not a single 2-D grayscale frame"
        )
    return stored, str(transfer_syntax)


def _lut_or_raise(path: Path, values: np.ndarray, dataset: Dataset, voi: _VoiChoice, what: str) -> np.ndarray:
    try:
        return _modality_and_voi(values, dataset, voi)
    except Exception as error:  # noqa: BLE001
        raise ImageReadError(path, f"{what} cannot be applied: {type(error).__name__}: {error}") from error


def _display_values(
    path: Path, dataset: Dataset, stored: np.ndarray, module: _ImageModule, notes: list[str]
) -> tuple[np.ndarray, _VoiChoice, bool]:
    """(float32 pixels after modality LUT, VOI and inversion; the VOI applied; whether inverted)."""
    # VOI: try it on every possible stored value first; a window/LUT pydicom rejects is skipped for
    # the image and for the inversion range alike, so the two stay consistent.
    voi = _choose_voi(dataset)
    possible = _possible_stored_values(module.bits_stored, signed=module.signed)
    try:
        possible_output = _modality_and_voi(possible, dataset, voi)
    except Exception as error:  # noqa: BLE001
        if voi.kind is None:
            reason = f"modality LUT / rescale cannot be applied: {type(error).__name__}: {error}"
            raise ImageReadError(path, reason) from error
        notes.append(f"VOI {voi.kind} ignored, pydicom rejected it: {type(error).__name__}: {error}")
        voi = _VoiChoice(None, None)
        possible_output = _lut_or_raise(path, possible, dataset, voi, "modality LUT / rescale")
    values = _lut_or_raise(path, stored, dataset, voi, "modality LUT / VOI")

    presentation_shape = str(dataset.get("PresentationLUTShape", "") or "").strip().upper()
    inverted = module.photometric == "MONOCHROME1" or presentation_shape == "INVERSE"
    if inverted:
        low, high = float(np.min(possible_output)), float(np.max(possible_output))
        if voi.kind == "window":
            window_low, window_high = _window_output_range(dataset)
            low, high = min(low, window_low), max(high, window_high)
        values = (low + high) - values

    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf, reported below
        pixels = values.astype(np.float32)
    if not np.all(np.isfinite(pixels)):
        raise ImageReadError(path, "has non-finite pixel values (NaN or infinity) after the modality LUT / VOI")
    return pixels, voi, inverted


def _dicom_meta(
    path: Path, dataset: Dataset, pixels: np.ndarray, module: _ImageModule, voi: _VoiChoice, inverted: bool,
    transfer_syntax: str, notes: list[str],
) -> tuple[RadiographMeta, tuple[float, float] | None]:
    """(``Radiograph.meta`` of a DICOM file, spacing in mm or None)."""
    spacing, spacing_source = spacing_from_dataset(dataset)
    presentation_shape = str(dataset.get("PresentationLUTShape", "") or "").strip().upper()
    meta = RadiographMeta(
        source="dicom",
        path=str(path),
        rows=int(pixels.shape[0]),
        cols=int(pixels.shape[1]),
        sop_class_uid=str_or_none(dataset.get("SOPClassUID", None)),
        sop_instance_uid=str_or_none(dataset.get("SOPInstanceUID", None)),
        study_instance_uid=str_or_none(dataset.get("StudyInstanceUID", None)),
        series_instance_uid=str_or_none(dataset.get("SeriesInstanceUID", None)),
        modality=str_or_none(dataset.get("Modality", None)),
        photometric=module.photometric,
        presentation_lut_shape=presentation_shape or None,
        inverted=inverted,
        voi=voi.kind,
        window=voi.window,
        spacing_source=spacing_source,
        transfer_syntax=transfer_syntax,
        bits_stored=module.bits_stored,
        notes=notes,
        # empty values become None, so "no patient id" has one spelling
        patient_id=str_or_none(dataset.get("PatientID", None)) or None,
        patient_name=str_or_none(dataset.get("PatientName", None)) or None,
    )
    return meta, spacing


def read_dicom(path: Path) -> Radiograph:
    """One DICOM image as a Radiograph: parse, check, decode, modality LUT, VOI, inversion (module docstring)."""
    dataset, notes = _parse_image_object(path)
    module = _check_image_module(path, dataset, notes)
    stored, transfer_syntax = _stored_values(path, dataset, notes)
    pixels, voi, inverted = _display_values(path, dataset, stored, module, notes)
    meta, spacing = _dicom_meta(path, dataset, pixels, module, voi, inverted, transfer_syntax, notes)
    return Radiograph(pixels=pixels, spacing_mm=spacing, meta=meta)
