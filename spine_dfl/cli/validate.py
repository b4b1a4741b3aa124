"""``spine-dfl validate``: check a manifest (reads image headers only; imports no torch or MONAI)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spine_dfl.cli.common import EXIT_OK, EXIT_USAGE


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a manifest and print rows, patients, classes per split and per vertebra",
                       description="Validate a manifest CSV (files exist, ROIs inside images, splits, duplicates, "
                                   "patients in one split). Exits 2 when there are errors, as every command given a bad manifest.")
    p.add_argument("manifest", type=Path, help="manifest CSV (see data_manifests/README.md)")
    p.add_argument("--no-files", action="store_true", help="skip the checks that open image files (faster)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spine_dfl.data.manifest import validate_manifest

    summary, errors = validate_manifest(args.manifest, check_files=not args.no_files, check_rois=not args.no_files)
    if errors:
        # ManifestError's style (as every command prints a bad manifest), with every error, not the first 20.
        print(f"error: {len(errors)} error(s) in manifest {args.manifest}:", *errors, sep="\n  ", file=sys.stderr)
        return EXIT_USAGE
    print(summary)
    return EXIT_OK
