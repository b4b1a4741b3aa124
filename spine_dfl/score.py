"""Batch scoring of PACS exports: ``spine-dfl score CHECKPOINT INPUT... [--rois rois.csv] [--out DIR]``.

Every input file ends up either *scored* (one row per vertebra, or one row for a whole-image
model) or *failed* (one row with ``status=error`` and the reason); ``found = scored + failed``.

Pipeline
    ``io.find_inputs`` expands files/folders (DICOMDIR followed) -> a map-style dataset over the
    file list, run by DataLoader worker processes: per file the DICOM header (UIDs), its ROIs, the
    decoded image and the eval transforms -> one *file item* holding that file's samples (or its
    error) -> the main process packs samples of consecutive files into model batches
    (``batch_size`` samples, on the GPU when present, pinned memory, AMP) -> a file whose samples
    are all predicted becomes CSV rows. Nothing but the current batch and the files it spans is
    held in memory.

Outputs in ``out_dir``
    ``predictions.csv``: ``file, status, error, sop_instance_uid, study_instance_uid,
    [patient_id,] vertebra, pred, prob_<class>..., x_min, y_min, x_max, y_max`` (ROI in original
    pixels, x = column; empty for whole-image models), rows in input order.
    ``summary.json``: ``found, scored, failed, failed_by_reason`` (+ run details).

Crash safety and ``--resume``
    While running, each process appends to its own *part* in ``predictions.partial/``: rows go to
    ``<attempt>.csv`` and, after those rows are flushed and fsynced, the completed file names go
    to ``<attempt>.done.jsonl`` (flushed and fsynced too). A file counts as done only when its
    journal line is complete, so a kill at any moment (even mid-write) loses at most the files
    finished since the last commit (commits every ``COMMIT_INTERVAL_S`` = 0.5 s, so that fast GPU
    runs do not wait on fsync). ``--resume`` reads every part (and a previous ``predictions.csv``),
    scores only files not yet done, and the final merge writes each file exactly once.
    ``predictions.csv`` and ``summary.json`` are written to a temporary file and renamed into place.

Distributed
    Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) the pending files are split across ranks
    (rank r takes ``pending[r::world]``), every rank writes its own part, and rank 0 merges after
    a barrier (process group over gloo, which works on CPU and GPU hosts).

Privacy
    Patient names never appear in outputs or logs; patient IDs only with ``keep_ids``. UIDs are
    kept. (The optional DICOM results carry the source's patient module, because PACS files them
    into the patient's study by it.)
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io as _stdio
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import signal
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from spine_dfl.atomic import atomic_output, atomic_write_text

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2
PARTIAL_DIR = "predictions.partial"
PREDICTIONS = "predictions.csv"
SUMMARY = "summary.json"
ROI_COLUMNS = ("x_min", "y_min", "x_max", "y_max")
# Test hook: after this many files are journaled, write half a row and SIGKILL this process,
# i.e. a real kill in the middle of writing (used by tests/test_score.py).
KILL_AFTER_ENV = "SPINE_DFL_TEST_KILL_AFTER"
# Completed files are made durable (rows, then journal, each flushed + fsynced) this often.
COMMIT_INTERVAL_S = 0.5


class ScoreError(ValueError):
    """Bad arguments, inputs or checkpoint for a scoring run (the CLI exits with status 2)."""


# --------------------------------------------------------------------------- ROIs
@dataclass(frozen=True)
class RoiTable:
    """ROIs per image: by SOP Instance UID and by resolved image path.

    Each ROI is (vertebra, (x_min, y_min, x_max, y_max)) in original pixels (continuous, x = column).
    """

    by_uid: dict[str, list[tuple[str, tuple[float, float, float, float]]]]
    by_path: dict[str, list[tuple[str, tuple[float, float, float, float]]]]

    def lookup(self, sop_instance_uid: str | None, path: Path) -> list[tuple[str, tuple[float, float, float, float]]]:
        if sop_instance_uid and sop_instance_uid in self.by_uid:
            return self.by_uid[sop_instance_uid]
        return self.by_path.get(_path_key(path), [])


def _path_key(path: str | Path) -> str:
    try:
        return str(Path(path).resolve())
    except OSError:
        return os.path.abspath(path)


def load_rois(path: str | Path) -> RoiTable:
    """Read a ROI CSV keyed by ``sop_instance_uid`` and/or ``image`` (relative paths: to the CSV's folder).

    Columns: ``vertebra`` (optional, "" when absent), ``x_min, y_min, x_max, y_max`` (original
    pixels). Raises ScoreError naming the first bad rows.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ScoreError(f"{path}: ROI file not found")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises several types for unreadable CSVs
        raise ScoreError(f"{path}: cannot read the ROI CSV ({type(exc).__name__}: {exc})") from exc
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in ROI_COLUMNS if c not in table.columns]
    if missing:
        raise ScoreError(f"{path}: ROI CSV lacks column(s) {', '.join(missing)} (needs {', '.join(ROI_COLUMNS)})")
    if "sop_instance_uid" not in table.columns and "image" not in table.columns:
        raise ScoreError(f"{path}: ROI CSV needs a 'sop_instance_uid' or an 'image' column to match images")
    by_uid: dict[str, list[tuple[str, tuple[float, float, float, float]]]] = {}
    by_path: dict[str, list[tuple[str, tuple[float, float, float, float]]]] = {}
    problems: list[str] = []
    for number, row in enumerate(table.to_dict("records"), start=2):  # line 1 is the header
        try:
            roi = tuple(float(row[c]) for c in ROI_COLUMNS)
        except ValueError:
            problems.append(f"line {number}: non-numeric ROI {[row[c] for c in ROI_COLUMNS]}")
            continue
        if not all(math.isfinite(v) for v in roi) or roi[2] <= roi[0] or roi[3] <= roi[1]:
            problems.append(f"line {number}: empty or invalid ROI {roi}")
            continue
        entry = (str(row.get("vertebra", "") or "").strip(), roi)
        uid = str(row.get("sop_instance_uid", "") or "").strip()
        image = str(row.get("image", "") or "").strip()
        if not uid and not image:
            problems.append(f"line {number}: neither sop_instance_uid nor image given")
            continue
        if uid:
            by_uid.setdefault(uid, []).append(entry)
        if image:
            image_path = Path(image) if Path(image).is_absolute() else path.parent / image
            by_path.setdefault(_path_key(image_path), []).append(entry)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} in all)" if len(problems) > 5 else "")
        raise ScoreError(f"{path}: bad ROI rows: {shown}")
    return RoiTable(by_uid=by_uid, by_path=by_path)


# --------------------------------------------------------------------------- failure reasons
_REASON_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"empty file|0 bytes", "empty file"),
    (r"does not exist", "file missing"),
    (r"no pixel data although", "image without its pixel data (truncated or stripped)"),
    (r"no pixel data", "no pixel data (not an image)"),
    (r"truncat|end of file|unexpected eof", "truncated file"),
    (r"dicomdir", "DICOMDIR index"),
    (r"multi-frame|pages/frames", "multi-frame image"),
    (r"colou?r", "colour image"),
    (r"not a dicom|not a recognised image|gzip-compressed", "not an image file"),
    (r"cannot be parsed as dicom|cannot read the dicom header", "corrupt DICOM"),
    (r"transfer syntax|decod|plugin|pylibjpeg|cannot decompress", "pixel data cannot be decoded"),
    (r"no roi", "no ROIs for this image"),
    (r"memory", "out of memory"),
    (r"cannot be read as (nifti|an image)", "corrupt image file"),
    (r"but no .* element|cannot be interpreted", "incomplete image header"),
    (r"dimension|shape|empty image|pixel type|non-finite|invalid", "unsupported image content"),
)


def reason_category(reason: str) -> str:
    """Short category for ``failed_by_reason`` ("truncated file", "no pixel data (not an image)", ...)."""
    lowered = reason.lower()
    for pattern, category in _REASON_PATTERNS:
        if re.search(pattern, lowered):
            return category
    return "other error"


def _reason_of(exc: BaseException) -> str:
    """Readable reason without the path (ImageReadError carries it separately); unwraps MONAI's wrappers."""
    from spine_dfl.io import ImageReadError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ImageReadError):
            return seen.reason
        seen = seen.__cause__ or seen.__context__
    cause = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    return f"{type(cause).__name__}: {cause}"


# --------------------------------------------------------------------------- per-file dataset
class FileSamples(Dataset):
    """Map-style dataset over input files; item i is one *file item* (a dict, never raises).

    Item keys: ``index`` (position in ``files``), ``file`` (str), ``ok`` (bool), ``error`` (reason
    or ""), ``sop_instance_uid``, ``study_instance_uid``, ``patient_id`` ("" unless keep_ids),
    ``vertebrae`` (list[str], one per sample), ``rois`` (list of 4-tuples or None), ``images``
    (float32 tensor (n, 1, S, S) when ok, else (0, 1, S, S)). With ``geometry`` (for the DICOM
    overlay's heatmaps) also ``to_original`` (float64 numpy (n, 3, 3): each sample's network
    input -> original pixel affine; None otherwise) and ``regions`` (per sample the integer
    (x0, y0, x1, y1) original-pixel region the network saw, ``explain.display_region``; [] otherwise).
    """

    def __init__(
        self, files: Sequence[Path], preprocessing: Any, rois: RoiTable | None, keep_ids: bool, geometry: bool = False
    ) -> None:
        self.files = [Path(f) for f in files]
        self.preprocessing = preprocessing
        self.rois = rois
        self.keep_ids = keep_ids
        self.geometry = geometry
        self._transforms: Any = None  # built lazily in each worker process

    def __len__(self) -> int:
        return len(self.files)

    @property
    def input_size(self) -> int:
        return int(self.preprocessing.input_size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        item: dict[str, Any] = {
            "index": index,
            "file": str(path),
            "ok": False,
            "error": "",
            "sop_instance_uid": "",
            "study_instance_uid": "",
            "patient_id": "",
            "vertebrae": [],
            "rois": [],
            "images": torch.zeros((0, 1, self.input_size, self.input_size)),
            "to_original": None,
            "regions": [],
        }
        try:
            self._fill(path, item)
            item["ok"] = True
        except Exception as exc:  # every failure of one file becomes its error row
            item["error"] = " ".join(_reason_of(exc).split()) or type(exc).__name__
            item["vertebrae"], item["rois"] = [], []
            item["images"] = torch.zeros((0, 1, self.input_size, self.input_size))
            item["to_original"], item["regions"] = None, []
        return item

    def _fill(self, path: Path, item: dict[str, Any]) -> None:
        from spine_dfl.io import ImageReadError, is_dicom, read_dicom_header, read_image

        header = None
        if path.is_file() and is_dicom(path):
            header = read_dicom_header(path)
            item["sop_instance_uid"] = str(header.get("SOPInstanceUID", "") or "")
            item["study_instance_uid"] = str(header.get("StudyInstanceUID", "") or "")
            if self.keep_ids:
                item["patient_id"] = str(header.get("PatientID", "") or "")
        if self.rois is not None:
            rois = self.rois.lookup(item["sop_instance_uid"], path)
            if not rois:
                if header is None or not ("Rows" in header and "Columns" in header):
                    read_image(path)  # not an image at all: its own reason is the better one
                raise ImageReadError(path, "no ROIs for this image in the ROI CSV (matched by sop_instance_uid or image path)")
        else:
            rois = [("", None)]
        images, affines, regions = self._transform(path, [roi for _, roi in rois])
        item["vertebrae"] = [vertebra for vertebra, _ in rois]
        item["rois"] = [roi for _, roi in rois]
        item["images"] = images
        item["to_original"], item["regions"] = affines, regions

    def _transform(
        self, path: Path, rois: list[tuple[float, float, float, float] | None]
    ) -> tuple[torch.Tensor, np.ndarray | None, list[tuple[int, int, int, int] | None]]:
        """(n, 1, S, S) float32 network inputs of ``path`` cropped to each ROI (None = whole image);
        with ``geometry`` also their (n, 3, 3) input -> original affines and displayed regions."""
        from spine_dfl.data.transforms import eval_transforms

        if self._transforms is None:
            self._transforms = eval_transforms(self.preprocessing)
        tensors = []
        affines: list[np.ndarray] = []
        regions: list[tuple[int, int, int, int] | None] = []
        for roi in rois:
            sample = self._transforms({"image": str(path), "roi": roi})
            image = sample["image"]
            image = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
            tensors.append(image.float().reshape(1, self.input_size, self.input_size))
            if self.geometry:
                from spine_dfl.explain import display_region

                # numpy, not tensors: a worker's tensors travel through shared memory, arrays inline.
                affine = torch.as_tensor(sample["to_original"], dtype=torch.float64).numpy()
                meta = sample.get("meta") or {}
                shape = (int(meta.get("rows", -1)), int(meta.get("cols", -1)))
                affines.append(affine)
                # None (no heatmap for this sample) if the reader did not report the image size.
                regions.append(tuple(int(v) for v in display_region(affine, self.preprocessing, roi, shape))
                               if min(shape) >= 1 else None)
        return torch.stack(tensors), (np.stack(affines) if affines else None), regions


def _as_is(item: dict[str, Any]) -> dict[str, Any]:
    """DataLoader collate for batch_size=None: keep the file item (module level: picklable)."""
    return item


# --------------------------------------------------------------------------- parts (partial outputs)
def _fsync_append(handle: Any, text: str) -> None:
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

    def torn_write_and_kill(self) -> None:  # pragma: no cover - the process dies here
        """Test hook: half a CSV row and half a journal line on disk, then SIGKILL."""
        self._rows.write("/torn/row/of/a/killed/run,ok,,1.2.3")
        self._rows.flush()
        self._journal.write('{"file": "/torn/journal')
        self._journal.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def close(self) -> None:
        self._rows.close()
        self._journal.close()


def _csv_line(values: Sequence[Any]) -> str:
    buffer = _stdio.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


@dataclass(frozen=True)
class _DoneFile:
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


def _read_part(csv_path: Path, journal_path: Path | None, columns: Sequence[str]) -> dict[str, _DoneFile]:
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
    blocks: dict[str, list[Any]] = {}  # file -> [start, end, rows, ok, error] of its first contiguous block
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
            blocks[file] = [start, end, 1, ok, "" if ok else fields[error_at]]
        previous = file
    done: dict[str, _DoneFile] = {}
    for file, (start, end, rows, ok, error) in blocks.items():
        entry = journal.get(file, {}) if journal is not None else {}
        if journal is not None and int(entry.get("rows", -1)) != rows:
            continue  # incomplete: score again
        done[file] = _DoneFile(csv_path, start, end, rows, ok, error, str(entry.get("dicom_out", "")))
    return done


def _describe_columns(columns: Sequence[str] | None) -> str:
    if not columns:
        return "no header"
    return ",".join(c for c in columns if c.startswith("prob_") or c == "patient_id") or "no class columns"


def collect_done(out_dir: Path, columns: Sequence[str]) -> dict[str, _DoneFile]:
    """Every completed file of earlier attempts: the final CSV of a finished run, then every part."""
    done: dict[str, _DoneFile] = {}
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


# --------------------------------------------------------------------------- summary
@dataclass
class ScoreSummary:
    """Outcome of a scoring run (all ranks see rank 0's merged numbers)."""

    found: int
    scored: int
    failed: int
    failed_by_reason: dict[str, int]
    rows: int
    predictions_csv: str
    summary_json: str
    scored_this_run: int = 0
    from_earlier_runs: int = 0
    elapsed_s: float = 0.0
    files_per_s: float = 0.0
    device: str = "cpu"
    world_size: int = 1
    checkpoint: str = ""
    class_names: list[str] = field(default_factory=list)
    dicom_out: dict[str, Any] | None = None

    def exit_status(self, strict: bool = False) -> int:
        return EXIT_FAILURES if strict and self.failed > 0 else EXIT_OK


# --------------------------------------------------------------------------- distributed
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def broadcast(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        holder = [obj]
        torch.distributed.broadcast_object_list(holder, src=0)
        return holder[0]

    def close(self) -> None:
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _init_distributed() -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return _Dist()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    owns = False
    if not torch.distributed.is_initialized():
        # gloo: barriers and object broadcasts work on CPU-only and GPU hosts alike; ranks can
        # finish their shares far apart, hence the long timeout.
        torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(hours=12))
        owns = True
    return _Dist(rank=rank, world=world, local_rank=local_rank, owns_group=owns)


def _resolve_device(name: str, dist: _Dist) -> torch.device:
    """`spine_dfl.predict.resolve_device`, with CUDA without an index meaning this process's GPU.

    ``auto`` on a CUDA machine, and ``cuda`` when there is more than one process, pick GPU
    ``local_rank % device_count``. A CUDA device on a machine without one is a `ScoreError`.
    """
    from spine_dfl.predict import resolve_device

    unavailable = f"device {name!r} requested but no CUDA device is available"
    try:
        device = resolve_device(name)
    except ValueError:  # "cuda" without a CUDA device
        raise ScoreError(unavailable) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():  # an indexed one, such as "cuda:1"
            raise ScoreError(unavailable)
        if device.index is None and (name == "auto" or dist.world > 1):
            return torch.device("cuda", dist.local_rank % torch.cuda.device_count())
    return device


# --------------------------------------------------------------------------- scoring loop
@dataclass
class _Pending:
    item: dict[str, Any]
    probs: np.ndarray  # (n, M) float32, filled as batches complete
    filled: int = 0
    evidence: np.ndarray | None = None  # (n, H, W) float32 predicted-class evidence (DICOM output only)


def _columns(class_names: Sequence[str], keep_ids: bool) -> list[str]:
    head = ["file", "status", "error", "sop_instance_uid", "study_instance_uid"]
    if keep_ids:
        head.append("patient_id")
    return [*head, "vertebra", "pred", *(f"prob_{c}" for c in class_names), *ROI_COLUMNS]


def _file_rows(item: dict[str, Any], probs: np.ndarray | None, class_names: Sequence[str], keep_ids: bool) -> list[list[str]]:
    ids = [item["file"], "ok" if item["ok"] else "error", item["error"], item["sop_instance_uid"], item["study_instance_uid"]]
    if keep_ids:
        ids.append(item["patient_id"])
    if not item["ok"]:
        return [[*ids, "", "", *([""] * len(class_names)), *([""] * 4)]]
    rows = []
    for j, vertebra in enumerate(item["vertebrae"]):
        p = probs[j]
        roi = item["rois"][j]
        roi_text = ["" for _ in range(4)] if roi is None else [f"{v:g}" for v in roi]
        rows.append([*ids, vertebra, class_names[int(p.argmax())], *(f"{v:.6f}" for v in p), *roi_text])
    return rows


class _Finished:
    """A file's rows and journal entry; with DICOM output in other processes, also the job and its future."""

    def __init__(self, rows: list[list[str]], entry: dict[str, Any], job: tuple[Any, ...] | None = None,
                 future: Any = None) -> None:
        self.rows, self.entry, self.job, self.future = rows, entry, job, future

    def done(self) -> bool:
        return self.future is None or self.future.done()


class _Scorer:
    """Runs the model over file items and commits completed files to a PartWriter."""

    def __init__(
        self,
        model: torch.nn.Module,
        class_names: Sequence[str],
        device: torch.device,
        batch_size: int,
        part: PartWriter,
        keep_ids: bool,
        dicom_config: Any | None,
        dicom_pool: Any | None,
        progress: Any,
        kill_after: int | None,
        input_size: int,
    ) -> None:
        self.model = model
        self.class_names = list(class_names)
        self.device = device
        self.batch_size = batch_size
        self.part = part
        self.keep_ids = keep_ids
        self.dicom_config = dicom_config
        self.dicom_pool = dicom_pool
        # The overlay's heatmaps need the P-stream response maps: requested only for DICOM output.
        self.with_maps = dicom_config is not None
        self.input_size = int(input_size)
        # Files whose DICOM output is being written; bounded so memory stays flat.
        self.finished: deque[_Finished] = deque()
        self.max_in_flight = 4 * max(1, getattr(dicom_pool, "_max_workers", 1))
        self.progress = progress
        self.kill_after = kill_after
        # The kill test hook needs a commit after every batch to die at a predictable point.
        self.commit_interval = 0.0 if kill_after is not None else COMMIT_INTERVAL_S
        self.queue: deque[_Pending] = deque()
        self.queued_samples = 0
        self.ready_rows: list[list[str]] = []
        self.ready_entries: list[dict[str, Any]] = []
        self.last_commit = time.monotonic()
        self.scored = 0
        self.failed = 0
        self.amp_dtype = None
        self.staging: torch.Tensor | None = None  # pinned host buffer of one batch (CUDA only)
        if device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            self.staging = torch.empty((batch_size, 1, input_size, input_size), pin_memory=True)

    def add(self, item: dict[str, Any]) -> None:
        if not item["ok"]:
            self._finish(item, None)
        else:
            n = len(item["vertebrae"])
            self.queue.append(_Pending(item, np.zeros((n, len(self.class_names)), np.float32)))
            self.queued_samples += n
        while self.queued_samples >= self.batch_size:
            self._run_batch()
        self._maybe_commit()

    def _maybe_commit(self) -> None:
        """Commit (two fsyncs) at most every COMMIT_INTERVAL_S: a kill loses at most that much work,
        and fast GPU runs do not spend their time in fsync."""
        if (self.ready_entries or self.finished) and time.monotonic() - self.last_commit >= self.commit_interval:
            self.commit()

    def flush(self) -> None:
        while self.queued_samples > 0:
            self._run_batch()
        self._collect(keep_at_most=0)
        self.commit()

    @torch.inference_mode()
    def _run_batch(self) -> None:
        """Forward the next ``batch_size`` queued samples (spanning one or more files)."""
        pieces: list[torch.Tensor] = []
        owners: list[tuple[_Pending, int, int]] = []  # (file, first sample, count)
        need = self.batch_size
        for pending in self.queue:
            if need == 0:
                break
            take = min(need, len(pending.item["vertebrae"]) - pending.filled)
            pieces.append(pending.item["images"][pending.filled : pending.filled + take])
            owners.append((pending, pending.filled, take))
            need -= take
        count = self.batch_size - need
        if self.staging is not None:
            # One copy from the workers' shared memory into pinned memory, then an asynchronous
            # host-to-device copy (the .cpu() below waits for this batch before the buffer is reused).
            torch.cat(pieces, out=self.staging[:count])
            batch = self.staging[:count].to(self.device, non_blocking=True)
        else:
            batch = torch.cat(pieces)
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            output = self.model(batch, return_maps=True) if self.with_maps else self.model(batch)
        probs = torch.softmax(output.fused.float(), dim=1).cpu().numpy()
        evidence = self._evidence(output.response_maps, probs) if self.with_maps else None
        del output
        offset = 0
        for pending, start, take in owners:
            pending.probs[start : start + take] = probs[offset : offset + take]
            if evidence is not None:
                if pending.evidence is None:
                    pending.evidence = np.empty((len(pending.item["vertebrae"]), *evidence.shape[1:]), np.float32)
                pending.evidence[start : start + take] = evidence[offset : offset + take]
            pending.filled = start + take
            offset += take
            self.queued_samples -= take
        while self.queue and self.queue[0].filled == len(self.queue[0].item["vertebrae"]):
            done = self.queue.popleft()
            self._finish(done.item, done.probs, done.evidence)

    def _evidence(self, response_maps: torch.Tensor, probs: np.ndarray) -> np.ndarray:
        """(B, H, W) float32 CPU: per sample the max over the predicted class's k response maps.

        The same evidence map as ``spine_dfl.explain`` (channels pred*k .. pred*k + k-1); the
        predicted class is the argmax of the probabilities written to the CSV.
        """
        b, _, h, w = response_maps.shape
        k = int(self.model.filters_per_class)
        preds = torch.as_tensor(probs.argmax(axis=1), device=response_maps.device)
        per_class = response_maps.reshape(b, -1, k, h, w)[torch.arange(b, device=response_maps.device), preds]
        return per_class.amax(dim=1).float().cpu().numpy()

    def _finish(self, item: dict[str, Any], probs: np.ndarray | None, evidence: np.ndarray | None = None) -> None:
        rows = _file_rows(item, probs, self.class_names, self.keep_ids)
        entry: dict[str, Any] = {"file": item["file"], "rows": len(rows)}
        if item["ok"]:
            self.scored += 1
        else:
            self.failed += 1
        finished = _Finished(rows, entry)
        if self.dicom_config is not None:
            self._start_dicom(item, probs, finished, evidence)
        item["images"] = None  # drop the tensors as soon as the rows exist
        self.finished.append(finished)
        # A file is journaled only after its SR/SC exist, so --resume never skips missing DICOM output.
        self._collect(keep_at_most=self.max_in_flight)

    def _start_dicom(
        self, item: dict[str, Any], probs: np.ndarray | None, finished: _Finished, evidence: np.ndarray | None = None
    ) -> None:
        """Submit (or run inline) the SR/SC writing of a scored DICOM file; others get a "skipped" status.

        Each finding carries its sample's evidence map (a few hundred floats), affine and region
        for the SC's heatmap; the job holds them only until the file's SR/SC are written.
        """
        from spine_dfl.dicom_out import VertebraFinding, write_results_job

        entry = finished.entry
        if not item["ok"] or probs is None:
            entry["dicom_out"] = "skipped: file not scored"
            return
        if not item["sop_instance_uid"] or not item["study_instance_uid"]:
            entry["dicom_out"] = "skipped: not a DICOM image"
            return
        findings = [
            VertebraFinding(
                vertebra=vertebra,
                roi=roi,
                predicted=self.class_names[int(p.argmax())],
                probabilities={c: float(v) for c, v in zip(self.class_names, p)},
                evidence=evidence_map,
            )
            for vertebra, roi, p, evidence_map in zip(
                item["vertebrae"], item["rois"], probs, self._evidence_maps(item, evidence)
            )
        ]
        finished.job = (self.dicom_config, item["file"], findings)
        if self.dicom_pool is not None:
            try:
                finished.future = self.dicom_pool.submit(write_results_job, *finished.job)
                return
            except Exception as exc:  # BrokenProcessPool: a child died earlier
                self._drop_pool(exc)
        entry["dicom_out"] = write_results_job(*finished.job)

    def _evidence_maps(self, item: dict[str, Any], evidence: np.ndarray | None) -> list[Any]:
        """Per sample a ``dicom_out.EvidenceMap`` (grid map + affine + region), or None without geometry."""
        from spine_dfl.dicom_out import EvidenceMap

        count = len(item["vertebrae"])
        affines, regions = item.get("to_original"), item.get("regions") or []
        if evidence is None or affines is None or len(regions) != count or len(evidence) != count:
            return [None] * count
        return [
            EvidenceMap(
                values=evidence[j].copy(),
                to_original=np.asarray(affines[j], dtype=np.float64),
                region=regions[j],
                input_size=self.input_size,
                stride=float(self.model.stride),
                center_offset=float(self.model.rf_center_offset),
            )
            if regions[j] is not None else None
            for j in range(count)
        ]

    def _drop_pool(self, exc: BaseException) -> None:
        if self.dicom_pool is not None:
            log.warning("DICOM writer processes failed (%s: %s); writing in the main process from now on",
                        type(exc).__name__, exc)
            self.dicom_pool.shutdown(wait=False, cancel_futures=True)
            self.dicom_pool = None

    def _resolve(self, finished: _Finished) -> None:
        """Take the DICOM-output status; a broken pool (e.g. a child that died) falls back to inline writing."""
        from spine_dfl.dicom_out import write_results_job

        if finished.future is not None:
            try:
                finished.entry["dicom_out"] = finished.future.result()
            except Exception as exc:  # BrokenProcessPool and the like: the job never ran to its end
                self._drop_pool(exc)
                finished.entry["dicom_out"] = write_results_job(*finished.job)
            finished.future = None
        finished.job = None
        status = str(finished.entry.get("dicom_out", ""))
        if status.startswith("error"):
            log.warning("DICOM results not written for %s: %s", finished.entry["file"], status[len("error: "):])

    def _collect(self, keep_at_most: int | None = None) -> None:
        """Move finished files (in order) to the rows ready for the next commit.

        Files whose DICOM output is still being written stay queued, unless more than
        ``keep_at_most`` are queued: then the oldest are waited for.
        """
        while self.finished and (
            self.finished[0].done() or (keep_at_most is not None and len(self.finished) > keep_at_most)
        ):
            head = self.finished.popleft()
            self._resolve(head)
            self.ready_rows.extend(head.rows)
            self.ready_entries.append(head.entry)

    def commit(self) -> None:
        self._collect()
        if not self.ready_entries:
            return
        self.part.commit(self.ready_rows, self.ready_entries)
        if self.progress is not None:
            self.progress.update(len(self.ready_entries))
            self.progress.set_postfix(failed=self.failed, refresh=False)
        self.ready_rows, self.ready_entries = [], []
        self.last_commit = time.monotonic()
        if self.kill_after is not None and self.part.journaled >= self.kill_after:
            self.part.torn_write_and_kill()


# --------------------------------------------------------------------------- public entry point
def score(
    checkpoint_path: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    rois_csv: str | Path | None = None,
    batch_size: int = 16,
    workers: int = 2,
    device: str = "auto",
    resume: bool = False,
    strict: bool = False,
    keep_ids: bool = False,
    dicom_out: str | Path | None = None,
    progress: bool = True,
) -> ScoreSummary:
    """Score every file under ``inputs`` with the checkpoint; write predictions.csv + summary.json to out_dir.

    Raises ScoreError (or CheckpointError) for bad arguments/checkpoint; per-file problems never
    raise: they become ``status=error`` rows. ``strict`` only affects ``ScoreSummary.exit_status``
    via the CLI. Returns the merged summary (the same on every rank).
    """
    from spine_dfl.checkpoint import load_checkpoint
    from spine_dfl.io import find_inputs

    del strict  # the exit status is decided by the caller from the summary
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # A spawned helper process (DICOM writers) is re-running an unguarded script: stop before
        # anything touches out_dir, which belongs to the parent run.
        raise ScoreError(
            "score() called while a helper process was starting: call it under "
            "`if __name__ == '__main__':` in scripts"
        )
    if batch_size < 1:
        raise ScoreError(f"batch size must be at least 1, got {batch_size}")
    if workers < 0:
        raise ScoreError(f"workers must be 0 or more, got {workers}")
    if not inputs:
        raise ScoreError("no inputs given")
    missing = [str(p) for p in inputs if not Path(p).exists()]
    if missing:
        raise ScoreError(f"input(s) not found: {', '.join(missing[:5])}")
    out_dir = Path(out_dir)
    started = time.monotonic()
    dist = _init_distributed()
    try:
        torch_device = _resolve_device(device, dist)
        loaded = load_checkpoint(checkpoint_path, map_location="cpu")  # CheckpointError: usage error
        pre = loaded.preprocessing
        class_names = list(loaded.class_names)
        rois = None
        if pre.use_roi:
            if rois_csv is None:
                raise ScoreError(
                    f"{checkpoint_path}: this model was trained on vertebra ROIs and needs --rois "
                    "(a CSV keyed by sop_instance_uid or image, with vertebra, x_min, y_min, x_max, y_max; "
                    "`spine-dfl synth` writes one as rois.csv)"
                )
            rois = load_rois(rois_csv)
        elif rois_csv is not None:
            log.warning("the checkpoint scores whole images; --rois %s is ignored", rois_csv)
        model = loaded.model.to(torch_device).eval()
        columns = _columns(class_names, keep_ids)
        # Absolute paths: unambiguous for whoever reads the CSV, and stable keys for --resume.
        files = [os.path.abspath(p) for p in find_inputs([Path(p) for p in inputs])]

        if dist.rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
            if not resume:
                shutil.rmtree(out_dir / PARTIAL_DIR, ignore_errors=True)
                for name in (PREDICTIONS, SUMMARY):
                    (out_dir / name).unlink(missing_ok=True)
        dist.barrier()
        earlier: dict[str, _DoneFile] = collect_done(out_dir, columns) if resume else {}
        pending = [f for f in files if f not in earlier]
        mine = pending[dist.rank :: dist.world]
        dist.barrier()  # every rank has read the earlier parts before anyone appends
        if resume and dist.rank == 0:
            log.info("resume: %d of %d files already done, %d to score", len(files) - len(pending), len(files), len(pending))

        dicom_config = None
        if dicom_out is not None:
            from spine_dfl.dicom_out import DicomOutConfig

            dicom_config = DicomOutConfig(
                out_dir=str(Path(dicom_out).resolve()),
                class_names=tuple(class_names),
                run_key=_run_key(checkpoint_path, out_dir),
                algorithm_parameters=(f"checkpoint {Path(checkpoint_path).name}",),
            )
            try:
                dicom_config.writer()  # the folder must be creatable: a usage error, not 1000 file errors
            except OSError as exc:
                raise ScoreError(f"--dicom-out {dicom_out}: cannot create the folder ({exc})") from exc

        attempt = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}-rank{dist.rank}"
        part = PartWriter(out_dir / PARTIAL_DIR, attempt, columns)
        kill_after = int(os.environ[KILL_AFTER_ENV]) if os.environ.get(KILL_AFTER_ENV) else None
        bar = _progress_bar(len(mine), dist, progress)
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(_main_process_threads(torch_device, workers, dist) if workers > 0 else previous_threads)
        dicom_pool = _dicom_pool(workers) if dicom_config is not None and mine else None
        scorer = _Scorer(model, class_names, torch_device, batch_size, part, keep_ids, dicom_config, dicom_pool,
                         bar, kill_after, int(pre.input_size))
        try:
            if mine:
                dataset = FileSamples([Path(f) for f in mine], pre, rois, keep_ids, geometry=dicom_config is not None)
                for item in _iterate(dataset, workers):
                    scorer.add(item)
            scorer.flush()
        finally:
            part.close()
            torch.set_num_threads(previous_threads)
            if scorer.dicom_pool is not None:
                scorer.dicom_pool.shutdown(wait=True, cancel_futures=True)
            if bar is not None:
                bar.close()
        dist.barrier()

        summary: ScoreSummary | None = None
        if dist.rank == 0:
            summary = _merge(out_dir, files, columns, earlier_count=len(files) - len(pending))
            summary.elapsed_s = round(time.monotonic() - started, 3)
            summary.files_per_s = round(summary.scored_this_run / summary.elapsed_s, 3) if summary.elapsed_s > 0 else 0.0
            summary.device = str(torch_device)
            summary.world_size = dist.world
            summary.checkpoint = str(checkpoint_path)
            summary.class_names = class_names
            atomic_write_text(out_dir / SUMMARY, json.dumps(asdict(summary), indent=2) + "\n")
            shutil.rmtree(out_dir / PARTIAL_DIR, ignore_errors=True)  # consumed by the final CSV
        summary = dist.broadcast(summary)
        assert summary is not None
        return summary
    finally:
        dist.close()


def _run_key(checkpoint_path: str | Path, out_dir: Path) -> str:
    """What the DICOM UIDs derive from: the checkpoint's identity and the output folder."""
    path = Path(checkpoint_path)
    try:
        stat = path.stat()
        identity = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    except OSError:
        identity = str(path)
    return f"{identity}|{out_dir.resolve()}"


def _dicom_pool(workers: int) -> Any:
    """Processes that write SR/SC objects (highdicom is pure Python: about 0.3 s CPU per image).

    None with ``workers == 0`` (written inline). Spawned, not forked: the parent may hold a CUDA
    context and DataLoader state that a fork must not inherit; the job lives in dicom_out, which
    does not import torch at module level, so the children start quickly (torch is imported once
    per child, by the first SC heatmap; ``init_writer_process`` keeps it to one thread).
    """
    if workers <= 0:
        return None
    from concurrent.futures import ProcessPoolExecutor

    from spine_dfl.dicom_out import init_writer_process

    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=init_writer_process)


def _main_process_threads(device: torch.device, workers: int, dist: _Dist) -> int:
    """Intra-op threads for the scoring process, so that it does not fight its decode workers.

    OpenMP thread pools on busy cores are very slow (every parallel region waits for threads
    that are descheduled): measured here, a 2-core machine with one decode worker ran 5x faster
    with one model thread. CUDA: the process only stages batches, 1 thread. CPU: the cores left
    after the workers (per rank under torchrun), at least 1.
    """
    if device.type == "cuda":
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world) or 1)
    return max(1, cores // max(1, local_world) - workers)


def _progress_bar(total: int, dist: _Dist, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    desc = "scoring" if dist.world == 1 else f"scoring [rank {dist.rank}]"
    # tqdm shows files/s and the ETA from its rate; one line per rank.
    return tqdm(total=total, unit="file", desc=desc, position=dist.rank, dynamic_ncols=True, file=sys.stderr)


def _iterate(dataset: FileSamples, workers: int) -> Iterator[dict[str, Any]]:
    """File items from DataLoader workers (decode overlaps the model), in completion order."""
    kwargs: dict[str, Any] = {}
    if workers > 0:
        # A few files queued per worker keep the model fed; memory stays a few files per worker.
        kwargs.update(prefetch_factor=4, in_order=False)
    # No pin_memory here: the scorer copies each model batch into its own pinned buffer once,
    # which a pinned file item would only precede with a second copy.
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_as_is, **kwargs)
    yield from loader


def _merge(out_dir: Path, files: Sequence[str], columns: Sequence[str], earlier_count: int) -> ScoreSummary:
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
    scored = failed = rows = 0
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
    )


# --------------------------------------------------------------------------- CLI glue
def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``spine-dfl score`` (the CLI delegates to :func:`run_score_command`)."""
    parser.add_argument("checkpoint", type=Path, help="checkpoint written by `spine-dfl train`")
    parser.add_argument("inputs", nargs="+", help="files and folders (recursive; DICOM by content, DICOMDIR followed)")
    parser.add_argument("--rois", type=Path, default=None,
                        help="ROI CSV for ROI models: sop_instance_uid or image, vertebra, x_min, y_min, x_max, y_max")
    parser.add_argument("--out", type=Path, default=Path("runs/score"), help="output folder (default runs/score)")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per model batch (default 16)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes for decoding (default 2)")
    parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:N")
    parser.add_argument("--resume", action="store_true", help="keep earlier results in --out and score only missing files")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any file failed")
    parser.add_argument("--keep-ids", action="store_true", help="add a patient_id column (patient IDs are omitted by default)")
    parser.add_argument("--dicom-out", type=Path, default=None,
                        help="also write a Comprehensive SR and an overlay Secondary Capture per scored DICOM image here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_score_command(args: argparse.Namespace) -> int:
    """Run ``score`` from parsed CLI args; returns the exit status (0 done, 1 --strict with failures, 2 usage)."""
    from spine_dfl.checkpoint import CheckpointError

    try:
        summary = score(
            args.checkpoint,
            args.inputs,
            args.out,
            rois_csv=args.rois,
            batch_size=args.batch_size,
            workers=args.workers,
            device=args.device,
            resume=args.resume,
            strict=args.strict,
            keep_ids=args.keep_ids,
            dicom_out=args.dicom_out,
            progress=not args.no_progress,
        )
    except (ScoreError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if int(os.environ.get("RANK", "0") or 0) == 0:
        print(
            f"{summary.found} file(s): {summary.scored} scored, {summary.failed} failed"
            + (f" ({', '.join(f'{k}: {v}' for k, v in summary.failed_by_reason.items())})" if summary.failed else "")
            + f"; {summary.predictions_csv}"
        )
    return summary.exit_status(args.strict)
