"""``spine-dfl drr``: DRR films (DX DICOM), manifest and projection matrices of a CT."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spine_dfl.cli.common import EXIT_OK, add_out_options, prepare_out

_DESCRIPTION = """\
Cone-beam digitally reconstructed radiographs of a CT in HU (NIfTI with a usable affine: the phantom's,
a VerSe scan, a TotalSegmentator-labelled scan): a point source and a flat detector, HU to attenuation,
exponential, quantum noise, log and processing.

OUT gets images/<ct>_<view>.dcm (DX For Presentation, one per view), manifest.csv and projections.json.
manifest.csv has the project's manifest columns, one row per vertebra (C1-L6, T13; not sacrum or coccyx)
of the LATERAL film whose body lies wholly in the film; AP films get no rows (they are listed in
projections.json). Levels come from the centroid labels (VerSe numbering, T13 = 28, L6 = 25). The label is
the vertebra's grade from --grades, else 'ungraded'. With --mask the ROI and six points come from the
projected body (the mask's vertebra anterior of the canal): the ROI is the body's silhouette box padded 7%
a side, the points lie on its upper and lower edges 10% of its depth inside the anterior and posterior
edges and at mid-depth. Without a mask the ROI is a box 1.5 x the centroid spacing around the projected
centroid and the points are empty. projections.json: per image its 3x4 projection_matrix from the CT's
world (RAS mm, from its affine) to continuous pixels (x = column, y = row, the top-left pixel's corner at
0,0), its geometry, and where each centroid falls (centroid_px, in_film share, roi, points).

--grades CSV: columns 'vertebra' (a level name such as L1 or T13, or a VerSe label number) and 'grade'
(Genant 0-3 or normal/mild/moderate/severe); other columns are ignored. Patient identity: PatientID from a
BIDS sub-<id> in the CT's file name, else its stem; a sidecar <ct>.json next to it may give PatientID,
PatientName, StudyInstanceUID and StudyDate.

Bad input (a CT without a usable affine, a centroid file not in VerSe's format, a label outside 1-28, a
centroid outside the volume, a mask whose shape or affine differs from the CT's, a bad grades row, an
existing OUT without --overwrite) prints one line 'error: ...', exits 2 and writes nothing."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("drr", help="DRRs of a CT: DX DICOM per view, manifest.csv, projections.json",
                       description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ct", type=Path, help="CT volume in HU (.nii / .nii.gz)")
    p.add_argument("--out", type=Path, required=True, help="output folder (created; an existing one needs --overwrite)")
    p.add_argument("--centroids", type=Path, help="VerSe centroid JSON (..._seg-subreg_ctd.json)")
    p.add_argument("--mask", type=Path, help="VerSe label mask on the CT's grid (..._seg-vert_msk.nii.gz); needs --centroids")
    p.add_argument("--grades", type=Path, help="grades CSV (vertebra, grade); needs --centroids")
    p.add_argument("--view", choices=("lateral", "ap", "both"), default="lateral", help="films to render (default lateral)")
    p.add_argument("--sid", type=float, default=1000.0, metavar="MM", help="source to detector distance (default 1000)")
    p.add_argument("--sod", type=float, default=850.0, metavar="MM",
                   help="source to isocentre distance, DistanceSourceToPatient (default 850)")
    p.add_argument("--pixel", type=float, default=0.5, metavar="MM", help="detector pitch, ImagerPixelSpacing (default 0.5)")
    p.add_argument("--fov", type=float, nargs=2, metavar=("W", "H"),
                   help="detector size in mm (width, height); default: sized to the patient's body with a 5%% margin")
    p.add_argument("--source-side", choices=("left", "right"), default="left",
                   help="lateral source on the patient's left (ViewPosition RL, anterior on the image's left) or "
                        "right (LL) (default left)")
    p.add_argument("--rotation", type=float, default=0.0, metavar="DEG",
                   help="source and detector turned about the patient's long axis through the isocentre (default 0)")
    p.add_argument("--seed", type=int, default=0, help="quantum noise seed; the same seed writes the same bytes (default 0)")
    add_out_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spine_dfl.drr.study import drr_study

    views = ("lateral", "ap") if args.view == "both" else (args.view,)
    # drr_study replaces OUT itself, atomically and only once its inputs proved good: check the rule only.
    prepare_out(args.out, "drr", overwrite=args.overwrite, replace=False)
    result = drr_study(args.ct, args.out, centroids=args.centroids, mask=args.mask, grades=args.grades, views=views,
                       sid_mm=args.sid, sod_mm=args.sod, pixel_mm=args.pixel,
                       fov_mm=tuple(args.fov) if args.fov else None, source_side=args.source_side,
                       rotation_deg=args.rotation, seed=args.seed, overwrite=args.overwrite)
    print(json.dumps(result.summary, indent=2))
    return EXIT_OK
