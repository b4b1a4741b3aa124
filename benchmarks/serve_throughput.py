"""``spine_dfl.serve`` throughput: instances/s received, studies/s completed, the node's RSS over the run.

The node runs in its own process (``tests/serve_node.py`` without ``--checkpoint``: the Node with
the serve tests' thumbnail scorer, which decodes every instance and writes one Secondary Capture
per study; this measures reception, the queue and sending, not the model, whose throughput is
``score_throughput.py``'s). This script is both ends around it:

- pynetdicom SCUs (calling AE ``TESTSCU``, ``--associations`` at once) send ``--instances`` CR
  images of ``--size`` pixels square (12 bit, uncompressed), ``--per-study`` per study and
  ``--per-association`` per association;
- a pynetdicom storage SCP stands in for the PACS and counts the results as they come back.

Prints one JSON object:
  receive:  instances/s from the first C-STORE to the last success; each success is durable
            (fsync of the file and of its folder, then the SQLite queue with synchronous=FULL);
            ``failures``: responses that were not success or never came (that instance's place
            is taken by a new one on a new association);
  complete: studies/s from the first C-STORE until every study's result is back, and how long the
            last result took after the last instance (stable age + scoring + sending);
  rss_mb:   the node process's resident set at 10/50/90/100 % of the instances received and its
            peak; flat = no growth with the number of instances.

Example:
  python benchmarks/serve_throughput.py                      # 2,000 instances, 4 per study
  python benchmarks/serve_throughput.py --instances 500 --size 512 --associations 4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import ComputedRadiographyImageStorage, SecondaryCaptureImageStorage

REPO = Path(__file__).resolve().parents[1]
NODE_SCRIPT = REPO / "tests" / "serve_node.py"
NODE_AET, SCU_AET, PACS_AET = "SPINEDFL", "TESTSCU", "BENCHPACS"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _instance(pixels: bytes, size: int, study_uid: str, number: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid(entropy_srcs=[study_uid, "series"])
    ds.PatientID, ds.Modality, ds.InstanceNumber = "BENCH", "CR", number
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels
    return ds


class ResultCounter:
    """The stand-in PACS: a storage SCP that records which studies got a result, and when."""

    def __init__(self, port: int) -> None:
        self.studies: dict[str, float] = {}
        self._lock = threading.Lock()
        ae = AE(ae_title=PACS_AET)
        ae.add_supported_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
        handlers = [(evt.EVT_C_STORE, self._store)]
        self.server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)

    def _store(self, event) -> int:
        with self._lock:
            self.studies.setdefault(str(event.dataset.StudyInstanceUID), time.perf_counter())
        return 0x0000


def _shares(args: argparse.Namespace) -> list[int]:
    """How many instances each concurrent association sends."""
    whole, rest = divmod(args.instances, args.associations)
    return [whole + (i < rest) for i in range(args.associations)]


def _send(args: argparse.Namespace, port: int, progress: list[int]) -> tuple[float, float, int]:
    """Send every instance over ``--associations`` concurrent associations; returns (start, end, failures)."""
    pixels = np.random.default_rng(0).integers(0, 4095, (args.size, args.size)).astype(np.uint16).tobytes()
    share = _shares(args)
    failures, lock = [0], threading.Lock()

    def sender(count: int) -> None:
        ae = AE(ae_title=SCU_AET)
        ae.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
        ae.dimse_timeout = args.dimse_timeout
        sent, study_uid = 0, ""
        while sent < count:
            assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
            if not assoc.is_established:
                raise RuntimeError("the node refused the association")
            for _ in range(min(args.per_association, count - sent)):
                if sent % args.per_study == 0:
                    study_uid = generate_uid()
                status = assoc.send_c_store(_instance(pixels, args.size, study_uid, sent % args.per_study + 1))
                code = getattr(status, "Status", None)
                with lock:
                    failures[0] += int(code != 0x0000)
                if code != 0x0000:
                    break  # a new association goes on in its place (a real sender would retry it)
                sent += 1
                with lock:
                    progress[0] += 1
            if assoc.is_established:
                assoc.release()

    threads = [threading.Thread(target=sender, args=(count,)) for count in share]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return start, time.perf_counter(), failures[0]


def run(args: argparse.Namespace) -> dict:
    node_port, pacs_port = _free_port(), _free_port()
    pacs = ResultCounter(pacs_port)
    share = _shares(args)
    studies = sum(-(-count // args.per_study) for count in share)
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        command = [
            sys.executable, str(NODE_SCRIPT), "--spool", str(Path(tmp) / "spool"), "--port", str(node_port),
            "--send-to", f"{PACS_AET}@127.0.0.1:{pacs_port}", "--stable-age", str(args.stable_age),
            "--workers", str(args.workers), "--allow", SCU_AET,
        ]
        log = open(Path(tmp) / "node.log", "wb")
        node = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO / "tests")
        try:
            time.sleep(0.5)
            _wait_listening(node_port, node)
            progress, samples = [0], []
            sampler_stop = threading.Event()

            def sample() -> None:
                while not sampler_stop.wait(0.1):
                    samples.append((progress[0], _rss_mb(node.pid)))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            start, received_end, failures = _send(args, node_port, progress)
            deadline = time.perf_counter() + args.timeout
            while len(pacs.studies) < studies and time.perf_counter() < deadline:
                time.sleep(0.05)
            sampler_stop.set()
            sampler.join()
        finally:
            node.terminate()
            node.wait(timeout=30)
            log.close()
            pacs.server.shutdown()
            if args.node_log:
                shutil.copyfile(Path(tmp) / "node.log", args.node_log)
    completed = len(pacs.studies)
    last = max(pacs.studies.values()) if pacs.studies else float("nan")
    return {
        "settings": vars(args),
        "receive": {
            "instances": args.instances,
            "failures": failures,
            "seconds": round(received_end - start, 2),
            "instances_per_s": round(args.instances / (received_end - start), 1),
        },
        "complete": {
            "studies": studies,
            "completed": completed,
            "seconds": round(last - start, 2),
            "studies_per_s": round(completed / (last - start), 2) if completed else 0.0,
            "last_result_after_last_instance_s": round(last - received_end, 2),
        },
        "rss_mb": _rss_profile(samples, args.instances),
    }


def _wait_listening(port: int, node: subprocess.Popen, timeout: float = 30.0) -> None:
    ae = AE(ae_title=SCU_AET)
    ae.add_requested_context("1.2.840.10008.1.1")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.poll() is not None:
            raise RuntimeError(f"the node exited with {node.returncode}")
        assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
        if assoc.is_established:
            assoc.release()
            return
        time.sleep(0.2)
    raise TimeoutError("the node did not start listening")


def _rss_profile(samples: list[tuple[int, float]], total: int) -> dict:
    profile = {}
    for percent in (10, 50, 90, 100):
        at = [rss for count, rss in samples if count >= total * percent / 100]
        profile[f"at_{percent}pct"] = round(at[0], 1) if at else None
    profile["peak"] = round(max((rss for _, rss in samples), default=0.0), 1)
    return profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--per-study", type=int, default=4)
    parser.add_argument("--per-association", type=int, default=100)
    parser.add_argument("--associations", type=int, default=1, help="concurrent sending associations")
    parser.add_argument("--workers", type=int, default=1, help="the node's scoring/sending workers")
    parser.add_argument("--size", type=int, default=256, help="rows = columns of each image")
    parser.add_argument("--stable-age", type=float, default=0.5)
    parser.add_argument("--dimse-timeout", type=float, default=30.0, help="seconds the SCU waits for each response")
    parser.add_argument("--node-log", help="keep the node's log here")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the last result")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
