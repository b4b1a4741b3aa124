"""The node's study scorer: the checkpoint loaded once, each study scored through the score library.

``StudyScorer(checkpoint)`` is the ``score_study`` callable a ``Node`` runs. For a study it calls
``score.run.score_prepared`` on the study's instance files (decoded in a supervised worker process,
so a decoder that crashes fails one instance) and writes, per scored image, the same Comprehensive SR
and overlay Secondary Capture that ``spine-dfl score --dicom-out`` writes. Their UIDs derive from
``result_uid_seed(study UID, instance UIDs, model version)``: scoring the same study again after a
crash rewrites the same instances, and a late instance gives new, superseding ones. The model version
names the software and the SHA-256 of the checkpoint (and of a separate locator).

An instance that cannot be scored (undecodable, ``no vertebrae found``, no DICOM result written) is a
failed instance with its reason; the rest of the study is still scored.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from spine_dfl import __version__
from spine_dfl.io.errors import CheckpointError, InputError
from spine_dfl.serve.node import NodeError, ScoreOutcome, result_uid_seed

log = logging.getLogger(__name__)

TABLE_DIR = "table"  # predictions.csv of the study (kept in the spool beside the results, for review)
DICOM_DIR = "dicom"


class StudyScorer:
    """``score_study(study_uid, instance_paths, out_dir) -> ScoreOutcome`` with a model loaded once.

    checkpoint: a grader checkpoint; a per-vertebra grader needs a locator, embedded in it
    (``spine-dfl embed-locator``) or given as ``locator``. Anything else is a ``NodeError`` (or the
    checkpoint's own ``CheckpointError``) at start-up, never a failure per study.
    decode_workers: decode processes per study (0: in the scoring thread, without crash isolation).
    ignore_view_tags: the input gate (``gate.header``) checks modality and SOP class only, not the
    body part and view tags (an instance it refuses is a failed instance with its reason).
    """

    def __init__(
        self, checkpoint: str | Path, *, locator: str | Path | None = None, device: str = "auto",
        batch_size: int = 16, decode_workers: int = 1, ignore_view_tags: bool = False,
    ) -> None:
        from spine_dfl.dicom_out.codes import MODEL_NAME
        from spine_dfl.score.dicom_jobs import checkpoint_sha256
        from spine_dfl.score.errors import NoRoiSource
        from spine_dfl.score.run import prepare_scoring

        if batch_size < 1 or decode_workers < 0:
            raise InputError("need batch_size >= 1 and decode_workers >= 0")
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise NodeError(f"{checkpoint}: no such checkpoint file")
        try:
            self.setup = prepare_scoring(checkpoint, device=device, locator=locator, ignore_view_tags=ignore_view_tags)
        except NoRoiSource:
            raise NodeError(
                f"{checkpoint}: a per-vertebra model needs the vertebra locator: give --locator LOC, or a "
                "checkpoint that embeds one (spine-dfl embed-locator GRADER LOCATOR OUT)"
            ) from None
        identity = [f"checkpoint sha256 {self.setup.checkpoint_sha256}"]
        if locator is not None and self.setup.locator is not None:
            identity.append(f"locator sha256 {checkpoint_sha256(locator)}")
        self.model_version = " | ".join([f"{MODEL_NAME} {__version__}", *identity])
        self.batch_size, self.decode_workers = batch_size, decode_workers

    def __call__(self, study_uid: str, instance_paths: list[str], out_dir: str) -> ScoreOutcome:
        from spine_dfl.score.run import score_prepared

        # The spool names each instance file by its SOP Instance UID (serve.spool).
        run_key = result_uid_seed(study_uid, [Path(path).stem for path in instance_paths], self.model_version)
        dicom_dir = Path(out_dir) / DICOM_DIR
        absolute = {os.path.abspath(path): path for path in instance_paths}
        outcomes = score_prepared(self.setup, list(absolute), Path(out_dir) / TABLE_DIR, dicom_out=dicom_dir,
                                  run_key=run_key, batch_size=self.batch_size, workers=self.decode_workers)
        failed = {}
        for file, done in outcomes.items():
            if not done.ok:
                failed[absolute[file]] = done.error
            elif done.dicom_out != "written":
                failed[absolute[file]] = f"no DICOM result ({done.dicom_out or 'not written'})"
        # SR + SC of every scored image (the node gives each attempt a fresh folder)
        files = sorted(str(path) for path in dicom_dir.glob("*.dcm"))
        return ScoreOutcome(files, failed)

    def describe(self) -> dict[str, Any]:
        """What the node logs at start-up: classes, locator, device (no paths to patient data)."""
        return {"classes": self.setup.class_names, "device": str(self.setup.device),
                "locator": None if self.setup.locator is None else
                ("embedded" if self.setup.locator.embedded else "separate"), "model_version": self.model_version}
