"""Benchmark: wall time of a DRR cohort (``spine-dfl synth --generator drr``), JSON on stdout.

Per patient the phantom CT is built, a lateral and an AP film are rendered and written, and the
lateral film's vertebrae are projected for the truth.  The issue's target: 64 patients in <= 4
minutes on 2 cores.

    python benchmarks/drr_cohort_speed.py /tmp/drr_speed --patients 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from spine_dfl.phantom.cohort import generate_drr_cohort


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="cohort folder (replaced)")
    parser.add_argument("--patients", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--voxel-mm", type=float, default=2.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    summary = generate_drr_cohort(args.out, patients=args.patients, seed=args.seed, voxel_mm=args.voxel_mm, overwrite=True)
    seconds = time.perf_counter() - started
    print(json.dumps({
        "patients": args.patients, "images": summary["images"], "vertebrae": summary["vertebrae"],
        "voxel_mm": args.voxel_mm, "seconds": round(seconds, 2), "seconds_per_patient": round(seconds / args.patients, 3),
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
        "target_seconds_64_patients": 240, "projected_seconds_64_patients": round(seconds / args.patients * 64, 1),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
