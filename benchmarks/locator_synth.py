"""Issue 11 acceptance figures of a trained locator on a synthetic cohort (CPU).

    spine-dfl synth /tmp/loc64 --patients 64 --seed 11          # a seed the tests never use
    spine-dfl train /tmp/loc64/manifest.csv --config locator_cpu --out /tmp/loc64_run --no-report
    python benchmarks/locator_synth.py /tmp/loc64_run/best.pt /tmp/loc64/manifest.csv [--split test|all]

Prints one JSON object: ``spine_dfl.locate.evaluate.evaluate_checkpoint`` figures of the split
(overall and per level; refined six points, with the locator's own under ``unrefined``) beside the
targets (detection recall >= 0.99, identification >= 0.97, median centre error <= 1.5 mm,
morphometric kappa >= 0.9), plus this process's CPU seconds per radiograph for letterboxing,
locating and refining (on a shared machine CPU seconds, not wall time, say what idle cores do).

``morphometry``: the Genant morphometric grade of each located vertebra (``checkpoint.locate_radiograph``
as score runs it; six-point ratios with the locator's levels as neighbours) against the synth truth's
grade (``vertebrae.csv`` beside the manifest, column ``label``), quadratic-weighted kappa, for the
refined points, the locator's unrefined points and the manifest's six points (the ceiling).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sklearn.metrics import cohen_kappa_score

from spine_dfl.io import read_image
from spine_dfl.io.vocabulary import GENANT_GRADES, POINT_COLUMNS
from spine_dfl.locate.checkpoint import load_locator, locate_radiograph
from spine_dfl.locate.evaluate import evaluate_checkpoint
from spine_dfl.locate.morphometry import spine_morphometry

TARGETS = {"detection_recall_iou50": 0.99, "identification_rate": 0.97, "median_centre_error_mm": 1.5,
           "morphometry_kappa": 0.9}


def _grades(points: np.ndarray, levels: list[int]) -> list[str]:
    return list(spine_morphometry(points, levels).grade) if len(points) else []


def locate_all(checkpoint: Path, manifest: Path, table: pd.DataFrame) -> tuple[float, dict[str, list[str]]]:
    """(median CPU s per radiograph of locate_radiograph, grades per source matched to the truth by level)."""
    loaded = load_locator(checkpoint)
    images = sorted(table["image"].unique())
    locate_radiograph(loaded, read_image(manifest.parent / images[0]).pixels)  # first call allocates, picks kernels
    truth_path = manifest.parent / "vertebrae.csv"
    truth = pd.read_csv(truth_path) if truth_path.exists() else None
    truth_grade = {} if truth is None else {(str(r.image), str(r.vertebra)): str(r.label) for r in truth.itertuples()}
    times, grades = [], {"truth": [], "refined": [], "unrefined": [], "manifest": []}
    for image in images:
        pixels = read_image(manifest.parent / image).pixels
        start = time.process_time()
        found = locate_radiograph(loaded, pixels)
        times.append(time.process_time() - start)
        rows = table[table["image"] == image].set_index("vertebra")
        located = [i for i, level in enumerate(found.levels) if (image, level) in truth_grade]
        if not located:
            continue
        levels = [loaded.levels.index(level) for level in found.levels]
        refined = _grades(found.detections.points, levels)
        unrefined = _grades(found.unrefined_points, levels)
        names = [level for level in rows.index if level in loaded.levels]
        manifest_points = rows.loc[names, list(POINT_COLUMNS)].to_numpy(np.float64).reshape(-1, 6, 2)
        by_level = dict(zip(names, _grades(manifest_points, [loaded.levels.index(n) for n in names])))
        for i in located:
            level = found.levels[i]
            grades["truth"].append(truth_grade[(image, level)])
            grades["refined"].append(refined[i])
            grades["unrefined"].append(unrefined[i])
            grades["manifest"].append(by_level.get(level, "normal"))
    return statistics.median(times), grades


def morphometry_agreement(grades: dict[str, list[str]]) -> dict[str, object]:
    """Quadratic-weighted kappa of each source's Genant morphometric grade against the synth truth."""
    if not grades["truth"]:
        return {"vertebrae": 0, "note": "no vertebrae.csv truth beside the manifest"}
    kappa = {source: float(cohen_kappa_score(grades["truth"], grades[source], labels=list(GENANT_GRADES),
                                             weights="quadratic"))
             for source in ("refined", "unrefined", "manifest")}
    return {"vertebrae": len(grades["truth"]), "quadratic_kappa_vs_synth_truth": kappa,
            "exact_agreement_refined": float(np.mean([t == p for t, p in zip(grades["truth"], grades["refined"])]))}


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
    seconds, grades = locate_all(args.checkpoint, args.manifest, chosen)
    morphometry = morphometry_agreement(grades)
    kappa = morphometry.get("quadratic_kappa_vs_synth_truth", {}).get("refined")
    met = {
        "detection_recall_iou50": figures["detection_recall_iou50"] >= TARGETS["detection_recall_iou50"],
        "identification_rate": figures["identification_rate"] >= TARGETS["identification_rate"],
        "median_centre_error_mm": (figures["median_centre_error_mm"] or float("inf")) <= TARGETS["median_centre_error_mm"],
        "morphometry_kappa": kappa is not None and kappa >= TARGETS["morphometry_kappa"],
    }
    landmarks = {"median_landmark_error_mm": {"unrefined": figures["unrefined"]["median_landmark_error_mm"],
                                              "refined": figures["median_landmark_error_mm"]},
                 "median_ratio_error_vs_manifest_points": {"unrefined": figures["unrefined"]["median_ratio_error"],
                                                           "refined": figures["median_ratio_error"]},
                 "refined_point_share": figures["refined_point_share"]}
    print(json.dumps({"figures": figures, "landmarks": landmarks, "morphometry": morphometry, "targets": TARGETS,
                      "met": met, "threads": args.threads, "median_cpu_s_per_radiograph": round(seconds, 4)},
                     indent=1))


if __name__ == "__main__":
    main()
