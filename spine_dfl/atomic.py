"""Atomic output files: write to a temporary name in the same folder, then rename.

A crash, a kill or a full disk never leaves a half-written file under the final name:
readers see the old file or the new one. Imports nothing of ours, so every module may use it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def output_file_mode() -> int:
    """``0666`` minus the umask: what ``open()`` would give (``mkstemp`` files are private 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_output(path: str | Path, mode: str = "wb", encoding: str | None = None,
                  newline: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit fsync it and rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    ``mode`` is ``"wb"`` or ``"w"`` (text, then ``encoding`` defaults to UTF-8).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_output mode must be 'wb' or 'w', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        text_args = {"encoding": encoding or "utf-8", "newline": newline} if mode == "w" else {}
        with os.fdopen(fd, mode, **text_args) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, output_file_mode())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    with atomic_output(path, "w", newline="") as handle:
        handle.write(text)
