"""The scoring loop: file items -> model batches -> rows of finished files -> the part's journal.

Samples of consecutive files are packed into batches of ``batch_size`` (a file may span batches);
a file whose samples are all predicted becomes its rows. Nothing but the current batch and the
files it spans is held in memory.

Probabilities are the fused logits' softmax at the checkpoint's fused temperature (``engine.calibration``).
With the checkpoint's shift statistics (``engine.shift``) every sample's Mahalanobis distance is taken
from the same forward pass; a file's shift score is their mean, on every row with ``in_distribution``,
and with ``refuse_shifted`` a file above the threshold becomes a failed file (``SHIFT_REFUSAL``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from spine_dfl.predictions import STATUS_ERROR, STATUS_OK, text_rows
from spine_dfl.score.dicom_jobs import DicomResults, Finished
from spine_dfl.score.journal import PartWriter

if TYPE_CHECKING:
    from tqdm import tqdm

    from spine_dfl.engine.shift import ShiftModel
    from spine_dfl.model.dfl import DFLOutput

# Completed files are made durable (rows, then journal, each flushed + fsynced) at most this often,
# so that a kill loses at most this much work and fast GPU runs do not spend their time in fsync.
COMMIT_INTERVAL_S = 0.5


@dataclass
class _Pending:
    item: dict[str, Any]
    probs: np.ndarray  # (n, M) float32, filled as batches complete
    filled: int = 0
    evidence: np.ndarray | None = None  # (n, H, W) float32 predicted-class evidence (DICOM output only)
    distances: np.ndarray | None = None  # (n,) float32 shift distances (with shift statistics only)


SHIFT_REFUSAL = "unlike the training images"


def shift_refusal(score: float, threshold: float) -> str:
    """The failed file's reason (``score.errors`` groups every one under ``SHIFT_REFUSAL``)."""
    return f"{SHIFT_REFUSAL} (shift score {score:.1f} > threshold {threshold:.1f}): not graded"


def _withdraw_levels(item: dict[str, Any]) -> None:
    """An image unlike the training images keeps no anchored level names (``locate.anchors.withdraw_levels``):
    its vertebrae become V1.. in the table, the SR and the SC."""
    from spine_dfl.locate.anchors import withdraw_levels

    cells = item.get("extras") or []
    if len(cells) == len(item["vertebrae"]):
        names = withdraw_levels(cells)
        if names is not None:
            item["vertebrae"] = list(names)


class Scorer:
    """Runs the model over file items and commits completed files to a PartWriter."""

    def __init__(
        self, model: torch.nn.Module, class_names: Sequence[str], columns: Sequence[str], device: torch.device,
        batch_size: int, part: PartWriter, dicom: DicomResults | None = None, progress: tqdm | None = None,
        temperature: float = 1.0, shift: ShiftModel | None = None, refuse_shifted: bool = False,
    ) -> None:
        self.model = model
        self.temperature = float(temperature)  # the fused logits' (engine.calibration)
        self.shift = None if shift is None else shift.to(device)  # engine.shift.ShiftModel or None
        self.refuse_shifted = refuse_shifted
        self.class_names = list(class_names)
        self.columns = list(columns)
        self.device = device
        self.batch_size = batch_size
        self.part = part
        self.dicom = dicom  # the overlay's heatmaps need the P-stream response maps: only then requested
        self.progress = progress
        self.finished: deque[Finished] = deque()
        self.queue: deque[_Pending] = deque()
        self.queued_samples = 0
        self.ready_rows: list[list[str]] = []
        self.ready_entries: list[dict[str, Any]] = []
        self.last_commit = time.monotonic()
        self.scored = self.failed = 0
        self.amp_dtype = None
        self.staging: torch.Tensor | None = None  # pinned host buffer of one batch (CUDA only)
        if device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def add(self, item: dict[str, Any]) -> None:
        if not item["ok"]:
            self._finish(item, None)
        else:
            n = len(item["vertebrae"])
            self.queue.append(_Pending(item, np.zeros((n, len(self.class_names)), np.float32),
                                       distances=None if self.shift is None else np.zeros(n, np.float32)))
            self.queued_samples += n
        while self.queued_samples >= self.batch_size:
            self._run_batch()
        if (self.ready_entries or self.finished) and time.monotonic() - self.last_commit >= COMMIT_INTERVAL_S:
            self.commit()

    def flush(self) -> None:
        while self.queued_samples > 0:
            self._run_batch()
        self._collect(keep_at_most=0)
        self.commit()

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor, list[tuple[_Pending, int, int]]]:
        """The next ``batch_size`` queued samples on the device, their ROI boxes in input pixels, and
        which file each slice belongs to."""
        pieces: list[np.ndarray] = []
        boxes: list[np.ndarray] = []
        owners: list[tuple[_Pending, int, int]] = []  # (file, first sample, count)
        need = self.batch_size
        for pending in self.queue:
            if need == 0:
                break
            take = min(need, len(pending.item["vertebrae"]) - pending.filled)
            pieces.append(pending.item["images"][pending.filled : pending.filled + take])
            boxes.append(pending.item["roi_input"][pending.filled : pending.filled + take])
            owners.append((pending, pending.filled, take))
            need -= take
        count = self.batch_size - need
        rois = torch.from_numpy(np.concatenate(boxes)).to(self.device)
        if self.device.type != "cuda":
            return torch.from_numpy(np.concatenate(pieces)), rois, owners
        if self.staging is None:
            self.staging = torch.empty((self.batch_size, *pieces[0].shape[1:]), pin_memory=True)
        # One copy into pinned memory, then an asynchronous host-to-device copy (the .cpu() of the
        # results waits for this batch before the buffer is reused).
        np.concatenate(pieces, out=self.staging[:count].numpy())
        return self.staging[:count].to(self.device, non_blocking=True), rois, owners

    @torch.inference_mode()
    def _run_batch(self) -> None:
        """Forward the next ``batch_size`` queued samples (spanning one or more files)."""
        from spine_dfl.heatmap.evidence import class_evidence

        batch, rois, owners = self._batch()
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            output = self.model(batch, return_maps=self.dicom is not None, roi=rois)
        probs = torch.softmax(output.fused.float() / self.temperature, dim=1).cpu().numpy()
        distances = None
        if self.shift is not None:
            from spine_dfl.engine.shift import shift_features

            distances = self.shift.distances(shift_features(output)).cpu().numpy()
        evidence = None
        if self.dicom is not None:
            searched = self.model.searched_locations(rois, output.response_maps.shape[-2:])
            evidence = class_evidence(output.response_maps, probs.argmax(axis=1),
                                      self.model.filters_per_class, searched).cpu().numpy()
            reads = self._top_reads(batch, output, probs.argmax(axis=1))
        del output
        offset = 0
        for pending, start, take in owners:
            pending.probs[start : start + take] = probs[offset : offset + take]
            if distances is not None and pending.distances is not None:
                pending.distances[start : start + take] = distances[offset : offset + take]
            if evidence is not None:
                if pending.evidence is None:
                    pending.evidence = np.empty((len(pending.item["vertebrae"]), *evidence.shape[1:]), np.float32)
                pending.evidence[start : start + take] = evidence[offset : offset + take]
                pending.item.setdefault("top_reads", np.empty((len(pending.item["vertebrae"]), 2)))
                pending.item["top_reads"][start : start + take] = reads[offset : offset + take]
            pending.filled = start + take
            offset += take
            self.queued_samples -= take
        while self.queue and self.queue[0].filled == len(self.queue[0].item["vertebrae"]):
            done = self.queue.popleft()
            self._finish(done.item, done.probs, done.evidence, done.distances)

    def _top_reads(self, batch: torch.Tensor, output: DFLOutput, preds: np.ndarray) -> np.ndarray:
        """(B, 2) input (x, y) where each sample's strongest patch reads (its predicted class's strongest
        filter at its peak): the SC draws that patch where explain draws it. Needs gradients, so it
        runs outside inference mode on a copy of the batch."""
        from spine_dfl.model.effective_field import gradient_centres

        model, k = self.model, int(self.model.filters_per_class)
        rows = torch.arange(batch.shape[0], device=batch.device)
        classes = torch.as_tensor(preds, device=batch.device).long()
        scores = output.peak_score.float().view(batch.shape[0], -1, k)[rows, classes]  # (B, k)
        channel = classes * k + scores.argmax(dim=1)
        with torch.inference_mode(False):
            images = batch.clone().float()
            centres, _ = gradient_centres(model.filter_responses, images, rows.clone(),
                                          channel.clone(), output.peak_index[rows, channel].clone())
        return centres.numpy()

    def _rows(self, item: dict[str, Any], probs: np.ndarray | None) -> list[list[str]]:
        fields = {
            "image": item["file"], "status": STATUS_OK if item["ok"] else STATUS_ERROR, "error": item["error"],
            "sop_instance_uid": item["sop_instance_uid"], "study_instance_uid": item["study_instance_uid"],
            "patient_id": item["patient_id"], **item.get("shift", {}),
        }
        return text_rows(self.columns, fields, item["vertebrae"], probs if item["ok"] else None, item["rois"],
                         self.class_names, item.get("extras"))

    def _judge_shift(self, item: dict[str, Any], distances: np.ndarray | None) -> bool:
        """Put the file's shift cells in ``item["shift"]``; True when it is refused (``refuse_shifted``)."""
        if distances is None or self.shift is None or not item["ok"] or len(distances) == 0:
            return False
        from spine_dfl.engine.shift import shift_cells

        score = float(np.mean(distances, dtype=np.float64))
        item["shift"] = {**shift_cells(score, self.shift.threshold), "shift_threshold": self.shift.threshold}
        if item["shift"]["in_distribution"] == "no":
            _withdraw_levels(item)
        if not (self.refuse_shifted and item["shift"]["in_distribution"] == "no"):
            return False
        item["ok"], item["error"] = False, shift_refusal(score, self.shift.threshold)
        return True

    def _finish(self, item: dict[str, Any], probs: np.ndarray | None, evidence: np.ndarray | None = None,
                distances: np.ndarray | None = None) -> None:
        if self._judge_shift(item, distances):
            probs = evidence = None
        rows = self._rows(item, probs)
        finished = Finished(rows, {"file": item["file"], "rows": len(rows)})
        if item["ok"]:
            self.scored += 1
        else:
            self.failed += 1
        if self.dicom is not None:
            self.dicom.start(item, probs, finished, evidence)
        item["images"] = None  # drop the arrays as soon as the rows exist
        self.finished.append(finished)
        # A file is journaled only after its SR/SC exist, so --resume never skips missing DICOM output.
        self._collect(keep_at_most=self.dicom.max_in_flight if self.dicom is not None else 0)

    def _collect(self, keep_at_most: int | None = None) -> None:
        """Move finished files (in order) to the rows ready for the next commit.

        Files whose DICOM output is still being written stay queued, unless more than
        ``keep_at_most`` are queued: then the oldest are waited for.
        """
        while self.finished and (
            self.finished[0].done() or (keep_at_most is not None and len(self.finished) > keep_at_most)
        ):
            head = self.finished.popleft()
            if self.dicom is not None:
                self.dicom.resolve(head)
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
