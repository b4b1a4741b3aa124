"""Recognising files and expanding inputs: is_dicom, is_dicomdir, find_inputs, and the format sniffer.

A DICOM file is recognised by 'DICM' at byte offset 128 (PS3.10 preamble) or, without preamble, by
a group 0002/0008 tag at the start that parses into a dataset; a DICOMDIR (Media Storage Directory
Storage) is replaced by the files it references. Nothing here decodes pixels.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from spine_dfl.io.radiograph import ImageReadError, PathLike, check_regular_file

if TYPE_CHECKING:
    from pydicom import FileDataset

__all__ = [
    "DICOMDIR_SOP_CLASS",
    "find_inputs",
    "has_dicm_preamble",
    "is_dicom",
    "is_dicomdir",
    "parse_headerless",
    "read_head",
    "sniff_format",
    "image_format",
    "starts_like_headerless_dicom",
]

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
_UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)+$")


def read_head(path: Path, size: int = 512) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(size)


def has_dicm_preamble(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def starts_like_headerless_dicom(head: bytes) -> bool:
    """First tag is in group 0002 (meta) or 0008 (identifying), in either byte order.

    Every dataset begins with its lowest group; a file without preamble that starts anywhere else
    is almost certainly not DICOM (text, JSON, ICC profiles, gzip all fail this).
    """
    if len(head) < 8:
        return False
    group_le = int.from_bytes(head[0:2], "little")
    group_be = int.from_bytes(head[0:2], "big")
    return group_le in (0x0002, 0x0008) or group_be in (0x0002, 0x0008)


def parse_headerless(path: Path) -> FileDataset | None:
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
        head = read_head(file_path)
    except OSError:
        return False
    if has_dicm_preamble(head):
        return True
    if not starts_like_headerless_dicom(head):
        return False
    return parse_headerless(file_path) is not None


def is_dicomdir(path: PathLike) -> bool:
    """True when `path` is a DICOMDIR (Media Storage Directory Storage) index file.

    A DICOMDIR is always a PS3.10 file with preamble; its meta header's Media Storage SOP Class
    UID is 1.2.840.10008.1.3.10. Never raises.
    """
    file_path = Path(path)
    try:
        if not file_path.is_file() or not has_dicm_preamble(read_head(file_path)):
            return False
        from pydicom.filereader import read_file_meta_info

        meta = read_file_meta_info(file_path)
        return str(meta.get("MediaStorageSOPClassUID", "")) == DICOMDIR_SOP_CLASS
    except Exception:  # noqa: BLE001 - a file whose meta cannot be read is not a usable DICOMDIR
        return False


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


def sniff_format(path: Path, head: bytes) -> str:
    """'dicom' | 'nifti' | 'image' | reason string starting with '!' when unrecognised."""
    name = path.name.lower()
    if has_dicm_preamble(head):  # first: a DICOM preamble may itself hold a TIFF header
        return "dicom"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff"):
        return "image"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "image"
    if starts_like_headerless_dicom(head) and parse_headerless(path) is not None:
        return "dicom"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"  # let the image reader report what is wrong with it
    if head.startswith(b"\x1f\x8b"):
        return "!is gzip-compressed and not named .nii.gz; decompress it first"
    return "!is not a recognised image format (expected DICOM, NIfTI .nii/.nii.gz, PNG, TIFF or JPEG)"


def image_format(file_path: Path) -> str:
    """'dicom' | 'nifti' | 'image' for a readable, non-empty regular file; ImageReadError otherwise.

    The one entry check that both the pixel reader and the header reader make before they dispatch.
    """
    check_regular_file(file_path)
    try:
        head = read_head(file_path)
    except OSError as error:
        raise ImageReadError(file_path, f"cannot be opened: {error.strerror or error}") from error
    if len(head) == 0:
        raise ImageReadError(file_path, "is an empty file (0 bytes)")
    kind = sniff_format(file_path, head)
    if kind.startswith("!"):
        raise ImageReadError(file_path, kind[1:])
    return kind
