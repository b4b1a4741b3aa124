"""``score()``: the library entry point of ``spine-dfl score``.

Every input file ends up either *scored* (one row per vertebra, or one row for a whole-image model)
or *failed* (one row with ``status=error`` and the reason), in ``predictions.csv`` (the predictions
table's columns with status, error and study UID, ``spine_dfl.predictions``) and counted in
``summary.json``.

Pipeline: ``io.find_inputs`` -> ``score.files.FileSamples`` (header, ROIs, decode, eval transforms),
run by supervised decode workers (``score.isolation``: a decoder that kills its process fails
one file, never the run) -> ``score.scorer.Scorer`` (model batches, rows of finished files) ->
``score.journal`` (crash-safe parts, ``--resume``, the final merge).

``prepare_scoring`` (the model, ROIs or locator of a checkpoint) and ``score_prepared`` (one
process, a list of files, SR + SC with a caller's ``run_key``) are the two halves for a caller that
keeps the model loaded: the DICOM node scores each study with them.

Distributed: under ``torchrun`` the pending files are split across ranks (rank r takes
``pending[r::world]``), every rank writes its own part, and rank 0 merges after a barrier (gloo:
barriers and object broadcasts work on CPU and GPU hosts, and ranks may finish far apart).

Privacy: patient names never appear in outputs or logs; patient IDs only with ``keep_ids``. UIDs are
kept. (The optional DICOM results carry the source's patient module, because PACS files them into
the patient's study by it.)
"""

from __future__ import annotations

import datetime
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from spine_dfl.atomic import atomic_write_text
from spine_dfl.engine.distributed import Distributed, init_distributed
from spine_dfl.engine.shift import UNAVAILABLE as SHIFT_UNAVAILABLE
from spine_dfl.score.errors import NoRoiSource, ScoreError
from spine_dfl.score.journal import PARTIAL_DIR, DoneFile, PartWriter, collect_done, merge
from spine_dfl.locate.locating import resolve_locator
from spine_dfl.score.summary import PREDICTIONS, SUMMARY, ScoreSummary

if TYPE_CHECKING:
    from tqdm import tqdm

    from spine_dfl.data.transforms.settings import Preprocessing
    from spine_dfl.dicom_out.writer import DicomOutConfig
    from spine_dfl.engine.calibration import Temperatures
    from spine_dfl.engine.checkpoint import LoadedCheckpoint
    from spine_dfl.engine.shift import ShiftModel
    from spine_dfl.io.rois import RoiTable
    from spine_dfl.locate.locating import LocatorSource

log = logging.getLogger(__name__)


@dataclass
class ScoringSetup:
    """What a run scores with (``prepare_scoring``: the model and everything derived from the checkpoint),
    and for ``score()`` what it scores."""

    checkpoint: str
    checkpoint_sha256: str  # of the file as loaded: the SR's algorithm parameter, the node's model version
    device: torch.device
    model: torch.nn.Module
    preprocessing: Preprocessing
    class_names: list[str]
    columns: list[str]
    rois: RoiTable | None
    locator: LocatorSource | None
    files: list[str] = field(default_factory=list)
    dicom_config: DicomOutConfig | None = None
    ignore_view_tags: bool = False  # the input gate ignores BodyPartExamined / ViewPosition / PatientOrientation
    temperatures: Temperatures | None = None  # engine.calibration.Temperatures of the checkpoint (all 1 when uncalibrated)
    shift: ShiftModel | None = None  # engine.shift.ShiftModel, or None: the checkpoint has no training-distribution statistics
    refuse_shifted: bool = False  # images unlike the training images become failed files


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
    locator: str | Path | None = None,
    ignore_view_tags: bool = False,
    refuse_shifted: bool = False,
) -> ScoreSummary:
    """Score every file under ``inputs`` with the checkpoint; write predictions.csv + summary.json to out_dir.

    ``workers``: decode processes (0: decode in this process, without crash isolation).
    ``strict``: failed files make the run fail (``ScoreSummary.exit_status()`` is then 3).
    ``locator``: a locator checkpoint; without ``rois_csv`` it finds each radiograph's vertebrae (a
    grader checkpoint that embeds a locator uses that one when ``locator`` is not given).
    A DICOM whose header is not that of a lateral spine radiograph fails with the input gate's reason
    (``gate.header``); ``ignore_view_tags``: only its modality / SOP class check, not the body part and view.
    ``refuse_shifted``: an image whose shift score is above the checkpoint's threshold (unlike the
    training images, ``engine.shift``) fails as "unlike the training images (...): not graded".
    Raises ScoreError (or CheckpointError) for bad arguments/checkpoint; per-file problems never
    raise: they become ``status=error`` rows. Returns the merged summary (the same on every rank).
    """
    _check_arguments(inputs, batch_size, workers)
    out_dir = Path(out_dir)
    started = time.monotonic()
    dist = init_distributed("cpu", backend="gloo", timeout=datetime.timedelta(hours=12))
    try:
        setup = _prepare(checkpoint_path, inputs, out_dir, rois_csv, device, keep_ids, dicom_out, dist, locator)
        setup.ignore_view_tags = ignore_view_tags
        setup.refuse_shifted = refuse_shifted
        if dist.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            if not resume:
                shutil.rmtree(out_dir / PARTIAL_DIR, ignore_errors=True)
                for name in (PREDICTIONS, SUMMARY):
                    (out_dir / name).unlink(missing_ok=True)
        dist.barrier()
        earlier = collect_done(out_dir, setup.columns) if resume else {}
        pending = [f for f in setup.files if f not in earlier]
        dist.barrier()  # every rank has read the earlier parts before anyone appends
        if resume and dist.is_main:
            log.info("resume: %d of %d files already done, %d to score",
                     len(setup.files) - len(pending), len(setup.files), len(pending))
        _score_files(setup, pending[dist.rank :: dist.world_size], out_dir, batch_size, workers, keep_ids, progress, dist)
        dist.barrier()
        summary: ScoreSummary | None = None
        if dist.is_main:
            summary = merge(out_dir, setup.files, setup.columns, earlier_count=len(setup.files) - len(pending))
            summary.elapsed_s = round(time.monotonic() - started, 3)
            summary.files_per_s = round(summary.scored_this_run / summary.elapsed_s, 3) if summary.elapsed_s > 0 else 0.0
            summary.device, summary.world_size = str(setup.device), dist.world_size
            summary.checkpoint, summary.class_names, summary.strict = str(checkpoint_path), setup.class_names, strict
            summary.shift_check = "available" if setup.shift is not None else SHIFT_UNAVAILABLE
            atomic_write_text(out_dir / SUMMARY, json.dumps(asdict(summary), indent=2) + "\n")
            shutil.rmtree(out_dir / PARTIAL_DIR, ignore_errors=True)  # consumed by the final CSV
        summary = dist.broadcast_object(summary)
        assert summary is not None
        return summary
    finally:
        dist.close()


def _check_arguments(inputs: Sequence[str | Path], batch_size: int, workers: int) -> None:
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # A spawned helper process is re-running an unguarded script: stop before anything touches
        # out_dir, which belongs to the parent run.
        raise ScoreError("score() called while a helper process was starting: call it under "
                         "`if __name__ == '__main__':` in scripts")
    if batch_size < 1:
        raise ScoreError(f"batch size must be at least 1, got {batch_size}")
    if workers < 0:
        raise ScoreError(f"workers must be 0 or more, got {workers}")
    if not inputs:
        raise ScoreError("no inputs given")
    missing = [str(p) for p in inputs if not Path(p).exists()]
    if missing:
        raise ScoreError(f"input(s) not found: {', '.join(missing[:5])}")


def _prepare(
    checkpoint_path: str | Path, inputs: Sequence[str | Path], out_dir: Path, rois_csv: str | Path | None,
    device: str, keep_ids: bool, dicom_out: str | Path | None, dist: Distributed, locator: str | Path | None = None,
) -> ScoringSetup:
    """``prepare_scoring``, the input files and the DICOM-output settings; usage errors raise ScoreError."""
    from spine_dfl.io import find_inputs
    from spine_dfl.score.dicom_jobs import run_key

    setup = prepare_scoring(checkpoint_path, device=device, locator=locator, rois_csv=rois_csv, keep_ids=keep_ids,
                            local_rank=dist.local_rank if device == "auto" or dist.enabled else None)
    # Absolute paths: unambiguous for whoever reads the CSV, and stable keys for --resume.
    setup.files = [os.path.abspath(p) for p in find_inputs([Path(p) for p in inputs])]
    if dicom_out is not None:
        setup.dicom_config = dicom_config(dicom_out, setup, run_key(checkpoint_path, out_dir))
    return setup


def prepare_scoring(
    checkpoint_path: str | Path, *, device: str = "auto", locator: str | Path | None = None,
    rois_csv: str | Path | None = None, keep_ids: bool = False, local_rank: int | None = None,
    ignore_view_tags: bool = False,
) -> ScoringSetup:
    """Device, model, ROIs or locator of a checkpoint, loaded once for any number of ``score_prepared`` calls.

    ``ignore_view_tags``: the input gate checks only modality and SOP class (see ``score``).
    Usage errors (an ROI model with neither ROIs nor a locator, a bad device) raise ScoreError, a bad
    checkpoint CheckpointError.
    """
    from spine_dfl.engine.checkpoint import load_checkpoint
    from spine_dfl.engine.device import DeviceUnavailable, resolve_device
    from spine_dfl.io.rois import read_rois
    from spine_dfl.predictions import predictions_columns
    from spine_dfl.score.dicom_jobs import checkpoint_sha256

    try:
        torch_device = resolve_device(device, local_rank)
    except DeviceUnavailable as exc:
        raise ScoreError(str(exc)) from None
    loaded = load_checkpoint(checkpoint_path, map_location="cpu")  # CheckpointError: usage error
    pre = loaded.preprocessing
    class_names = list(loaded.class_names)
    rois = source = None
    if pre.use_roi and rois_csv is None:
        source = resolve_locator(locator, loaded.raw, checkpoint_path)  # CheckpointError: usage error
    elif locator is not None:
        log.warning("--locator %s is not used: %s", locator, "the ROIs come from --rois" if pre.use_roi
                    else "the checkpoint scores whole images")
    if pre.use_roi and source is None:
        if rois_csv is None:
            raise NoRoiSource(
                f"{checkpoint_path}: this model was trained on vertebra ROIs and needs --rois "
                "(a CSV keyed by sop_instance_uid or image, with vertebra, x_min, y_min, x_max, y_max; "
                "`spine-dfl synth` writes one as rois.csv) or --locator (a locator checkpoint)"
            )
        rois = read_rois(rois_csv)  # RoiTableError (a ValueError naming the file and rows): usage error
    elif rois_csv is not None:
        log.warning("the checkpoint scores whole images; --rois %s is ignored", rois_csv)
    return ScoringSetup(
        checkpoint=str(checkpoint_path), checkpoint_sha256=checkpoint_sha256(checkpoint_path), device=torch_device,
        model=loaded.model.to(torch_device).eval(),
        preprocessing=pre, class_names=class_names,
        columns=predictions_columns(class_names, status=True, study=True, patient_id=keep_ids, roi_source=pre.use_roi,
                                    morphometry=source is not None, orientation=pre.use_roi, shift=True),
        rois=rois, locator=source, ignore_view_tags=ignore_view_tags,
        temperatures=loaded.temperatures, shift=_shift_statistics(loaded),
    )


def _shift_statistics(loaded: LoadedCheckpoint) -> ShiftModel | None:
    """The checkpoint's shift statistics; None, logged once, for a checkpoint without them."""
    from spine_dfl.engine.shift import UNAVAILABLE_WARNING

    if loaded.shift is None:
        log.warning(UNAVAILABLE_WARNING)
    return loaded.shift


def score_prepared(
    setup: ScoringSetup, files: Sequence[str], out_dir: str | Path, *, dicom_out: str | Path | None = None,
    run_key: str = "", batch_size: int = 16, workers: int = 1, dicom_writers: int = 0,
) -> dict[str, DoneFile]:
    """Score ``files`` (absolute paths) with a prepared model into ``out_dir/predictions.csv``; with ``dicom_out``
    also each scored DICOM image's SR + SC there, their UIDs derived from ``run_key``.

    One process, no resume: what a caller that keeps the model loaded (the DICOM node) runs per batch
    of files. ``workers``: decode processes (crash isolation), ``dicom_writers``: SR/SC writer processes
    (0: written in this process). Returns each file's outcome (``ok``, ``error``, ``dicom_out`` status);
    per-file problems never raise.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out_dir / PARTIAL_DIR, ignore_errors=True)
    config = None if dicom_out is None else dicom_config(dicom_out, setup, run_key)
    files = list(files)
    _score_files(replace(setup, files=files, dicom_config=config), files, out_dir, batch_size, workers,
                 keep_ids="patient_id" in setup.columns, progress=False, dist=Distributed(), dicom_writers=dicom_writers)
    done = collect_done(out_dir, setup.columns)  # with the journal's DICOM-output status of each file
    merge(out_dir, files, setup.columns, earlier_count=0)
    shutil.rmtree(out_dir / PARTIAL_DIR, ignore_errors=True)
    return {file: done[file] for file in files}


def dicom_config(dicom_out: str | Path, setup: ScoringSetup, run_key: str) -> DicomOutConfig:
    """The SR/SC writer settings: output folder, UIDs from ``run_key``, the checkpoint's name and SHA-256
    as the SR's algorithm parameters (TID 4019). An uncreatable folder is a ScoreError."""
    from spine_dfl.dicom_out import DicomOutConfig
    from spine_dfl.score.dicom_jobs import algorithm_parameters

    config = DicomOutConfig(
        out_dir=str(Path(dicom_out).resolve()), class_names=tuple(setup.class_names), run_key=run_key,
        algorithm_parameters=algorithm_parameters(setup.checkpoint, setup.checkpoint_sha256),
    )
    try:
        config.writer()  # the folder must be creatable: a usage error, not 1000 file errors
    except OSError as exc:
        raise ScoreError(f"--dicom-out {dicom_out}: cannot create the folder ({exc})") from exc
    return config


def _score_files(
    setup: ScoringSetup, mine: list[str], out_dir: Path, batch_size: int, workers: int, keep_ids: bool,
    progress: bool, dist: Distributed, dicom_writers: int | None = None,
) -> None:
    """Score this rank's files into its own part of ``out_dir`` (SR/SC writers: ``dicom_writers``, by default
    as many as decode workers)."""
    from spine_dfl.score.dicom_jobs import DicomResults, writer_pool
    from spine_dfl.score.files import FileSamples
    from spine_dfl.score.isolation import iterate_items
    from spine_dfl.score.scorer import Scorer

    attempt = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}-rank{dist.rank}"
    part = PartWriter(out_dir / PARTIAL_DIR, attempt, setup.columns)
    bar = _progress_bar(len(mine), dist, progress)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(model_threads(setup.device, dist))
    dicom = None
    if setup.dicom_config is not None and mine:
        model = setup.model
        from spine_dfl.model.effective_field import model_patch_side

        input_size = int(setup.preprocessing.input_size)
        geometry = {"input_size": input_size, "stride": float(model.stride),
                    "center_offset": float(model.rf_center_offset), "patch_side": model_patch_side(model, input_size)}
        dicom = DicomResults(setup.dicom_config, writer_pool(workers if dicom_writers is None else dicom_writers), setup.class_names, geometry)
    scorer = Scorer(setup.model, setup.class_names, setup.columns, setup.device, batch_size, part, dicom, bar,
                    temperature=1.0 if setup.temperatures is None else setup.temperatures.fused, shift=setup.shift,
                    refuse_shifted=setup.refuse_shifted)
    try:
        if mine:
            dataset = FileSamples(mine, setup.preprocessing, setup.rois, keep_ids, geometry=dicom is not None,
                                  locator=setup.locator, ignore_view_tags=setup.ignore_view_tags)
            for item in iterate_items(dataset, workers):
                scorer.add(item)
        scorer.flush()
    finally:
        part.close()
        torch.set_num_threads(previous_threads)
        if dicom is not None:
            dicom.close()
        if bar is not None:
            bar.close()


def model_threads(device: torch.device, dist: Distributed) -> int:
    """Intra-op threads of the scoring process: every core of this rank (CPU), 1 (CUDA: it only stages
    batches). The decode workers run at a lower priority, so they take only the time the model leaves."""
    if device.type == "cuda":
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size) or 1)
    return max(1, cores // max(1, local_world))


def _progress_bar(total: int, dist: Distributed, enabled: bool) -> tqdm | None:
    if not enabled:
        return None
    from tqdm import tqdm

    desc = "scoring" if dist.world_size == 1 else f"scoring [rank {dist.rank}]"
    # tqdm shows files/s and the ETA from its rate; one line per rank.
    return tqdm(total=total, unit="file", desc=desc, position=dist.rank, dynamic_ncols=True, file=sys.stderr)
