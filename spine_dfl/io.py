"""Reading radiographs: DICOM, NIfTI and PNG/TIFF/JPEG into one grayscale form.

Every reader returns a :class:`Radiograph` whose ``pixels`` are a 2-D float32 array of shape
(rows, cols) in which a higher value means more attenuation (bone bright), as a radiologist
views the image. Anything that is not a readable single-frame grayscale image raises
:class:`ImageReadError` (a ``ValueError``) whose message is ``"<path>: <reason in words>"``.

This module imports nothing else of spine_dfl.

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

NIfTI orientation: nibabel arrays are indexed (i, j) = (first voxel axis, second voxel axis).
We transpose without flipping: ``pixels[row, col] = data[col, row]``, i.e. rows follow the second
voxel axis and columns the first, and ``spacing_mm = (zoom_j, zoom_i)``. No affine is applied; a
3-D volume must have exactly one slice (any axis of length 1 is squeezed, the remaining two keep
their order).

Warnings that pydicom, nibabel or scikit-image emit (invalid VR values, excess padding) are left to
the caller's warning filters: capturing them would swap process-wide warning state, which is not
thread-safe, and datasets read files from worker threads.

PNG/TIFF/JPEG: read with scikit-image; values are kept as stored (8-bit stays 0..255, 16-bit stays
0..65535); RGB is folded to gray with ``skimage.color.rgb2gray`` applied to the values as floats (so
it keeps the stored scale); an alpha channel is dropped. No spacing is read from these formats.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ImageReadError",
    "Radiograph",
    "find_inputs",
    "is_dicom",
    "is_dicomdir",
    "read_dicom_header",
    "read_image",
]

PathLike = str | os.PathLike[str]

_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
_UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)+$")

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


# --------------------------------------------------------------------------------------------
# Recognising files


def _read_head(path: Path, size: int = 512) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(size)


def _has_dicm_preamble(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def _starts_like_headerless_dicom(head: bytes) -> bool:
    """First tag is in group 0002 (meta) or 0008 (identifying), in either byte order.

    Every dataset begins with its lowest group; a file without preamble that starts anywhere else
    is almost certainly not DICOM (text, JSON, ICC profiles, gzip all fail this).
    """
    if len(head) < 8:
        return False
    group_le = int.from_bytes(head[0:2], "little")
    group_be = int.from_bytes(head[0:2], "big")
    return group_le in (0x0002, 0x0008) or group_be in (0x0002, 0x0008)


def _parse_headerless(path: Path) -> Any | None:
    """Dataset of a file without preamble, or None when it does not look like DICOM."""
    import pydicom

    try:
        dataset = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - any parse failure means "not DICOM" here
        return None
    sop_class = str(dataset.get("SOPClassUID", "") or "")
    has_image_module = "Rows" in dataset and "Columns" in dataset
    if _UID_PATTERN.match(sop_class) or has_image_module:
        return dataset
    return None


def is_dicom(path: PathLike) -> bool:
    """True when `path` is a DICOM file.

    Recognised by 'DICM' at byte offset 128 (PS3.10 preamble); as a fallback, a file without the
    preamble that starts with a group 0002/0008 tag and parses (``force=True``) into a dataset with
    a SOP Class UID or Rows/Columns. Never raises: unreadable paths are not DICOM.
    """
    file_path = Path(path)
    try:
        if not file_path.is_file():
            return False
        head = _read_head(file_path)
    except OSError:
        return False
    if _has_dicm_preamble(head):
        return True
    if not _starts_like_headerless_dicom(head):
        return False
    return _parse_headerless(file_path) is not None


def is_dicomdir(path: PathLike) -> bool:
    """True when `path` is a DICOMDIR (Media Storage Directory Storage) index file.

    A DICOMDIR is always a PS3.10 file with preamble; its meta header's Media Storage SOP Class
    UID is 1.2.840.10008.1.3.10. Never raises.
    """
    file_path = Path(path)
    try:
        if not file_path.is_file() or not _has_dicm_preamble(_read_head(file_path)):
            return False
        from pydicom.filereader import read_file_meta_info

        meta = read_file_meta_info(file_path)
        return str(meta.get("MediaStorageSOPClassUID", "")) == _DICOMDIR_SOP_CLASS
    except Exception:  # noqa: BLE001 - a file whose meta cannot be read is not a usable DICOMDIR
        return False


# --------------------------------------------------------------------------------------------
# Finding inputs


def _resolve_case_insensitive(folder: Path, components: list[str]) -> Path:
    """`folder`/components, matching each component case-insensitively when the exact one is absent.

    DICOMDIR file IDs are upper case (ISO 9660 media) while copies on disk may be lower case.
    Returns the exact join when no match exists (the caller then reports the missing file).
    """
    exact = folder.joinpath(*components)
    if exact.exists():
        return exact
    current = folder
    for component in components:
        candidate = current / component
        if not candidate.exists():
            try:
                matches = [e for e in current.iterdir() if e.name.lower() == component.lower()]
            except OSError:
                return exact
            if not matches:
                return exact
            candidate = sorted(matches)[0]
        current = candidate
    return current


def _dicomdir_references(dicomdir: Path) -> list[Path] | None:
    """Files a DICOMDIR references, resolved relative to its folder; None when it cannot be parsed."""
    import pydicom

    try:
        dataset = pydicom.dcmread(dicomdir)
        records = dataset.get("DirectoryRecordSequence", None) or []
        referenced: list[Path] = []
        for record in records:
            file_id = record.get("ReferencedFileID", None)
            if file_id is None or file_id == "":
                continue
            components = [file_id] if isinstance(file_id, str) else [str(c) for c in file_id]
            components = [c.strip() for c in components if str(c).strip()]
            if components:
                referenced.append(_resolve_case_insensitive(dicomdir.parent, components))
        return referenced
    except Exception:  # noqa: BLE001 - a corrupt DICOMDIR is returned itself and fails later
        return None


def _walk_files(folder: Path) -> Iterator[Path]:
    """Regular files under `folder`, recursively, in sorted order, skipping hidden files/folders."""
    for root, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            candidate = Path(root) / name
            if candidate.is_file():
                yield candidate


def find_inputs(paths: Iterable[PathLike]) -> list[Path]:
    """Expand files and folders into the list of input files, deterministic and de-duplicated.

    - A folder is walked recursively; files and folders whose name starts with '.' are skipped.
    - A DICOMDIR (explicit or found in a folder) is replaced by the files it references, resolved
      relative to its folder; the DICOMDIR itself is not returned. A DICOMDIR that cannot be parsed
      is returned as is (reading it then fails with a reason).
    - Every other regular file is returned, readable or not, so that the caller accounts for every
      input; a path that does not exist is returned too and fails later with a reason.
    - Order: arguments in the order given; within one argument, sorted by path. A file reached
      twice (same resolved path) is kept at its first position.
    """
    result: list[Path] = []
    seen: set[Path] = set()

    def key_of(candidate: Path) -> Path:
        try:
            return candidate.resolve()
        except OSError:
            return Path(os.path.abspath(candidate))

    def expand_file(candidate: Path) -> list[Path]:
        if is_dicomdir(candidate):
            referenced = _dicomdir_references(candidate)
            return [candidate] if referenced is None else referenced
        return [candidate]

    for raw in paths:
        argument = Path(raw)
        group: list[Path] = []
        if argument.is_dir():
            for found in _walk_files(argument):
                group.extend(expand_file(found))
        else:
            group.extend(expand_file(argument))
        for candidate in sorted(group, key=lambda p: p.as_posix()):
            key = key_of(candidate)
            if key not in seen:
                seen.add(key)
                result.append(candidate)
    return result


# --------------------------------------------------------------------------------------------
# DICOM


def _sop_class_words(dataset: Any) -> str:
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


def _truncation_evidence(path: Path, dataset: Any) -> str | None:
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


def _dcmread(path: Path, *, stop_before_pixels: bool) -> Any:
    """Parse a DICOM file, with ``force=True`` only when the preamble is missing."""
    import pydicom

    head = _read_head(path)
    force = not _has_dicm_preamble(head)
    if force and not _starts_like_headerless_dicom(head):
        raise ImageReadError(path, "not a DICOM file (no 'DICM' preamble and no DICOM tags at the start)")
    try:
        return pydicom.dcmread(path, force=force, stop_before_pixels=stop_before_pixels)
    except Exception as error:  # noqa: BLE001 - every parser failure becomes a reason
        raise ImageReadError(
            path, f"cannot be parsed as DICOM (corrupt or truncated file): {type(error).__name__}: {error}"
        ) from error


def read_dicom_header(path: PathLike) -> Any:
    """The DICOM header of `path` as a ``pydicom.Dataset`` (read with ``stop_before_pixels``).

    Raises ImageReadError when the file is missing, not DICOM or cannot be parsed.
    """
    file_path = Path(path)
    _check_regular_file(file_path)
    try:
        if not is_dicom(file_path):
            raise ImageReadError(file_path, "not a DICOM file")
        dataset = _dcmread(file_path, stop_before_pixels=True)
        return dataset
    except ImageReadError:
        raise
    except Exception as error:  # noqa: BLE001
        raise ImageReadError(file_path, f"cannot read the DICOM header: {type(error).__name__}: {error}") from error


def _int_attribute(path: Path, dataset: Any, keyword: str, words: str, default: int | None = None) -> int | None:
    """Integer value of an image-module attribute, with a reason in words when it is unusable."""
    if keyword not in dataset or dataset[keyword].value in (None, ""):
        return default
    value = dataset[keyword].value
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ImageReadError(path, f"has an invalid {words} value {value!r}") from None


def _float_values(element_value: Any) -> list[float] | None:
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


def _spacing_from_dataset(dataset: Any) -> tuple[tuple[float, float] | None, str | None]:
    """(row, col) spacing in mm from PixelSpacing, else ImagerPixelSpacing, with the tag used."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword not in dataset:
            continue
        values = _float_values(dataset[keyword].value)
        if values is None or len(values) != 2:
            continue
        row, col = values
        if np.isfinite(row) and np.isfinite(col) and row > 0 and col > 0:
            return (row, col), keyword
    return None, None


def _guess_transfer_syntax(path: Path, dataset: Any, notes: list[str]) -> None:
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


def _check_decoder(path: Path, transfer_syntax: Any) -> None:
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


def _decode(path: Path, dataset: Any, transfer_syntax_name: str) -> np.ndarray:
    """Stored values as decoded by pydicom, with decode failures turned into reasons."""
    try:
        return np.asarray(dataset.pixel_array)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(path, "not enough memory to decode the pixel data") from None
    except Exception as error:  # noqa: BLE001 - every decoder failure becomes a reason
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
        raise ImageReadError(path, reason) from error


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


def _choose_voi(dataset: Any) -> _VoiChoice:
    """Which VOI transform ``apply_voi_lut(index=0)`` will apply, mirroring pydicom's rule."""
    sequence = dataset.get("VOILUTSequence", None)
    if sequence:
        item = sequence[0]
        if item.get("LUTDescriptor", None) is not None and item.get("LUTData", None) is not None:
            return _VoiChoice("lut", None)
    centers = _float_values(dataset.get("WindowCenter", None))
    widths = _float_values(dataset.get("WindowWidth", None))
    if centers and widths:
        return _VoiChoice("window", (centers[0], widths[0]))
    return _VoiChoice(None, None)


def _modality_and_voi(values: np.ndarray, dataset: Any, voi: _VoiChoice) -> np.ndarray:
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


def _window_output_range(dataset: Any) -> tuple[float, float]:
    """The output range a window maps onto (PS3.3 C.11.2.1.2 y_min..y_max), as pydicom defines it.

    Values far below and far above any window land on the two ends for LINEAR, LINEAR_EXACT and
    (as limits) SIGMOID windows.
    """
    from pydicom.pixels import apply_voi_lut

    with np.errstate(over="ignore", invalid="ignore"):
        ends = np.asarray(apply_voi_lut(np.array([-1e300, 1e300]), dataset, index=0), dtype=np.float64)
    return float(np.min(ends)), float(np.max(ends))


def _check_rescale(path: Path, dataset: Any) -> None:
    for keyword, words in (("RescaleSlope", "Rescale Slope"), ("RescaleIntercept", "Rescale Intercept")):
        if keyword in dataset and dataset[keyword].value not in (None, ""):
            values = _float_values(dataset[keyword].value)
            if values is None or len(values) != 1:
                raise ImageReadError(path, f"has an invalid {words} value {dataset[keyword].value!r}")


def _read_dicom(path: Path) -> Radiograph:
    from pydicom.uid import UID

    dataset = _dcmread(path, stop_before_pixels=False)
    notes: list[str] = []
    truncated_because = _truncation_evidence(path, dataset)

    file_meta = getattr(dataset, "file_meta", None)
    media_class = str(file_meta.get("MediaStorageSOPClassUID", "")) if file_meta is not None else ""
    if media_class == _DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in dataset:
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

    frames = _int_attribute(path, dataset, "NumberOfFrames", "Number of Frames", default=1)
    if frames is not None and frames > 1:
        raise ImageReadError(
            path, f"is a multi-frame image ({frames} frames); only single-frame radiographs are supported"
        )

    samples = _int_attribute(path, dataset, "SamplesPerPixel", "Samples per Pixel", default=1)
    photometric = str(dataset.get("PhotometricInterpretation", "") or "").strip().upper()
    if samples != 1 or photometric not in ("", "MONOCHROME1", "MONOCHROME2"):
        described = photometric or "no Photometric Interpretation"
        raise ImageReadError(
            path,
            f"is a colour image ({described}, {samples} sample(s) per pixel); only grayscale "
            "(MONOCHROME1/MONOCHROME2) radiographs are supported",
        )
    if photometric == "":
        dataset.PhotometricInterpretation = "MONOCHROME2"
        photometric = "MONOCHROME2"
        notes.append("no Photometric Interpretation in the file; assumed MONOCHROME2")

    for keyword, words in (("Rows", "Rows"), ("Columns", "Columns"), ("BitsAllocated", "Bits Allocated")):
        if keyword not in dataset or dataset[keyword].value in (None, ""):
            raise ImageReadError(path, f"has pixel data but no {words} element, so it cannot be interpreted")
    rows = _int_attribute(path, dataset, "Rows", "Rows")
    cols = _int_attribute(path, dataset, "Columns", "Columns")
    if not rows or not cols:
        raise ImageReadError(path, f"has an empty image ({rows} x {cols} pixels)")
    bits_allocated = _int_attribute(path, dataset, "BitsAllocated", "Bits Allocated")
    bits_stored = _int_attribute(path, dataset, "BitsStored", "Bits Stored", default=bits_allocated)
    pixel_representation = _int_attribute(path, dataset, "PixelRepresentation", "Pixel Representation", default=0)
    if not bits_stored or bits_stored < 1 or bits_stored > 64:
        raise ImageReadError(path, f"has an invalid Bits Stored value {bits_stored!r}")
    _check_rescale(path, dataset)

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

    # VOI: try it on every possible stored value first; a window/LUT pydicom rejects is skipped for
    # the image and for the inversion range alike, so the two stay consistent.
    voi = _choose_voi(dataset)
    possible = _possible_stored_values(bits_stored, signed=pixel_representation == 1)
    try:
        possible_output = _modality_and_voi(possible, dataset, voi)
    except Exception as error:  # noqa: BLE001
        if voi.kind is None:
            reason = f"modality LUT / rescale cannot be applied: {type(error).__name__}: {error}"
            raise ImageReadError(path, reason) from error
        notes.append(f"VOI {voi.kind} ignored, pydicom rejected it: {type(error).__name__}: {error}")
        voi = _VoiChoice(None, None)
        try:
            possible_output = _modality_and_voi(possible, dataset, voi)
        except Exception as inner:  # noqa: BLE001
            reason = f"modality LUT / rescale cannot be applied: {type(inner).__name__}: {inner}"
            raise ImageReadError(path, reason) from inner
    try:
        values = _modality_and_voi(stored, dataset, voi)
    except Exception as error:  # noqa: BLE001
        raise ImageReadError(path, f"modality LUT / VOI cannot be applied: {type(error).__name__}: {error}") from error

    presentation_shape = str(dataset.get("PresentationLUTShape", "") or "").strip().upper()
    inverted = photometric == "MONOCHROME1" or presentation_shape == "INVERSE"
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

    spacing, spacing_source = _spacing_from_dataset(dataset)
    meta: dict[str, Any] = {
        "source": "dicom",
        "path": str(path),
        "rows": int(pixels.shape[0]),
        "cols": int(pixels.shape[1]),
        "sop_class_uid": _str_or_none(dataset.get("SOPClassUID", None)),
        "sop_instance_uid": _str_or_none(dataset.get("SOPInstanceUID", None)),
        "study_instance_uid": _str_or_none(dataset.get("StudyInstanceUID", None)),
        "series_instance_uid": _str_or_none(dataset.get("SeriesInstanceUID", None)),
        "modality": _str_or_none(dataset.get("Modality", None)),
        "photometric": photometric,
        "presentation_lut_shape": presentation_shape or None,
        "inverted": inverted,
        "voi": voi.kind,
        "window": voi.window,
        "spacing_source": spacing_source,
        "transfer_syntax": str(transfer_syntax),
        "bits_stored": int(bits_stored),
        "notes": notes,
    }
    for keyword, key in (("PatientID", "patient_id"), ("PatientName", "patient_name")):
        value = _str_or_none(dataset.get(keyword, None))
        if value:
            meta[key] = value
    return Radiograph(pixels=pixels, spacing_mm=spacing, meta=meta)


def _str_or_none(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


# --------------------------------------------------------------------------------------------
# NIfTI and ordinary images


def _empty_meta(path: Path, source: str) -> dict[str, Any]:
    return {
        "source": source,
        "path": str(path),
        "sop_class_uid": None,
        "sop_instance_uid": None,
        "study_instance_uid": None,
        "series_instance_uid": None,
        "modality": None,
        "photometric": None,
        "presentation_lut_shape": None,
        "inverted": False,
        "voi": None,
        "window": None,
        "spacing_source": None,
        "transfer_syntax": None,
        "bits_stored": None,
        "notes": [],
    }


def _finish(path: Path, pixels: np.ndarray, spacing: tuple[float, float] | None, meta: dict[str, Any]) -> Radiograph:
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf, reported below
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    if pixels.size == 0:
        raise ImageReadError(path, f"has an empty image (shape {pixels.shape})")
    if not np.all(np.isfinite(pixels)):
        raise ImageReadError(path, "has non-finite pixel values (NaN or infinity)")
    meta["rows"], meta["cols"] = int(pixels.shape[0]), int(pixels.shape[1])
    return Radiograph(pixels=pixels, spacing_mm=spacing, meta=meta)


_NIFTI_UNIT_TO_MM = {"mm": 1.0, "meter": 1000.0, "micron": 0.001, "unknown": 1.0}


def _read_nifti(path: Path) -> Radiograph:
    import nibabel

    try:
        image = nibabel.load(str(path))
        header = image.header
        # Zooms are float32 in the header: take the shortest decimal that round-trips (0.8, not
        # 0.800000011920929), i.e. the value the writer meant.
        zooms = [float(str(np.float32(z))) for z in header.get_zooms()]
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # noqa: BLE001
        reason = f"cannot be read as NIfTI (corrupt or truncated?): {type(error).__name__}: {error}"
        raise ImageReadError(path, reason) from error
    if data.dtype.names is not None:
        raise ImageReadError(path, "is a colour (RGB) NIfTI image; only grayscale images are supported")
    if data.ndim < 2:
        raise ImageReadError(path, f"has {data.ndim} dimension(s); a 2-D image is needed")
    kept_axes = [axis for axis, length in enumerate(data.shape) if length != 1]
    if data.ndim > 2 and len(kept_axes) != 2:
        raise ImageReadError(
            path,
            f"is a {data.ndim}-D NIfTI volume of shape {tuple(data.shape)}; only 2-D images or volumes with a "
            "single slice are supported",
        )
    axes = kept_axes if data.ndim > 2 else [0, 1]
    plane = data.reshape([data.shape[a] for a in axes]).astype(np.float64)
    # Rows follow the second voxel axis, columns the first (see module docstring).
    pixels = plane.T
    meta = _empty_meta(path, "nifti")
    try:
        spatial_unit = header.get_xyzt_units()[0]
    except Exception:  # noqa: BLE001 - NIfTI-1 pair/Analyze headers may lack units
        spatial_unit = "unknown"
    scale = _NIFTI_UNIT_TO_MM.get(spatial_unit, 1.0)
    spacing: tuple[float, float] | None = None
    if len(zooms) > max(axes):
        row_spacing, col_spacing = zooms[axes[1]] * scale, zooms[axes[0]] * scale
        if np.isfinite(row_spacing) and np.isfinite(col_spacing) and row_spacing > 0 and col_spacing > 0:
            spacing = (row_spacing, col_spacing)
            meta["spacing_source"] = "nifti"
    meta["nifti_spatial_unit"] = spatial_unit
    return _finish(path, pixels, spacing, meta)


def _read_ordinary_image(path: Path) -> Radiograph:
    import skimage.io
    from skimage.color import rgb2gray

    try:
        data = np.asarray(skimage.io.imread(str(path)))
    except Exception as error:  # noqa: BLE001
        reason = f"cannot be read as an image (corrupt or truncated?): {type(error).__name__}: {error}"
        raise ImageReadError(path, reason) from error
    meta = _empty_meta(path, "image")
    if data.size == 0:
        raise ImageReadError(path, "contains no image data (truncated or corrupt file)")
    if data.dtype.kind not in "uifb":
        raise ImageReadError(path, f"has unsupported pixel type {data.dtype}")
    values = data.astype(np.float64)
    if values.ndim == 2:
        channels = 1
    elif values.ndim == 3 and values.shape[-1] in (1, 2, 3, 4):
        channels = values.shape[-1]
        if channels in (1, 2):  # gray, gray + alpha
            values = values[..., 0]
        else:  # RGB, RGBA: drop alpha, fold to luminance keeping the stored scale
            values = rgb2gray(values[..., :3])
    elif values.ndim == 3:
        raise ImageReadError(path, f"has {values.shape[0]} pages/frames; only single-frame images are supported")
    else:
        raise ImageReadError(path, f"has an array of shape {values.shape}, not a single 2-D image")
    meta["channels"] = channels
    meta["bits_stored"] = int(data.dtype.itemsize * 8) if data.dtype.kind in "ui" else None
    return _finish(path, values, None, meta)


# --------------------------------------------------------------------------------------------
# Entry point


def _check_regular_file(path: Path) -> None:
    if not path.exists():
        raise ImageReadError(path, "file does not exist")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image file")
    if not path.is_file():
        raise ImageReadError(path, "is not a regular file")


def _sniff(path: Path, head: bytes) -> str:
    """'dicom' | 'nifti' | 'image' | reason string starting with '!' when unrecognised."""
    name = path.name.lower()
    if _has_dicm_preamble(head):  # first: a DICOM preamble may itself hold a TIFF header
        return "dicom"
    if name.endswith(_NIFTI_SUFFIXES):
        return "nifti"
    if head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff"):
        return "image"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "image"
    if _starts_like_headerless_dicom(head) and _parse_headerless(path) is not None:
        return "dicom"
    if name.endswith(_IMAGE_SUFFIXES):
        return "image"  # let the image reader report what is wrong with it
    if head.startswith(b"\x1f\x8b"):
        return "!is gzip-compressed and not named .nii.gz; decompress it first"
    return "!is not a recognised image format (expected DICOM, NIfTI .nii/.nii.gz, PNG, TIFF or JPEG)"


def read_image(path: PathLike) -> Radiograph:
    """Read one radiograph from DICOM, NIfTI (.nii/.nii.gz) or PNG/TIFF/JPEG.

    The format is recognised by content (DICOM 'DICM' preamble or DICOM tags at the start, PNG/
    JPEG/TIFF signatures) and, for NIfTI, by suffix; file names without a suffix are fine.
    Returns a Radiograph with pixels float32 (rows, cols), bone bright. Raises ImageReadError
    ("<path>: <reason>") for anything that is not a readable single-frame grayscale image; no other
    exception type escapes (KeyboardInterrupt aside).
    """
    file_path = Path(path)
    try:
        _check_regular_file(file_path)
        try:
            head = _read_head(file_path)
        except OSError as error:
            raise ImageReadError(file_path, f"cannot be opened: {error.strerror or error}") from error
        if len(head) == 0:
            raise ImageReadError(file_path, "is an empty file (0 bytes)")
        kind = _sniff(file_path, head)
        if kind.startswith("!"):
            raise ImageReadError(file_path, kind[1:])
        if kind == "dicom":
            return _read_dicom(file_path)
        if kind == "nifti":
            return _read_nifti(file_path)
        return _read_ordinary_image(file_path)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(file_path, "not enough memory to read the image") from None
    except Exception as error:  # noqa: BLE001 - the contract: only ImageReadError leaves this function
        raise ImageReadError(file_path, f"unexpected error while reading: {type(error).__name__}: {error}") from error
