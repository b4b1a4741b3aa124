"""``review()``: the library entry point of ``spine-dfl review``.

Given a score output folder (its ``predictions.csv``) it serves those predictions for review; given a
folder of images it first scores them with ``score.score`` (the checkpoint, and a locator unless the
checkpoint embeds one) into ``OUT/scored/``, then serves that. Loopback hosts need no token; any other
host gets a fresh random token, put in the URL the caller prints. Runs until interrupted.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path

from spine_dfl.io.errors import UnavailableError
from spine_dfl.review.images import PngCache
from spine_dfl.review.server import ReviewApp, make_server
from spine_dfl.review.store import ReviewStore
from spine_dfl.review.studies import ReviewInputError, Study, attach_patches, load_studies

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.csv"
SCORED = "scored"


@dataclass
class ReviewSession:
    """A started review: the URL to open, the server (``serve_forever``/``shutdown``) and its app."""

    url: str
    server: ThreadingHTTPServer
    app: ReviewApp


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def patient_of(study: Study) -> str:
    """The study's patient id: the table's, else the DICOM header's PatientID (written to the manifest only)."""
    from spine_dfl.io import is_dicom, read_dicom_header

    if study.patient_id or not is_dicom(Path(study.image)):
        return study.patient_id
    return str(read_dicom_header(study.image, specific_tags=["PatientID"]).get("PatientID", "") or "")


def resolve_predictions(source: str | Path, out_dir: Path, checkpoint: str | Path | None,
                        locator: str | Path | None, device: str = "auto") -> Path:
    """The predictions table to review: ``source/predictions.csv``, or that of scoring ``source`` now."""
    source = Path(source)
    if source.is_file() and source.name.endswith(".csv"):
        return source
    if not source.is_dir():
        raise ReviewInputError(f"{source}: not found (give a score output folder or a folder of radiographs)")
    if (source / PREDICTIONS).is_file():
        if checkpoint is not None:
            log.warning("%s holds predictions: --checkpoint is not used", source)
        return source / PREDICTIONS
    if checkpoint is None:
        raise ReviewInputError(f"{source}: no {PREDICTIONS} here; to score this folder of radiographs first, "
                               "give --checkpoint (and --locator unless the checkpoint embeds one)")
    from spine_dfl.score import score

    summary = score(checkpoint, [source], out_dir / SCORED, locator=locator, device=device, workers=0,
                    keep_ids=True, progress=False)
    log.info("scored %d file(s), %d failed", summary.scored, summary.failed)
    return out_dir / SCORED / PREDICTIONS


def start_review(source: str | Path, out_dir: str | Path = "reviewed", *, checkpoint: str | Path | None = None,
                 locator: str | Path | None = None, host: str = "127.0.0.1", port: int = 8765,
                 reader: str = "reader", device: str = "auto", explain: str | Path | None = None) -> ReviewSession:
    """Load (or score) the predictions, open the review store in ``out_dir`` and bind the server.
    ``explain``: a ``spine-dfl explain`` output on the same films: its top patches become an overlay."""
    out_dir = Path(out_dir)
    predictions = resolve_predictions(source, out_dir, checkpoint, locator, device)
    studies, class_names = load_studies(predictions)
    if explain is not None:
        log.info("top patches for %d vertebrae", attach_patches(studies, explain))
    reader = reader.strip()
    if not reader or "," in reader or "\n" in reader:
        raise ReviewInputError(f"--reader {reader!r}: give a short name without commas")
    out_dir.mkdir(parents=True, exist_ok=True)
    store = ReviewStore(out_dir, studies, class_names, reader, patient_of)
    token = None if is_loopback(host) else secrets.token_urlsafe(18)
    app = ReviewApp(studies, class_names, store, reader, token, PngCache())
    try:
        server = make_server(app, host, port)
    except OSError as exc:
        raise UnavailableError(f"cannot serve on {host}:{port} ({exc.strerror or exc})") from None
    app.prepare(studies[0].image)  # the first film is decoded while the browser starts
    bound = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}/" + ("" if token is None else f"?token={token}")
    return ReviewSession(url, server, app)


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def review(source: str | Path, out_dir: str | Path = "reviewed", *, checkpoint: str | Path | None = None,
           locator: str | Path | None = None, host: str = "127.0.0.1", port: int = 8765, reader: str = "reader",
           device: str = "auto", explain: str | Path | None = None, on_ready: Callable[[str], None] | None = None) -> int:
    """Serve the review until interrupted (Ctrl-C); ``on_ready(url)`` once it listens. Returns the number of
    studies done. Bad input raises ReviewInputError (exit 2), a taken port UnavailableError."""
    session = start_review(source, out_dir, checkpoint=checkpoint, locator=locator, host=host, port=port,
                           reader=reader, device=device, explain=explain)
    if on_ready is not None:
        on_ready(session.url)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop) if main else None  # SIGTERM stops it as Ctrl-C does
    try:
        session.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        session.server.server_close()
        if main:
            signal.signal(signal.SIGTERM, previous)
    return int(session.app.store.progress()["studies_done"])


__all__ = ["ReviewSession", "is_loopback", "review", "start_review"]
