"""ROI crop and resize + pad: array transforms and their dict twins (which keep ``to_original`` exact).

Training with another site's ROI convention cut from the radiograph (``AcquisitionAugment.
reframe_from_radiograph``) caches a larger window of the radiograph around each ROI
(:func:`window_margin`) instead of the finished crop; :class:`RoiRecrop` then cuts, normalises and
resizes the crop of any ROI inside that window exactly as the deterministic pipeline would
(:class:`RoiRecropd` for the site's own ROI, :class:`RandRoiRecropd` for another site's).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, ScaleIntensityRangePercentiles, Transform
from monai.utils import convert_to_tensor

from spine_dfl.data.transforms.acquisition_options import AcquisitionAugment
from spine_dfl.data.transforms.geometry import compose_to_original, crop_with_fill, resize_pad, roi_crop_box, translation
from spine_dfl.data.transforms.settings import Preprocessing

_PRE = Preprocessing()  # the defaults, from one place


class RoiCrop(Transform):
    """Array transform: (C, H, W) + ROI -> ROI + margin crop (C, h, w) and its output->input matrix.

    Out-of-image parts of the box are filled with the image minimum. ``roi=None`` (or
    ``use_roi=False``) keeps the whole image.
    """

    def __init__(self, margin: float = _PRE.roi_margin, use_roi: bool = True) -> None:
        self.margin, self.use_roi = float(margin), bool(use_roi)

    def __call__(self, image: torch.Tensor, roi: Sequence[float] | None) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.as_tensor(image)
        if image.ndim != 3:
            raise ValueError(f"expected a (C, H, W) image, got shape {tuple(image.shape)}")
        _, rows, cols = image.shape
        box = roi_crop_box(roi if self.use_roi else None, self.margin, rows, cols)
        crop = crop_with_fill(image, box, fill=float(image.min()))
        return crop, translation(box[0], box[1])


class ResizePad(Transform):
    """Array transform: (C, h, w) -> (C, S, S), aspect kept, symmetric padding with ``fill``."""

    def __init__(self, size: int, fill: float = 0.0) -> None:
        self.size, self.fill = int(size), float(fill)

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return resize_pad(torch.as_tensor(image), self.size, self.fill)


class RoiCropd(MapTransform):
    """Dict twin of :class:`RoiCrop`: crops ``data[key]`` around ``data[roi_key]``; updates ``data[affine_key]``."""

    def __init__(self, keys: KeysCollection = "image", roi_key: str = "roi", margin: float = _PRE.roi_margin,
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
            d[self.affine_key] = compose_to_original(d, self.affine_key, step)
        return d


class ResizePadd(MapTransform):
    """Dict twin of :class:`ResizePad`; updates ``data[affine_key]``."""

    def __init__(self, keys: KeysCollection = "image", size: int = _PRE.input_size, fill: float = 0.0,
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
            d[self.affine_key] = compose_to_original(d, self.affine_key, step)
        return d


def window_margin(crop_margin: float, options: AcquisitionAugment) -> float:
    """Margin (fraction of the ROI's larger side ``L``) of the cached window that holds the crop of
    every ROI :class:`RandRoiRecropd` can draw: grown by up to ``m = roi_margin[1]`` L per side,
    moved by up to ``roi_shift`` L, then cut with ``crop_margin`` of its own larger side
    ``(1 + 2 m) L``; plus 0.02 L for the rounding to whole pixels."""
    grow = max(float(options.roi_margin[1]), 0.0)
    return float(crop_margin) * (1.0 + 2.0 * grow) + grow + float(options.roi_shift) + 0.02


def draw_roi_reframe(random_state: np.random.RandomState,
                     options: AcquisitionAugment) -> tuple[bool, float, float, float, bool]:
    """One draw of the ROI-level part, the same values in this order whatever fires: (fires with
    ``options.prob``, margin per side uniform in ``options.roi_margin``, centre shift x and y
    uniform in +-``options.roi_shift``, fractions of the ROI's larger side; whether the ROI
    follows the reframed crop).  The last is ``options.roi_follows_reframe``, drawn with
    ``options.roi_follows_prob`` only when that is below 1, so a setting without the fraction
    keeps its random stream."""
    fires = bool(random_state.random_sample() < options.prob)
    margin = float(random_state.uniform(options.roi_margin[0], options.roi_margin[1]))
    shift_x, shift_y = (float(v) for v in random_state.uniform(-options.roi_shift, options.roi_shift, size=2))
    follows = options.roi_follows_reframe
    if follows and options.roi_follows_prob < 1.0:
        follows = bool(random_state.random_sample() < options.roi_follows_prob)
    return fires, margin, shift_x, shift_y, follows


class RoiReframeDraw(Randomizable):
    """The ROI-level part's draw (:func:`draw_roi_reframe`) for the transforms that reframe a crop;
    ``_params`` holds the last one."""

    options: AcquisitionAugment
    _params: tuple[bool, float, float, float, bool] = (False, 0.0, 0.0, 0.0, False)

    def randomize(self, data: Any = None) -> None:
        self._params = draw_roi_reframe(self.R, self.options)


def grown_roi(roi: Sequence[float], margin: float, shift: tuple[float, float]) -> tuple[float, float, float, float]:
    """``roi`` (x_min, y_min, x_max, y_max) grown by ``margin`` x its larger side on every side
    (a negative margin shrinks it, never past half of either side) and its centre moved by
    ``shift`` (x, y) x its larger side; same units as ``roi``."""
    x0, y0, x1, y1 = (float(v) for v in roi)
    side = max(x1 - x0, y1 - y0)
    grow_x, grow_y = max(margin * side, -(x1 - x0) / 4.0), max(margin * side, -(y1 - y0) / 4.0)
    dx, dy = shift[0] * side, shift[1] * side
    return x0 - grow_x + dx, y0 - grow_y + dy, x1 + grow_x + dx, y1 + grow_y + dy


class RoiRecrop(Transform):
    """Array transform: a cached window (C, h, w) of the radiograph whose top-left pixel is at
    ``origin`` (integer original pixels) + a ROI (original pixels) -> the (C, S, S) input the
    deterministic pipeline gives for that ROI (ROI + margin crop, percentile window, resize + pad;
    bit for bit when the crop lies inside the window) and its output->window matrix.

    ``roi=None`` uses the whole window (a whole-image sample).
    """

    def __init__(self, pre: Preprocessing) -> None:
        self.margin, self.size = float(pre.roi_margin), int(pre.input_size)
        self.window = ScaleIntensityRangePercentiles(**percentile_window_args(pre))

    def __call__(self, window: torch.Tensor, origin: tuple[int, int],
                 roi: Sequence[float] | None) -> tuple[torch.Tensor, torch.Tensor]:
        window = torch.as_tensor(window)
        _, rows, cols = window.shape
        if roi is None:
            box = (0, 0, cols, rows)
        else:
            x0, y0, x1, y1 = roi_crop_box(roi, self.margin, rows, cols)
            box = (x0 - origin[0], y0 - origin[1], x1 - origin[0], y1 - origin[1])
        if box[0] >= 0 and box[1] >= 0 and box[2] <= cols and box[3] <= rows:  # always, by window_margin
            crop = window[:, box[1]:box[3], box[0]:box[2]]
        else:
            crop = crop_with_fill(window, box, fill=float(window.min()))
        windowed = convert_to_tensor(self.window(crop), track_meta=False)
        out, step = resize_pad(windowed, self.size, 0.0)
        return out, translation(box[0], box[1]) @ step


def percentile_window_args(pre: Preprocessing) -> dict[str, Any]:
    """MONAI ``ScaleIntensityRangePercentiles`` arguments of the crop's window (percentiles to [0, 1],
    clipped): the one source for evaluation crops and the crops training cuts afresh."""
    low, high = pre.intensity_percentiles
    return {"lower": float(low), "upper": float(high), "b_min": 0.0, "b_max": 1.0, "clip": True, "dtype": np.float32}


def _window_origin(data: Mapping[Hashable, Any], affine_key: str) -> tuple[int, int]:
    """The window's top-left pixel in the original: its ``to_original`` must be a whole-pixel translation."""
    matrix = torch.as_tensor(data[affine_key], dtype=torch.float64)
    ox, oy = float(matrix[0, 2]), float(matrix[1, 2])
    if not (torch.equal(matrix[:2, :2], torch.eye(2, dtype=torch.float64)) and ox.is_integer() and oy.is_integer()):
        raise ValueError(f"a cached window's {affine_key} must be a whole-pixel translation, got {matrix.tolist()}")
    return int(ox), int(oy)


class RoiRecropd(MapTransform):
    """Dict twin of :class:`RoiRecrop` for ``data[roi_key]``, the record's own ROI: turns a cached
    window into the sample the deterministic pipeline gives (training samples without the random
    reframing, e.g. for the filter bank's initialisation)."""

    def __init__(self, keys: KeysCollection = "image", pre: Preprocessing = _PRE, roi_key: str = "roi",
                 affine_key: str = "to_original") -> None:
        super().__init__(keys)
        self.roi_key, self.affine_key = roi_key, affine_key
        self.recrop = RoiRecrop(pre)

    def crop_to(self, data: Mapping[Hashable, Any], roi: Sequence[float] | None) -> dict[Hashable, Any]:
        """``data`` with its window(s) cropped for ``roi`` and ``to_original`` updated."""
        d = dict(data)
        origin, step = _window_origin(d, self.affine_key), None
        for key in self.key_iterator(d):
            d[key], step = self.recrop(d[key], origin, roi)
        if step is not None:
            d[self.affine_key] = compose_to_original(d, self.affine_key, step)
        return d

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        return self.crop_to(data, data.get(self.roi_key))


class RandRoiRecropd(RoiReframeDraw, MapTransform):
    """Another site's ROI convention cut from the radiograph: with probability ``options.prob`` the
    ROI grows by a margin per side uniform in ``options.roi_margin`` and its centre moves by
    +-``options.roi_shift`` per axis (fractions of its larger side, the parameters and draws of
    :class:`~spine_dfl.data.transforms.acquisition.RandRoiReframed`), and the crop of that ROI is
    cut from the cached window (:func:`window_margin`), normalised and resized as the
    deterministic pipeline would.  Unlike zooming the finished crop, a looser ROI shows the
    anatomy around the vertebra (not fill), and the percentile window is the new crop's, as at a
    site whose localiser draws looser boxes.  Otherwise the record's own ROI is cut (the
    deterministic sample).  With ``options.roi_follows_reframe`` ``data[roi_key]`` becomes the new
    ROI (in a fraction ``options.roi_follows_prob`` of the reframed samples).  ``to_original`` stays exact.
    """

    def __init__(self, keys: KeysCollection = "image", options: AcquisitionAugment = AcquisitionAugment(),
                 pre: Preprocessing = _PRE, roi_key: str = "roi", affine_key: str = "to_original") -> None:
        MapTransform.__init__(self, keys)
        self.options, self.roi_key = options, roi_key
        self.recrop = RoiRecropd(keys, pre, roi_key, affine_key)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize()
        fires, margin, shift_x, shift_y, follows = self._params
        roi = data.get(self.roi_key)
        if not fires or roi is None:
            return self.recrop(data)
        new_roi = grown_roi(roi, margin, (shift_x, shift_y))
        out = self.recrop.crop_to(data, new_roi)
        if follows:
            out[self.roi_key] = new_roi
        return out
