"""Turn a stored film to canonical (head up, anterior left) before the crop: ``Orient`` / ``Orientd``.

The grader and the locator are trained on canonical films; a film stored mirrored or turned is
turned here, and ``to_original`` starts as the canonical -> stored matrix, so every box, point and
heatmap computed downstream lands on the file's own pixels (``io.orientation``).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from spine_dfl.data.transforms.geometry import compose_to_original
from spine_dfl.io.orientation import Orientation, parse_orientation


class Orient(Transform):
    """(C, H, W) stored image -> canonical image under ``orientation``, with the canonical -> stored matrix."""

    def __init__(self, orientation: Orientation) -> None:
        self.orientation = orientation

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        o = self.orientation
        out = torch.flip(image, dims=(-1,)) if o.flip else image
        if o.k:
            out = torch.rot90(out, o.k, dims=(-2, -1))
        step = torch.as_tensor(o.to_stored(tuple(image.shape[-2:])), dtype=torch.float64)
        return out, step


class Orientd(MapTransform):
    """Dict twin of :class:`Orient`: ``data[orientation_key]`` (an ``Orientation`` or its name; absent or
    "as stored": nothing happens) turns ``data[key]``, swaps ``data[spacing_key]`` on a quarter turn
    and composes ``data[affine_key]``. Runs right after ``LoadRadiographd``."""

    def __init__(self, keys: KeysCollection = "image", orientation_key: str = "orientation",
                 spacing_key: str = "spacing_mm", affine_key: str = "to_original") -> None:
        super().__init__(keys)
        self.orientation_key, self.spacing_key, self.affine_key = orientation_key, spacing_key, affine_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        value = d.get(self.orientation_key)
        if value is None or value == "":
            return d
        orientation = value if isinstance(value, Orientation) else parse_orientation(str(value))
        if orientation.is_identity:
            return d
        step = None
        for key in self.key_iterator(d):
            d[key], step = Orient(orientation)(d[key])
        if step is not None:
            d[self.affine_key] = compose_to_original(d, self.affine_key, step)
        spacing = d.get(self.spacing_key)
        if spacing is not None and orientation.k % 2:
            values = [float(v) for v in torch.as_tensor(spacing).tolist()]
            if not any(math.isnan(v) for v in values):
                d[self.spacing_key] = torch.tensor(values[::-1], dtype=torch.float64)
        return d
