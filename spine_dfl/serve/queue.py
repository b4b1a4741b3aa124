"""The node's durable work queue: one SQLite file in the spool (WAL, ``synchronous=FULL``).

Two tables:

- ``instances``: one row per received SOP Instance UID (unique), its study, its spool path, when
  it arrived, and a per-instance failure reason when scoring could not use it;
- ``studies``: one row per study, moving ``received -> ready -> scoring -> sending -> done`` (or
  ``failed``), with ``attempts``, ``next_attempt_at``, a ``lease_until`` held by the thread working on
  it, ``last_error``, and a ``generation`` that grows when an instance arrives after scoring began
  (the next result supersedes the earlier one);
- ``results``: the result files of each (study, generation) and whether each was sent.

Every state change is one transaction (``BEGIN IMMEDIATE``), so a kill at any point leaves the
study in the state of its last committed step. Work is claimed with a lease; a claim whose lease
ran out (its process died) is claimable again, so scoring and sending resume after a restart.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

QUEUE_FILE = "queue.sqlite"  # in the spool folder
STATES = ("received", "ready", "scoring", "sending", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    received_at REAL NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS instances_by_study ON instances(study_uid);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    last_received_at REAL NOT NULL,
    first_received_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    lease_until REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    generation INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS studies_by_state ON studies(state);
CREATE TABLE IF NOT EXISTS results (
    study_uid TEXT NOT NULL,
    generation INTEGER NOT NULL,
    path TEXT NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (study_uid, generation, path)
);
CREATE TABLE IF NOT EXISTS rejections (
    at REAL NOT NULL,
    reason TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Claim:
    """A study taken by one worker: what to do (``scoring`` or ``sending``) and on which generation."""

    study_uid: str
    state: str
    generation: int
    attempts: int


class WorkQueue:
    """Thread-safe access to the queue database (one connection, serialised by a lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- receiving ---------------------------------------------------------------------------
    def has_instance(self, sop_uid: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM instances WHERE sop_uid = ?", (sop_uid,)).fetchone()
        return row is not None

    def add_instance(self, sop_uid: str, study_uid: str, path: str, now: float | None = None) -> bool:
        """Record a stored instance; False (and nothing changes) when its SOP Instance UID is known.

        A new instance puts its study back to ``received`` (the stable-age clock restarts). When
        scoring of the study has begun or finished, the generation grows: the result made from the
        fuller set of instances supersedes the earlier one.
        """
        now = time.time() if now is None else now
        with self._transaction() as db:
            inserted = db.execute(
                "INSERT OR IGNORE INTO instances(sop_uid, study_uid, path, received_at) VALUES (?, ?, ?, ?)",
                (sop_uid, study_uid, path, now),
            ).rowcount
            if not inserted:
                return False
            row = db.execute("SELECT state FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO studies(study_uid, state, last_received_at, first_received_at, updated_at)"
                    " VALUES (?, 'received', ?, ?, ?)",
                    (study_uid, now, now, now),
                )
            else:
                bump = 0 if row[0] in ("received", "ready") else 1
                db.execute(
                    "UPDATE studies SET state = CASE WHEN state IN ('scoring', 'sending') THEN state"
                    " ELSE 'received' END, last_received_at = ?, generation = generation + ?,"
                    " attempts = CASE WHEN state IN ('done', 'failed') THEN 0 ELSE attempts END,"
                    " updated_at = ? WHERE study_uid = ?",
                    (now, bump, now, study_uid),
                )
            return True

    def record_rejection(self, reason: str, now: float | None = None) -> None:
        """Keep why an instance was refused at reception (no identifiers in ``reason``)."""
        with self._transaction() as db:
            at = time.time() if now is None else now
            db.execute("INSERT INTO rejections(at, reason) VALUES (?, ?)", (at, reason))

    # -- scheduling ----------------------------------------------------------------------------
    def promote_stable(self, stable_age: float, now: float | None = None) -> int:
        """Move studies with no new instance for ``stable_age`` seconds to ``ready``; returns how many."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            return db.execute(
                "UPDATE studies SET state = 'ready', next_attempt_at = 0, updated_at = ?"
                " WHERE state = 'received' AND last_received_at <= ?",
                (now, now - stable_age),
            ).rowcount

    def claim(self, lease_seconds: float, now: float | None = None) -> Claim | None:
        """Take the next study to score or send: ``ready`` ones, or any whose holder's lease ran out."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            row = db.execute(
                "SELECT study_uid, state, generation, attempts FROM studies"
                " WHERE next_attempt_at <= ? AND lease_until <= ?"
                " AND (state IN ('ready', 'sending') OR state = 'scoring')"
                " ORDER BY next_attempt_at, last_received_at LIMIT 1",
                (now, now),
            ).fetchone()
            if row is None:
                return None
            study_uid, state, generation, attempts = row
            state = "scoring" if state in ("ready", "scoring") else "sending"
            db.execute(
                "UPDATE studies SET state = ?, lease_until = ?, updated_at = ? WHERE study_uid = ?",
                (state, now + lease_seconds, now, study_uid),
            )
            return Claim(study_uid, state, generation, attempts)

    def renew(self, study_uid: str, lease_seconds: float) -> None:
        now = time.time()
        with self._transaction() as db:
            db.execute("UPDATE studies SET lease_until = ? WHERE study_uid = ?", (now + lease_seconds, study_uid))

    def release_all_leases(self) -> int:
        """At start-up, under the spool's process lock, no earlier holder can still be alive."""
        with self._transaction() as db:
            return db.execute("UPDATE studies SET lease_until = 0 WHERE lease_until > 0").rowcount

    # -- scoring and sending -------------------------------------------------------------------
    def instances(self, study_uid: str) -> list[tuple[str, str]]:
        """``(sop_uid, path)`` of every instance of the study, sorted by SOP Instance UID."""
        with self._lock:
            return self._db.execute(
                "SELECT sop_uid, path FROM instances WHERE study_uid = ? ORDER BY sop_uid", (study_uid,)
            ).fetchall()

    def finish_scoring(
        self, claim: Claim, result_paths: Sequence[str], failed: dict[str, str], now: float | None = None
    ) -> bool:
        """Keep the results and per-instance failures, then go to ``sending``.

        False, with the results dropped, when an instance arrived during scoring (the generation
        moved on): the study goes back to ``received`` and is scored again with every instance.
        """
        now = time.time() if now is None else now
        with self._transaction() as db:
            for sop_uid, reason in failed.items():
                db.execute("UPDATE instances SET error = ? WHERE sop_uid = ?", (reason, sop_uid))
            (generation,) = db.execute(
                "SELECT generation FROM studies WHERE study_uid = ?", (claim.study_uid,)
            ).fetchone()
            if generation != claim.generation:
                db.execute(
                    "UPDATE studies SET state = 'received', lease_until = 0, updated_at = ? WHERE study_uid = ?",
                    (now, claim.study_uid),
                )
                return False
            db.execute("DELETE FROM results WHERE study_uid = ? AND generation = ?", (claim.study_uid, generation))
            db.executemany(
                "INSERT INTO results(study_uid, generation, path) VALUES (?, ?, ?)",
                [(claim.study_uid, generation, path) for path in result_paths],
            )
            db.execute(
                "UPDATE studies SET state = 'sending', attempts = 0, next_attempt_at = 0, lease_until = 0,"
                " last_error = NULL, updated_at = ? WHERE study_uid = ?",
                (now, claim.study_uid),
            )
            return True

    def unsent_results(self, study_uid: str, generation: int) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT path FROM results WHERE study_uid = ? AND generation = ? AND sent = 0 ORDER BY path",
                (study_uid, generation),
            ).fetchall()
        return [path for (path,) in rows]

    def mark_sent(self, study_uid: str, generation: int, path: str) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE results SET sent = 1 WHERE study_uid = ? AND generation = ? AND path = ?",
                (study_uid, generation, path),
            )

    def finish_sending(self, claim: Claim, now: float | None = None) -> None:
        """``done``; or back to ``received`` when a late instance arrived meanwhile (new generation)."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            db.execute(
                "UPDATE studies SET state = CASE WHEN generation = ? THEN 'done' ELSE 'received' END,"
                " lease_until = 0, attempts = 0, last_error = NULL, updated_at = ? WHERE study_uid = ?",
                (claim.generation, now, claim.study_uid),
            )

    def fail_attempt(
        self, claim: Claim, reason: str, retry_delay: float | None, now: float | None = None
    ) -> str:
        """Count a failed attempt: retry after ``retry_delay`` seconds, or park as ``failed`` when None.

        A failed scoring attempt goes back to ``ready``, a failed sending attempt stays ``sending``.
        Returns the new state.
        """
        now = time.time() if now is None else now
        if retry_delay is None:
            state = "failed"
        else:
            state = "ready" if claim.state == "scoring" else "sending"
        with self._transaction() as db:
            db.execute(
                "UPDATE studies SET state = ?, attempts = attempts + 1, next_attempt_at = ?, lease_until = 0,"
                " last_error = ?, updated_at = ? WHERE study_uid = ?",
                (state, now + (retry_delay or 0.0), reason, now, claim.study_uid),
            )
        return state

    # -- reading -------------------------------------------------------------------------------
    def query(self, sql: str, parameters: Sequence[object] = ()) -> list[tuple]:
        """Read-only access for status reports and tests."""
        with self._lock:
            return self._db.execute(sql, tuple(parameters)).fetchall()
