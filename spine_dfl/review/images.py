"""The original radiograph as the page shows it: the file's pixels (``io.read_image``: modality LUT, the
file's window, bone bright) stretched to 8 bits between the 0.5th and 99.5th percentiles and encoded as a
grayscale PNG in the file's own pixel grid (no crop, no turn: the table's boxes and points are in it).
The page applies window/level on top, on a canvas. A few PNGs are kept in memory for going back and forth."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

import numpy as np

from spine_dfl.io import read_image


def to_png(path: str) -> bytes:
    """The 8-bit grayscale PNG of the image file ``path`` (ImageReadError when it cannot be read)."""
    from PIL import Image

    pixels = read_image(path).pixels.astype(np.float32, copy=False)
    low, high = np.percentile(pixels[:: max(1, pixels.shape[0] // 512), :: max(1, pixels.shape[1] // 512)],
                              (0.5, 99.5))
    scale = 255.0 / max(float(high - low), 1e-6)
    grey = np.clip((pixels - low) * scale, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey, mode="L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class PngCache:
    """``to_png`` of the last ``size`` images asked for (thread-safe: one encoding per image at a time,
    while other images are served)."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._pending: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def _cached(self, path: str) -> bytes | None:
        with self._lock:
            if path in self._items:
                self._items.move_to_end(path)
                return self._items[path]
            return None

    def get(self, path: str) -> bytes:
        data = self._cached(path)
        if data is not None:
            return data
        with self._lock:
            encoding = self._pending.setdefault(path, threading.Lock())
        with encoding:
            data = self._cached(path)
            if data is not None:
                return data
            try:
                data = to_png(path)
            finally:
                with self._lock:
                    self._pending.pop(path, None)
            with self._lock:
                self._items[path] = data
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
            return data
