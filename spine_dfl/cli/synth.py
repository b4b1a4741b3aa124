"""``spine-dfl synth``: write the synthetic cohort."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spine_dfl.cli.common import EXIT_OK, EXIT_USAGE, plain


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write the synthetic lateral-spine DICOM cohort (images, manifest.csv, rois.csv)",
                       description="Generate a synthetic cohort of lateral thoracolumbar radiographs as DICOM, "
                                   "with a per-vertebra manifest (Genant grades) and a label-free rois.csv.")
    p.add_argument("out", type=Path, help="output folder (created)")
    p.add_argument("--patients", type=int, default=40, help="number of patients, one radiograph each (default 40)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same bytes (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace a cohort already in OUT")
    p.add_argument("--generator", choices=("synth", "drr"), default="synth",
                   help="synth: the 2D drawing generator (default); drr: a 3D phantom CT per patient projected by the "
                        "cone-beam DRR renderer, a lateral and an AP film each, cut as clinics cut them (whole "
                        "thoracolumbar, lumbar, thoracic, junction), either facing direction, some stored turned; "
                        "writes films.csv and projections.json beside the usual tables")
    p.add_argument("--style", default="default",
                   help="site acquisition style (detector, processing, habitus, ROI convention): a preset of "
                        "spine_dfl.synth.style.STYLES; the same seed gives the same patients and grades in every "
                        "style (default: default)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        if args.generator == "drr":
            if args.style != "default":
                raise ValueError("--style belongs to the 2D generator; the drr generator varies its acquisition itself")
            from spine_dfl.phantom.cohort import generate_drr_cohort

            summary = generate_drr_cohort(args.out, patients=args.patients, seed=args.seed, overwrite=args.overwrite)
        else:
            from spine_dfl.synth import generate_cohort

            summary = generate_cohort(args.out, patients=args.patients, seed=args.seed, overwrite=args.overwrite,
                                      style=args.style).summary
    except FileExistsError as exc:
        print(f"error: {args.out} already holds a synthetic cohort; use --overwrite to replace it ({exc})",
              file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(plain(summary), indent=2))
    return EXIT_OK
