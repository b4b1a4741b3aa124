"""``run_node``: the library entry point of ``spine-dfl serve`` (a ``Node`` with the real ``StudyScorer``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from spine_dfl.io.errors import CheckpointError, InputError
from spine_dfl.serve.node import Node
from spine_dfl.serve.sender import Destination, RetryPolicy

log = logging.getLogger(__name__)


def run_node(
    checkpoint: str | Path,
    *,
    spool: str | Path,
    send_to: str,
    ae_title: str = "SPINEDFL",
    port: int = 11112,
    host: str = "0.0.0.0",
    locator: str | Path | None = None,
    stable_age: float = 60.0,
    allowed_callers: Sequence[str] | None = None,
    workers: int = 1,
    retry: RetryPolicy = RetryPolicy(),
    lease_seconds: float = 300.0,
    device: str = "auto",
    batch_size: int = 16,
    decode_workers: int = 1,
    ignore_view_tags: bool = False,
) -> None:
    """Load the checkpoint once, listen as ``ae_title`` on ``port``, and score and send studies until
    SIGTERM or SIGINT (then stop cleanly and return). ``ignore_view_tags``: the input gate ignores the
    body part and view tags (``gate.header``).

    Bad settings are ValueErrors; a checkpoint that cannot serve (wrong kind, a per-vertebra model
    without a locator), a spool in use or a port taken are ``NodeError`` / ``CheckpointError`` (both
    ValueErrors with a one-line message).
    """
    from spine_dfl.serve.scoring import StudyScorer

    destination = Destination.parse(send_to)  # cheap checks first: the model takes seconds to load
    if not 0 < port < 65536:
        raise InputError(f"port {port} is not a TCP port (1-65535)")
    scorer = StudyScorer(checkpoint, locator=locator, device=device, batch_size=batch_size,
                         decode_workers=decode_workers, ignore_view_tags=ignore_view_tags)
    described = scorer.describe()
    log.info("model: %s; classes %s; locator %s; device %s", described["model_version"],
             ", ".join(described["classes"]), described["locator"] or "none (whole images)", described["device"])
    node = Node(spool, scorer, send_to=destination, ae_title=ae_title, port=port, host=host,
                allowed_callers=allowed_callers, stable_age=stable_age, workers=workers, retry=retry,
                lease_seconds=lease_seconds)
    node.serve_forever()
