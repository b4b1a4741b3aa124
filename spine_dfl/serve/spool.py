"""Durable reception: the C-STORE handler's write to the spool, then the queue, then success.

For each received instance:

1. refuse what is not ours to keep: an SR or Secondary Capture is acknowledged and dropped (the
   node scores radiographs only, and its own results routed back by a PACS must not make a loop);
2. a SOP Instance UID already in the queue is acknowledged and not stored again;
3. the encoded dataset (with its file meta) is written to a temporary file in
   ``spool/<StudyInstanceUID>/``, flushed and fsynced, renamed to ``<SOPInstanceUID>.dcm``, and the
   directory fsynced;
4. the instance is recorded in the queue (one transaction);
5. only then is success (0x0000) answered. A full disk (ENOSPC, EDQUOT, or SQLite's "disk is
   full") answers 0xA700 (out of resources) so the sender keeps the instance and retries.

UIDs name files and folders, so they are checked against ``^[0-9]+(\\.[0-9]+)*$`` (at most 64
characters) first: a crafted UID cannot leave the spool.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.uid import UID

from spine_dfl.dicom_out.codes import MANUFACTURER, SC_SERIES_NUMBER, SR_SERIES_NUMBER
from spine_dfl.serve.queue import WorkQueue

if TYPE_CHECKING:
    from pydicom import Dataset

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
SLOW_STORE_S = 5.0  # a write + fsync + commit slower than this is logged: senders time out near 30 s

_UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

# The node's own results carry dicom_out's Manufacturer and series numbers. Any SR or SC is dropped
# anyway; these only decide what the log says.
OWN_SERIES_NUMBERS = (SR_SERIES_NUMBER, SC_SERIES_NUMBER)


def valid_uid(value: object) -> str:
    """The UID as a string, or ValueError when it could name anything but one spool entry."""
    text = str(value or "").strip().rstrip("\0")
    if len(text) > 64 or not _UID_PATTERN.match(text):
        raise ValueError("not a valid DICOM UID")
    return text


def is_result_object(sop_class_uid: str) -> bool:
    """SR documents and Secondary Capture images: the kinds of object the node writes, never scores."""
    uid = UID(sop_class_uid)
    name = uid.name if uid.is_valid else ""
    is_sr = "SR Storage" in name or sop_class_uid.startswith("1.2.840.10008.5.1.4.1.1.88.")
    return is_sr or "Secondary Capture" in name


def is_own_result(dataset: Dataset) -> bool:
    """Written by this software: our Manufacturer, or one of our result series numbers."""
    manufacturer = str(dataset.get("Manufacturer", "") or "")
    try:
        series_number = int(dataset.get("SeriesNumber", -1) or -1)
    except (TypeError, ValueError):
        series_number = -1
    return manufacturer == MANUFACTURER or series_number in OWN_SERIES_NUMBERS


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return error.errno in _DISK_FULL
    return isinstance(error, sqlite3.OperationalError) and "full" in str(error).lower()


class Spool:
    """The spool folder and its queue; ``store`` is what the C-STORE handler calls."""

    def __init__(self, root: str | Path, queue: WorkQueue) -> None:
        self.root = Path(root)
        self.instances_dir = self.root / "instances"
        self.instances_dir.mkdir(parents=True, exist_ok=True)
        self.queue = queue
        self._counter = 0
        self._counter_lock = threading.Lock()

    def instance_path(self, study_uid: str, sop_uid: str) -> Path:
        return self.instances_dir / valid_uid(study_uid) / f"{valid_uid(sop_uid)}.dcm"

    def store(self, sop_class_uid: str, sop_uid: str, dataset: Dataset, encoded: bytes) -> int:
        """Spool one instance; returns the C-STORE status (see the module docstring)."""
        try:
            sop_uid = valid_uid(sop_uid)
            study_uid = valid_uid(dataset.get("StudyInstanceUID", ""))
        except ValueError as error:
            self._reject(f"{error} (SOP or Study Instance UID)")
            return CANNOT_UNDERSTAND
        except Exception as error:  # noqa: BLE001 - a dataset pydicom cannot parse is refused, not raised
            self._reject(f"unreadable dataset: {type(error).__name__}")
            return CANNOT_UNDERSTAND
        if is_result_object(sop_class_uid):
            why = "own result routed back" if is_own_result(dataset) else "not a radiograph (SR/SC)"
            log.info("dropped an SR/SC instance: %s", why)
            return SUCCESS
        if self.queue.has_instance(sop_uid):
            log.info("duplicate instance acknowledged, not stored again")
            return SUCCESS
        started = time.monotonic()
        try:
            path = self._write(study_uid, sop_uid, encoded)
            self.queue.add_instance(sop_uid, study_uid, str(path))
            if time.monotonic() - started > SLOW_STORE_S:
                log.warning("spooling an instance took %.1f s (slow disk?)", time.monotonic() - started)
        except (OSError, sqlite3.OperationalError) as error:
            if _is_disk_full(error):
                log.warning("spool full: answered out of resources (0xA700)")
                return OUT_OF_RESOURCES
            log.error("could not spool an instance: %s", type(error).__name__)
            return OUT_OF_RESOURCES
        return SUCCESS

    def _write(self, study_uid: str, sop_uid: str, encoded: bytes) -> Path:
        final = self.instance_path(study_uid, sop_uid)
        study_dir = final.parent
        if not study_dir.is_dir():
            study_dir.mkdir(exist_ok=True)
            _fsync_dir(self.instances_dir)
        with self._counter_lock:
            self._counter += 1
            temporary = study_dir / f".{sop_uid}.{os.getpid()}.{self._counter}.tmp"
        try:
            with open(temporary, "wb") as handle:
                handle.write(encoded)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, final)
            _fsync_dir(study_dir)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return final

    def _reject(self, reason: str) -> None:
        log.warning("refused an instance: %s", reason)
        try:
            self.queue.record_rejection(reason)
        except sqlite3.Error:
            log.error("could not record a refusal")

    def remove_leftovers(self) -> int:
        """Temporary files of writes cut short by a kill (never renamed, so never acknowledged)."""
        removed = 0
        for leftover in self.instances_dir.glob("*/.*.tmp"):
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed
