"""``spine-dfl evaluate``: a grader checkpoint on a manifest split, with a locator end to end, into a report.

The report itself is ``report``'s, from the predictions tables alone; this module composes the
predictions (``workflows.located``), the header gate's warning and the checkpoint's calibration.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from spine_dfl.atomic import atomic_write_text
from spine_dfl.data.manifest import load_manifest
from spine_dfl.engine.checkpoint import read_checkpoint
from spine_dfl.gate.header import file_refusal
from spine_dfl.report import write_evaluation
from spine_dfl.workflows.located import evaluate_located

__all__ = ["checkpoint_calibration", "evaluate", "warn_gate_refusals"]

log = logging.getLogger("spine_dfl")


def evaluate(checkpoint: str | Path, manifest: str | Path, split: str, out_dir: str | Path, device: str = "auto",
             batch_size: int = 32, n_bootstrap: int = 1000, title: str | None = None,
             locator: str | Path | None = None) -> dict[str, Any]:
    """Predict ``split`` of ``manifest`` with ``checkpoint`` and write the report into ``out_dir``.

    With a locator (``locator``, or the one embedded in the checkpoint) the located crops are graded
    too (``workflows.located``): their own predictions.csv and report in ``out_dir/located``, and
    metrics.json gains ``end_to_end`` (their overall and per-level figures, coverage) and ``locator``
    (``locate.evaluate``'s figures). Returns metrics.json's content. Nothing is written when the
    manifest or checkpoint is bad. The manifest is trusted, but a warning says how many of the split's
    images score / serve would refuse by their header (``warn_gate_refusals``).
    """
    by_manifest, by_locator, figures = evaluate_located(checkpoint, locator, manifest, split, device=device,
                                                        batch_size=batch_size)
    warn_gate_refusals(manifest, split)
    title = title if title is not None else f"{Path(manifest).name} [{split}]"
    calibration = checkpoint_calibration(checkpoint)
    metrics = write_evaluation(by_manifest, out_dir, title, n_bootstrap, calibration)
    if by_locator is None:
        return metrics
    located = write_evaluation(by_locator, Path(out_dir) / "located", f"{title}, located crops", n_bootstrap)
    metrics["end_to_end"] = {"overall": located["overall"], "per_vertebra": located.get("per_vertebra"),
                             "coverage": figures["coverage"], "report": "located/report.html"}
    metrics["locator"] = figures["locator"]
    atomic_write_text(Path(out_dir) / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    return metrics


def warn_gate_refusals(manifest: str | Path, split: str | None) -> int:
    """Log one warning when images of ``split`` (every row without a split column) have headers the input
    gate of score / serve refuses (``gate.header``): how many, and one reason (no path, name or ID).
    Returns that count."""
    table = load_manifest(manifest, check_files=False, check_rois=False, require_labels=False).table
    if split is not None and "split" in table.columns:
        table = table[table["split"] == split.lower()]
    images = list(dict.fromkeys(str(image) for image in table["image"]))
    refusals = [reason for reason in map(file_refusal, images) if reason is not None]
    if refusals:
        log.warning("evaluate: %d of %d manifest image(s) have headers that score and serve would refuse "
                    "(e.g. %s); evaluate trusts the manifest and grades them", len(refusals), len(images), refusals[0])
    return len(refusals)


def checkpoint_calibration(checkpoint: str | Path) -> dict[str, Any] | None:
    """The checkpoint's calibration record (``engine.calibration``), None when it has none."""
    record = read_checkpoint(checkpoint).get("calibration")
    return record if isinstance(record, dict) else None
