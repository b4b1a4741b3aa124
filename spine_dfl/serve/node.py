"""The DICOM node: receive studies, score each once it is stable, send the results back.

Threads:

- pynetdicom's server: associations and the durable C-STORE handler (``spool``);
- a scheduler: studies with no new instance for ``stable_age`` seconds go ``received -> ready``;
- ``workers`` workers: each claims a study with a lease, scores it (``ready -> scoring ->
  sending``) or sends its results (``sending -> done``), retrying with back-off and parking it as
  ``failed`` after the retry policy's attempts.

Scoring is a plain callable, ``score_study(study_uid, instance_paths, out_dir)`` (the real one is
``serve.scoring.StudyScorer``; tests wrap it or pass their own): it writes the
result files (SR, SC) under ``out_dir`` and returns their paths, or a ``ScoreOutcome`` that also
names the instances it could not use and why (they are kept per instance in the queue; the rest
of the study is still scored). An exception means the attempt failed (retried with back-off).
Result UIDs must be derived from ``result_uid_seed(study_uid, instance_uids, model_version)``, so
scoring again after a crash rewrites the same instances instead of filing duplicates.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import shutil
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from spine_dfl.io.errors import InputError, UnavailableError
from spine_dfl.serve.queue import QUEUE_FILE, Claim, WorkQueue
from spine_dfl.serve.scp import build_ae, start_scp
from spine_dfl.serve.sender import Destination, RetryPolicy, SendError, send_files
from spine_dfl.serve.spool import Spool
from spine_dfl.serve.status import redact_uids, study_tag

if TYPE_CHECKING:
    from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger(__name__)

LOCK_FILE = "node.lock"


def result_uid_seed(study_uid: str, instance_uids: Sequence[str], model_version: str) -> str:
    """A stable key for a study's results: the same study, instances and model give the same key.

    Hex SHA-256 of the study UID, the sorted instance UIDs and the model version. Scorers derive
    every output UID from it (e.g. as ``dicom_out``'s ``run_key``), so resending after a crash
    duplicates nothing, and a late instance (another instance set) gives new, superseding UIDs.
    """
    text = "\n".join([study_uid, *sorted(instance_uids), model_version])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class ScoreOutcome:
    """What ``score_study`` may return instead of a plain list of result files."""

    files: list[str]
    failed: Mapping[str, str] = field(default_factory=dict)  # instance path -> reason


ScoreStudy = Callable[[str, list[str], str], "Sequence[str | Path] | ScoreOutcome"]


class NodeError(UnavailableError, RuntimeError):
    """The node cannot start (spool in use, port taken, bad settings)."""


class Node:
    """A storage SCP that scores complete studies and sends the results to ``send_to``."""

    def __init__(
        self,
        spool_dir: str | Path,
        score_study: ScoreStudy,
        *,
        send_to: str | Destination,
        ae_title: str = "SPINEDFL",
        port: int = 11112,
        host: str = "0.0.0.0",
        allowed_callers: Sequence[str] | None = None,
        stable_age: float = 60.0,
        workers: int = 1,
        retry: RetryPolicy = RetryPolicy(),
        lease_seconds: float = 300.0,
        poll_interval: float = 0.5,
    ) -> None:
        if not 1 <= len(ae_title) <= 16:
            raise InputError("the AE title must have 1 to 16 characters")
        if stable_age < 0 or workers < 1 or lease_seconds <= 0:
            raise InputError("need stable_age >= 0, workers >= 1 and lease_seconds > 0")
        self.spool_dir = Path(spool_dir)
        self.score_study = score_study
        self.destination = send_to if isinstance(send_to, Destination) else Destination.parse(send_to)
        self.ae_title, self.host, self.port = ae_title, host, port
        self.allowed_callers = list(allowed_callers or [])
        self.stable_age, self.workers, self.retry = stable_age, workers, retry
        self.lease_seconds, self.poll_interval = lease_seconds, poll_interval
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: ThreadedAssociationServer | None = None
        self._lock_handle: TextIO | None = None
        self.queue: WorkQueue | None = None

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Open the spool (exclusively), resume left work, listen, and start the threads."""
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._lock_handle = open(self.spool_dir / LOCK_FILE, "a+")
        try:
            fcntl.flock(self._lock_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            self._lock_handle.close()
            raise NodeError(f"{self.spool_dir}: another node is using this spool") from error
        self.queue = WorkQueue(self.spool_dir / QUEUE_FILE)
        resumed = self.queue.release_all_leases()
        spool = Spool(self.spool_dir, self.queue)
        spool.remove_leftovers()
        if resumed:
            log.info("resuming %d studies left in progress", resumed)
        try:
            self._server = start_scp(build_ae(self.ae_title, self.allowed_callers), spool, self.host, self.port)
        except OSError as error:
            self._close_queue()
            reason = "port in use" if error.errno == errno.EADDRINUSE else error.strerror
            raise NodeError(f"cannot listen on {self.host}:{self.port}: {reason}") from None
        self._stop.clear()
        self._threads = [threading.Thread(target=self._schedule, name="serve-scheduler", daemon=True)]
        self._threads += [
            threading.Thread(target=self._work, name=f"serve-worker-{i}", daemon=True) for i in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()
        log.info("%s listening on %s:%d, results to %s", self.ae_title, self.host, self.port, self.destination)

    def stop(self) -> None:
        """Stop listening, let the current steps finish, close the queue and unlock the spool."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        for thread in self._threads:
            thread.join()
        self._threads = []
        self._close_queue()

    def _close_queue(self) -> None:
        if self.queue is not None:
            self.queue.close()
            self.queue = None
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT (then stop cleanly). Call it from the main thread (signal handlers)."""
        done = threading.Event()
        previous = {signum: signal.signal(signum, lambda *_: done.set()) for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            try:
                done.wait()
                log.info("stopping: finishing the steps in progress")
            finally:
                self.stop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    # -- threads ---------------------------------------------------------------------------------
    def _schedule(self) -> None:
        interval = min(self.poll_interval, max(self.stable_age / 4, 0.05))
        while not self._stop.wait(interval):
            try:
                if self.queue.promote_stable(self.stable_age):
                    log.debug("studies ready")
            except Exception:  # noqa: BLE001 - the scheduler must outlive a failed tick
                log.exception("scheduler tick failed")

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                claim = self.queue.claim(self.lease_seconds)
            except Exception:  # noqa: BLE001
                log.exception("could not claim work")
                claim = None
            if claim is None:
                self._stop.wait(self.poll_interval)
                continue
            try:
                self._score(claim) if claim.state == "scoring" else self._send(claim)
            except Exception:  # noqa: BLE001 - the worker outlives a bug in one step; the lease expires
                log.exception("study %s: unexpected error", study_tag(claim.study_uid))

    # -- one step each ---------------------------------------------------------------------------
    def results_dir(self, study_uid: str, generation: int) -> Path:
        return self.spool_dir / "results" / study_uid / f"generation-{generation}"

    def _score(self, claim: Claim) -> None:
        tag = study_tag(claim.study_uid)
        instances = self.queue.instances(claim.study_uid)
        by_path = {path: sop_uid for sop_uid, path in instances}
        out_dir = self.results_dir(claim.study_uid, claim.generation)
        shutil.rmtree(out_dir, ignore_errors=True)  # a scoring attempt cut short left part of it
        out_dir.mkdir(parents=True)
        try:
            with _LeaseKeeper(self.queue, claim.study_uid, self.lease_seconds):
                outcome = self.score_study(claim.study_uid, [path for _, path in instances], str(out_dir))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:  # noqa: BLE001 - decoders' Rust panics derive from BaseException
            self._fail(claim, f"scoring failed: {type(error).__name__}: {error}")
            return
        if not isinstance(outcome, ScoreOutcome):
            outcome = ScoreOutcome([str(path) for path in outcome])
        # reasons often name the spool path, which holds the UIDs: only pseudonyms are kept
        failed = {
            by_path.get(str(path), str(path)): redact_uids(str(reason)) for path, reason in outcome.failed.items()
        }
        if not outcome.files:
            failed_all = f"no result: {len(failed)} of {len(instances)} instances failed"
            if not self.queue.finish_scoring(claim, [], failed):
                return
            self.queue.fail_attempt(Claim(claim.study_uid, "sending", claim.generation, 0), failed_all, None)
            log.warning("study %s failed: %s", tag, failed_all)
            return
        if self.queue.finish_scoring(claim, [str(path) for path in outcome.files], failed):
            log.info("study %s scored (%d instances, %d failed)", tag, len(instances), len(failed))
        else:
            log.info("study %s got a new instance while scoring; scoring again", tag)

    def _send(self, claim: Claim) -> None:
        pending = self.queue.unsent_results(claim.study_uid, claim.generation)
        if any(not Path(path).is_file() for path in pending):
            # the spool lost them (deleted by hand?): score again rather than fail the study
            rescore = Claim(claim.study_uid, "scoring", claim.generation, claim.attempts)
            self.queue.fail_attempt(rescore, "result files missing from the spool; scoring again", 0.0)
            return
        try:
            with _LeaseKeeper(self.queue, claim.study_uid, self.lease_seconds):
                send_files(
                    pending,
                    self.destination,
                    self.ae_title,
                    on_sent=lambda path: self.queue.mark_sent(claim.study_uid, claim.generation, path),
                )
        except (SendError, OSError) as error:
            self._fail(claim, f"sending failed: {error}")
            return
        except Exception as error:  # noqa: BLE001 - an unreadable result or a network library error
            self._fail(claim, f"sending failed: {type(error).__name__}: {error}")
            return
        self.queue.finish_sending(claim)
        log.info("study %s results sent (%d files)", study_tag(claim.study_uid), len(pending))

    def _fail(self, claim: Claim, reason: str) -> None:
        """Count a failed attempt: retried after the policy's back-off, parked as failed after the last."""
        retry_delay = self.retry.delay_after(claim.attempts + 1)
        reason = redact_uids(reason)
        state = self.queue.fail_attempt(claim, reason, retry_delay)
        when = "parked as failed" if state == "failed" else f"retry in {retry_delay:.1f} s"
        log.warning("study %s: %s (%s)", study_tag(claim.study_uid), reason, when)


class _LeaseKeeper:
    """Renews a study's lease while a long step (scoring, sending) runs."""

    def __init__(self, queue: WorkQueue, study_uid: str, lease_seconds: float) -> None:
        self.queue, self.study_uid, self.lease_seconds = queue, study_uid, lease_seconds
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True)

    def _renew(self) -> None:
        while not self._done.wait(self.lease_seconds / 3):
            self.queue.renew(self.study_uid, self.lease_seconds)

    def __enter__(self) -> _LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()
