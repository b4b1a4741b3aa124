"""Scoring throughput against the machine's limit: decode + transforms alone, the model alone, end to end.

Prints one JSON object:
  decode:   the decode + transforms stage alone: ``spine_dfl.score`` 's supervised decode workers
            (``--workers`` processes) turning every file into its network inputs, no model; files/s;
  forward:  the model alone on preloaded tensors (same batch size, device, AMP, softmax + copy back
            and intra-op threads as scoring), in samples/s and files/s (ROIs per file from rois.csv);
  runs:     per folder size N: end-to-end ``score()`` files/s (find inputs, decode workers, model,
            CSV parts with fsync, merge, summary), peak RSS of the scoring process and its RSS at
            10/50/90/100 % of the run (flat = no growth with N);
  limit:    where decoding and the model share the cores (CPU scoring) the stages add up, so the
            limit is the serial one, 1 / (1/decode + 1/model); where cores are spare (a GPU runs the
            model) it is the slower stage. ``ratio`` = end-to-end files/s / limit (targets: >= 0.9 of
            the serial limit on CPU, >= 0.8 of the slower stage on a GPU machine).

The data is a synthetic cohort (``spine_dfl.synth``: lateral radiographs with 14 vertebra ROIs,
about half of them RLE or JPEG 2000 compressed, as a PACS export has); a folder of N files is made
of hard links to its images (copies where links are impossible) under new names, cycling through
the cohort; every copy keeps its SOP Instance UID, so rois.csv (keyed by UID) serves them all. Each
measurement runs in a fresh process so that its peak RSS is its own. Measure on an otherwise idle
machine: other load starves the decode workers (they run at a lower priority) and makes the stages
and the end-to-end rate vary from run to run.

Examples:
  python benchmarks/score_throughput.py        # 120 radiographs 1100 x 616, ResNet-18 at 96 px, N = 120
  python benchmarks/score_throughput.py --sizes 500 5000 --patients 16 --rows 1024 --input-size 160
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux /proc; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def _dataset(args: argparse.Namespace, files: list[Path]) -> Any:
    from spine_dfl.engine.checkpoint import load_checkpoint
    from spine_dfl.score.files import FileSamples
    from spine_dfl.io.rois import read_rois

    loaded = load_checkpoint(args.checkpoint)
    rois = read_rois(args.rois) if loaded.preprocessing.use_roi else None
    return loaded, FileSamples(files, loaded.preprocessing, rois, keep_ids=False)


# --------------------------------------------------------------------------- child: one scoring run
def _child_score(args: argparse.Namespace) -> dict[str, Any]:
    from spine_dfl.score import score

    samples: list[tuple[float, float]] = []  # (seconds since start, RSS MiB)
    stop = threading.Event()
    started = time.perf_counter()

    def sample() -> None:
        while not stop.wait(0.25):
            samples.append((time.perf_counter() - started, _rss_mb()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    summary = score(args.checkpoint, [args.files], args.out, rois_csv=None if args.locator else args.rois,
                    batch_size=args.batch_size, workers=args.workers, device=args.device, progress=False,
                    locator=args.locator)
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    if summary.failed:
        raise SystemExit(f"benchmark files failed to score: {summary.failed_by_reason}")

    def rss_at(fraction: float) -> float:
        return round(next((rss for t, rss in samples if t >= fraction * seconds), samples[-1][1] if samples else _rss_mb()), 1)

    return {
        "files": summary.found, "seconds": round(seconds, 3), "files_per_s": round(summary.found / seconds, 2),
        "rows": summary.rows, "device": summary.device,
        # The decode workers are children of the forkserver, not of this process, so getrusage
        # cannot see them; their memory is a few files each (bounded by the pool's tasks).
        "peak_rss_mb_main": round(_peak_mb(resource.RUSAGE_SELF), 1),
        # During streaming (10 % .. 90 % of the run) RSS must stay flat; the end includes the merge.
        "rss_mb_at_10pct": rss_at(0.1), "rss_mb_at_50pct": rss_at(0.5), "rss_mb_at_90pct": rss_at(0.9),
        "rss_mb_at_end": round(samples[-1][1] if samples else _rss_mb(), 1),
    }


# --------------------------------------------------------------------------- child: decode + transforms alone
def _child_decode(args: argparse.Namespace) -> dict[str, Any]:
    from spine_dfl.io import find_inputs
    from spine_dfl.score.isolation import iterate_items

    started = time.perf_counter()
    _, dataset = _dataset(args, find_inputs([args.files]))
    count = samples = failed = 0
    for item in iterate_items(dataset, args.workers):
        count += 1
        samples += len(item["vertebrae"])
        failed += not item["ok"]
    seconds = time.perf_counter() - started
    if failed:
        raise SystemExit(f"{failed} benchmark file(s) failed to decode")
    return {"files": count, "seconds": round(seconds, 3), "files_per_s": round(count / seconds, 2),
            "samples_per_s": round(samples / seconds, 1), "workers": args.workers}


# --------------------------------------------------------------------------- child: model alone
def _child_forward(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from spine_dfl.engine.device import resolve_device
    from spine_dfl.engine.distributed import Distributed
    from spine_dfl.io import find_inputs
    from spine_dfl.score.run import model_threads

    device = resolve_device(args.device)
    torch.set_num_threads(model_threads(device, Distributed()))  # what scoring gives its model
    loaded, dataset = _dataset(args, find_inputs([args.files])[: args.batch_size])
    model = loaded.model.to(device).eval()
    images = torch.from_numpy(np.concatenate([dataset[i]["images"] for i in range(len(dataset))]))
    rois_per_file = images.shape[0] / len(dataset)
    while images.shape[0] < args.batch_size:
        images = torch.cat([images, images])
    batch = images[: args.batch_size].contiguous().to(device)  # preloaded: no decode, no transfer
    amp = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else (
        torch.float16 if device.type == "cuda" else None)

    def step() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            fused = model(batch).fused
        torch.softmax(fused.float(), dim=1).cpu()  # what scoring does with every batch

    for _ in range(3):
        step()
    iterations = 0
    started = time.perf_counter()
    while iterations < 5 or time.perf_counter() - started < args.forward_seconds:
        step()
        iterations += 1
    samples_per_s = iterations * args.batch_size / (time.perf_counter() - started)
    return {"samples_per_s": round(samples_per_s, 1), "files_per_s": round(samples_per_s / rois_per_file, 2),
            "rois_per_file": round(rois_per_file, 2), "device": str(device), "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------- parent
def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _build_folder(images: list[Path], folder: Path, count: int) -> None:
    """``count`` files named f000000... cycling through ``images`` (nested 100 per folder, no suffix)."""
    folder.mkdir(parents=True)
    for i in range(count):
        sub = folder / f"d{i // 100:04d}"
        sub.mkdir(exist_ok=True)
        _link_or_copy(images[i % len(images)], sub / f"f{i:06d}")


def _run_child(mode: str, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", mode, "--checkpoint", str(args.checkpoint), "--rois", str(args.rois),
               "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--device", args.device,
               "--forward-seconds", str(args.forward_seconds), *extra]
    if args.worker_niceness is not None:
        command += ["--worker-niceness", str(args.worker_niceness)]
    if args.locator is not None:
        command += ["--locator", str(args.locator)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"benchmark child failed ({mode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _limits(decode: float, forward: float, device: str) -> dict[str, Any]:
    serial = 1.0 / (1.0 / decode + 1.0 / forward)
    slower = min(decode, forward)
    shared = not device.startswith("cuda")  # the model runs on the same cores as decoding
    return {"serial_files_per_s": round(serial, 2), "slower_stage_files_per_s": round(slower, 2),
            "applies": "serial (decode and model share the cores)" if shared else "slower stage (spare cores)",
            "files_per_s": round(serial if shared else slower, 2)}


def _prepare_data(args: argparse.Namespace, work: Path) -> list[Path]:
    import torch

    from spine_dfl.data.transforms import Preprocessing
    from spine_dfl.engine.checkpoint import atomic_torch_save, checkpoint_payload
    from spine_dfl.model import DFLNet

    cohort = work / "cohort"
    if not (cohort / "rois.csv").exists():
        from spine_dfl.synth import generate_cohort

        generate_cohort(cohort, patients=args.patients, seed=0, rows=args.rows, cols=args.cols)
    args.rois = cohort / "rois.csv"
    if args.checkpoint is None:
        torch.manual_seed(0)
        args.checkpoint = work / "model.pt"
        model = DFLNet(args.backbone, num_classes=4, filters_per_class=10)
        atomic_torch_save(checkpoint_payload(model, {"benchmark": True}, ["normal", "mild", "moderate", "severe"],
                                             Preprocessing(input_size=args.input_size, use_roi=True), {}),
                          args.checkpoint)
    return sorted((cohort / "images").iterdir())


def _located_runs(args: argparse.Namespace, images: list[Path], work: Path) -> int:
    """With ``--locator``: end-to-end runs per folder size, their files/s and RSS (flat = no growth)."""
    runs = []
    for size in args.sizes:
        folder = work / f"export_{size}"
        if not folder.exists():
            _build_folder(images, folder, size)
        out = work / f"out_located_{size}"
        shutil.rmtree(out, ignore_errors=True)
        runs.append(_run_child("score", args, ["--files", str(folder), "--out", str(out)]))
    report: dict[str, Any] = {"locator": str(args.locator), "checkpoint": str(args.checkpoint), "workers": args.workers,
                              "image_rows": args.rows, "image_cols": args.cols, "runs": runs}
    if len(runs) >= 2:
        report["peak_rss_ratio_largest_to_smallest"] = round(runs[-1]["peak_rss_mb_main"] / runs[0]["peak_rss_mb_main"], 3)
    print(json.dumps(report, indent=2))
    return 0


def _niceness(args: argparse.Namespace) -> int:
    from spine_dfl.score.isolation import WORKER_NICENESS

    return WORKER_NICENESS if args.worker_niceness is None else args.worker_niceness


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[120], help="folder sizes N (default 120)")
    parser.add_argument("--patients", type=int, default=120, help="distinct synthetic images (default 120)")
    parser.add_argument("--rows", type=int, default=1100, help="synthetic image height in pixels (default 1100)")
    parser.add_argument("--cols", type=int, default=560, help="synthetic image width in pixels (default 560)")
    parser.add_argument("--input-size", type=int, default=96, help="network input S (default 96)")
    parser.add_argument("--backbone", default="resnet18", help="resnet18 | resnet50 | vgg16_bn (random init)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="use this checkpoint instead of a random model")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None, help="decode workers (default: one per core, at most 16)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--forward-seconds", type=float, default=5.0, help="time spent measuring the model alone")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the generated data here (default: temporary)")
    parser.add_argument("--worker-niceness", type=int, default=None,
                        help="niceness of the decode workers (default: spine_dfl.score.isolation.WORKER_NICENESS)")
    parser.add_argument("--locator", type=Path, default=None,
                        help="find the vertebrae with this locator instead of rois.csv (then only the end-to-end "
                             "runs and their RSS are measured: the stage limits are those of the ROI path)")
    parser.add_argument("--child", choices=["score", "forward", "decode"], help=argparse.SUPPRESS)
    parser.add_argument("--files", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rois", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workers is None:
        args.workers = max(1, min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))

    children = {"score": _child_score, "forward": _child_forward, "decode": _child_decode}
    if args.child:
        if args.worker_niceness is not None:  # an experiment: the pool reads it when it is made
            import spine_dfl.score.isolation

            spine_dfl.score.isolation.WORKER_NICENESS = args.worker_niceness
        print(json.dumps(children[args.child](args)))
        return 0

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="score-bench-"))
    try:
        images = _prepare_data(args, work)
        if args.locator is not None:
            return _located_runs(args, images, work)
        forward = _run_child("forward", args, ["--files", str(work / "cohort" / "images")])
        runs = []
        for size in args.sizes:
            folder = work / f"export_{size}"
            if not folder.exists():
                _build_folder(images, folder, size)
            decode = _run_child("decode", args, ["--files", str(folder)])
            limit = _limits(decode["files_per_s"], forward["files_per_s"], forward["device"])
            out = work / f"out_{size}"
            shutil.rmtree(out, ignore_errors=True)
            run = _run_child("score", args, ["--files", str(folder), "--out", str(out)])
            run.update(decode=decode, limit=limit, ratio=round(run["files_per_s"] / limit["files_per_s"], 3),
                       ratio_to_forward=round(run["files_per_s"] / forward["files_per_s"], 3))
            runs.append(run)
        report = {
            "device": forward["device"], "cpu_count": os.cpu_count(), "workers": args.workers,
            "batch_size": args.batch_size,
            "backbone": args.backbone if args.checkpoint == work / "model.pt" else str(args.checkpoint),
            "input_size": args.input_size, "worker_niceness": _niceness(args), "image_rows": args.rows, "image_cols": args.cols, "forward": forward,
            "runs": runs,
        }
        if len(runs) >= 2:
            report["peak_rss_growth_mb_main"] = round(runs[-1]["peak_rss_mb_main"] - runs[0]["peak_rss_mb_main"], 1)
        print(json.dumps(report, indent=2))
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
