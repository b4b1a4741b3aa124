"""Start-up cost of the command line: ``spine-dfl --help`` and ``spine-dfl validate`` on a large manifest.

Prints one JSON object:
  help:      ``spine-dfl --help`` and ``spine-dfl validate --help``: seconds and peak RSS (MB);
  validate:  ``spine-dfl validate MANIFEST`` on a manifest of ``--rows`` rows: seconds, peak RSS (MB),
             exit status, rows and distinct images;
  targets:   --help < 0.5 s; validate on 10,000 rows < 5 s and < 300 MB (on 2 idle cores).
Each command runs in a fresh process (``python -m spine_dfl``); its peak RSS and CPU time are that
process's own (``os.wait4``; this script imports nothing heavy, so a forked child does not start with
a large RSS, and the cohort is made in a separate process). Times are the median of ``--repeat`` runs;
on a busy machine compare ``cpu_seconds`` (user + system) with the targets.

The manifest is a synthetic cohort (``spine_dfl.synth``: DICOM radiographs with 14 vertebra rows
each) replicated to ``--rows`` rows: each copy of an image is a hard link (a copy where links are
impossible) under a new name with a new patient id, so the manifest stays valid (every image exists,
ROIs inside, one patient per split) and validate reads one header per distinct image, as it would
on a real export.

Example:
  python benchmarks/validate_speed.py                  # 10,000 rows from a 16-patient cohort
  python benchmarks/validate_speed.py --rows 50000 --keep /tmp/big_manifest
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_measured(argv: list[str]) -> tuple[float, float, float, int]:
    """(wall seconds, CPU seconds, peak RSS in MB, exit status) of one fresh process."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if process.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(argv)} failed ({process.returncode}):\n{stderr[-2000:]}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0, process.returncode


def measure(argv: list[str], repeat: int) -> dict[str, float]:
    """Median wall and CPU seconds (CPU time is what a busy machine does not inflate), max peak RSS."""
    runs = [run_measured(argv) for _ in range(repeat)]
    return {"seconds": round(statistics.median(r[0] for r in runs), 3),
            "cpu_seconds": round(statistics.median(r[1] for r in runs), 3),
            "peak_rss_mb": round(max(r[2] for r in runs), 1), "exit_status": runs[-1][3]}


def link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def replicate_manifest(cohort: Path, rows: int, out: Path) -> tuple[Path, int]:
    """A valid manifest of exactly ``rows`` rows made of linked copies of the cohort's images."""
    with open(cohort / "manifest.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns, source = list(reader.fieldnames or []), list(reader)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    written, copies, made = [], 0, set()
    while len(written) < rows:
        for row in source:
            if len(written) == rows:
                break
            original = cohort / row["image"]
            name = f"copy{copies:04d}_{original.name}"
            if name not in made:
                link_or_copy(original, images_dir / name)
                made.add(name)
            written.append({**row, "image": f"images/{name}", "patient_id": f"{row['patient_id']}-{copies}"})
        copies += 1
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(written)
    return manifest, len(made)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000, help="manifest rows (default 10000)")
    parser.add_argument("--patients", type=int, default=16, help="synthetic patients to replicate (default 16)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per command; the median time is shown")
    parser.add_argument("--keep", type=Path, default=None, help="write the data here and keep it (default: temp)")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="spine_dfl_validate_speed_"))
    try:
        make = ("import sys; from spine_dfl.synth import generate_cohort; "
                "generate_cohort(sys.argv[1], patients=int(sys.argv[2]), seed=0, overwrite=True)")
        subprocess.run([sys.executable, "-c", make, str(work / "cohort"), str(args.patients)], check=True,
                       stdout=subprocess.DEVNULL)
        manifest, images = replicate_manifest(work / "cohort", args.rows, work / "big")
        cli = [sys.executable, "-m", "spine_dfl"]
        result = {
            "help": {"top_level": measure([*cli, "--help"], args.repeat),
                     "validate": measure([*cli, "validate", "--help"], args.repeat)},
            "validate": {"rows": args.rows, "images": images,
                         **measure([*cli, "validate", str(manifest)], args.repeat)},
            "targets": {"help_seconds": 0.5, "validate_seconds": 5.0, "validate_peak_rss_mb": 300.0},
            "cpus": os.cpu_count(),
        }
        print(json.dumps(result, indent=2))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
