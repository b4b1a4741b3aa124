"""SR and overlay Secondary Capture per scored DICOM image (``score --dicom-out``), in writer processes.

highdicom is pure Python (about 0.3 s CPU per image), so the objects are written by a small pool
of spawned processes while scoring goes on; a file is journaled only after its objects exist, so
``--resume`` never skips missing DICOM output. A broken pool (a writer that died) falls back to
writing in the scoring process.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from concurrent.futures import Future, ProcessPoolExecutor

    from spine_dfl.dicom_out.findings import VertebraFinding
    from spine_dfl.dicom_out.writer import DicomOutConfig

log = logging.getLogger(__name__)


def run_key(checkpoint_path: str | Path, out_dir: Path) -> str:
    """What the DICOM UIDs derive from: the checkpoint's identity and the output folder."""
    path = Path(checkpoint_path)
    try:
        stat = path.stat()
        identity = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    except OSError:
        identity = str(path)
    return f"{identity}|{out_dir.resolve()}"


def checkpoint_sha256(checkpoint_path: str | Path) -> str:
    """Hex SHA-256 of the checkpoint file: the model's identity in the SR and in the node's result UIDs."""
    digest = hashlib.sha256()
    with open(checkpoint_path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def algorithm_parameters(checkpoint_path: str | Path, sha256: str) -> tuple[str, ...]:
    """The SR's algorithm parameters (TID 4019): the checkpoint's file name and SHA-256."""
    return (f"checkpoint {Path(checkpoint_path).name}", f"checkpoint sha256 {sha256}")


def writer_pool(workers: int) -> ProcessPoolExecutor | None:
    """Processes that write SR/SC objects; None with ``workers == 0`` (written inline).

    Spawned, not forked: the parent may hold a CUDA context that a fork must not inherit; the job
    lives in dicom_out, which does not import torch at module level, so the children start quickly
    (``init_writer_process`` keeps each to one thread).
    """
    if workers <= 0:
        return None
    from concurrent.futures import ProcessPoolExecutor

    from spine_dfl.dicom_out import init_writer_process

    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=init_writer_process)


class Finished:
    """A file's rows and journal entry; with DICOM output in other processes, also the job and its future."""

    def __init__(self, rows: list[list[str]], entry: dict[str, Any]) -> None:
        self.rows, self.entry = rows, entry
        self.job: tuple[DicomOutConfig, str, list[VertebraFinding]] | None = None
        self.future: Future[str] | None = None

    def done(self) -> bool:
        return self.future is None or self.future.done()


class DicomResults:
    """Starts and collects the DICOM output of finished files."""

    def __init__(self, config: DicomOutConfig, pool: ProcessPoolExecutor | None, class_names: Sequence[str], geometry: dict[str, float]) -> None:
        self.config = config
        self.pool = pool
        self.class_names = list(class_names)
        self.geometry = geometry  # input_size, stride, center_offset of the evidence maps
        # Files whose DICOM output is being written are held back; bounded so memory stays flat.
        self.max_in_flight = 4 * max(1, getattr(pool, "_max_workers", 1))

    def start(self, item: dict[str, Any], probs: np.ndarray | None, finished: Finished,
              evidence: np.ndarray | None) -> None:
        """Submit (or run inline) the SR/SC writing of a scored DICOM file; others get a "skipped" status.

        Each finding carries its sample's evidence map (a few hundred floats), affine and region for
        the SC's heatmap; the job holds them only until the file's SR/SC are written.
        """
        from spine_dfl.dicom_out import VertebraFinding, write_results_job

        entry = finished.entry
        if not item["ok"] or probs is None:
            entry["dicom_out"] = "skipped: file not scored"
            return
        if not item["sop_instance_uid"] or not item["study_instance_uid"]:
            entry["dicom_out"] = "skipped: not a DICOM image"
            return
        shift = item.get("shift") or {}  # the image's shift_score, in_distribution, shift_threshold (scorer)
        findings = [
            VertebraFinding(vertebra=vertebra, roi=roi, predicted=self.class_names[int(p.argmax())],
                            probabilities={c: float(v) for c, v in zip(self.class_names, p)}, evidence=evidence_map,
                            cells={**shift, **cells})
            for vertebra, roi, p, evidence_map, cells in zip(
                item["vertebrae"], item["rois"], probs, self._evidence_maps(item, evidence),
                item.get("extras") or [{}] * len(item["vertebrae"]))
        ]
        finished.job = (self.config, item["file"], findings)
        if self.pool is not None:
            try:
                finished.future = self.pool.submit(write_results_job, *finished.job)
                return
            except Exception as exc:  # BrokenProcessPool: a writer died earlier
                self._drop_pool(exc)
        entry["dicom_out"] = write_results_job(*finished.job)

    def _evidence_maps(self, item: dict[str, Any], evidence: np.ndarray | None) -> list[Any]:
        """Per sample a ``heatmap.evidence.EvidenceMap`` (grid map + affine + region), or None without geometry."""
        from spine_dfl.heatmap.evidence import EvidenceMap

        count = len(item["vertebrae"])
        affines, regions = item.get("to_original"), item.get("regions") or []
        if evidence is None or affines is None or len(regions) != count or len(evidence) != count:
            return [None] * count
        reads = item.get("top_reads")  # (n, 2) input (x, y) each sample's strongest patch reads (scorer)
        return [
            EvidenceMap(values=evidence[j].copy(), to_original=np.asarray(affines[j], dtype=np.float64),
                        region=regions[j], input_size=int(self.geometry["input_size"]),
                        stride=float(self.geometry["stride"]), center_offset=float(self.geometry["center_offset"]),
                        patch_side=float(self.geometry.get("patch_side", 0.0)),
                        top_read=None if reads is None else (float(reads[j][0]), float(reads[j][1])))
            if regions[j] is not None else None
            for j in range(count)
        ]

    def _drop_pool(self, exc: BaseException) -> None:
        if self.pool is not None:
            log.warning("DICOM writer processes failed (%s: %s); writing in the main process from now on",
                        type(exc).__name__, exc)
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None

    def resolve(self, finished: Finished) -> None:
        """Take the DICOM-output status; a broken pool falls back to writing inline."""
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

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
