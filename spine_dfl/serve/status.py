"""The queue at a glance: counts per state, the oldest waiting study, the last errors.

Reads the spool's queue read-only, so it works while the node runs. Nothing identifying leaves
it: studies are shown as a short hash of their Study Instance UID (``study_tag``), never by the UID,
a patient name or a patient ID; error reasons are the node's own words. The images unlike the training
images (``in_distribution`` no, ``engine.shift``) are counted from the predictions table the node keeps
for the latest generation of each study (``results/<study>/generation-<n>/table/predictions.csv``).
"""

from __future__ import annotations

import csv
import hashlib
import re
import sqlite3
import time
from pathlib import Path

from spine_dfl.io.errors import InputError
from spine_dfl.serve.queue import QUEUE_FILE, STATES

WAITING_STATES = ("received", "ready", "scoring", "sending")
# Dotted numbers of four or more parts: UIDs, and the spool paths built from them.
_UID_LIKE = re.compile(r"\b[0-9]+(?:\.[0-9]+){3,}\b")


def study_tag(study_uid: str) -> str:
    """A short, stable pseudonym of a study for logs and status (first 10 hex of its SHA-256)."""
    return hashlib.sha256(study_uid.encode("utf-8")).hexdigest()[:10]


def redact_uids(text: str) -> str:
    """``text`` with every UID in it (and so every spool path) replaced by a short pseudonym."""
    return _UID_LIKE.sub(lambda match: "uid:" + study_tag(match.group(0)), text)


def shift_counts(spool_dir: str | Path) -> dict[str, int]:
    """``{"images_checked", "images_unlike_training"}`` over the latest scored generation of every study."""
    checked: set[str] = set()
    unlike: set[str] = set()
    for study in sorted((Path(spool_dir) / "results").glob("*")):
        tables = [(int(g.name.rsplit("-", 1)[-1]), g / "table" / "predictions.csv")
                  for g in study.glob("generation-*") if g.name.rsplit("-", 1)[-1].isdigit()]
        tables = [t for t in tables if t[1].is_file()]
        if not tables:
            continue
        with open(max(tables)[1], newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                verdict = (row.get("in_distribution") or "").strip()
                if verdict in ("yes", "no"):
                    checked.add(row.get("image", ""))
                    if verdict == "no":
                        unlike.add(row.get("image", ""))
    return {"images_checked": len(checked), "images_unlike_training": len(unlike)}


def status(spool_dir: str | Path, *, errors: int = 10, now: float | None = None) -> dict:
    """A JSON-ready summary of the node's queue in ``spool_dir``.

    Keys: ``states`` (count per state, every state listed), ``instances`` (received),
    ``failed_instances``, ``oldest_waiting`` (the study not yet done or failed whose first instance
    came first: ``{"study", "state", "age_s"}``; None when none waits), ``last_errors`` (newest first:
    ``{"study", "state", "attempts", "error"}``), ``last_instance_errors``, ``last_rejections`` and ``shift``
    (``shift_counts``: images checked against the training distribution and those unlike it).
    """
    path = Path(spool_dir) / QUEUE_FILE
    if not path.is_file():
        raise InputError(f"{spool_dir}: no node queue here ({QUEUE_FILE} missing)")
    now = time.time() if now is None else now
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        counts = dict(db.execute("SELECT state, COUNT(*) FROM studies GROUP BY state").fetchall())
        oldest = db.execute(
            "SELECT study_uid, state, first_received_at FROM studies"
            f" WHERE state IN ({','.join('?' * len(WAITING_STATES))}) ORDER BY first_received_at LIMIT 1",
            WAITING_STATES,
        ).fetchone()
        (instances,) = db.execute("SELECT COUNT(*) FROM instances").fetchone()
        (failed_instances,) = db.execute("SELECT COUNT(*) FROM instances WHERE error IS NOT NULL").fetchone()
        study_errors = db.execute(
            "SELECT study_uid, state, attempts, last_error FROM studies WHERE last_error IS NOT NULL"
            " ORDER BY updated_at DESC LIMIT ?",
            (errors,),
        ).fetchall()
        instance_errors = db.execute(
            "SELECT study_uid, error FROM instances WHERE error IS NOT NULL ORDER BY received_at DESC LIMIT ?",
            (errors,),
        ).fetchall()
        rejections = db.execute("SELECT at, reason FROM rejections ORDER BY at DESC LIMIT ?", (errors,)).fetchall()
    finally:
        db.close()
    return {
        "states": {state: int(counts.get(state, 0)) for state in STATES},
        "instances": int(instances),
        "failed_instances": int(failed_instances),
        "oldest_waiting": None
        if oldest is None
        else {"study": study_tag(oldest[0]), "state": oldest[1], "age_s": round(now - oldest[2], 1)},
        "last_errors": [
            {"study": study_tag(uid), "state": state, "attempts": attempts, "error": error}
            for uid, state, attempts, error in study_errors
        ],
        "last_instance_errors": [{"study": study_tag(uid), "error": error} for uid, error in instance_errors],
        "last_rejections": [{"age_s": round(now - at, 1), "reason": reason} for at, reason in rejections],
        "shift": shift_counts(spool_dir),
    }


def format_status(summary: dict) -> str:
    """``status()`` as a few lines of text for a terminal."""
    states = "  ".join(f"{state} {count}" for state, count in summary["states"].items())
    oldest = summary["oldest_waiting"]
    lines = [
        f"studies: {states}",
        f"instances: {summary['instances']} received, {summary['failed_instances']} failed",
        "oldest waiting study: "
        + ("none" if oldest is None else f"{oldest['study']} ({oldest['state']}) {oldest['age_s']:.0f} s"),
    ]
    shift = summary.get("shift")
    if shift:
        lines.append(f"images unlike the training images: {shift['images_unlike_training']} of "
                     f"{shift['images_checked']} checked")
    if summary["last_errors"]:
        lines.append("last study errors:")
        lines += [
            f"  {item['study']} {item['state']} after {item['attempts']} attempts: {item['error']}"
            for item in summary["last_errors"]
        ]
    if summary["last_instance_errors"]:
        lines.append("last instance errors:")
        lines += [f"  {item['study']}: {item['error']}" for item in summary["last_instance_errors"]]
    if summary["last_rejections"]:
        lines.append("last refused instances:")
        lines += [f"  {item['age_s']:.0f} s ago: {item['reason']}" for item in summary["last_rejections"]]
    return "\n".join(lines)
