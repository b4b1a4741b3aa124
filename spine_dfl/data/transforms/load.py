"""Loading: a path becomes a (1, H, W) float32 tensor with its pixel spacing and minimal meta."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from spine_dfl.io.radiograph import RadiographMeta

if TYPE_CHECKING:
    from spine_dfl.io.radiograph import Radiograph

# Radiograph meta fields handed on with a sample. Nothing that identifies a patient.
META_FIELDS: tuple[str, ...] = (
    "sop_instance_uid", "study_instance_uid", "series_instance_uid", "modality", "photometric",
    "source", "spacing_source", "transfer_syntax", "path", "rows", "cols",
)


def minimal_meta(meta: RadiographMeta, path: str | None = None) -> dict[str, Any]:
    """The radiograph meta fields a sample carries (UIDs, modality, geometry; no patient name or id).

    Values are str (None -> "") or int (rows, cols), so samples collate and cache cleanly.
    """
    out: dict[str, Any] = {}
    for name in META_FIELDS:
        value = path if name == "path" and path else getattr(meta, name)
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
        self._lru: OrderedDict[str, Radiograph] = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_lru"], state["_lock"] = OrderedDict(), None  # workers start with an empty cache
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _read(self, path: str) -> Radiograph:
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
        d[self.meta_key] = minimal_meta(radiograph.meta, path=radiograph.meta.path or str(data[key]))
        return d
