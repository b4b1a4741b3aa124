"""TEMPORARY: ``spine-dfl score``'s argument handling until ``spine_dfl.cli.score`` takes it over."""

from __future__ import annotations

import argparse
import os
import sys

from spine_dfl.score.summary import EXIT_USAGE


def run_score_command(args: argparse.Namespace) -> int:
    """Run ``score`` from parsed CLI args; returns the exit status (0 done, 1 --strict with failures, 2 usage)."""
    from spine_dfl.engine.checkpoint import CheckpointError
    from spine_dfl.score.errors import ScoreError
    from spine_dfl.score.run import score

    try:
        summary = score(
            args.checkpoint, args.inputs, args.out, rois_csv=args.rois, batch_size=args.batch_size,
            workers=args.workers, device=args.device, resume=args.resume, strict=args.strict,
            keep_ids=args.keep_ids, dicom_out=args.dicom_out, progress=not args.no_progress,
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
    return summary.exit_status()
