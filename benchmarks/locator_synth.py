"""Issue 11 acceptance figures of a trained locator on a synthetic cohort (CPU).

    spine-dfl synth /tmp/loc64 --patients 64 --seed 11          # a seed the tests never use
    spine-dfl train /tmp/loc64/manifest.csv --config locator_cpu --out /tmp/loc64_run --no-report
    python benchmarks/locator_synth.py /tmp/loc64_run/best.pt /tmp/loc64/manifest.csv [--split test|all]

Prints one JSON object: ``spine_dfl.locate.evaluate.evaluate_checkpoint`` figures of the split
(overall and per level) beside the targets (detection recall >= 0.99, identification >= 0.97,
median centre error <= 1.5 mm), plus this process's CPU seconds per radiograph for reading,
letterboxing and locating (on a shared machine CPU seconds, not wall time, say what idle cores do).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

from spine_dfl.io import read_image
from spine_dfl.locate.checkpoint import load_locator, locate_radiograph
from spine_dfl.locate.evaluate import evaluate_checkpoint

TARGETS = {"detection_recall_iou50": 0.99, "identification_rate": 0.97, "median_centre_error_mm": 1.5}


def cpu_seconds_per_radiograph(checkpoint: Path, images: list[Path]) -> float:
    loaded = load_locator(checkpoint)
    locate_radiograph(loaded, read_image(images[0]).pixels)  # first call allocates and picks kernels
    times = []
    for image in images:
        start = time.process_time()
        locate_radiograph(loaded, read_image(image).pixels)
        times.append(time.process_time() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--split", default="test", help="train, val, test, or all (every image)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    split = None if args.split == "all" else args.split
    figures = evaluate_checkpoint(args.checkpoint, args.manifest, split, device="cpu")
    table = pd.read_csv(args.manifest)
    chosen = table if split is None else table[table["split"] == split]
    images = sorted({args.manifest.parent / p for p in chosen["image"]})
    met = {
        "detection_recall_iou50": figures["detection_recall_iou50"] >= TARGETS["detection_recall_iou50"],
        "identification_rate": figures["identification_rate"] >= TARGETS["identification_rate"],
        "median_centre_error_mm": (figures["median_centre_error_mm"] or float("inf")) <= TARGETS["median_centre_error_mm"],
    }
    print(json.dumps({"figures": figures, "targets": TARGETS, "met": met, "threads": args.threads,
                      "median_cpu_s_per_radiograph": round(cpu_seconds_per_radiograph(args.checkpoint, images), 4)},
                     indent=1))


if __name__ == "__main__":
    main()
