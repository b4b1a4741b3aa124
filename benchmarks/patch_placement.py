"""Why patches missed the body: the top patch at its cell's centre against where its peak reads.

    python benchmarks/patch_placement.py CHECKPOINT COHORT [--split test]

COHORT is a ``spine-dfl synth`` folder (manifest.csv with the ROIs, vertebrae.csv with the body and
deformed-part polygons). For every vertebra of the split the checkpoint grades (true fractures it
flags as abnormal, and normal vertebrae), the predicted class's strongest filter's peak is placed
two ways and mapped to original pixels: ``cell_centre`` (the feature cell's theoretical centre plus
the sub-cell shift) and ``gradient_centre`` (the centroid of the peak response's input gradient plus
the same shift, what ``explain`` draws). Prints one JSON object: for each placement the share of
flagged fractures whose peak lies on the body and on the deformed part (per fracture kind too), the
share of normal vertebrae with the peak on the body, and the median offset (input pixels) from the
cell centre to the gradient centre.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.path import Path as Polygon


def _polygon(cell: str) -> Polygon | None:
    return Polygon(np.asarray(json.loads(cell), dtype=np.float64).reshape(-1, 2)) if cell else None


def main() -> None:
    from spine_dfl.data.transforms import eval_transforms
    from spine_dfl.data.transforms.geometry import map_points_to_original, roi_in_input
    from spine_dfl.engine.checkpoint import load_checkpoint
    from spine_dfl.model.effective_field import gradient_centres
    from spine_dfl.heatmap.peaks import grid_to_input, refine_peaks

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("cohort", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--normal", default="normal")
    args = parser.parse_args()
    loaded = load_checkpoint(args.checkpoint)
    model, names = loaded.model.eval(), list(loaded.class_names)
    transform, k = eval_transforms(loaded.preprocessing), int(model.filters_per_class)
    size = int(loaded.preprocessing.input_size)
    truth = pd.read_csv(args.cohort / "vertebrae.csv", keep_default_na=False, dtype={"vertebra": str})
    truth = truth.set_index(["image", "vertebra"])
    manifest = pd.read_csv(args.cohort / "manifest.csv", dtype={"vertebra": str})
    hits: dict[str, dict[str, list[bool]]] = {p: defaultdict(list) for p in ("cell_centre", "gradient_centre")}
    offsets = []
    for row in manifest[manifest["split"] == args.split].itertuples():
        roi = (row.x_min, row.y_min, row.x_max, row.y_max)
        sample = transform({"image": str(args.cohort / row.image), "roi": roi})
        image = torch.as_tensor(sample["image"]).float()[None]
        box = roi_in_input(roi, sample["to_original"], size)[None]
        with torch.no_grad():
            out = model(image, return_maps=True, roi=box)
        pred = int(out.fused.argmax())
        if row.label != args.normal and names[pred] == args.normal:
            continue  # a missed fracture: nobody reviews its patches
        channels = torch.arange(pred * k, (pred + 1) * k)
        best = int(channels[out.peak_score[0, channels].argmax()])
        cell = out.peak_index[0, best : best + 1]
        r, c, _ = refine_peaks(out.response_maps[0, best : best + 1], cell)
        x, y = grid_to_input(r, c, model.stride, model.rf_center_offset)
        width = out.response_maps.shape[-1]
        cx, cy = grid_to_input(cell // width, cell % width, model.stride, model.rf_center_offset)
        centre, _ = gradient_centres(model.filter_responses, image,
                                     torch.tensor([0]), torch.tensor([best]), cell)
        offsets.append((float(centre[0, 0] - cx[0]), float(centre[0, 1] - cy[0])))
        points = {"cell_centre": (float(x[0]), float(y[0])),
                  "gradient_centre": (float(x[0] - cx[0] + centre[0, 0]), float(y[0] - cy[0] + centre[0, 1]))}
        t = truth.loc[(row.image, str(row.vertebra))]
        body, deformed = _polygon(t.body_polygon), _polygon(t.deformed_polygon)
        for placement, point in points.items():
            original = tuple(map_points_to_original(np.array([point]), sample["to_original"])[0])
            on_body = bool(body.contains_point(original))
            if row.label == args.normal:
                hits[placement]["normal_on_body"].append(on_body)
                continue
            on_part = bool(deformed is not None and deformed.contains_point(original))
            for key, hit in (("on_body", on_body), ("on_deformed_part", on_part),
                             (f"{t.kind}_on_deformed_part", on_part)):
                hits[placement][key].append(hit)
    share = {p: {key: {"n": len(v), "share": round(float(np.mean(v)), 4)} for key, v in sorted(h.items())}
             for p, h in hits.items()}
    print(json.dumps({"checkpoint": str(args.checkpoint), "cohort": str(args.cohort), "split": args.split,
                      "pstream_layer": model.pstream_layer, "pstream_region": model.pstream_region,
                      "flagged_and_normal": share,
                      "median_offset_gradient_minus_cell_px": np.round(np.median(offsets, axis=0), 2).tolist()},
                     indent=1))


if __name__ == "__main__":
    main()
