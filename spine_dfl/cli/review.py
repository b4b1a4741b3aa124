"""``spine-dfl review``: review scored radiographs in the browser; every change saved to a manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

from spine_dfl.cli.common import EXIT_OK, add_out_options, prepare_out


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("review", help="review scored radiographs in the browser; the reader's grades become a manifest",
                       description="A local web app: the whole radiograph with each vertebra's box, level, grade and "
                                   "six points; accept, regrade (keys 0-3), drag points, fix levels, add vertebrae. "
                                   "Every change is saved at once to OUT/manifest.csv (graded rows) and "
                                   "OUT/review.csv (every reviewed vertebra). Stop with Ctrl-C.")
    p.add_argument("source", type=Path, help="a `spine-dfl score` output folder (its predictions.csv), or a folder "
                                             "of radiographs to score first (then --checkpoint is needed)")
    p.add_argument("--checkpoint", type=Path, default=None, help="grader checkpoint to score a folder of radiographs")
    p.add_argument("--locator", type=Path, default=None,
                   help="locator checkpoint for that scoring (default: the one embedded in the checkpoint)")
    p.add_argument("--explain", type=Path, default=None,
                   help="output folder of `spine-dfl explain` on the same films: its top patches as an overlay (key t)")
    p.add_argument("--out", type=Path, default=Path("reviewed"),
                   help="review folder (default reviewed/); an earlier review there: --resume continues it")
    p.add_argument("--reader", default="reader", help="the reader's name, written on every row (default 'reader')")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1); any non-loopback host needs the printed token")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free port)")
    add_out_options(p, resume="continue the review in --out (its rows are kept as the reader left them)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """0 when stopped (Ctrl-C); bad input or a taken port: 2 (a SpineDflError, cli.main)."""
    from spine_dfl.review import review

    prepare_out(args.out, "review", overwrite=args.overwrite, resume=args.resume, can_resume=True)
    done = review(args.source, args.out, checkpoint=args.checkpoint, locator=args.locator, host=args.host,
                  port=args.port, reader=args.reader, explain=args.explain,
                  on_ready=lambda url: print(f"reviewing at {url}  (Ctrl-C to stop; saving to {args.out})", flush=True))
    print(f"stopped: {done} stud{'y' if done == 1 else 'ies'} done; {args.out / 'manifest.csv'}")
    return EXIT_OK
