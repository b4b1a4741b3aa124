"""``spine-dfl embed-locator``: one checkpoint file that grades and locates."""

from __future__ import annotations

import argparse
from pathlib import Path

from spine_dfl.cli.common import EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed-locator", help="write a grader checkpoint that carries its vertebra locator",
                       description="Copy the grader checkpoint with the locator inside it: score, explain and "
                                   "evaluate then find the vertebrae without --rois or --locator.")
    p.add_argument("grader", type=Path, help="grader checkpoint (spine-dfl train)")
    p.add_argument("locator", type=Path, help="locator checkpoint (spine-dfl train --config locator_cpu)")
    p.add_argument("out", type=Path, help="the combined checkpoint to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spine_dfl.locate.checkpoint import embed_locator

    print(f"grader with its locator -> {embed_locator(args.grader, args.locator, args.out)}")
    return EXIT_OK
