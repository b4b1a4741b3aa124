"""NIfTI and ordinary images (PNG/TIFF/JPEG) into a :class:`Radiograph`, and their header-only facts.

NIfTI orientation: nibabel arrays are indexed (i, j) = (first voxel axis, second voxel axis).
We transpose without flipping: ``pixels[row, col] = data[col, row]``, i.e. rows follow the second
voxel axis and columns the first, and ``spacing_mm = (zoom_j, zoom_i)``. No affine is applied; a
3-D volume must have exactly one slice (any axis of length 1 is squeezed, the remaining two keep
their order).

PNG/TIFF/JPEG: read with scikit-image; values are kept as stored (8-bit stays 0..255, 16-bit stays
0..65535); RGB is folded to gray with ``skimage.color.rgb2gray`` applied to the values as floats (so
it keeps the stored scale); an alpha channel is dropped. No spacing is read from these formats.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from spine_dfl.io.header import ImageHeader
from spine_dfl.io.radiograph import ImageReadError, Radiograph, RadiographMeta

__all__ = ["nifti_header", "raster_header", "read_nifti", "read_ordinary_image"]

_NIFTI_UNIT_TO_MM = {"mm": 1.0, "meter": 1000.0, "micron": 0.001, "unknown": 1.0}


def empty_meta(path: Path, source: str) -> RadiographMeta:
    """``Radiograph.meta`` of a file without DICOM attributes: every DICOM field None."""
    return RadiographMeta(source=source, path=str(path))


def _finish(path: Path, pixels: np.ndarray, spacing: tuple[float, float] | None, meta: RadiographMeta) -> Radiograph:
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf, reported below
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    if pixels.size == 0:
        raise ImageReadError(path, f"has an empty image (shape {pixels.shape})")
    if not np.all(np.isfinite(pixels)):
        raise ImageReadError(path, "has non-finite pixel values (NaN or infinity)")
    meta.rows, meta.cols = int(pixels.shape[0]), int(pixels.shape[1])
    return Radiograph(pixels=pixels, spacing_mm=spacing, meta=meta)


# --------------------------------------------------------------------------------------------
# NIfTI


def _load_nifti(path: Path) -> Any:
    import nibabel

    try:
        return nibabel.load(str(path))
    except Exception as error:  # noqa: BLE001
        reason = f"cannot be read as NIfTI (corrupt or truncated?): {type(error).__name__}: {error}"
        raise ImageReadError(path, reason) from error


def _nifti_plane_axes(path: Path, shape: tuple[int, ...]) -> list[int]:
    """The two voxel axes that hold the image (i first, j second); raises for anything but one slice."""
    if len(shape) < 2:
        raise ImageReadError(path, f"has {len(shape)} dimension(s); a 2-D image is needed")
    kept_axes = [axis for axis, length in enumerate(shape) if length != 1]
    if len(shape) > 2 and len(kept_axes) != 2:
        raise ImageReadError(
            path,
            f"is a {len(shape)}-D NIfTI volume of shape {tuple(shape)}; only 2-D images or volumes with a "
            "single slice are supported",
        )
    return kept_axes if len(shape) > 2 else [0, 1]


def _nifti_spacing(header: Any, axes: list[int]) -> tuple[tuple[float, float] | None, str]:
    """((row, col) spacing in mm or None, the header's spatial unit)."""
    # Zooms are float32 in the header: take the shortest decimal that round-trips (0.8, not
    # 0.800000011920929), i.e. the value the writer meant.
    zooms = [float(str(np.float32(z))) for z in header.get_zooms()]
    try:
        spatial_unit = header.get_xyzt_units()[0]
    except Exception:  # noqa: BLE001 - NIfTI-1 pair/Analyze headers may lack units
        spatial_unit = "unknown"
    scale = _NIFTI_UNIT_TO_MM.get(spatial_unit, 1.0)
    if len(zooms) > max(axes):
        row_spacing, col_spacing = zooms[axes[1]] * scale, zooms[axes[0]] * scale
        if np.isfinite(row_spacing) and np.isfinite(col_spacing) and row_spacing > 0 and col_spacing > 0:
            return (row_spacing, col_spacing), spatial_unit
    return None, spatial_unit


def read_nifti(path: Path) -> Radiograph:
    """One NIfTI image (or single-slice volume) as a Radiograph; see the module docstring for orientation."""
    image = _load_nifti(path)
    try:
        header = image.header
        header.get_zooms()
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # noqa: BLE001
        reason = f"cannot be read as NIfTI (corrupt or truncated?): {type(error).__name__}: {error}"
        raise ImageReadError(path, reason) from error
    if data.dtype.names is not None:
        raise ImageReadError(path, "is a colour (RGB) NIfTI image; only grayscale images are supported")
    axes = _nifti_plane_axes(path, tuple(data.shape))
    plane = data.reshape([data.shape[a] for a in axes]).astype(np.float64)
    # Rows follow the second voxel axis, columns the first (see module docstring).
    pixels = plane.T
    meta = empty_meta(path, "nifti")
    spacing, spatial_unit = _nifti_spacing(header, axes)
    if spacing is not None:
        meta.spacing_source = "nifti"
    meta.nifti_spatial_unit = spatial_unit
    return _finish(path, pixels, spacing, meta)


def nifti_header(path: Path) -> ImageHeader:
    """Rows, cols and spacing of a NIfTI file from its header (the voxel data is not read)."""
    image = _load_nifti(path)
    try:
        header = image.header
        shape = tuple(int(n) for n in header.get_data_shape())
        rgb = header.get_data_dtype().names is not None
    except Exception as error:  # noqa: BLE001
        reason = f"cannot be read as NIfTI (corrupt or truncated?): {type(error).__name__}: {error}"
        raise ImageReadError(path, reason) from error
    if rgb:
        raise ImageReadError(path, "is a colour (RGB) NIfTI image; only grayscale images are supported")
    axes = _nifti_plane_axes(path, shape)
    rows, cols = shape[axes[1]], shape[axes[0]]
    if rows == 0 or cols == 0:
        raise ImageReadError(path, f"has an empty image (shape {(rows, cols)})")
    spacing, _ = _nifti_spacing(header, axes)
    return ImageHeader(path=str(path), source="nifti", rows=rows, cols=cols, spacing_mm=spacing)


# --------------------------------------------------------------------------------------------
# PNG, TIFF, JPEG


def _fold_to_gray(path: Path, values: np.ndarray) -> tuple[np.ndarray, int]:
    """(2-D gray values, number of channels the file had)."""
    from skimage.color import rgb2gray

    if values.ndim == 2:
        return values, 1
    if values.ndim == 3 and values.shape[-1] in (1, 2, 3, 4):
        channels = values.shape[-1]
        if channels in (1, 2):  # gray, gray + alpha
            return values[..., 0], channels
        # RGB, RGBA: drop alpha, fold to luminance keeping the stored scale
        return rgb2gray(values[..., :3]), channels
    if values.ndim == 3:
        raise ImageReadError(path, f"has {values.shape[0]} pages/frames; only single-frame images are supported")
    raise ImageReadError(path, f"has an array of shape {values.shape}, not a single 2-D image")


def read_ordinary_image(path: Path) -> Radiograph:
    """One PNG/TIFF/JPEG image as a Radiograph, values as stored (see the module docstring)."""
    import skimage.io

    try:
        data = np.asarray(skimage.io.imread(str(path)))
    except Exception as error:  # noqa: BLE001
        reason = f"cannot be read as an image (corrupt or truncated?): {type(error).__name__}: {error}"
        raise ImageReadError(path, reason) from error
    meta = empty_meta(path, "image")
    if data.size == 0:
        raise ImageReadError(path, "contains no image data (truncated or corrupt file)")
    if data.dtype.kind not in "uifb":
        raise ImageReadError(path, f"has unsupported pixel type {data.dtype}")
    values, channels = _fold_to_gray(path, data.astype(np.float64))
    meta.channels = channels
    meta.bits_stored = int(data.dtype.itemsize * 8) if data.dtype.kind in "ui" else None
    return _finish(path, values, None, meta)


def raster_header(path: Path) -> ImageHeader:
    """Rows and cols of a PNG/TIFF/JPEG file from its header (Pillow opens files lazily).

    A file Pillow cannot size from one frame of its header (unknown to Pillow, multi-page) is read
    whole, so the size or the reason is exactly the one ``read_ordinary_image`` gives.
    """
    try:
        from PIL import Image

        with Image.open(path) as image:
            frames = int(getattr(image, "n_frames", 1) or 1)
            width, height = image.size
        if frames == 1 and width > 0 and height > 0:
            return ImageHeader(path=str(path), source="image", rows=int(height), cols=int(width))
    except Exception:  # noqa: BLE001 - the full reader says what is wrong with the file
        pass
    radiograph = read_ordinary_image(path)
    rows, cols = radiograph.pixels.shape
    return ImageHeader(path=str(path), source="image", rows=int(rows), cols=int(cols))
