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
import traceback

from spine_dfl import __version__
from spine_dfl.cli import (
    demo, drr, embed_locator, evaluate, explain, import_data, phantom, review, score, serve, synth, train, validate,
    view_train,
)
from spine_dfl.cli.common import EXIT_BUG, EXIT_INPUTS_FAILED, EXIT_OK, EXIT_USAGE, common_options
from spine_dfl.io.errors import InputError, SpineDflError

__all__ = ["EXIT_BUG", "EXIT_INPUTS_FAILED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

# Order of the commands in ``spine-dfl --help``.
COMMANDS = (demo, synth, phantom, drr, import_data, validate, train, view_train, embed_locator, evaluate, explain,
            score, review, serve)

_EPILOG = f"""\
exit status (every command):
  {EXIT_OK}  done
  {EXIT_BUG}  internal error: a bug; the traceback is printed, please report it
  {EXIT_USAGE}  bad input or usage: a missing or malformed file, manifest, config, checkpoint or option,
     or a non-empty output folder without --overwrite / --resume; one line 'error: ...'
  {EXIT_INPUTS_FAILED}  finished, but some inputs gave no result (score, explain: each listed with its reason)

-v / --verbose works before or after the command."""


class UsageError(InputError):
    """A command line argparse cannot parse (exit 2, one line, like every other user error)."""


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors raised as :class:`UsageError` instead of printed and exited."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _setup_logging(verbose: bool) -> None:
    rank = os.environ.get("RANK")
    fmt = ("%(asctime)s %(levelname)s %(name)s: %(message)s" if rank is None
           else f"%(asctime)s [rank {rank}] %(levelname)s: %(message)s")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, datefmt="%H:%M:%S")


def build_parser() -> argparse.ArgumentParser:
    """The ``spine-dfl`` parser: one subparser per command module, each with the common options."""
    parent = common_options()
    parser = _Parser(
        prog="spine-dfl",
        description="Vertebra-level classification of spine radiographs with DFL-CNN, with patch heatmaps "
                    "and DICOM results for PACS.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"spine-dfl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and a traceback with every error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser = _with_parent(sub.add_parser, parent)  # type: ignore[method-assign]
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def _with_parent(add_parser, parent: argparse.ArgumentParser):
    """``sub.add_parser`` that gives every subcommand the common options (``-v`` after the command)."""
    def add(name: str, **kwargs):
        kwargs["parents"] = [*kwargs.get("parents", ()), parent]
        return add_parser(name, **kwargs)
    return add


def main(argv: list[str] | None = None) -> int:
    """Run one command: 0 done, 2 a user error (one line), 3 some inputs failed, 1 a bug (traceback)."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except SpineDflError as exc:
        if args.verbose:
            traceback.print_exc()
        # The message is complete (a manifest's lists its rows): print it once.
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - anything not a SpineDflError is a bug
        traceback.print_exc()
        print("spine-dfl: internal error (this is a bug, not a problem with your input); please report it "
              "with the traceback above", file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":
    raise SystemExit(main())
