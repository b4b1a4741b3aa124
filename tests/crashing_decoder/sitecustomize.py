"""Test-only pydicom decoder plugin that kills its process: put this folder on PYTHONPATH.

Python imports ``sitecustomize`` at start-up in every process, so the plugin is registered in a
scoring run's decode workers too (spawned or forked from a forkserver), without any hook in
spine_dfl. It replaces pydicom's RLE Lossless plugins by one that calls ``os.abort()`` (SIGABRT,
as a crashing C or Rust decoder would) for images of ``ABORT_ROWS`` rows, and decodes every other
RLE image with pydicom's own decoder.
"""

from __future__ import annotations

import os

from pydicom.pixels.decoders import RLELosslessDecoder
from pydicom.pixels.decoders.rle import _decode_frame
from pydicom.uid import RLELossless

ABORT_ROWS = 77
DECODER_DEPENDENCIES = {RLELossless: ()}


def is_available(uid: str) -> bool:
    return uid == RLELossless


def decode_or_abort(src: bytes, runner) -> bytearray:  # noqa: ANN001 - pydicom's DecodeRunner
    if runner.rows == ABORT_ROWS:
        os.abort()
    return _decode_frame(src, runner)


for _label in list(RLELosslessDecoder.available_plugins):
    RLELosslessDecoder.remove_plugin(_label)
RLELosslessDecoder.add_plugin("abort-on-77-rows", ("sitecustomize", "decode_or_abort"))
