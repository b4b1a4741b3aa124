"""``spine-dfl explain``: patch heatmaps and a gallery."""

from __future__ import annotations

import argparse
from pathlib import Path

from spine_dfl.cli.common import (
    EXIT_INPUTS_FAILED,
    EXIT_OK,
    EXPLAIN_BATCH_SIZE,
    add_batch_size,
    add_device,
    add_out_options,
    prepare_out,
)
from spine_dfl.io.errors import InputError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="patch heatmaps: where each vertebra's grade came from",
                       description="Draw the predicted class's P-stream patches and evidence maps on the radiographs, "
                                   "with a G-stream Grad-CAM beside them, and an HTML gallery.")
    p.add_argument("checkpoint", type=Path, help="checkpoint (.pt) written by spine-dfl train")
    p.add_argument("inputs", type=Path, nargs="+",
                   help="a manifest CSV, or DICOM files / folders (then --rois, unless the model is whole-image)")
    p.add_argument("--out", type=Path, default=Path("runs/explain"),
                   help="output folder: one PNG per sample, patches.json, index.html (default runs/explain)")
    add_out_options(p)
    p.add_argument("--top", type=int, default=5, help="patches drawn per sample, strongest first (default 5)")
    p.add_argument("--split", default=None, help="manifest split to explain (default: every row)")
    p.add_argument("--rois", type=Path, default=None,
                   help="CSV of vertebra ROIs for DICOM inputs: sop_instance_uid or image, vertebra, "
                        "x_min, y_min, x_max, y_max (original pixels)")
    p.add_argument("--locator", type=Path, default=None,
                   help="locator checkpoint: without --rois it finds each file's vertebrae (and draws their six points); "
                        "default: the one embedded in the checkpoint, if any")
    add_batch_size(p, EXPLAIN_BATCH_SIZE)
    add_device(p)
    p.add_argument("--ignore-view-tags", action="store_true",
                   help="for image files: refuse DICOMs by modality / SOP class only, not by BodyPartExamined, "
                        "ViewPosition or PatientOrientation (for a site whose tags are wrong)")
    p.set_defaults(func=run)


def _is_manifest(inputs: list[Path]) -> bool:
    """One CSV/TSV/TXT file that is not DICOM is a manifest; anything else is image files and folders."""
    from spine_dfl.io import is_dicom

    return (len(inputs) == 1 and inputs[0].is_file() and inputs[0].suffix.lower() in {".csv", ".tsv", ".txt"}
            and not is_dicom(inputs[0]))


def run(args: argparse.Namespace) -> int:
    """0 all explained; 3 some or all samples failed (listed in the gallery); 2 bad usage or input."""
    from spine_dfl.explain.inputs import explain_inputs, explain_records

    if args.top < 1:
        raise InputError("--top must be at least 1")
    prepare_out(args.out, "explain", overwrite=args.overwrite)
    options = {"top_n": args.top, "device": args.device, "batch_size": args.batch_size}
    # NoSampleExplained (every sample failed) is an InputsFailed: exit 3 through cli.main, as below.
    if _is_manifest(args.inputs):
        explained = explain_records(args.checkpoint, args.inputs[0], args.out, split=args.split, **options)
    else:
        explained = explain_inputs(args.checkpoint, args.inputs, args.rois, args.out, locator=args.locator,
                                   ignore_view_tags=args.ignore_view_tags, **options)
    failed = len(explained.failures)
    print(f"{len(explained.entries)} sample(s) explained -> {explained.index_html}"
          + (f"; {failed} could not be explained (listed in the gallery)" if failed else ""))
    return EXIT_INPUTS_FAILED if failed else EXIT_OK
