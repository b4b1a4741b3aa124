"""Why a scoring run stops (``ScoreError``) and why one file fails (its reason and its category)."""

from __future__ import annotations

import re
from spine_dfl.io.errors import InputError


class ScoreError(InputError):
    """Bad arguments, inputs or checkpoint for a scoring run (the CLI exits with status 2)."""


class NoRoiSource(ScoreError):
    """A per-vertebra (ROI) model was given neither an ROI file nor a locator."""


# A worker process died (segfault, abort) twice while decoding this file, the second time alone.
DECODER_CRASHED = "decoder crashed"

_REASON_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"empty file|0 bytes", "empty file"),
    (r"does not exist", "file missing"),
    (r"no pixel data although", "image without its pixel data (truncated or stripped)"),
    (r"no pixel data", "no pixel data (not an image)"),
    (r"truncat|end of file|unexpected eof", "truncated file"),
    (r"dicomdir", "DICOMDIR index"),
    (r"multi-frame|pages/frames", "multi-frame image"),
    (r"colou?r", "colour image"),
    (r"not a dicom|not a recognised image|gzip-compressed", "not an image file"),
    (r"cannot be parsed as dicom|cannot read the dicom header", "corrupt DICOM"),
    (r"^decoder crashed", DECODER_CRASHED),
    (r"transfer syntax|decod|plugin|pylibjpeg|cannot decompress", "pixel data cannot be decoded"),
    (r"no roi", "no ROIs for this image"),
    (r"^no vertebrae found", "no vertebrae found"),
    (r"^unlike the training images", "unlike the training images"),  # score --refuse-shifted (score.scorer)
    (r"^no lateral vertebral column found", "no lateral vertebral column found"),
    (r"memory", "out of memory"),
    (r"cannot be read as (nifti|an image)", "corrupt image file"),
    (r"but no .* element|cannot be interpreted", "incomplete image header"),
    (r"dimension|shape|empty image|pixel type|non-finite|invalid", "unsupported image content"),
)


def reason_category(reason: str) -> str:
    """Short category for ``failed_by_reason`` ("truncated file", "no pixel data (not an image)", ...).

    The input gate's refusals (``gate.header``) are their own category: their one-line reason, the same
    for every file of one kind ("modality CT: not a projection radiograph").
    """
    from spine_dfl.gate.header import is_gate_reason

    if is_gate_reason(reason):
        return reason
    lowered = reason.lower()
    for pattern, category in _REASON_PATTERNS:
        if re.search(pattern, lowered):
            return category
    return "other error"


def reason_of(exc: BaseException) -> str:
    """Readable one-line reason without the path (ImageReadError carries it separately).

    Unwraps MONAI's wrappers (``RuntimeError: applying transform ...``) down to the reader's error.
    """
    from spine_dfl.io import ImageReadError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ImageReadError):
            return " ".join(seen.reason.split())
        seen = seen.__cause__ or seen.__context__
    cause = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    return " ".join(f"{type(cause).__name__}: {cause}".split())
