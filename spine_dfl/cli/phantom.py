"""``spine-dfl phantom``: write 3D phantom CT scans in VerSe's layout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spine_dfl.cli.common import EXIT_OK, add_out_options, plain, prepare_out


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("phantom", help="write 3D phantom CT scans (NIfTI, VerSe masks, centroids, grades)",
                       description="Draw patients in 3D (habitus, bone density, curves, scoliosis, Genant-graded "
                                   "wedge/biconcave/crush fractures, transitional anatomy) and write each as a CT in HU "
                                   "in VerSe's layout: rawdata/sub-<id>/sub-<id>_ct.nii.gz, derivatives/sub-<id>/"
                                   "sub-<id>_seg-vert_msk.nii.gz (VerSe labels), _seg-subreg_ctd.json (centroids), "
                                   "_grades.csv (vertebra,label,grade,shape,height_loss) and _phantom.json (truth), "
                                   "with phantom.json summarising the cohort. Feed a scan to `spine-dfl drr`.")
    p.add_argument("out", type=Path, help="output folder (created; a non-empty one needs --overwrite)")
    p.add_argument("--patients", type=int, default=4, help="number of patients, one CT each (default 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same bytes (default 0)")
    p.add_argument("--voxel-mm", type=float, default=2.0, help="isotropic voxel size in mm, 0.3-5 (default 2)")
    add_out_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spine_dfl.phantom import write_phantom_cohort

    # write_phantom_cohort replaces its own files, after checking its arguments: check the rule only.
    prepare_out(args.out, "phantom", overwrite=args.overwrite, replace=False)
    summary = write_phantom_cohort(args.out, args.patients, args.seed, voxel_mm=args.voxel_mm,
                                   overwrite=args.overwrite)
    print(json.dumps(plain({k: v for k, v in summary.items() if k != "scans"}), indent=2))
    return EXIT_OK
