"""Sending results: C-STORE of the result files to ``AET@HOST:PORT``, and the retry policy."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pynetdicom import AE
from spine_dfl.io.errors import InputError, UnavailableError

_DESTINATION = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>[^:@]+):(?P<port>[0-9]{1,5})$")


class SendError(UnavailableError, RuntimeError):
    """A result could not be delivered; the message is the reason kept in the queue."""


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``AET@HOST:PORT``, e.g. ``ORTHANC@pacs.example.org:4242``."""
        match = _DESTINATION.match(text.strip())
        if match is None or not 0 < int(match["port"]) < 65536:
            raise InputError(f"destination {text!r} is not AET@HOST:PORT (AE title up to 16 characters)")
        return cls(match["aet"], match["host"], int(match["port"]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off: attempt n (1-based) waits ``min(max_delay, base_delay * 2**(n-1))``.

    After ``max_attempts`` failed attempts the study is parked as failed with the reason kept.
    """

    max_attempts: int = 8
    base_delay: float = 5.0
    max_delay: float = 600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.base_delay < 0 or self.max_delay < self.base_delay:
            raise InputError("retry policy: need max_attempts >= 1 and 0 <= base_delay <= max_delay")

    def delay_after(self, failed_attempts: int) -> float | None:
        """Seconds to wait after ``failed_attempts`` failures, or None when it is time to give up."""
        if failed_attempts >= self.max_attempts:
            return None
        return min(self.max_delay, self.base_delay * 2 ** max(failed_attempts - 1, 0))


def send_files(
    paths: Sequence[str | Path],
    destination: Destination,
    calling_ae_title: str,
    *,
    on_sent: Callable[[str], None] | None = None,
    timeout: float = 30.0,
) -> None:
    """C-STORE every file in one association; ``on_sent(path)`` after each success.

    Raises SendError naming what failed: association refused or timed out, or a non-success
    status from the receiver.
    """
    if not paths:
        return
    datasets = [(str(path), pydicom.dcmread(path)) for path in paths]
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class, syntax in sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for _, ds in datasets}):
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "could not be established"
        raise SendError(f"association with {destination} {why}")
    try:
        for path, dataset in datasets:
            status = assoc.send_c_store(dataset)
            code = getattr(status, "Status", None)
            if code is None:
                raise SendError(f"no C-STORE response from {destination} (connection lost or timed out)")
            if code not in (0x0000, 0xB000, 0xB006, 0xB007):
                raise SendError(f"{destination} answered C-STORE status 0x{code:04X}")
            if on_sent is not None:
                on_sent(path)
    finally:
        if assoc.is_established:
            assoc.release()
