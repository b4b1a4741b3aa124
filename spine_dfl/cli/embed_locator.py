"""``spine-dfl embed-locator``: one checkpoint file that grades and locates (and, with ``--view``, whose
locator carries its view gate)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from spine_dfl.cli.common import EXIT_OK
from spine_dfl.io.errors import InputError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed-locator", help="write a grader checkpoint that carries its vertebra locator",
                       usage="%(prog)s [-h] [--view VIEW] GRADER LOCATOR OUT | --view VIEW LOCATOR OUT",
                       description="Copy the grader checkpoint with the locator inside it: score, explain and "
                                   "evaluate then find the vertebrae without --rois or --locator. With --view, the "
                                   "locator first gets the view classifier (spine-dfl view-train) inside it; "
                                   "'--view VIEW LOCATOR OUT' writes only the locator with its view gate.")
    p.add_argument("paths", type=Path, nargs="+", metavar="GRADER LOCATOR OUT",
                   help="grader checkpoint (spine-dfl train), locator checkpoint (spine-dfl train --config "
                        "locator_cpu), the combined checkpoint to write; with --view the grader may be left out")
    p.add_argument("--view", type=Path, metavar="VIEW", help="view checkpoint (spine-dfl view-train) to embed in the locator")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spine_dfl.locate.checkpoint import embed_locator

    paths = list(args.paths)
    if len(paths) != 3 and not (args.view is not None and len(paths) == 2):
        raise InputError("embed-locator takes GRADER LOCATOR OUT, or --view VIEW LOCATOR OUT")
    if args.view is None:
        print(f"grader with its locator -> {embed_locator(*paths)}")
        return EXIT_OK
    from spine_dfl.gate.view_checkpoint import embed_view

    if len(paths) == 2:
        print(f"locator with its view gate -> {embed_view(paths[0], args.view, paths[1])}")
        return EXIT_OK
    grader, locator, out = paths
    with tempfile.TemporaryDirectory(dir=Path(out).parent if Path(out).parent.is_dir() else None) as tmp:
        gated = embed_view(locator, args.view, Path(tmp) / "locator_with_view.pt")
        print(f"grader with its locator and view gate -> {embed_locator(grader, gated, out)}")
    return EXIT_OK
