"""TEMPORARY: ``spine-dfl explain``'s arguments and command, until ``spine_dfl.cli.explain`` holds them.

Parses nothing itself beyond choosing the entry point: a single CSV is a manifest
(``explain_records``), anything else image files and folders (``explain_inputs``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from spine_dfl.explain.inputs import ExplainInputError, explain_inputs, explain_records
from spine_dfl.explain.run import NoSampleExplained

__all__ = ["add_explain_arguments", "is_manifest_input", "run_explain_command"]


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``spine-dfl explain CHECKPOINT INPUT... [--out DIR] [--top N] [--split S] [--rois CSV]``."""
    parser.add_argument("checkpoint", type=Path, help="checkpoint (.pt) written by spine-dfl train")
    parser.add_argument("inputs", type=Path, nargs="+",
                        help="a manifest CSV, or DICOM files / folders (then --rois, unless the model is whole-image)")
    parser.add_argument("--out", type=Path, default=Path("runs/explain"),
                        help="output folder: one PNG per sample, patches.json, index.html (default runs/explain)")
    parser.add_argument("--top", type=int, default=5, help="patches drawn per sample, strongest first (default 5)")
    parser.add_argument("--split", default=None, help="manifest split to explain (default: every row)")
    parser.add_argument("--rois", type=Path, default=None,
                        help="CSV of vertebra ROIs for DICOM inputs: sop_instance_uid or image, vertebra, "
                             "x_min, y_min, x_max, y_max (original pixels)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per model batch (default 8)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the model runs")


def is_manifest_input(inputs: Sequence[Path]) -> bool:
    """True for one CSV/TSV/TXT file that is not DICOM: a manifest, not an image."""
    from spine_dfl.io import is_dicom

    return (len(inputs) == 1 and inputs[0].is_file() and inputs[0].suffix.lower() in {".csv", ".tsv", ".txt"}
            and not is_dicom(inputs[0]))


def run_explain_command(args: argparse.Namespace) -> int:
    """``spine-dfl explain``: 0 all explained, 1 some samples failed, 2 bad usage / input."""
    from spine_dfl.engine.checkpoint import CheckpointError

    if args.top < 1:
        print("--top must be at least 1", file=sys.stderr)
        return 2
    options = {"top_n": args.top, "device": args.device, "batch_size": args.batch_size}
    try:
        if is_manifest_input(args.inputs):
            run = explain_records(args.checkpoint, args.inputs[0], args.out, split=args.split, **options)
        else:
            run = explain_inputs(args.checkpoint, args.inputs, args.rois, args.out, **options)
    except NoSampleExplained as exc:
        print(f"spine-dfl explain: {exc}", file=sys.stderr)
        return 1
    except (CheckpointError, ExplainInputError) as exc:
        print(f"spine-dfl explain: {exc}", file=sys.stderr)
        return 2
    failed = len(run.failures)
    print(f"{len(run.entries)} sample(s) explained -> {run.index_html}"
          + (f"; {failed} could not be explained (listed in the gallery)" if failed else ""))
    return 1 if failed else 0
