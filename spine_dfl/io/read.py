"""``read_image``: one entry point for DICOM, NIfTI and PNG/TIFF/JPEG, recognised by content."""

from __future__ import annotations

from pathlib import Path

from spine_dfl.io.discovery import image_format
from spine_dfl.io.radiograph import ImageReadError, PathLike, Radiograph

__all__ = ["read_image"]

# Exceptions that are the user's or the interpreter's, never the file's: they must propagate.
_NOT_THE_FILES_FAULT = (KeyboardInterrupt, SystemExit, GeneratorExit)


def _read_by_kind(file_path: Path) -> Radiograph:
    from spine_dfl.io.dicom import read_dicom
    from spine_dfl.io.raster import read_nifti, read_ordinary_image

    kind = image_format(file_path)
    if kind == "dicom":
        return read_dicom(file_path)
    if kind == "nifti":
        return read_nifti(file_path)
    return read_ordinary_image(file_path)


def read_image(path: PathLike) -> Radiograph:
    """Read one radiograph from DICOM, NIfTI (.nii/.nii.gz) or PNG/TIFF/JPEG.

    The format is recognised by content (DICOM 'DICM' preamble or DICOM tags at the start, PNG/
    JPEG/TIFF signatures) and, for NIfTI, by suffix; file names without a suffix are fine.
    Returns a Radiograph with pixels float32 (rows, cols), bone bright. Raises ImageReadError
    ("<path>: <reason>") for anything that is not a readable single-frame grayscale image. No other
    exception leaves this function, not even one a decoder raises that is not an ``Exception``
    (pyo3's ``PanicException`` when a Rust decoder panics); only KeyboardInterrupt, SystemExit and
    GeneratorExit pass through. A decoder that kills the process (segfault, abort) cannot be caught
    here: callers that must survive it decode in a separate process.
    """
    file_path = Path(path)
    try:
        return _read_by_kind(file_path)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(file_path, "not enough memory to read the image") from None
    except _NOT_THE_FILES_FAULT:
        raise
    except BaseException as error:  # noqa: BLE001 - the contract: only ImageReadError leaves this function
        raise ImageReadError(file_path, f"unexpected error while reading: {type(error).__name__}: {error}") from error
