"""MONAI dictionary transforms that turn a manifest row into a ``1 x S x S`` network input.

Pipeline (``eval_transforms``; training appends the random part of ``train_transforms``)::

    LoadRadiographd        path -> (1, H, W) float32, bone bright; "spacing_mm", minimal "meta"
    RoiCropd               ROI + margin box (integer pixels), out-of-image parts = image minimum
    ScaleIntensityRangePercentilesd (MONAI)   crop percentiles (low, high) -> [0, 1], clipped
    ResizePadd             keep aspect, larger side = S, pad symmetric to S x S with 0
    EnsureTyped            plain float32 torch tensor (no MetaTensor: cacheable, collatable)
    --- random part (training only) ---
    RandRadiographAffined  small rotation / isotropic scale / translation, composed into to_original
    RandAdjustContrastd    gamma (MONAI)
    RandGaussianSmoothd    blur (MONAI)
    RandGaussianNoised     noise (MONAI)

Why normalise between the crop and the resize: the percentiles must describe the anatomy,
not the symmetric padding a non-square ROI needs (that padding would otherwise pull the lower
percentile down to the padding value, and the contrast of a sample would depend on the ROI's
aspect ratio). Padding after normalisation uses 0, which is exactly where the image minimum
lands after the clipped percentile window, so "padded with the image minimum" holds for both
the out-of-image parts and the symmetric padding.

Coordinates: continuous pixel coordinates, pixel ``i`` covers ``[i, i + 1)``; ``x`` = column,
``y`` = row. ``to_original`` is a float64 (3, 3) matrix taking homogeneous tensor coordinates
``(x, y, 1)`` to original-image coordinates. Every geometric transform right-multiplies it by
the matrix that maps its output coordinates to its input coordinates, so it stays exact through
crop, resize, pad and random affine.

Random transforms follow TorchIO's style: ``randomize()`` samples parameters, then a
deterministic transform with those parameters does the work. They are MONAI ``Randomizable``,
so ``Compose.set_random_state(seed)`` seeds them and ``CacheDataset``/``PersistentDataset``
cache everything before the first of them.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    EnsureTyped,
    MapTransform,
    Randomizable,
    RandAdjustContrastd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    ScaleIntensityRangePercentilesd,
    Transform,
)

ROI = tuple[float, float, float, float]
# Radiograph meta fields handed on with a sample. Nothing that identifies a patient.
META_FIELDS: tuple[str, ...] = (
    "sop_instance_uid", "study_instance_uid", "series_instance_uid", "modality", "photometric",
    "source", "spacing_source", "transfer_syntax", "path", "rows", "cols",
)


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class Preprocessing:
    """Deterministic preprocessing; stored in every checkpoint (``dataclasses.asdict``).

    input_size: S, the network input is 1 x S x S pixels.
    roi_margin: fraction of the ROI's larger side added on every side before cropping.
    use_roi: False: the whole image is the sample (ROIs ignored).
    intensity_percentiles: (low, high) percentiles of the crop mapped to 0 and 1 (clipped).
    """

    input_size: int = 160
    roi_margin: float = 0.15
    use_roi: bool = True
    intensity_percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        if int(self.input_size) < 1:
            raise ValueError(f"input_size must be positive, got {self.input_size}")
        if self.roi_margin < 0:
            raise ValueError(f"roi_margin must be >= 0, got {self.roi_margin}")
        low, high = self.intensity_percentiles
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"intensity_percentiles need 0 <= low < high <= 100, got {self.intensity_percentiles}")


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation; each transform fires with probability ``prob``.

    rotate_deg: rotation uniform in [-rotate_deg, +rotate_deg] degrees.
    scale: isotropic zoom uniform in [1 - scale, 1 + scale].
    translate: shift uniform in [-translate, +translate] x S pixels, per axis.
    gamma: contrast gamma uniform in this range (MONAI RandAdjustContrast on [0, 1] data).
    noise_std: Gaussian noise std uniform in [0, noise_std] (intensities are in [0, 1]).
    blur_sigma: Gaussian blur sigma per axis uniform in this range, in output pixels.
    """

    rotate_deg: float = 5.0
    scale: float = 0.08
    translate: float = 0.04
    gamma: tuple[float, float] = (0.8, 1.25)
    noise_std: float = 0.02
    blur_sigma: tuple[float, float] = (0.0, 1.0)
    prob: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {self.prob}")
        if not 0.0 <= self.scale < 1.0:
            raise ValueError(f"scale must be in [0, 1), got {self.scale}")
        if min(self.gamma) <= 0 or min(self.blur_sigma) < 0 or self.noise_std < 0 or self.rotate_deg < 0 or self.translate < 0:
            raise ValueError(f"augmentation ranges must be non-negative (gamma positive): {self}")


# --------------------------------------------------------------------------- geometry helpers
def _translation(dx: float, dy: float) -> torch.Tensor:
    m = torch.eye(3, dtype=torch.float64)
    m[0, 2], m[1, 2] = dx, dy
    return m


def _compose_to_original(data: Mapping[Hashable, Any], key: str, step: torch.Tensor) -> torch.Tensor:
    """``to_original`` after a transform whose output->input matrix is ``step``."""
    current = data.get(key)
    current = torch.eye(3, dtype=torch.float64) if current is None else torch.as_tensor(current, dtype=torch.float64)
    return current @ step


def roi_crop_box(
    roi: Sequence[float] | None, margin: float, rows: int, cols: int
) -> tuple[int, int, int, int]:
    """Integer crop box (x0, y0, x1, y1), max exclusive, of ROI + margin; the whole image for None.

    The margin is ``margin * max(ROI width, ROI height)`` on every side; the box is rounded
    outwards to whole pixels and may extend beyond the image.
    """
    if roi is None:
        return 0, 0, int(cols), int(rows)
    x0, y0, x1, y1 = (float(v) for v in roi)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"ROI {tuple(roi)} has non-finite values")
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"ROI {tuple(roi)} is empty or inverted (need x_min < x_max and y_min < y_max)")
    pad = float(margin) * max(x1 - x0, y1 - y0)
    bx0, by0 = math.floor(x0 - pad), math.floor(y0 - pad)
    bx1, by1 = math.ceil(x1 + pad), math.ceil(y1 + pad)
    return bx0, by0, max(bx1, bx0 + 1), max(by1, by0 + 1)


def crop_with_fill(image: torch.Tensor, box: tuple[int, int, int, int], fill: float) -> torch.Tensor:
    """(C, y1-y0, x1-x0) copy of ``image`` (C, H, W) inside ``box``; outside the image = ``fill``."""
    x0, y0, x1, y1 = box
    _, rows, cols = image.shape
    if (x0, y0, x1, y1) == (0, 0, cols, rows):
        return image.clone()
    out = torch.full((image.shape[0], y1 - y0, x1 - x0), float(fill), dtype=image.dtype)
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, cols), min(y1, rows)
    if ix1 > ix0 and iy1 > iy0:
        out[:, iy0 - y0: iy1 - y0, ix0 - x0: ix1 - x0] = image[:, iy0:iy1, ix0:ix1]
    return out


def resize_pad(image: torch.Tensor, size: int, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize (C, h, w) keeping aspect so the larger side is ``size``; pad symmetric to size x size.

    Bilinear with antialiasing (a whole radiograph may shrink 20x). Returns the (C, S, S) image
    and the float64 (3, 3) matrix from output to input continuous coordinates. The exact scale
    per axis is (input / output) pixels after rounding the resized side to whole pixels.
    """
    _, h, w = image.shape
    scale = size / max(h, w)
    out_h, out_w = max(1, round(h * scale)), max(1, round(w * scale))
    x = image.float()
    if (out_h, out_w) != (h, w):
        x = F.interpolate(x[None], size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=True)[0]
    pad_y, pad_x = (size - out_h) // 2, (size - out_w) // 2
    out = torch.full((image.shape[0], size, size), float(fill), dtype=torch.float32)
    out[:, pad_y: pad_y + out_h, pad_x: pad_x + out_w] = x
    sx, sy = w / out_w, h / out_h
    step = torch.tensor([[sx, 0.0, -pad_x * sx], [0.0, sy, -pad_y * sy], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return out, step


def affine_resample(image: torch.Tensor, out_to_in: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Resample (C, H, W) so output continuous (x, y) takes the input's value at ``out_to_in @ (x, y, 1)``.

    Bilinear; samples outside the input are ``fill``. Output has the input's size.
    """
    c, h, w = image.shape
    # continuous pixel coords -> grid_sample's normalised coords (align_corners=False)
    norm = torch.tensor([[2.0 / w, 0.0, -1.0], [0.0, 2.0 / h, -1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    theta = (norm @ out_to_in.to(torch.float64) @ torch.linalg.inv(norm))[:2].to(torch.float32)
    grid = F.affine_grid(theta[None], [1, c, h, w], align_corners=False)
    x = image.float()[None] - fill  # zero padding of (x - fill) == padding x with fill
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    return out + fill


def map_points_to_original(points: Any, to_original: Any) -> Any:
    """Map (..., N, 2) tensor-coordinate points (x, y) to original-image coordinates.

    ``to_original``: (3, 3) or batched (..., 3, 3). Returns the same type as ``points``
    (numpy in, numpy out), float64.
    """
    is_numpy = isinstance(points, np.ndarray)
    pts = torch.as_tensor(np.asarray(points) if is_numpy else points, dtype=torch.float64)
    mat = torch.as_tensor(to_original, dtype=torch.float64)
    homog = torch.cat([pts, torch.ones_like(pts[..., :1])], dim=-1)
    mapped = (homog @ mat.transpose(-1, -2))[..., :2]
    return mapped.numpy() if is_numpy else mapped


def map_boxes_to_original(boxes: Any, to_original: Any) -> Any:
    """Map (..., N, 4) boxes (x_min, y_min, x_max, y_max) in tensor coordinates to the original image.

    The four corners are mapped and their bounding box returned (exact for the crop/resize/pad
    geometry, which has no rotation; the enclosing box after a rotated augmentation).
    Same type as ``boxes``, float64.
    """
    is_numpy = isinstance(boxes, np.ndarray)
    b = torch.as_tensor(np.asarray(boxes) if is_numpy else boxes, dtype=torch.float64)
    corners = torch.stack(
        [b[..., [0, 1]], b[..., [2, 1]], b[..., [0, 3]], b[..., [2, 3]]], dim=-2
    )  # (..., N, 4 corners, 2)
    shape = corners.shape
    mapped = map_points_to_original(corners.reshape(*shape[:-3], -1, 2), to_original).reshape(shape)
    out = torch.cat([mapped.amin(dim=-2), mapped.amax(dim=-2)], dim=-1)
    return out.numpy() if is_numpy else out


def clip_boxes(boxes: Any, rows: int, cols: int) -> Any:
    """Clip (..., 4) boxes (x_min, y_min, x_max, y_max) to an image of ``rows`` x ``cols`` pixels."""
    is_numpy = isinstance(boxes, np.ndarray)
    b = torch.as_tensor(np.asarray(boxes) if is_numpy else boxes, dtype=torch.float64).clone()
    b[..., [0, 2]] = b[..., [0, 2]].clamp(0.0, float(cols))
    b[..., [1, 3]] = b[..., [1, 3]].clamp(0.0, float(rows))
    return b.numpy() if is_numpy else b


# --------------------------------------------------------------------------- loading
def minimal_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The radiograph meta fields a sample carries (UIDs, modality, geometry; no patient name or id).

    Values are str (None -> "") or int (rows, cols), so samples collate and cache cleanly.
    """
    out: dict[str, Any] = {}
    for name in META_FIELDS:
        value = meta.get(name)
        if name in ("rows", "cols"):
            out[name] = int(value) if value is not None else -1
        else:
            out[name] = "" if value is None else str(value)
    return out


class LoadRadiographd(MapTransform):
    """Read ``data[key]`` (a path) with ``spine_dfl.io.read_image``.

    Writes ``data[key]`` = float32 tensor (1, H, W) (bone bright, as the reader gives it),
    ``data[spacing_key]`` = float64 tensor (2,) (row, col) mm, NaN when unknown, and
    ``data[meta_key]`` = :func:`minimal_meta`. Deterministic: cached by CacheDataset.

    ``lru_size`` decoded images are kept (per process) because a manifest usually lists many
    vertebrae of one image in consecutive rows: the image is decoded once, not once per row.
    """

    def __init__(self, keys: KeysCollection = "image", meta_key: str = "meta", spacing_key: str = "spacing_mm",
                 lru_size: int = 2) -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError("LoadRadiographd reads one key (its meta and spacing go to meta_key/spacing_key)")
        self.meta_key, self.spacing_key = meta_key, spacing_key
        self.lru_size = int(lru_size)
        self._lru: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_lru"], state["_lock"] = OrderedDict(), None  # workers start with an empty cache
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _read(self, path: str) -> Any:
        from spine_dfl import io as sio  # looked up at call time: one reader for the whole package

        if self.lru_size > 0:
            with self._lock:
                if path in self._lru:
                    self._lru.move_to_end(path)
                    return self._lru[path]
        radiograph = sio.read_image(path)
        if self.lru_size > 0:
            with self._lock:
                self._lru[path] = radiograph
                while len(self._lru) > self.lru_size:
                    self._lru.popitem(last=False)
        return radiograph

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        (key,) = self.keys
        radiograph = self._read(str(d[key]))
        # as_tensor shares memory with the cached radiograph; every later step makes new tensors
        d[key] = torch.as_tensor(radiograph.pixels, dtype=torch.float32)[None]
        spacing = radiograph.spacing_mm
        d[self.spacing_key] = torch.tensor(spacing if spacing is not None else (math.nan, math.nan), dtype=torch.float64)
        d[self.meta_key] = minimal_meta({**radiograph.meta, "path": radiograph.meta.get("path") or str(data[key])})
        return d


# --------------------------------------------------------------------------- crop / resize / pad
class RoiCrop(Transform):
    """Array transform: (C, H, W) + ROI -> ROI + margin crop (C, h, w) and its output->input matrix.

    Out-of-image parts of the box are filled with the image minimum. ``roi=None`` (or
    ``use_roi=False``) keeps the whole image.
    """

    def __init__(self, margin: float = 0.15, use_roi: bool = True) -> None:
        self.margin, self.use_roi = float(margin), bool(use_roi)

    def __call__(self, image: torch.Tensor, roi: Sequence[float] | None) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.as_tensor(image)
        if image.ndim != 3:
            raise ValueError(f"expected a (C, H, W) image, got shape {tuple(image.shape)}")
        _, rows, cols = image.shape
        box = roi_crop_box(roi if self.use_roi else None, self.margin, rows, cols)
        crop = crop_with_fill(image, box, fill=float(image.min()))
        return crop, _translation(box[0], box[1])


class ResizePad(Transform):
    """Array transform: (C, h, w) -> (C, S, S), aspect kept, symmetric padding with ``fill``."""

    def __init__(self, size: int, fill: float = 0.0) -> None:
        self.size, self.fill = int(size), float(fill)

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return resize_pad(torch.as_tensor(image), self.size, self.fill)


class CropResizePad(Transform):
    """Array transform: crop ROI + margin (out-of-image = image minimum), resize, pad with the image minimum."""

    def __init__(self, size: int, margin: float = 0.15, use_roi: bool = True) -> None:
        self.crop, self.size = RoiCrop(margin, use_roi), int(size)

    def __call__(self, image: torch.Tensor, roi: Sequence[float] | None) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.as_tensor(image)
        crop, step_crop = self.crop(image, roi)
        out, step_resize = resize_pad(crop, self.size, float(image.min()))
        return out, step_crop @ step_resize


class RoiCropd(MapTransform):
    """Dict twin of :class:`RoiCrop`: crops ``data[key]`` around ``data[roi_key]``; updates ``data[affine_key]``."""

    def __init__(self, keys: KeysCollection = "image", roi_key: str = "roi", margin: float = 0.15,
                 use_roi: bool = True, affine_key: str = "to_original") -> None:
        super().__init__(keys)
        self.roi_key, self.affine_key = roi_key, affine_key
        self.crop = RoiCrop(margin, use_roi)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        roi = d.get(self.roi_key)
        step = None
        for key in self.key_iterator(d):
            d[key], step = self.crop(d[key], roi)
        if step is not None:
            d[self.affine_key] = _compose_to_original(d, self.affine_key, step)
        return d


class ResizePadd(MapTransform):
    """Dict twin of :class:`ResizePad`; updates ``data[affine_key]``."""

    def __init__(self, keys: KeysCollection = "image", size: int = 160, fill: float = 0.0,
                 affine_key: str = "to_original") -> None:
        super().__init__(keys)
        self.affine_key = affine_key
        self.resize = ResizePad(size, fill)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        step = None
        for key in self.key_iterator(d):
            d[key], step = self.resize(d[key])
        if step is not None:
            d[self.affine_key] = _compose_to_original(d, self.affine_key, step)
        return d


class CropResizePadd(MapTransform):
    """Dict twin of :class:`CropResizePad` (crop + resize + pad in one, padding = image minimum).

    The training/eval pipelines use :class:`RoiCropd` -> percentile normalisation ->
    :class:`ResizePadd` instead, so that the percentiles do not see the symmetric padding.
    """

    def __init__(self, keys: KeysCollection = "image", roi_key: str = "roi", size: int = 160,
                 margin: float = 0.15, use_roi: bool = True, affine_key: str = "to_original") -> None:
        super().__init__(keys)
        self.roi_key, self.affine_key = roi_key, affine_key
        self.op = CropResizePad(size, margin, use_roi)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        step = None
        for key in self.key_iterator(d):
            d[key], step = self.op(d[key], d.get(self.roi_key))
        if step is not None:
            d[self.affine_key] = _compose_to_original(d, self.affine_key, step)
        return d


# --------------------------------------------------------------------------- random affine
def affine_matrix(size_xy: tuple[int, int], angle_deg: float, zoom: float, shift_xy: tuple[float, float]) -> torch.Tensor:
    """Output->input (3, 3) matrix of a rotation by ``angle_deg`` and zoom about the image centre, then a shift.

    Forward (input -> output): ``out = c + shift + zoom * R(angle) (in - c)`` with c the centre;
    the returned matrix is its inverse, the form resampling and ``to_original`` need.
    """
    w, h = size_xy
    cx, cy = w / 2.0, h / 2.0
    a = math.radians(angle_deg)
    cos, sin = math.cos(a), math.sin(a)
    forward = _translation(cx + shift_xy[0], cy + shift_xy[1]) @ torch.tensor(
        [[zoom * cos, -zoom * sin, 0.0], [zoom * sin, zoom * cos, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64
    ) @ _translation(-cx, -cy)
    return torch.linalg.inv(forward)


class AffineResampled(MapTransform):
    """Deterministic affine of ``data[keys]`` about the image centre; composes ``data[affine_key]``.

    angle_deg, zoom (> 1 enlarges the content), shift_xy (output pixels). Outside = ``fill``.
    """

    def __init__(self, keys: KeysCollection = "image", angle_deg: float = 0.0, zoom: float = 1.0,
                 shift_xy: tuple[float, float] = (0.0, 0.0), fill: float = 0.0, affine_key: str = "to_original") -> None:
        super().__init__(keys)
        self.angle_deg, self.zoom, self.shift_xy = float(angle_deg), float(zoom), tuple(shift_xy)
        self.fill, self.affine_key = float(fill), affine_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        step = None
        for key in self.key_iterator(d):
            image = torch.as_tensor(d[key])
            step = affine_matrix((image.shape[-1], image.shape[-2]), self.angle_deg, self.zoom, self.shift_xy)
            d[key] = affine_resample(image, step, self.fill)
        if step is not None:
            d[self.affine_key] = _compose_to_original(d, self.affine_key, step)
        return d


class RandRadiographAffined(Randomizable, MapTransform):
    """Random small rotation / isotropic scale / translation that keeps ``to_original`` exact.

    MONAI's RandAffined would move the pixels without telling ``to_original``; this samples the
    parameters (TorchIO style) and calls :class:`AffineResampled`. With probability ``1 - prob``
    the sample passes unchanged.
    """

    def __init__(self, keys: KeysCollection = "image", prob: float = 0.5, rotate_deg: float = 5.0,
                 scale: float = 0.08, translate: float = 0.04, fill: float = 0.0,
                 affine_key: str = "to_original") -> None:
        MapTransform.__init__(self, keys)
        self.prob, self.rotate_deg, self.scale, self.translate = float(prob), float(rotate_deg), float(scale), float(translate)
        self.fill, self.affine_key = float(fill), affine_key
        self._do = False
        self._params: tuple[float, float, tuple[float, float]] = (0.0, 1.0, (0.0, 0.0))

    def randomize(self, data: Any = None) -> None:
        self._do = bool(self.R.random_sample() < self.prob)
        angle = float(self.R.uniform(-self.rotate_deg, self.rotate_deg))
        zoom = float(self.R.uniform(1.0 - self.scale, 1.0 + self.scale))
        shift = (float(self.R.uniform(-self.translate, self.translate)), float(self.R.uniform(-self.translate, self.translate)))
        self._params = (angle, zoom, shift)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize()
        if not self._do:
            return dict(data)
        angle, zoom, shift = self._params
        first = next(iter(self.key_iterator(dict(data))), None)
        size = torch.as_tensor(data[first]).shape[-1] if first is not None else 0
        return AffineResampled(self.keys, angle, zoom, (shift[0] * size, shift[1] * size), self.fill,
                               self.affine_key)(data)


# --------------------------------------------------------------------------- pipelines
def deterministic_transforms(pre: Preprocessing, keys: str = "image", lru_size: int = 2) -> list[Transform]:
    """The cacheable part: load, ROI crop, percentile normalisation, resize + pad, plain tensor."""
    low, high = pre.intensity_percentiles
    return [
        LoadRadiographd(keys, lru_size=lru_size),
        RoiCropd(keys, margin=pre.roi_margin, use_roi=pre.use_roi),
        ScaleIntensityRangePercentilesd(keys, lower=float(low), upper=float(high), b_min=0.0, b_max=1.0,
                                        clip=True, dtype=np.float32),
        ResizePadd(keys, size=pre.input_size, fill=0.0),
        EnsureTyped(keys, data_type="tensor", dtype=torch.float32, track_meta=False),
    ]


def augment_transforms(aug: AugmentConfig, keys: str = "image") -> list[Transform]:
    """The random part (applied after :func:`deterministic_transforms`; intensities in [0, 1])."""
    sigma = (float(aug.blur_sigma[0]), float(aug.blur_sigma[1]))
    return [
        RandRadiographAffined(keys, prob=aug.prob, rotate_deg=aug.rotate_deg, scale=aug.scale,
                              translate=aug.translate, fill=0.0),
        RandAdjustContrastd(keys, prob=aug.prob, gamma=(float(aug.gamma[0]), float(aug.gamma[1]))),
        RandGaussianSmoothd(keys, sigma_x=sigma, sigma_y=sigma, prob=aug.prob),
        RandGaussianNoised(keys, prob=aug.prob, mean=0.0, std=float(aug.noise_std)),
        EnsureTyped(keys, data_type="tensor", dtype=torch.float32, track_meta=False),
    ]


def eval_transforms(pre: Preprocessing) -> Compose:
    """Deterministic pipeline: {"image": path, "roi": ROI | None, ...} -> sample dict (see module doc)."""
    return Compose(deterministic_transforms(pre))


def train_transforms(pre: Preprocessing, aug: AugmentConfig, seed: int = 0) -> Compose:
    """Eval pipeline followed by the random augmentation, seeded with ``Compose.set_random_state(seed)``.

    MONAI's CacheDataset caches up to the first Randomizable, i.e. exactly the eval part.
    """
    compose = Compose([*deterministic_transforms(pre), *augment_transforms(aug)])
    compose.set_random_state(seed=int(seed))
    return compose
