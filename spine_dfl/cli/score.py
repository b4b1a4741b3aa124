"""``spine-dfl score``: batch-score folders of PACS exports."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from spine_dfl.cli.common import EXIT_INPUTS_FAILED, EXIT_OK, add_batch_size, add_device, add_out_options, prepare_out


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="batch-score folders of PACS-exported DICOM (optionally results back as DICOM)",
                       description="Score every file under the inputs; every file ends as scored or failed with a "
                                   "reason. Exit 3 when any file failed (the others are scored), as explain.")
    p.add_argument("checkpoint", type=Path, help="checkpoint written by `spine-dfl train`")
    p.add_argument("inputs", nargs="+", help="files and folders (recursive; DICOM by content, DICOMDIR followed)")
    p.add_argument("--rois", type=Path, default=None,
                   help="ROI CSV for ROI models: sop_instance_uid or image, vertebra, x_min, y_min, x_max, y_max")
    p.add_argument("--locator", type=Path, default=None,
                   help="locator checkpoint (spine-dfl train, task: locator): without --rois it finds, labels and "
                        "measures each radiograph's vertebrae (default: the one embedded in the checkpoint, if any)")
    p.add_argument("--out", type=Path, default=Path("runs/score"), help="output folder (default runs/score)")
    add_batch_size(p)
    p.add_argument("--workers", type=int, default=2, help="decode worker processes (default 2; 0 decodes in the scoring process, without crash isolation)")
    add_device(p)
    add_out_options(p, resume="keep earlier results in --out and score only missing files")
    p.add_argument("--keep-ids", action="store_true",
                   help="add a patient_id column (patient IDs are omitted by default)")
    p.add_argument("--dicom-out", type=Path, default=None,
                   help="also write a Comprehensive SR and an overlay Secondary Capture per scored DICOM image here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--ignore-view-tags", action="store_true",
                   help="refuse files by modality / SOP class only, not by BodyPartExamined, ViewPosition or "
                        "PatientOrientation (for a site whose tags are wrong)")
    p.add_argument("--refuse-shifted", action="store_true",
                   help="images unlike the training images (shift score above the checkpoint's threshold) become "
                        "failed files instead of graded ones (default: graded, flagged in_distribution=no)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """0 every file scored, 3 some failed (each with its reason); bad arguments or checkpoint: 2 (cli.main)."""
    from spine_dfl.score.run import score

    prepare_out(args.out, "score", overwrite=args.overwrite, resume=args.resume, can_resume=True)
    summary = score(args.checkpoint, args.inputs, args.out, rois_csv=args.rois, batch_size=args.batch_size,
                    workers=args.workers, device=args.device, resume=args.resume, strict=True,
                    keep_ids=args.keep_ids, dicom_out=args.dicom_out, progress=not args.no_progress,
                    locator=args.locator, ignore_view_tags=args.ignore_view_tags,
                    refuse_shifted=args.refuse_shifted)
    if int(os.environ.get("RANK", "0") or 0) == 0:
        reasons = ", ".join(f"{k}: {v}" for k, v in summary.failed_by_reason.items())
        print(f"{summary.found} file(s): {summary.scored} scored, {summary.failed} failed"
              + (f" ({reasons})" if summary.failed else "") + f"; {summary.predictions_csv}")
        if summary.shift_check == "available":
            print(f"{summary.shifted} image(s) unlike the training images (in_distribution = no)")
        else:
            print(f"shift check {summary.shift_check}")
    return EXIT_INPUTS_FAILED if summary.failed else EXIT_OK
