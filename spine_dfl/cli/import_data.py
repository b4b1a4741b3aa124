"""``spine-dfl import FORMAT SOURCE OUT``: a public data set's published layout to a manifest (``spine_dfl.datasets``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spine_dfl.cli.common import EXIT_OK, add_out_options, plain, prepare_out

_DESCRIPTION = """\
Turn a public data set, in the layout it is published in, into the project's manifest (docs/datasets/).

  verse  VerSe 2019/2020 (BIDS: rawdata/sub-*/..._ct.nii.gz, derivatives/sub-*/..._seg-vert_msk.nii.gz and
         ..._seg-subreg_ctd.json in P-I-R order): each CT rendered by `spine-dfl drr` into OUT/films/<scan>/;
         OUT/manifest.csv has the lateral films' vertebrae with levels, ROIs, six points and the grades of
         --grades (CSV: subject, vertebra, grade), else 'ungraded'. --ap renders the AP film too.
  buu    BUU-LSPINE (LA/NNNN-S-AGEYv.jpg with header-less x1,y1,x2,y2,code CSVs): L1-L5 rows, ROI from the
         endplate corners, six points with the middle points derived (column middle_points), the anterior
         corner checked, S1's superior endplate in the s1_* columns; JPEGs referenced, not copied.
  vindr  VinDr-SpineXR (annotations/{train,test}.csv, {train,test}_images/<image_id>.dicom): image-level
         labels (abnormal: a Vertebral collapse / Fracture box; normal otherwise) in OUT/manifest.csv; with
         --locator CK the located vertebrae in OUT/vertebrae.csv, weakly labelled (label_source).

Patients are split train/val/test by patient (--seed). OUT/import_report.json lists what could not be mapped.
A file not in its published format prints one line 'error: <file>: row N, field F: ...' and exits 2;
OUT is written whole or not at all."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from spine_dfl.datasets import FORMATS

    p = sub.add_parser("import", help="a public data set (verse, buu, vindr) to a manifest",
                       description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("format", choices=FORMATS, help="the data set's format")
    p.add_argument("source", type=Path, help="the data set's top folder, as published")
    p.add_argument("out", type=Path, help="output folder (created; an existing one needs --overwrite)")
    p.add_argument("--seed", type=int, default=0, help="seed of the patient-level split (default 0)")
    p.add_argument("--ap", action="store_true", help="verse: render the AP film beside the lateral")
    p.add_argument("--grades", type=Path, help="verse: Genant grades CSV (subject, vertebra, grade)")
    p.add_argument("--locator", type=Path, metavar="CK", help="vindr: a locator checkpoint for per-vertebra rows")
    add_out_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spine_dfl.datasets import import_dataset

    prepare_out(args.out, "import", overwrite=args.overwrite, replace=False)
    result = import_dataset(args.format, args.source, args.out, seed=args.seed, overwrite=args.overwrite,
                            views=("lateral", "ap") if args.ap else None, grades=args.grades, locator=args.locator)
    print(json.dumps(plain({"out": str(result.out), "manifests": [str(m) for m in result.manifests],
                            "report": str(result.report_path), **result.summary}), indent=2))
    return EXIT_OK
