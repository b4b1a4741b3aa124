"""``spine-dfl synth``: write the synthetic cohort."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spine_dfl.cli.common import EXIT_OK, add_out_options, plain, prepare_out
from spine_dfl.io.errors import InputError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write the synthetic lateral-spine DICOM cohort (images, manifest.csv, rois.csv)",
                       description="Generate a synthetic cohort of lateral thoracolumbar radiographs as DICOM, "
                                   "with a per-vertebra manifest (Genant grades) and a label-free rois.csv.")
    p.add_argument("out", type=Path, help="output folder (created; a non-empty one needs --overwrite)")
    p.add_argument("--patients", type=int, default=40, help="number of patients, one radiograph each (default 40)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same bytes (default 0)")
    add_out_options(p)
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
    if args.generator == "drr" and args.style != "default":
        raise InputError("--style belongs to the 2D generator; the drr generator varies its acquisition itself")
    # The generators replace their own files, after checking their arguments: check the rule only.
    prepare_out(args.out, "synth", overwrite=args.overwrite, replace=False)
    if args.generator == "drr":
        from spine_dfl.phantom.cohort import generate_drr_cohort

        summary = generate_drr_cohort(args.out, patients=args.patients, seed=args.seed, overwrite=args.overwrite)
    else:
        from spine_dfl.synth import generate_cohort

        summary = generate_cohort(args.out, patients=args.patients, seed=args.seed, overwrite=args.overwrite,
                                  style=args.style).summary
    print(json.dumps(plain(summary), indent=2))
    return EXIT_OK
