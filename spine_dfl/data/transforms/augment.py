"""Random geometric augmentation that keeps ``to_original`` exact (TorchIO style: ``randomize()`` samples
the parameters, a deterministic transform does the work)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from spine_dfl.data.transforms.geometry import affine_matrix, affine_resample, compose_to_original


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
            d[self.affine_key] = compose_to_original(d, self.affine_key, step)
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
