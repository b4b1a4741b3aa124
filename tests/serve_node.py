"""A script that runs a Node on test-friendly settings (so tests can kill -9 it and restart it).

With ``--checkpoint`` the node scores with the real ``spine_dfl.serve.StudyScorer`` (SR + SC per
scored image, as ``spine-dfl serve``); ``--score-delay`` wraps it in a sleep so a test can kill the
node while it scores. Without a checkpoint it uses ``score_study_as_sc``, a small scorer for the
tests about reception alone (hundreds of noise images no locator would find vertebrae in): it
decodes every instance of the study (a file that cannot be decoded fails alone, with its reason),
and writes one Secondary Capture built with highdicom from the first decodable image, in the source
study, referencing every decoded source image, with UIDs derived from ``result_uid_seed``.

    python tests/serve_node.py --spool DIR --port P --send-to AET@HOST:PORT [--checkpoint CKPT]
        [--stable-age S] [--score-delay S] [--workers N] [--allow AET ...] [--hold-after N]

``--hold-after N`` stops reception for good after N instances, so a kill lands while receiving.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from spine_dfl.serve import Node, RetryPolicy, ScoreOutcome, StudyScorer, result_uid_seed

MODEL_VERSION = "serve-test-1"
NODE_AET = "SPINEDFL"
TEST_SCU_AET = "TESTSCU"


def _thumbnail(pixels: np.ndarray) -> np.ndarray:
    step = max(1, max(pixels.shape) // 128)
    small = pixels[::step, ::step].astype(np.float64)
    low, high = float(small.min()), float(small.max())
    return np.round((small - low) / max(high - low, 1.0) * 255).astype(np.uint8)


def score_study_as_sc(study_uid: str, instance_paths: list[str], out_dir: str) -> ScoreOutcome:
    decoded: list[tuple[Dataset, np.ndarray]] = []
    failed: dict[str, str] = {}
    for path in instance_paths:
        try:
            dataset = pydicom.dcmread(path)
            decoded.append((dataset, np.asarray(dataset.pixel_array)))
        except Exception as error:  # noqa: BLE001 - a file that cannot be decoded fails alone
            failed[path] = f"{path}: cannot decode the pixel data ({type(error).__name__})"
    if not decoded:
        return ScoreOutcome([], failed)
    instance_uids = [Path(path).stem for path in instance_paths]
    seed = result_uid_seed(study_uid, instance_uids, MODEL_VERSION)
    reference, pixels = decoded[0]
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=reference,
        pixel_array=_thumbnail(pixels),
        photometric_interpretation="MONOCHROME2",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=("A", "F"),  # a lateral view: columns to anterior, rows to feet
        series_instance_uid=generate_uid(entropy_srcs=[seed, "series"]),
        series_number=7702,
        sop_instance_uid=generate_uid(entropy_srcs=[seed, "sc"]),
        instance_number=1,
        manufacturer="spine-dfl",
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    sources = []
    for dataset, _ in decoded:
        item = Dataset()
        item.ReferencedSOPClassUID = dataset.SOPClassUID
        item.ReferencedSOPInstanceUID = dataset.SOPInstanceUID
        sources.append(item)
    sc.SourceImageSequence = sources
    sc.BodyPartExamined = "SPINE"  # unpaired: General Series Laterality must then be absent
    sc.ImageComments = f"serve test result of {len(decoded)} instances"
    target = Path(out_dir) / "overlay_sc.dcm"
    sc.save_as(target, enforce_file_format=True)
    return ScoreOutcome([str(target)], failed)


def _delayed(scorer, delay: float):
    """``scorer`` after a sleep of ``delay`` seconds (the kill-while-scoring test's window)."""

    def score_study(study_uid: str, instance_paths: list[str], out_dir: str):
        time.sleep(delay)
        return scorer(study_uid, instance_paths, out_dir)

    return score_study if delay > 0 else scorer


def _hold_after(count: int) -> None:
    """Every C-STORE after the first ``count`` waits for good: a kill then lands while receiving."""
    from spine_dfl.serve.spool import Spool

    real, calls, lock = Spool.store, [0], threading.Lock()

    def store(self, *args):
        with lock:
            calls[0] += 1
            hold = calls[0] > count
        if hold:
            threading.Event().wait()
        return real(self, *args)

    Spool.store = store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spool", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--send-to", required=True)
    parser.add_argument("--stable-age", type=float, default=1.0)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--score-delay", type=float, default=0.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--allow", nargs="*", default=["ORTHANC", TEST_SCU_AET])
    parser.add_argument("--hold-after", type=int, default=None)
    args = parser.parse_args(argv)
    if args.hold_after is not None:
        _hold_after(args.hold_after)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(threadName)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    if args.checkpoint:
        scorer = StudyScorer(args.checkpoint, device="cpu", decode_workers=1)
    else:
        scorer = score_study_as_sc
    node = Node(
        args.spool,
        _delayed(scorer, args.score_delay),
        send_to=args.send_to,
        ae_title=NODE_AET,
        port=args.port,
        host="127.0.0.1",
        allowed_callers=args.allow,
        stable_age=args.stable_age,
        workers=args.workers,
        retry=RetryPolicy(max_attempts=30, base_delay=0.3, max_delay=1.0),
        lease_seconds=30.0,
        poll_interval=0.1,
    )
    node.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
