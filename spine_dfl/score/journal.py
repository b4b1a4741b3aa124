"""Partial outputs of a scoring run, ``--resume``, and the final merge.

While running, each process appends to its own *part* in ``predictions.partial/``: rows go to
``<attempt>.csv`` and, after those rows are flushed and fsynced, the completed file names go to
``<attempt>.done.jsonl`` (flushed and fsynced too). A file counts as done only when its journal
line is complete and all its rows are there, so a kill at any moment (even mid-write) loses at most
the files finished since the last commit. ``--resume`` reads every part (and a previous
``predictions.csv``), scores only files not yet done, and the final merge writes each file exactly
once, in input order, to ``predictions.csv`` (a temporary file renamed into place).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from spine_dfl.atomic import atomic_output
from spine_dfl.score.errors import ScoreError, reason_category
from spine_dfl.score.summary import PREDICTIONS, SUMMARY, ScoreSummary

PARTIAL_DIR = "predictions.partial"


def _fsync_append(handle: TextIO, text: str) -> None:
    handle.write(text)
    handle.flush()
    os.fsync(handle.fileno())


class PartWriter:
    """Append-only rows CSV + completion journal of one process's attempt (see module docstring)."""

    def __init__(self, folder: Path, name: str, columns: Sequence[str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.csv_path = folder / f"{name}.csv"
        self.journal_path = folder / f"{name}.done.jsonl"
        self.columns = list(columns)
        self._rows = open(self.csv_path, "a", newline="", encoding="utf-8")
        self._journal = open(self.journal_path, "a", encoding="utf-8")
        if self._rows.tell() == 0:
            _fsync_append(self._rows, _csv_line(self.columns))
        self.journaled = 0

    def commit(self, rows: Sequence[Sequence[str]], entries: Sequence[dict[str, Any]]) -> None:
        """Rows first (durable), then the journal lines naming their files as complete."""
        if not entries:
            return
        _fsync_append(self._rows, "".join(_csv_line(r) for r in rows))
        _fsync_append(self._journal, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
        self.journaled += len(entries)

    def close(self) -> None:
        self._rows.close()
        self._journal.close()


def _csv_line(values: Sequence[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


@dataclass(frozen=True)
class DoneFile:
    """Where a completed file's rows are: one contiguous byte range of a part (or earlier final CSV).

    Only this index is kept in memory (not the rows), so merging stays small however many rows.
    """

    source: Path
    start: int
    end: int
    rows: int
    ok: bool
    error: str  # the first row's error ("" when ok)
    dicom_out: str  # "written" | "skipped: <why>" | "error: <why>" | "" (unknown: earlier final CSV)
    in_distribution: str = ""  # the first row's: "yes", "no" (unlike the training images) or "" (not checked)


def _csv_records(path: Path) -> Iterator[tuple[int, int, list[str]]]:
    """(start byte, end byte, fields) of each complete CSV record; a torn last record is dropped.

    A record may span lines when a quoted field holds a newline: lines are joined while the
    number of quote characters is odd (csv escapes a quote inside a field as two quotes).
    """
    offset = 0
    pending = b""
    pending_start = 0
    with open(path, "rb") as handle:
        for line in handle:
            if not pending:
                pending_start = offset
            offset += len(line)
            pending += line
            if pending.count(b'"') % 2 or not pending.endswith(b"\n"):
                continue  # inside a quoted field, or the torn end of the file
            fields = next(csv.reader([pending.decode("utf-8", errors="replace")]), [])
            yield pending_start, offset, fields
            pending = b""


def _complete_lines(path: Path) -> list[str]:
    """Lines of a text file without a torn last line (one that has no newline yet)."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    return text[: text.rfind("\n") + 1].splitlines()


def _read_part(csv_path: Path, journal_path: Path | None, columns: Sequence[str]) -> dict[str, DoneFile]:
    """Completed files of one part: those whose journal line is complete and whose rows are all there.

    Without a journal (an earlier final predictions.csv, written atomically) every file is complete.
    """
    records = _csv_records(csv_path)
    first = next(records, None)
    if first is None:
        return {}
    if first[2] != list(columns):
        raise ScoreError(
            f"{csv_path}: earlier results have different columns ({_describe_columns(first[2])} vs "
            f"{_describe_columns(columns)}: another checkpoint or --keep-ids setting); rerun without --resume"
        )
    journal: dict[str, dict[str, Any]] | None = None
    if journal_path is not None:
        journal = {}
        for line in _complete_lines(journal_path):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # only if the disk lied about a complete line; the file is scored again
            journal[str(entry["file"])] = entry
    status_at, error_at = columns.index("status"), columns.index("error")
    shift_at = columns.index("in_distribution") if "in_distribution" in columns else None
    blocks: dict[str, list[Any]] = {}  # file -> [start, end, rows, ok, error, in_distribution] of its first block
    previous = None
    for start, end, fields in records:
        if len(fields) != len(columns) or (journal is not None and fields[0] not in journal):
            previous = None
            continue
        file = fields[0]
        if file == previous:
            blocks[file][1] = end
            blocks[file][2] += 1
        elif file not in blocks:
            ok = fields[status_at] == "ok"
            blocks[file] = [start, end, 1, ok, "" if ok else fields[error_at],
                            "" if shift_at is None else fields[shift_at]]
        previous = file
    done: dict[str, DoneFile] = {}
    for file, (start, end, rows, ok, error, in_distribution) in blocks.items():
        entry = journal.get(file, {}) if journal is not None else {}
        if journal is not None and int(entry.get("rows", -1)) != rows:
            continue  # incomplete: score again
        done[file] = DoneFile(csv_path, start, end, rows, ok, error, str(entry.get("dicom_out", "")), in_distribution)
    return done


def _describe_columns(columns: Sequence[str] | None) -> str:
    if not columns:
        return "no header"
    return ",".join(c for c in columns if c.startswith("prob_") or c == "patient_id") or "no class columns"


def collect_done(out_dir: Path, columns: Sequence[str]) -> dict[str, DoneFile]:
    """Every completed file of earlier attempts: the final CSV of a finished run, then every part."""
    done: dict[str, DoneFile] = {}
    final = out_dir / PREDICTIONS
    if final.is_file():
        done.update(_read_part(final, None, columns))
    partial = out_dir / PARTIAL_DIR
    if partial.is_dir():
        for csv_path in sorted(partial.glob("*.csv")):
            journal = csv_path.with_name(csv_path.name[: -len(".csv")] + ".done.jsonl")
            for file, entry in _read_part(csv_path, journal, columns).items():
                done.setdefault(file, entry)
    return done


def merge(out_dir: Path, files: Sequence[str], columns: Sequence[str], earlier_count: int) -> ScoreSummary:
    """Final predictions.csv (input order, each file once) + the summary numbers.

    Rows are copied as bytes from the parts, file by file, into a temporary file that is then
    renamed over predictions.csv (spine_dfl.atomic): memory holds the index of byte ranges, never
    the rows.
    """
    done = collect_done(out_dir, columns)
    missing = [f for f in files if f not in done]
    if missing:
        raise RuntimeError(f"{len(missing)} file(s) were neither scored nor failed (first: {missing[0]}); rerun with --resume")
    reasons: Counter[str] = Counter()
    dicom_states: Counter[str] = Counter()
    dicom_reasons: Counter[str] = Counter()
    scored = failed = rows = shifted = 0
    predictions = out_dir / PREDICTIONS
    sources: dict[Path, Any] = {}
    try:
        with atomic_output(predictions, "wb") as out:
            out.write(_csv_line(columns).encode("utf-8"))
            for file in files:
                entry = done[file]
                source = sources.get(entry.source)
                if source is None:
                    source = sources[entry.source] = open(entry.source, "rb")
                source.seek(entry.start)
                out.write(source.read(entry.end - entry.start))
                rows += entry.rows
                shifted += entry.in_distribution == "no"
                if entry.ok:
                    scored += 1
                else:
                    failed += 1
                    reasons[reason_category(entry.error)] += 1
                kind, _, why = (entry.dicom_out or "unknown (earlier run)").partition(": ")
                dicom_states[kind] += 1
                if kind == "error":
                    dicom_reasons[why[:80]] += 1
    finally:
        for source in sources.values():
            source.close()
    dicom_summary = None
    if any(entry.dicom_out for entry in done.values()):
        dicom_summary = {**dict(sorted(dicom_states.items())), "errors_by_reason": dict(dicom_reasons.most_common())}
    return ScoreSummary(
        found=len(files),
        scored=scored,
        failed=failed,
        failed_by_reason=dict(reasons.most_common()),
        rows=rows,
        predictions_csv=str(predictions),
        summary_json=str(out_dir / SUMMARY),
        scored_this_run=len(files) - earlier_count,
        from_earlier_runs=earlier_count,
        dicom_out=dicom_summary,
        shifted=shifted,
    )
