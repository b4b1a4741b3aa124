"""Command line: ``spine-dfl <command>``. The only package that knows every part.

Each command is one module here: ``add_parser(sub)`` declares its arguments and ``run(args)``
calls one library function and prints its result. Nothing heavy is imported at module level
(torch, torchvision, MONAI, pandas load inside ``run``), so ``--help`` and ``validate`` start fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from spine_dfl import __version__
from spine_dfl.cli import (
    demo, drr, embed_locator, evaluate, explain, phantom, score, serve, synth, train, validate, view_train,
)
from spine_dfl.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

# Order of the commands in ``spine-dfl --help``.
COMMANDS = (demo, synth, phantom, drr, validate, train, view_train, embed_locator, evaluate, explain, score, serve)


def _setup_logging(verbose: bool) -> None:
    rank = os.environ.get("RANK")
    fmt = ("%(asctime)s %(levelname)s %(name)s: %(message)s" if rank is None
           else f"%(asctime)s [rank {rank}] %(levelname)s: %(message)s")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, datefmt="%H:%M:%S")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spine-dfl",
        description="Vertebra-level classification of spine radiographs with DFL-CNN, with patch heatmaps "
                    "and DICOM results for PACS.",
    )
    parser.add_argument("--version", action="version", version=f"spine-dfl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        # Every error of ours (ManifestError, ConfigError, CheckpointError, ...) is a ValueError whose
        # message is complete: a manifest's message already lists its rows, so print it once.
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
