"""Writing the results: ``<out_dir>/<source SOPInstanceUID>_SR.dcm`` and ``..._SC.dcm`` per scored image.

Each file is written to a temporary name and renamed (``spine_dfl.atomic``): a PACS forwarder
watching the folder never sees half a file. ``write_results_job`` is the picklable unit a process
pool runs: one file's SR + SC, its failure a status string, never an exception.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from spine_dfl.atomic import atomic_output
from spine_dfl.dicom_out.codes import SC_DERIVATION, SC_DERIVATION_HEATMAP
from spine_dfl.dicom_out.findings import DicomOutputError, DicomResultFiles, VertebraFinding
from spine_dfl.dicom_out.overlay import render_roi_overlay
from spine_dfl.dicom_out.sc import build_overlay_sc
from spine_dfl.dicom_out.source import check_source
from spine_dfl.dicom_out.sr import build_sr

__all__ = ["DicomOutConfig", "DicomResultWriter", "OverlayRenderer", "init_writer_process", "write_results_job"]

OverlayRenderer = Callable[[np.ndarray, Sequence[VertebraFinding], Sequence[str]], np.ndarray]


def _atomic_dcmwrite(dataset: Dataset, path: Path) -> None:
    with atomic_output(path, "wb") as handle:
        pydicom.dcmwrite(handle, dataset, enforce_file_format=True)


def _read_source_header(source_path: str | Path) -> Dataset:
    from spine_dfl.io import ImageReadError, read_dicom_header

    try:
        return read_dicom_header(source_path)
    except ImageReadError as exc:
        raise DicomOutputError(f"cannot read the source header ({exc.reason})") from exc


class DicomResultWriter:
    """Writes the SR and SC of each scored DICOM image into `out_dir`.

    run_key: any string identifying the scoring run's model and output (UIDs derive from it).
    render_overlay: (image (rows, cols) float, findings, class_names) -> (rows, cols, 3) uint8;
                    defaults to :func:`render_roi_overlay` (heatmaps of findings with evidence maps,
                    ROI boxes, captions).
    """

    def __init__(
        self,
        out_dir: str | Path,
        class_names: Sequence[str],
        run_key: str,
        algorithm_parameters: Sequence[str] = (),
        render_overlay: OverlayRenderer | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.class_names = list(class_names)
        self.run_key = run_key
        self.algorithm_parameters = list(algorithm_parameters)
        self.render_overlay = render_overlay or render_roi_overlay
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # highdicom logs every copied module at INFO, naming source instances: noise in batch runs.
        logging.getLogger("highdicom").setLevel(max(logging.getLogger("highdicom").level, logging.WARNING))

    def write(
        self,
        source_path: str | Path,
        findings: Sequence[VertebraFinding],
        display_image: np.ndarray | None = None,
        source_header: Dataset | None = None,
    ) -> DicomResultFiles:
        """SR + SC for one source image.

        display_image: (rows, cols) float, bone bright, in the source's pixel grid (e.g.
        ``io.read_image(path).pixels``); read from ``source_path`` when None.
        Raises DicomOutputError (or ImageReadError) with the reason.
        """
        source = _read_source_header(source_path) if source_header is None else source_header
        check_source(source)
        if display_image is None:
            from spine_dfl.io import read_image

            display_image = read_image(source_path).pixels
        if tuple(display_image.shape[:2]) != (int(source.Rows), int(source.Columns)):
            raise DicomOutputError(
                f"display image {display_image.shape} does not match the source's {source.Rows} x {source.Columns}"
            )
        try:
            sr = build_sr(source, findings, self.class_names, self.run_key, self.algorithm_parameters)
            overlay = self.render_overlay(display_image, findings, self.class_names)
            with_heatmap = any(finding.evidence is not None for finding in findings)
            sc = build_overlay_sc(source, overlay, self.run_key, SC_DERIVATION_HEATMAP if with_heatmap else SC_DERIVATION)
        except DicomOutputError:
            raise
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            # highdicom validates values (names, codes, orientations) and raises these.
            raise DicomOutputError(f"cannot build result objects ({type(exc).__name__}: {exc})") from exc
        stem = str(source.SOPInstanceUID)
        sr_path = self.out_dir / f"{stem}_SR.dcm"
        sc_path = self.out_dir / f"{stem}_SC.dcm"
        _atomic_dcmwrite(sr, sr_path)
        _atomic_dcmwrite(sc, sc_path)
        return DicomResultFiles(sr_path, sc_path, str(sr.SOPInstanceUID), str(sc.SOPInstanceUID))


@dataclass(frozen=True)
class DicomOutConfig:
    """Arguments of a DicomResultWriter, picklable: sent to the processes that write results."""

    out_dir: str
    class_names: tuple[str, ...]
    run_key: str
    algorithm_parameters: tuple[str, ...] = ()

    def writer(self) -> DicomResultWriter:
        return DicomResultWriter(self.out_dir, self.class_names, self.run_key, self.algorithm_parameters)


_WRITERS: dict[DicomOutConfig, DicomResultWriter] = {}


def init_writer_process() -> None:
    """Initializer of the processes of a writer pool: one intra-op thread for the heatmap resampling.

    The resampling is small, and the cores belong to the scoring process and its decode workers
    (busy OpenMP pools on shared cores are very slow). Torch is imported there only on the first
    heatmap, and reads OMP_NUM_THREADS then; a process that already has it is set directly.
    """
    os.environ["OMP_NUM_THREADS"] = "1"
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def write_results_job(config: DicomOutConfig, source_path: str, findings: Sequence[VertebraFinding]) -> str:
    """SR + SC for one file: "written" or "error: <reason>"; never raises (one file must not stop a run).

    A module-level function so a process pool can run it; the writer is built once per process.
    """
    writer = _WRITERS.get(config)
    if writer is None:
        writer = _WRITERS[config] = config.writer()
    try:
        writer.write(source_path, findings)
    except DicomOutputError as exc:
        reason = str(exc)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the file's DICOM-output status
        # ImageReadError carries the reason without the path; anything else: type and message.
        reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
    else:
        return "written"
    return "error: " + " ".join(str(reason).split())
