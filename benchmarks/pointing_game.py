"""Pointing game: do explain's top patch and Grad-CAM's peak land on the vertebral body and the lesion?

    python benchmarks/pointing_game.py RUN/explain/patches.json COHORT/vertebrae.csv [--normal normal]

patches.json is ``spine-dfl explain`` output (refined peaks, drawn boxes, ``gradcam_peak``, all in
original pixels); vertebrae.csv is ``spine-dfl synth``'s truth (``body_polygon``, ``deformed_polygon``,
``kind``, heights). Rows are matched on (sop_instance_uid, vertebra), else (image file name, vertebra).
Prints one JSON object:

- ``flagged_fractures``: true fractures (truth not ``--normal``) predicted abnormal, what a clinician
  reviews: the share whose top patch peak lies on the body polygon and on the deformed part, per
  fracture kind too; ``gradcam``: the same for Grad-CAM's peak on the same vertebrae;
- ``normal_vertebrae``: truth-normal vertebrae, top patch peak and Grad-CAM peak on the body;
- ``patch_side_over_body_height``: median drawn top-patch side (the larger of the box's width and
  height) divided by the body height (the largest of its anterior, middle and posterior heights),
  over the flagged fractures and over all matched vertebrae;
- ``top_peak_above_body`` / ``top_peak_below_body``: share of flagged fractures whose top peak lies
  above the body's highest point / below its lowest (peaks on the crop's edge rows).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.path import Path as Polygon


def contains(polygon: np.ndarray | None, point: tuple[float, float] | None) -> bool:
    """Whether continuous (x, y) lies inside (or on the edge of) the closed polygon."""
    if polygon is None or point is None or len(polygon) < 3:
        return False
    return bool(Polygon(polygon).contains_point(point, radius=1e-9) or Polygon(polygon).contains_point(point, radius=-1e-9))


def _polygon(cell: Any) -> np.ndarray | None:
    if not isinstance(cell, str) or not cell.strip():
        return None
    return np.asarray(json.loads(cell), dtype=np.float64).reshape(-1, 2)


def _truth_index(truth: pd.DataFrame) -> dict[tuple[str, str], dict[str, Any]]:
    index: dict[tuple[str, str], dict[str, Any]] = {}
    for row in truth.to_dict("records"):
        row["body"], row["deformed"] = _polygon(row.get("body_polygon")), _polygon(row.get("deformed_polygon"))
        heights = [row.get(c) for c in ("anterior_height_mm", "middle_height_mm", "posterior_height_mm")]
        row["body_height_px"] = max(float(h) for h in heights) / float(row["mm_per_px"])
        index[("uid", f"{row['sop_instance_uid']}", str(row["vertebra"]))] = row  # type: ignore[index]
        index[("name", Path(str(row["image"])).name, str(row["vertebra"]))] = row  # type: ignore[index]
    return index


def _share(hits: list[bool]) -> float | None:
    return round(sum(hits) / len(hits), 4) if hits else None


def _match(entry: dict[str, Any], index: dict) -> dict[str, Any] | None:
    vertebra = str(entry.get("vertebra", ""))
    return (index.get(("uid", str(entry.get("sop_instance_uid") or ""), vertebra))
            or index.get(("name", Path(str(entry["image"])).name, vertebra)))


def score(entries: list[dict[str, Any]], truth: pd.DataFrame, normal: str) -> dict[str, Any]:
    index = _truth_index(truth)
    flagged: dict[str, list[bool]] = defaultdict(list)
    by_kind: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    normals: dict[str, list[bool]] = defaultdict(list)
    ratios_flagged, ratios_all, unmatched = [], [], 0
    for entry in entries:
        row = _match(entry, index)
        if row is None:
            unmatched += 1
            continue
        top = entry["boxes"][0] if entry.get("boxes") else None
        peak = (top["peak_x"], top["peak_y"]) if top else None
        cam = tuple(entry["gradcam_peak"]) if entry.get("gradcam_peak") else None
        if top:
            side = max(top["x_max"] - top["x_min"], top["y_max"] - top["y_min"])
            ratios_all.append(side / row["body_height_px"])
        if row["label"] == normal:
            normals["top_patch_on_body"].append(contains(row["body"], peak))
            normals["gradcam_on_body"].append(contains(row["body"], cam))
            continue
        if entry.get("pred") == normal:
            continue  # a missed fracture: nobody reviews its patches
        hits = {
            "top_patch_on_body": contains(row["body"], peak),
            "top_patch_on_deformed_part": contains(row["deformed"], peak),
            "gradcam_on_body": contains(row["body"], cam),
            "gradcam_on_deformed_part": contains(row["deformed"], cam),
            "top_peak_above_body": bool(peak is not None and row["body"] is not None and peak[1] < row["body"][:, 1].min()),
            "top_peak_below_body": bool(peak is not None and row["body"] is not None and peak[1] > row["body"][:, 1].max()),
        }
        for key, hit in hits.items():
            flagged[key].append(hit)
            by_kind[str(row["kind"])][key].append(hit)
        if top:
            ratios_flagged.append(ratios_all[-1])
    return {
        "flagged_fractures": {"n": len(flagged["top_patch_on_body"]),
                              **{k: _share(v) for k, v in flagged.items()},
                              "by_kind": {kind: {"n": len(v["top_patch_on_body"]), **{k: _share(h) for k, h in v.items()}}
                                          for kind, v in sorted(by_kind.items())}},
        "normal_vertebrae": {"n": len(normals["top_patch_on_body"]), **{k: _share(v) for k, v in normals.items()}},
        "patch_side_over_body_height": {
            "flagged_fractures_median": round(statistics.median(ratios_flagged), 4) if ratios_flagged else None,
            "all_median": round(statistics.median(ratios_all), 4) if ratios_all else None,
        },
        "matched": len(entries) - unmatched,
        "unmatched": unmatched,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("patches", type=Path, help="patches.json written by spine-dfl explain")
    parser.add_argument("truth", type=Path, help="vertebrae.csv written by spine-dfl synth")
    parser.add_argument("--normal", default="normal", help="the class name of a vertebra without fracture")
    args = parser.parse_args()
    entries = json.loads(args.patches.read_text(encoding="utf-8"))
    truth = pd.read_csv(args.truth, dtype={"sop_instance_uid": str, "vertebra": str}, keep_default_na=False)
    result = score(entries, truth, args.normal)
    print(json.dumps({"patches": str(args.patches), "truth": str(args.truth), **result}, indent=1))


if __name__ == "__main__":
    main()
