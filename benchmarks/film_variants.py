"""Benchmark: the same test films stored in the 8 orientations and cut as clinics cut them, scored end to end.

For each test film of a cohort (``--manifest``, split ``--split``) the film is turned to canonical
with its known orientation (its PatientOrientation), then written again as DICOM in every one of
the 8 orientations and as lumbar (T12-L5 and the sacrum), thoracic (T4-L1) and junction (T10-L2)
cuts of the canonical film, each with PatientOrientation removed (the image alone must tell) or,
with ``--keep-orientation-tag``, set to what the pixels show. ``spine-dfl score`` (the library's
``score``) runs on them with the locator (``--locator``: its embedded view classifier finds the
orientation) and the grader, and the located vertebrae are matched to the truth (IoU >= 0.5, in
each variant's own pixels).

Figures per variant: files refused (and why), detection recall, identification where an anchor is
visible (sacrum in the field: full films and lumbar cuts), the wrong-level rate (located vertebrae
named with a wrong anatomical level: relative names V1.. are not wrong), the share named
relatively, the orientation found, and the grader's macro AUC on the located crops.

    python benchmarks/film_variants.py OUT --manifest COHORT/manifest.csv --grader G/best.pt --locator L/best.pt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spine_dfl.io.orientation import ORIENTATIONS, Orientation, orientation_from_header

CUTS = {"lumbar": ("T12", "L5", 1.6), "thoracic": ("T4", "L1", 0.25), "junction": ("T10", "L2", 0.25)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--grader", type=Path, required=True)
    parser.add_argument("--locator", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=0, help="at most this many films (0: all)")
    parser.add_argument("--keep-orientation-tag", action="store_true")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=None,
                        help="only these variants (orientation names such as 'as stored', 'rot90', or lumbar, thoracic, junction)")
    return parser.parse_args(argv)


def _cut_rows(boxes: dict[str, np.ndarray], cut: str, rows: int) -> tuple[int, int] | None:
    top, bottom, below = CUTS[cut]
    if top not in boxes or bottom not in boxes:
        return None
    height = float(np.median([b[3] - b[1] for b in boxes.values()]))
    y0 = max(0, int(boxes[top][1] - 0.3 * height))
    y1 = min(rows, int(boxes[bottom][3] + below * height))
    return y0, y1


def write_variants(manifest: Path, split: str, out: Path, limit: int, keep_tag: bool,
                   only: list[str] | None = None) -> pd.DataFrame:
    """Write the variant films; return the truth table (variant file, level, label, box in its pixels,
    whether the sacrum is in its field)."""
    import pydicom

    table = pd.read_csv(manifest)
    table = table[table["split"] == split]
    films = sorted(table["image"].unique())[: limit or None]
    truth = []
    out.mkdir(parents=True, exist_ok=True)
    for film in films:
        path = (manifest.parent / film).resolve()
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array
        known = orientation_from_header(ds.get("PatientOrientation")) or Orientation()
        canonical = known.apply(stored)
        rows_t = table[table["image"] == film]
        boxes_stored = rows_t[["x_min", "y_min", "x_max", "y_max"]].to_numpy(np.float64)
        back = known.inverse()
        boxes = back.boxes_to_stored(boxes_stored, canonical.shape)  # stored -> canonical
        by_level = dict(zip(rows_t["vertebra"], boxes))
        height = float(np.median(boxes[:, 3] - boxes[:, 1]))
        variants: list[tuple[str, np.ndarray, Orientation, np.ndarray]] = []
        for o in ORIENTATIONS:
            variants.append((o.name, o.inverse().apply(canonical), o, np.array([0, canonical.shape[0]])))
        for cut in CUTS:
            span = _cut_rows(by_level, cut, canonical.shape[0])
            if span is not None:
                variants.append((cut, canonical[span[0]: span[1]], Orientation(), np.array(span)))
        stem = Path(film).stem
        for name, pixels, o, span in variants:
            if only and name not in only:
                continue
            file = out / f"{stem}_{name.replace('+', '_')}.dcm"
            _write(ds, pixels, o, keep_tag, file)
            rows_c = span[1] - span[0]
            sacrum = "L5" in by_level and by_level["L5"][3] - span[0] + 0.8 * height <= rows_c
            for (level, label), box in zip(rows_t[["vertebra", "label"]].itertuples(index=False), boxes):
                shifted = box - np.array([0, span[0], 0, span[0]])
                if shifted[1] < 0 or shifted[3] > rows_c:
                    continue
                in_file = o.boxes_to_stored(shifted[None], pixels.shape)[0]  # cuts: o is "as stored"
                truth.append({"file": str(file.resolve()), "variant": name, "film": film, "vertebra": level,
                              "label": label, "sacrum_visible": bool(sacrum),
                              **dict(zip(["x_min", "y_min", "x_max", "y_max"], in_file))})
    return pd.DataFrame(truth)


def _write(ds: Any, pixels: np.ndarray, o: Orientation, keep_tag: bool, file: Path) -> None:
    import copy

    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    new = copy.deepcopy(ds)
    pixels = np.ascontiguousarray(pixels.astype(ds.pixel_array.dtype))
    new.Rows, new.Columns = pixels.shape
    new.PixelData = pixels.tobytes()
    new.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    new.SOPInstanceUID = generate_uid()
    new.file_meta.MediaStorageSOPInstanceUID = new.SOPInstanceUID
    if "PatientOrientation" in new:
        del new.PatientOrientation
    if keep_tag:
        new.PatientOrientation = _words_for(o)
    if o.k % 2 and "ImagerPixelSpacing" in new:
        new.ImagerPixelSpacing = list(new.ImagerPixelSpacing)[::-1]
    if o.k % 2 and "PixelSpacing" in new:
        new.PixelSpacing = list(new.PixelSpacing)[::-1]
    new.save_as(file, enforce_file_format=True)


def _words_for(o: Orientation) -> list[str]:
    for words in ([a, b] for a in "APHF" for b in "APHF"):
        if orientation_from_header(words) == o:
            return words
    raise AssertionError(o)


def evaluate(truth: pd.DataFrame, predictions: pd.DataFrame) -> dict[str, Any]:
    """Per variant: refusals, recall, identification where anchored-visible, wrong level, AUC."""
    from spine_dfl.locate.evaluate import match_boxes

    out: dict[str, Any] = {}
    for variant, group in truth.groupby("variant"):
        rec = {"films": 0, "refused": 0, "refusals": {}, "true": 0, "matched": 0, "named_right": 0,
               "anchored_true": 0, "anchored_right": 0, "located": 0, "wrong_level": 0, "relative": 0,
               "orientation_right": 0, "probs": [], "labels": []}
        for file, rows in group.groupby("file"):
            rec["films"] += 1
            pred = predictions[predictions["image"] == file]
            if pred.empty or (pred["status"] == "error").all():
                rec["refused"] += 1
                reason = str(pred["error"].iloc[0]) if not pred.empty else "missing"
                key = reason.split(":")[0]
                rec["refusals"][key] = rec["refusals"].get(key, 0) + 1
                rec["true"] += len(rows)
                rec["anchored_true"] += int(rows["sacrum_visible"].sum())
                continue
            t_boxes = rows[["x_min", "y_min", "x_max", "y_max"]].to_numpy(np.float64)
            p_boxes = pred[["x_min", "y_min", "x_max", "y_max"]].to_numpy(np.float64)
            pairs = match_boxes(t_boxes, p_boxes, 0.5)
            rec["true"] += len(rows)
            rec["matched"] += len(pairs)
            rec["located"] += len(pairs)
            want = parse_variant(variant)
            rec["orientation_right"] += int(str(pred["orientation"].iloc[0]) == want)
            for t, p in pairs:
                truth_level = rows["vertebra"].iloc[t]
                name = str(pred["vertebra"].iloc[p])
                anchored = str(pred["level_anchored"].iloc[p]) == "yes"
                if anchored and name != truth_level:
                    rec["wrong_level"] += 1
                if not anchored:
                    rec["relative"] += 1
                if bool(rows["sacrum_visible"].iloc[t]) and anchored and name == truth_level:
                    rec["anchored_right"] += 1
                rec["probs"].append(pred[[c for c in pred.columns if c.startswith("prob_")]].iloc[p].to_numpy(float))
                rec["labels"].append(rows["label"].iloc[t])
            rec["anchored_true"] += int(rows["sacrum_visible"].sum())
        out[variant] = _figures(rec, [c[5:] for c in predictions.columns if c.startswith("prob_")])
    return out


def parse_variant(variant: str) -> str:
    return variant if variant in [o.name for o in ORIENTATIONS] else "as stored"


def _figures(rec: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    from spine_dfl.metrics.scores import weighted_scores

    ratio = lambda a, b: round(a / b, 4) if b else None  # noqa: E731
    auc = None
    if rec["labels"]:
        labels = np.array([classes.index(str(v)) for v in rec["labels"]])
        probs = np.stack(rec["probs"])
        auc = weighted_scores(labels, probs.argmax(axis=1), probs, np.ones((1, len(labels))))["macro_auc"][0]
    return {"films": rec["films"], "refused": rec["refused"], "refusals": rec["refusals"],
            "detection_recall": ratio(rec["matched"], rec["true"]),
            "identification_where_anchor_visible": ratio(rec["anchored_right"], rec["anchored_true"]),
            "wrong_level_rate": ratio(rec["wrong_level"], rec["located"]),
            "relative_names": ratio(rec["relative"], rec["located"]),
            "orientation_found": ratio(rec["orientation_right"], rec["films"] - rec["refused"]),
            "macro_auc": None if auc is None else round(float(auc), 4)}


def main(argv: list[str] | None = None) -> int:
    from spine_dfl.score import score

    args = parse_args(argv)
    truth = write_variants(args.manifest, args.split, args.out / "films", args.limit, args.keep_orientation_tag,
                           args.variants)
    score(args.grader, [args.out / "films"], args.out / "scored", locator=args.locator, workers=args.workers,
          progress=False)
    predictions = pd.read_csv(args.out / "scored" / "predictions.csv")
    result = {"manifest": str(args.manifest), "split": args.split, "orientation_tag": args.keep_orientation_tag,
              "variants": evaluate(truth, predictions)}
    text = json.dumps(result, indent=2)
    (args.out / "film_variants.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
