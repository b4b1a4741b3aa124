"""Locator inference time per radiograph on CPU: letterbox + network + decode + level labelling.

    python benchmarks/locator_speed.py [--threads 2] [--size 320 192] [--repeats 20]

Prints one JSON object. The acceptance bound is 0.3 s per radiograph on 2 CPU cores at the
CPU config's input size. A random-init network does the same work as a trained one, except
that decode and labelling see up to one detection per level (threshold 0 forces that).
On a machine shared with other jobs, OpenMP threads spin-wait against them: compare
``--threads 1`` (no spinning) before concluding that 2 threads are slow.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

from spine_dfl.locate import VertebraLocator, letterbox, locate

LEVELS = tuple(f"T{i}" for i in range(4, 13)) + tuple(f"L{i}" for i in range(1, 6))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=(320, 192), metavar=("ROWS", "COLS"))
    parser.add_argument("--original", type=int, nargs=2, default=(2048, 1152), metavar=("ROWS", "COLS"))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--blocks", type=int, nargs=4, default=(1, 1, 1, 1))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = VertebraLocator(LEVELS, blocks=args.blocks).eval()
    radiograph = np.random.default_rng(0).integers(0, 4096, size=tuple(args.original)).astype(np.uint16)
    times, cpu, stages = [], [], {"letterbox": [], "locate": []}
    for i in range(args.repeats + 2):
        t0, c0 = time.perf_counter(), time.process_time()
        image, to_original = letterbox(radiograph, tuple(args.size))
        t1 = time.perf_counter()
        found = locate(model, image, to_original, threshold=0.0)
        t2, c2 = time.perf_counter(), time.process_time()
        if i >= 2:  # the first calls allocate and pick kernels
            times.append(t2 - t0)
            cpu.append(c2 - c0)
            stages["letterbox"].append(t1 - t0)
            stages["locate"].append(t2 - t1)
    print(json.dumps({
        "threads": torch.get_num_threads(),
        "input_size": list(args.size),
        "blocks": list(args.blocks),
        "original_size": list(args.original),
        "repeats": args.repeats,
        "detections": len(found),
        "median_s": round(statistics.median(times), 4),
        "max_s": round(max(times), 4),
        # CPU seconds of this process per radiograph: on a machine shared with other jobs the
        # wall time inflates, this does not; cpu_s / threads is the wall time on idle cores.
        "median_cpu_s": round(statistics.median(cpu), 4),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "median_stage_s": {k: round(statistics.median(v), 4) for k, v in stages.items()},
        "parameters": sum(p.numel() for p in model.parameters()),
    }))


if __name__ == "__main__":
    main()
