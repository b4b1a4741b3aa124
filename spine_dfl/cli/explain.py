"""``spine-dfl explain``: patch heatmaps and a gallery."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spine_dfl.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="patch heatmaps: where each vertebra's grade came from",
                       description="Draw the predicted class's P-stream patches and evidence maps on the radiographs, "
                                   "with a G-stream Grad-CAM beside them, and an HTML gallery.")
    p.add_argument("checkpoint", type=Path, help="checkpoint (.pt) written by spine-dfl train")
    p.add_argument("inputs", type=Path, nargs="+",
                   help="a manifest CSV, or DICOM files / folders (then --rois, unless the model is whole-image)")
    p.add_argument("--out", type=Path, default=Path("runs/explain"),
                   help="output folder: one PNG per sample, patches.json, index.html (default runs/explain)")
    p.add_argument("--top", type=int, default=5, help="patches drawn per sample, strongest first (default 5)")
    p.add_argument("--split", default=None, help="manifest split to explain (default: every row)")
    p.add_argument("--rois", type=Path, default=None,
                   help="CSV of vertebra ROIs for DICOM inputs: sop_instance_uid or image, vertebra, "
                        "x_min, y_min, x_max, y_max (original pixels)")
    p.add_argument("--locator", type=Path, default=None,
                   help="locator checkpoint: without --rois it finds each file's vertebrae (and draws their six points); "
                        "default: the one embedded in the checkpoint, if any")
    p.add_argument("--batch-size", type=int, default=8, help="images per model batch (default 8)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the model runs")
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
    """0 all explained, 1 some samples failed (or all), 2 bad usage or input."""
    from spine_dfl.explain.inputs import explain_inputs, explain_records
    from spine_dfl.explain.run import NoSampleExplained

    if args.top < 1:
        print("--top must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    options = {"top_n": args.top, "device": args.device, "batch_size": args.batch_size}
    try:
        if _is_manifest(args.inputs):
            explained = explain_records(args.checkpoint, args.inputs[0], args.out, split=args.split, **options)
        else:
            explained = explain_inputs(args.checkpoint, args.inputs, args.rois, args.out, locator=args.locator,
                                       ignore_view_tags=args.ignore_view_tags, **options)
    except NoSampleExplained as exc:
        print(f"spine-dfl explain: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ValueError as exc:  # a bad checkpoint, manifest, ROI table or input path
        print(f"spine-dfl explain: {exc}", file=sys.stderr)
        return EXIT_USAGE
    failed = len(explained.failures)
    print(f"{len(explained.entries)} sample(s) explained -> {explained.index_html}"
          + (f"; {failed} could not be explained (listed in the gallery)" if failed else ""))
    return EXIT_FAILED if failed else EXIT_OK
