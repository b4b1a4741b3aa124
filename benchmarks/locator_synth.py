"""Quick check that the locator learns on a synthetic cohort (CPU, minutes).

    spine-dfl synth /tmp/loc --patients 24 --seed 5
    python benchmarks/locator_synth.py /tmp/loc [--minutes 10] [--size 384 192]

Trains on the train split for a wall-clock budget, then locates the val + test radiographs and
prints one JSON object: detection recall / precision at IoU >= 0.5, identification rate (the
vertebra labelled L has its centre nearest the true L and within half its height), off-by-one
rate, median centre error (mm, % of height), median landmark error (mm) and the morphometric
grade agreement of located against manifest six points. A development check, not the lead's
evaluation (which will read manifests through spine_dfl.data).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torchvision.ops import box_iou

from spine_dfl.io import read_image
from spine_dfl.io.vocabulary import POINT_COLUMNS, sort_levels
from spine_dfl.locate import (
    VertebraLocator,
    collate_targets,
    encode_targets,
    letterbox,
    locate,
    output_size,
    spine_morphometry,
    train_locator_epoch,
)


def load(cohort: Path, size: tuple[int, int], levels: list[str]) -> list[dict]:
    table = pd.read_csv(cohort / "manifest.csv")
    samples = []
    for image, rows in table.groupby("image", sort=True):
        radiograph = read_image(cohort / image)
        tensor, to_original = letterbox(radiograph.pixels, size)
        to_input = torch.linalg.inv(to_original).numpy()
        boxes = rows[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float)
        points = rows[list(POINT_COLUMNS)].to_numpy(float).reshape(-1, 6, 2)

        def to_in(xy: np.ndarray) -> np.ndarray:
            return xy @ to_input[:2, :2].T + to_input[:2, 2]

        level_index = np.array([levels.index(v) for v in rows["vertebra"]])
        samples.append({
            "split": rows["split"].iloc[0], "tensor": tensor, "to_original": to_original,
            "spacing": radiograph.spacing_mm, "spacing_source": radiograph.meta.get("spacing_source"),
            "boxes": boxes, "points": points, "levels": level_index,
            "targets": encode_targets(to_in(boxes.reshape(-1, 2)).reshape(-1, 4), output_size(size),
                                      to_in(points.reshape(-1, 2)).reshape(-1, 6, 2), level_index),
        })
    return samples


def evaluate(model: VertebraLocator, samples: list[dict], levels: list[str]) -> dict:
    tp = n_true = n_found = identified = off_by_one = all_right = 0
    centre_mm, centre_pct, landmark_mm, grade_pairs = [], [], [], []
    for s in samples:
        found = locate(model, s["tensor"], s["to_original"], threshold=0.3)
        det = found.detections
        n_true, n_found = n_true + len(s["boxes"]), n_found + len(det)
        mm = float(np.mean(s["spacing"])) if s["spacing"] is not None else 1.0
        true_centres = (s["boxes"][:, :2] + s["boxes"][:, 2:]) / 2
        heights = s["boxes"][:, 3] - s["boxes"][:, 1]
        if len(det):
            iou = box_iou(torch.as_tensor(s["boxes"]), torch.as_tensor(det.boxes)).numpy()
            tp += int((iou.max(axis=1) >= 0.5).sum())
        right = 0
        pred_level = [levels.index(v) for v in found.levels]
        for k, lv in enumerate(pred_level):
            dist = np.linalg.norm(true_centres - det.centres[k], axis=1)
            nearest = int(dist.argmin())
            truth = s["levels"][nearest]
            if truth == lv and dist[nearest] < heights[nearest] / 2:
                right += 1
                centre_mm.append(dist[nearest] * mm)
                centre_pct.append(100 * dist[nearest] / heights[nearest])
                landmark_mm.extend(np.linalg.norm(det.points[k] - s["points"][nearest], axis=1) * mm)
            elif abs(truth - lv) == 1:
                off_by_one += 1
        identified += right
        all_right += int(right == len(s["boxes"]) and len(det) == len(s["boxes"]))
        if len(det) >= 2:
            located = spine_morphometry(det.points, pred_level)
            truth_m = spine_morphometry(s["points"], s["levels"])
            by_level = dict(zip(s["levels"].tolist(), truth_m.grade))
            grade_pairs += [(by_level[lv], g) for lv, g in zip(pred_level, located.grade) if lv in by_level]
    agree = float(np.mean([a == b for a, b in grade_pairs])) if grade_pairs else float("nan")
    return {
        "images": len(samples), "vertebrae": n_true, "detections": n_found,
        "detection_recall_iou50": tp / n_true, "detection_precision_iou50": tp / max(n_found, 1),
        "identification_rate": identified / n_true, "off_by_one_rate": off_by_one / n_true,
        "images_all_levels_right": all_right / len(samples),
        "median_centre_error_mm": float(np.median(centre_mm)) if centre_mm else None,
        "median_centre_error_pct_height": float(np.median(centre_pct)) if centre_pct else None,
        "median_landmark_error_mm": float(np.median(landmark_mm)) if landmark_mm else None,
        "morphometric_grade_agreement_located_vs_manifest_points": agree,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cohort", type=Path)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--size", type=int, nargs=2, default=(384, 192))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    levels = sort_levels(pd.read_csv(args.cohort / "manifest.csv")["vertebra"].tolist())
    samples = load(args.cohort, tuple(args.size), levels)
    train = [s for s in samples if s["split"] == "train"]
    held_out = [s for s in samples if s["split"] != "train"]
    model = VertebraLocator(levels, blocks=(1, 1, 1, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    start, epochs, history = time.perf_counter(), 0, {}
    while time.perf_counter() - start < args.minutes * 60:
        order = rng.permutation(len(train))
        batches = [
            (torch.stack([train[i]["tensor"] for i in chunk]), collate_targets([train[i]["targets"] for i in chunk]))
            for chunk in np.array_split(order, max(1, len(train) // args.batch))
        ]
        history = train_locator_epoch(model, batches, optimizer)
        epochs += 1
        print(json.dumps({"epoch": epochs, "s": round(time.perf_counter() - start), **{k: round(v, 4) for k, v in history.items()}}), flush=True)
    result = {
        "train_images": len(train), "epochs": epochs, "train_minutes": round((time.perf_counter() - start) / 60, 1),
        "input_size": list(args.size), "final_loss": history,
        "held_out": evaluate(model, held_out, levels), "train": evaluate(model, train, levels),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
