"""Benchmark: the view gate (``spine_dfl.gate.view``) on held-out cohorts of both generators, JSON.

Held-out cohorts are generated (unless OUT already holds them) with seeds the training did not use:
a 2-D synth cohort and a DRR-phantom cohort. Every film is classified from its full-resolution
stored pixels in all eight orientations (a DRR film stored turned is counted in the orientation
that undoes the whole), and so are clinic-like cuts of the synth films. Figures:

- lateral films: share accepted as lateral (lateral probability >= 0.5), orientation accuracy per
  orientation, per generator;
- AP films of the DRR cohort: share refused;
- non-spine images generated with a phantom seed the training did not use (chest / pelvis / trunk
  APs, CT slices, extremity DRRs, synthetic noise, fields, shapes, gradients, text): share refused
  per kind;
- per-image time of ``predict_view`` (thumbnail + network) on one CPU thread: median wall and CPU ms.

    spine-dfl view-train runs/view --manifest runs/demo/cohort/manifest.csv --manifest runs/demo/drr_cohort/manifest.csv
    python benchmarks/view_gate.py runs/view_bench --view runs/view/view.pt > view_gate.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from spine_dfl.gate.view import predict_view
from spine_dfl.gate.view_checkpoint import load_view
from spine_dfl.gate.view_data import cohort_films, cut_film, generated_images
from spine_dfl.io.orientation import ORIENTATIONS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder of the held-out cohorts (made when absent)")
    parser.add_argument("--view", type=Path, required=True, help="view checkpoint (spine-dfl view-train), or a locator "
                                                                  "checkpoint that carries one")
    parser.add_argument("--synth-patients", type=int, default=16)
    parser.add_argument("--drr-patients", type=int, default=12)
    parser.add_argument("--seed", type=int, default=11, help="seed of both held-out cohorts (default 11)")
    parser.add_argument("--phantom-seed", type=int, default=7777, help="phantom seed of the non-spine images")
    parser.add_argument("--negatives", type=int, default=120, help="synthetic non-spine images (default 120)")
    return parser.parse_args(argv)


def _cohorts(args: argparse.Namespace) -> dict[str, Path]:
    from spine_dfl.phantom.cohort import generate_drr_cohort
    from spine_dfl.synth import generate_cohort

    paths = {"synth": args.out / "synth", "drr": args.out / "drr"}
    if not (paths["synth"] / "manifest.csv").is_file():
        generate_cohort(paths["synth"], patients=args.synth_patients, seed=args.seed, overwrite=True)
    if not (paths["drr"] / "manifest.csv").is_file():
        generate_drr_cohort(paths["drr"], patients=args.drr_patients, seed=args.seed, overwrite=True)
    return paths


def _load(path: Path):
    from spine_dfl.engine.checkpoint import read_checkpoint
    from spine_dfl.gate.view_checkpoint import view_from_locator_payload

    raw = read_checkpoint(path)
    if raw.get("kind") == "view":
        return load_view(path)
    loaded = view_from_locator_payload(raw)
    if loaded is None:
        raise SystemExit(f"error: {path}: neither a view checkpoint nor a locator that carries one")
    return loaded


class Tally:
    """Per group: accepted-as-lateral counts, orientation hits per orientation, timings."""

    def __init__(self, loaded):
        self.loaded = loaded
        self.accepted: dict[str, list[bool]] = defaultdict(list)
        self.turns: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def classify(self, group: str, canonical: np.ndarray, lateral: bool, orientations=ORIENTATIONS) -> None:
        for o in orientations:
            stored = o.inverse().apply(canonical)
            wall, cpu = time.perf_counter(), time.process_time()
            p = predict_view(self.loaded, stored)
            self.wall.append(time.perf_counter() - wall)
            self.cpu.append(time.process_time() - cpu)
            self.accepted[group].append(p.is_lateral)
            if lateral:
                self.turns[group][o.name].append(p.orientation == o)

    def report(self) -> dict:
        out = {}
        for group, accepted in self.accepted.items():
            lateral = group in self.turns
            block = {"images": len(accepted), ("accepted_as_lateral" if lateral else "refused"):
                     round(float(np.mean(accepted) if lateral else 1 - np.mean(accepted)), 4)}
            if lateral:
                hits = self.turns[group]
                block["orientation_accuracy"] = round(float(np.mean([h for v in hits.values() for h in v])), 4)
                block["orientation_accuracy_by_orientation"] = {k: round(float(np.mean(v)), 4) for k, v in hits.items()}
            out[group] = block
        return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    loaded = _load(args.view)
    tally = Tally(loaded)
    rng = np.random.default_rng([args.seed, 0xBE4C])
    for name, folder in _cohorts(args).items():
        for film in cohort_films(folder / "manifest.csv", side=100_000):  # full resolution
            group = f"{name}_lateral" if film.lateral else f"{name}_ap"
            tally.classify(group, film.pixels, film.lateral)
            if film.lateral and name == "synth":
                for _ in range(2):
                    tally.classify("synth_lateral_cuts", cut_film(film, rng), True)
    for kind, _, image in generated_images(rng, phantoms=6, extremities=24, synthetic=args.negatives,
                                           phantom_seed=args.phantom_seed):
        tally.classify(f"other:{kind}", image, False, ORIENTATIONS[int(rng.integers(0, 8))::8])
    report = tally.report()
    others = [v for k, v in report.items() if k.startswith("other:")]
    report["other_all"] = {"images": sum(v["images"] for v in others),
                           "refused": round(sum(v["refused"] * v["images"] for v in others) / max(1, sum(v["images"] for v in others)), 4)}
    print(json.dumps({
        "view_checkpoint": str(args.view), "held_out_seed": args.seed, "phantom_seed": args.phantom_seed,
        "figures": report, "ms_per_image_wall_median": round(1000 * float(np.median(tally.wall)), 2),
        "ms_per_image_cpu_median": round(1000 * float(np.median(tally.cpu)), 2), "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
        "processor": platform.processor() or platform.machine(), "seconds": round(time.perf_counter() - started, 1),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
