"""``spine-dfl serve start CHECKPOINT``: the DICOM node (receive studies, score each once stable, send
SR + SC back); ``spine-dfl serve status --spool DIR``: its queue at a glance."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spine_dfl.cli.common import EXIT_OK, INFERENCE_BATCH_SIZE, add_batch_size, add_device, common_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve", help="DICOM node: receive studies from a PACS, score them, send SR + overlay back",
        description="serve start: run the DICOM node; serve status: print the queue of its spool.")
    parents = [common_options()]  # -v after "serve start" / "serve status" too
    modes = serve.add_subparsers(dest="serve_command", metavar="MODE", required=True,
                                 help="start: run the node; status: print its queue")
    p = modes.add_parser(
        "start", parents=parents, help="run the node (Storage SCP, scoring, sending) until SIGTERM / Ctrl-C",
        description="A Storage SCP that spools every instance durably, scores each study once no new instance "
                    "came for --stable-age seconds, and sends the Comprehensive SR and overlay Secondary Capture "
                    "of every scored image to --send-to. States: received -> ready -> scoring -> sending -> "
                    "done | failed. Stop with SIGTERM or Ctrl-C; work left in any state resumes on restart.")
    p.add_argument("checkpoint", type=Path,
                   help="grader checkpoint (a per-vertebra model needs a locator: embedded, or --locator)")
    p.add_argument("--spool", type=Path, required=True, help="spool folder: received instances, queue, results")
    p.add_argument("--send-to", metavar="AET@HOST:PORT", required=True, help="where results go (e.g. ORTHANC@pacs:4242)")
    p.add_argument("--ae-title", default="SPINEDFL", help="our AE title (default SPINEDFL; callers must call it)")
    p.add_argument("--port", type=int, default=11112, help="DICOM port to listen on (default 11112)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--locator", type=Path, default=None,
                   help="locator checkpoint (default: the one embedded in CHECKPOINT)")
    p.add_argument("--stable-age", type=float, default=60.0,
                   help="seconds without a new instance before a study is scored (default 60, as Orthanc)")
    p.add_argument("--allow", nargs="+", action="extend", metavar="AET", default=None,
                   help="calling AE titles allowed to send (default: any)")
    p.add_argument("--concurrent-studies", type=int, default=1, help="studies scored or sent at once (default 1)")
    p.add_argument("--workers", type=int, default=1,
                   help="decode processes per study (default 1; 0 decodes in the node, without crash isolation)")
    add_batch_size(p, INFERENCE_BATCH_SIZE)
    p.add_argument("--retry-attempts", type=int, default=8,
                   help="failed attempts (scoring or sending) before a study is parked as failed (default 8)")
    p.add_argument("--retry-delay", type=float, default=5.0, help="first retry delay in seconds, doubled per "
                   "attempt (default 5)")
    p.add_argument("--retry-max-delay", type=float, default=600.0, help="longest retry delay in seconds (default 600)")
    p.add_argument("--lease", type=float, default=300.0,
                   help="seconds a worker's claim on a study lasts without renewal (default 300)")
    add_device(p)
    p.add_argument("--ignore-view-tags", action="store_true",
                   help="refuse instances by modality / SOP class only, not by BodyPartExamined, ViewPosition or "
                        "PatientOrientation (for a site whose tags are wrong)")
    p.set_defaults(func=run)
    q = modes.add_parser("status", parents=parents, help="print the queue of a spool and exit",
                         description="Counts per state, the oldest waiting study and the last errors of --spool "
                                     "(no patient identifiers).")
    q.add_argument("--spool", type=Path, required=True, help="spool folder of a node (running or not)")
    q.add_argument("--json", action="store_true", help="as JSON")
    q.set_defaults(func=run_status)


def run_status(args: argparse.Namespace) -> int:
    """Print the queue; a folder without a node's queue is an InputError (exit 2)."""
    from spine_dfl.serve import format_status, status

    summary = status(args.spool)
    print(json.dumps(summary, indent=2) if args.json else format_status(summary))
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    """0 after SIGTERM/SIGINT; bad arguments, checkpoint, spool or port: 2 (a SpineDflError, cli.main)."""
    from spine_dfl.serve import RetryPolicy, run_node

    retry = RetryPolicy(max_attempts=args.retry_attempts, base_delay=args.retry_delay,
                        max_delay=args.retry_max_delay)
    run_node(args.checkpoint, spool=args.spool, send_to=args.send_to, ae_title=args.ae_title, port=args.port,
             host=args.host, locator=args.locator, stable_age=args.stable_age, allowed_callers=args.allow,
             workers=args.concurrent_studies, retry=retry, lease_seconds=args.lease, device=args.device,
             batch_size=args.batch_size, decode_workers=args.workers, ignore_view_tags=args.ignore_view_tags)
    return EXIT_OK
