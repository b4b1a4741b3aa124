"""Locator figures: detection, level identification and measurement error, overall and per level.

Per true vertebra (level L, centre c = box centre, height h = mean of its six-point heights Ha,
Hm, Hp, or the box height without points):

    detected     one-to-one greedy matching of predicted to true boxes by IoU, pairs at IoU >= 0.5
    identified   a prediction labelled L has c as its nearest true centre, closer than h / 2
    off by one   not identified, but a prediction labelled L +- 1 has c as nearest, closer than h / 2
    located      some prediction, whatever its label, has c as nearest, closer than h / 2
    wrong level  located but not identified: the film would name another level for this vertebra

Recall = detected / true vertebrae; the wrong-level rate = wrong level / located (the share of the
vertebrae the locator found whose level it named wrongly); precision = matched predictions / predictions; an image is
"all levels right" when every true vertebra is identified and there is no other prediction.
Errors are measured on identified vertebrae: centre distance (mm with the pixel spacing, % of h,
pixels), the six points' distances, and the absolute error of Genant's wedge, biconcave and
crush ratios of the predicted points against the manifest's points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torchvision.ops import box_iou

from spine_dfl.locate.morphometry import spine_morphometry, vertebral_heights

if TYPE_CHECKING:
    from spine_dfl.locate.run import LocatedVertebrae

RATIOS: tuple[str, ...] = ("wedge", "biconcave", "crush")


@dataclass(frozen=True)
class ImageTruth:
    """``boxes`` (N, 4), ``levels`` (N,) level indices, ``points`` (N, 6, 2) (NaN: none), original pixels;
    ``spacing_mm`` (row, col) mm per pixel or None."""

    boxes: np.ndarray
    levels: np.ndarray
    points: np.ndarray
    spacing_mm: tuple[float, float] | None = None


@dataclass(frozen=True)
class ImagePrediction:
    """``boxes`` (M, 4), ``centres`` (M, 2), ``points`` (M, 6, 2), ``levels`` (M,) level indices."""

    boxes: np.ndarray
    centres: np.ndarray
    points: np.ndarray
    levels: np.ndarray


def match_boxes(true_boxes: np.ndarray, pred_boxes: np.ndarray, min_iou: float = 0.5) -> list[tuple[int, int]]:
    """One-to-one (true, predicted) pairs at IoU >= ``min_iou``, greedily from the highest IoU."""
    if len(true_boxes) == 0 or len(pred_boxes) == 0:
        return []
    iou = box_iou(torch.as_tensor(true_boxes, dtype=torch.float64),
                  torch.as_tensor(pred_boxes, dtype=torch.float64)).numpy()
    pairs, used_t, used_p = [], set(), set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        i, j = np.unravel_index(flat, iou.shape)
        if iou[i, j] < min_iou:
            break
        if i not in used_t and j not in used_p:
            pairs.append((int(i), int(j)))
            used_t.add(i)
            used_p.add(j)
    return pairs


def _heights_px(truth: ImageTruth) -> np.ndarray:
    box_h = truth.boxes[:, 3] - truth.boxes[:, 1]
    has = np.isfinite(truth.points).all(axis=(1, 2))
    out = box_h.astype(np.float64).copy()
    if has.any():
        h = vertebral_heights(truth.points[has])
        out[has] = (h.anterior + h.middle + h.posterior) / 3.0
    return out


def _mm(delta: np.ndarray, spacing: tuple[float, float] | None) -> np.ndarray:
    """Lengths of (..., 2) x, y pixel differences in mm (NaN without spacing)."""
    if spacing is None:
        return np.full(delta.shape[:-1], np.nan)
    return np.hypot(delta[..., 0] * spacing[1], delta[..., 1] * spacing[0])


def _ratios(points: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """(N, 3) wedge, biconcave, crush ratios (NaN where points are missing)."""
    out = np.full((len(points), 3), np.nan)
    ok = np.isfinite(points).all(axis=(1, 2))
    if ok.any():
        lv = levels[ok] if np.unique(levels[ok]).size == ok.sum() else None
        m = spine_morphometry(points[ok], lv)
        out[ok] = np.stack([m.wedge_ratio, m.biconcave_ratio, m.crush_ratio if lv is not None
                            else np.full(ok.sum(), np.nan)], axis=1)
    return out


def image_outcome(truth: ImageTruth, pred: ImagePrediction) -> dict[str, np.ndarray]:
    """Per true vertebra: detected, identified, off_by_one, centre and landmark errors, ratio errors."""
    n = len(truth.boxes)
    true_centres = (truth.boxes[:, :2] + truth.boxes[:, 2:]) / 2
    heights = _heights_px(truth)
    out = {"detected": np.zeros(n, bool), "identified": np.zeros(n, bool), "off_by_one": np.zeros(n, bool),
           "located": np.zeros(n, bool),
           "centre_px": np.full(n, np.nan), "centre_mm": np.full(n, np.nan), "centre_pct": np.full(n, np.nan),
           "landmark_px": np.full((n, 6), np.nan), "landmark_mm": np.full((n, 6), np.nan),
           "ratio_error": np.full((n, 3), np.nan)}
    for i, _ in match_boxes(truth.boxes, pred.boxes):
        out["detected"][i] = True
    pred_ratios = _ratios(pred.points, pred.levels)
    true_ratios = _ratios(truth.points, truth.levels)
    for j in range(len(pred.centres)):
        dist = np.hypot(*(true_centres - pred.centres[j]).T)
        i = int(dist.argmin()) if n else -1
        if i < 0 or dist[i] >= heights[i] / 2:
            continue
        out["located"][i] = True
        if pred.levels[j] == truth.levels[i]:
            out["identified"][i] = True
            out["centre_px"][i] = dist[i]
            out["centre_mm"][i] = _mm(pred.centres[j] - true_centres[i], truth.spacing_mm)
            out["centre_pct"][i] = 100.0 * dist[i] / heights[i]
            delta = pred.points[j] - truth.points[i]
            out["landmark_px"][i] = np.hypot(delta[:, 0], delta[:, 1])
            out["landmark_mm"][i] = _mm(delta, truth.spacing_mm)
            out["ratio_error"][i] = np.abs(pred_ratios[j] - true_ratios[i])
        elif abs(int(pred.levels[j]) - int(truth.levels[i])) == 1:
            out["off_by_one"][i] = True
    out["off_by_one"] &= ~out["identified"]
    return out


def _median(values: np.ndarray) -> float | None:
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else None


def _figures(outcome: dict[str, np.ndarray], n_true: int) -> dict[str, Any]:
    rate = (lambda key: float(outcome[key].sum()) / n_true if n_true else None)
    return {
        "vertebrae": n_true,
        "detection_recall_iou50": rate("detected"),
        "identification_rate": rate("identified"),
        "off_by_one_rate": rate("off_by_one"),
        "wrong_level_rate": (float((outcome["located"] & ~outcome["identified"]).sum()) / int(outcome["located"].sum())
                             if outcome["located"].any() else None),
        "median_centre_error_mm": _median(outcome["centre_mm"]),
        "median_centre_error_pct_height": _median(outcome["centre_pct"]),
        "median_centre_error_px": _median(outcome["centre_px"]),
        "median_landmark_error_mm": _median(outcome["landmark_mm"]),
        "median_landmark_error_px": _median(outcome["landmark_px"]),
        "median_ratio_error": {name: _median(outcome["ratio_error"][:, k]) for k, name in enumerate(RATIOS)},
    }


def locator_metrics(pairs: Sequence[tuple[ImageTruth, ImagePrediction]], level_names: Sequence[str]) -> dict[str, Any]:
    """Overall and per-level figures of (truth, prediction) pairs, one per image; JSON-able."""
    outcomes = [image_outcome(t, p) for t, p in pairs]
    keys = ("detected", "identified", "off_by_one", "located", "centre_px", "centre_mm", "centre_pct", "landmark_px",
            "landmark_mm", "ratio_error")
    joined = {k: np.concatenate([o[k] for o in outcomes]) if outcomes else np.zeros(0) for k in keys}
    levels = np.concatenate([t.levels for t, _ in pairs]) if pairs else np.zeros(0, np.int64)
    n_pred = sum(len(p.boxes) for _, p in pairs)
    matched = sum(len(match_boxes(t.boxes, p.boxes)) for t, p in pairs)
    all_right = [bool(o["identified"].all()) and len(p.boxes) == len(t.boxes) for o, (t, p) in zip(outcomes, pairs)]
    result = {"images": len(pairs), "detections": n_pred, **_figures(joined, len(levels)),
              "detection_precision_iou50": matched / n_pred if n_pred else None,
              "images_all_levels_right": float(np.mean(all_right)) if pairs else None}
    result["per_level"] = {
        name: _figures({k: v[levels == index] for k, v in joined.items()}, int((levels == index).sum()))
        for index, name in enumerate(level_names) if (levels == index).any()
    }
    return result


def prediction_of(located: LocatedVertebrae, level_names: Sequence[str]) -> ImagePrediction:
    """An ImagePrediction from ``run.locate``'s LocatedVertebrae."""
    det = located.detections
    lookup = {name: i for i, name in enumerate(level_names)}
    return ImagePrediction(det.boxes, det.centres, det.points,
                           np.array([lookup[v] for v in located.levels], dtype=np.int64))


@torch.no_grad()
def evaluate_locator(model: Any, samples: Sequence[Any], threshold: float = 0.3, refine: bool = True) -> dict[str, Any]:
    """Locate every ``samples.LocatorSample`` with ``model`` and return ``locator_metrics``.

    With ``refine`` (as ``checkpoint.locate_radiograph`` does) each radiograph is read again at full
    resolution and the six points are snapped to their endplates (``refine.refine_located``); the
    figures are of the refined points, and ``unrefined`` gives the landmark and ratio errors of the
    locator's own points beside them, ``refined_point_share`` the share of points that found an edge.
    """
    from spine_dfl.io import read_image
    from spine_dfl.locate.refine import refine_located
    from spine_dfl.locate.run import locate

    pairs, raw_pairs, refined = [], [], []
    for s in samples:
        located = locate(model, s.tensor, s.to_original, threshold=threshold,
                         image_shape=s.image_shape)
        truth = ImageTruth(s.boxes, s.levels, s.points, s.spacing_mm)
        if refine:
            raw_pairs.append((truth, prediction_of(located, model.levels)))
            located = refine_located(located, s.canonical_pixels(read_image(s.image).pixels))
            refined.append(located.refined)
        pairs.append((truth, prediction_of(located, model.levels)))
    figures = locator_metrics(pairs, model.levels)
    if refine:
        raw = locator_metrics(raw_pairs, model.levels)
        figures["unrefined"] = {key: raw[key] for key in (
            "median_landmark_error_mm", "median_landmark_error_px", "median_ratio_error")}
        marks = np.concatenate(refined) if refined else np.zeros((0, 6), bool)  # type: ignore[arg-type]  # refine_located sets refined
        figures["refined_point_share"] = float(marks.mean()) if marks.size else None
    return figures


def evaluate_checkpoint(checkpoint: str | Any, manifest: str | Any, split: str | None = "test",
                        device: str = "auto") -> dict[str, Any]:
    """``evaluate_locator`` of a locator checkpoint on one manifest split (every image when None).

    Levels the checkpoint does not know count as unknown (-1): never identified. The dict gains
    ``split`` and ``checkpoint_epoch``.
    """
    from spine_dfl.data.manifest import load_manifest
    from spine_dfl.engine.device import resolve_device
    from spine_dfl.locate.checkpoint import load_locator
    from spine_dfl.locate.samples import load_samples

    loaded = load_locator(checkpoint, map_location=resolve_device(device))
    table = load_manifest(manifest).table
    if split is not None and "split" in table.columns and not (table["split"] == split).any():
        raise ValueError(f"{manifest}: no rows in split {split!r}")
    samples = load_samples(table, loaded.levels, loaded.input_size, loaded.percentiles,
                           None if split is None else [split])
    figures = evaluate_locator(loaded.model, samples, loaded.threshold)
    return {"split": split, "checkpoint_epoch": int(loaded.raw.get("epoch", -1)) + 1, **figures}
