"""Metrics of a predictions table: overall, per vertebra level, per patient and per branch, with
patient-level bootstrap confidence intervals.

Definitions (n rows, K classes in checkpoint order, class 0 = "normal"; every one can be recomputed
with scikit-learn from ``predictions.csv``):

- ``accuracy`` = ``accuracy_score(y_true, y_pred)``.
- ``balanced_accuracy`` = ``balanced_accuracy_score(y_true, y_pred)``: mean recall over the classes
  present in y_true.
- ``macro_f1`` = ``f1_score(y_true, y_pred, average="macro", zero_division=0)`` (sklearn's default
  labels: classes occurring in y_true or y_pred).
- ``macro_auc``: mean over the classes c present in y_true of the one-vs-rest
  ``roc_auc_score(y_true == c, prob_c)`` on the probability column *as given*; null when fewer than two
  classes are present. No renormalisation over the present classes: dividing each row by a different
  sum would change the ranking that the AUC measures. When every class is present this is exactly
  ``roc_auc_score(y_true, probs, multi_class="ovr", average="macro")``.
- ``quadratic_kappa`` = ``cohen_kappa_score(y_true, y_pred, labels=range(K), weights="quadratic")``;
  null when undefined (e.g. one class only on both sides).
- ``binary``: abnormal = class index > 0. ``sensitivity`` = recall of abnormal, ``specificity`` =
  recall of normal (``recall_score(abn_true, abn_pred, pos_label=1 / 0)``), ``auc`` =
  ``roc_auc_score(abn_true, 1 - prob_<first class>)``; each null when the rows lack the needed class.
  ``n_abnormal``, ``n_normal`` count the true labels.
- ``ece``: confidence = max over classes of the probability row, correct = (argmax of the row, first
  on ties) == y_true; bin b = min(floor(10 * confidence), 9), i.e. [0, .1), [.1, .2), ..., [.9, 1];
  ECE = sum_b (n_b / n) * |mean(correct in b) - mean(confidence in b)|.
- ``support`` = count of each class in y_true (every class listed, zeros included);
  ``n`` = rows (patients for ``per_patient``), ``n_patients`` = distinct patients,
  ``small_sample`` = n < ``SMALL_SAMPLE``.
- Per patient (``per_patient``): a patient's true grade is the max class index over their rows, the
  predicted grade the max of ``pred``. Patient probabilities: for every row the tail
  T(c) = P(grade >= c) = sum_{j >= c} prob_j with T(0) := 1; the patient's tail is the max over their
  rows, T_pat(c) = max_rows T(c) (non-increasing in c, so a distribution), and
  p_pat(c) = T_pat(c) - T_pat(c + 1) with T_pat(K) := 0 (sums to 1). The max is the
  Fréchet lower bound of P(worst >= c) that holds whatever the dependence between levels.
  Consequently P_pat(abnormal) = max over rows of (1 - prob_first).
- Branches: the same metrics with ``<b>_prob_<class>`` and ``pred_<b>`` (argmax of the branch
  probabilities when ``pred_<b>`` is absent); ``fused`` uses ``prob_<class>`` and ``pred``.
- ``ci95``: per metric {"low", "high", "n_valid"}: 95% percentile interval
  (``np.percentile(values, [2.5, 97.5])``, linear interpolation) over bootstrap resamples.
  Resampling: for each M separately, its P patients are ordered by sorted patient key, a fresh
  ``np.random.default_rng(seed)`` draws ``integers(0, P, size=(n_bootstrap, P))`` and every row of a
  drawn patient enters the resample as often as the patient was drawn. A resample where a metric is
  undefined (e.g. no abnormal row for sensitivity) is skipped for that metric; ``n_valid`` counts the
  resamples that were used. Metrics with intervals: accuracy, balanced_accuracy, macro_auc,
  sensitivity, specificity.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score, f1_score, roc_auc_score

from spine_dfl.metrics.table import PredictionArrays, prepare
from spine_dfl.io.vocabulary import level_sort_key

SMALL_SAMPLE = 10
ECE_BINS = 10
CI_METRICS = ("accuracy", "balanced_accuracy", "macro_auc", "sensitivity", "specificity")
BRANCHES = ("g", "p", "side", "fused")
#: bound on (resamples x rows) floats handled at once, to keep bootstrap memory small (~16 MB per array)
_BOOTSTRAP_CHUNK_ELEMENTS = 2_000_000


def _weighted_auc(score: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC (ties count one half) with row weights; equals sklearn's ROC AUC on the rows
    repeated ``weight`` times.

    score: (n,) float; positive: (n,) bool; weights: (B, n) non-negative counts. Returns (B,) with NaN
    where a resample lacks positives or negatives.
    """
    order = np.argsort(score, kind="stable")
    sorted_score = score[order]
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
    w = weights[:, order]
    pos = positive[order]
    pos_w = np.add.reduceat(w * pos, starts, axis=1)  # (B, U) weight of positives per distinct score
    neg_w = np.add.reduceat(w * ~pos, starts, axis=1)
    neg_below = np.cumsum(neg_w, axis=1) - neg_w
    numerator = (pos_w * (neg_below + 0.5 * neg_w)).sum(axis=1)
    denominator = pos_w.sum(axis=1) * neg_w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


def weighted_scores(
    y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Resampling-friendly metrics for B weightings of the same n rows at once.

    y_true, y_pred: (n,) int; probs: (n, K); weights: (B, n) how often each row is in each resample
    (all ones = the plain sample). Returns (B,) float arrays, NaN where undefined: accuracy,
    balanced_accuracy, macro_auc, sensitivity, specificity, binary_auc (definitions in the module doc).
    """
    n_classes = probs.shape[1]
    weights = np.asarray(weights, dtype=np.float64)
    total = weights.sum(axis=1)
    correct = y_true == y_pred
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(total > 0, weights @ correct / np.where(total > 0, total, 1.0), np.nan)
        onehot = np.eye(n_classes, dtype=bool)[y_true]  # (n, K)
        class_weight = weights @ onehot  # (B, K)
        class_hits = weights @ (onehot & correct[:, None])
        present = class_weight > 0
        recall = np.where(present, class_hits / np.where(present, class_weight, 1.0), 0.0)
        n_present = present.sum(axis=1)
        balanced = np.where(n_present > 0, recall.sum(axis=1) / np.maximum(n_present, 1), np.nan)

        auc_sum = np.zeros(len(weights))
        for c in range(n_classes):
            if not onehot[:, c].any():
                continue  # absent in every resample of these rows
            auc_c = _weighted_auc(probs[:, c], onehot[:, c], weights)
            auc_sum += np.where(present[:, c], np.nan_to_num(auc_c), 0.0)
        macro_auc = np.where(n_present >= 2, auc_sum / np.maximum(n_present, 1), np.nan)

        abnormal_true = y_true > 0
        abnormal_pred = y_pred > 0
        w_abnormal = weights @ abnormal_true
        w_normal = weights @ ~abnormal_true
        sensitivity = np.where(w_abnormal > 0, weights @ (abnormal_true & abnormal_pred) / np.where(w_abnormal > 0, w_abnormal, 1.0), np.nan)
        specificity = np.where(w_normal > 0, weights @ (~abnormal_true & ~abnormal_pred) / np.where(w_normal > 0, w_normal, 1.0), np.nan)
    binary_auc = _weighted_auc(1.0 - probs[:, 0], abnormal_true, weights)
    return {
        "accuracy": accuracy, "balanced_accuracy": balanced, "macro_auc": macro_auc,
        "sensitivity": sensitivity, "specificity": specificity, "binary_auc": binary_auc,
    }


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE with ``n_bins`` equal-width bins on the max probability (see module doc). y_true: (n,), probs: (n, K)."""
    bins = reliability_bins(y_true, probs, n_bins)
    n = len(y_true)
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"] > 0))


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per confidence bin: low, high (edges), count, confidence (mean max prob), accuracy (of the argmax).

    Empty bins have count 0 and NaN means. Used for the ECE and the reliability diagram.
    """
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    index = np.minimum(np.floor(confidence * n_bins).astype(np.int64), n_bins - 1)
    out = []
    for b in range(n_bins):
        members = index == b
        count = int(members.sum())
        out.append({
            "low": b / n_bins, "high": (b + 1) / n_bins, "count": count,
            "confidence": float(confidence[members].mean()) if count else float("nan"),
            "accuracy": float(correct[members].mean()) if count else float("nan"),
        })
    return out


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def bootstrap_counts(n_groups: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """(n_bootstrap, n_groups) int64: how often each group (patient) is drawn in each resample.

    Uses a fresh ``np.random.default_rng(seed).integers(0, n_groups, size=(n_bootstrap, n_groups))``.
    """
    if n_bootstrap <= 0 or n_groups == 0:
        return np.zeros((0, n_groups), dtype=np.int64)
    draws = np.random.default_rng(seed).integers(0, n_groups, size=(n_bootstrap, n_groups))
    flat = (draws + np.arange(n_bootstrap)[:, None] * n_groups).ravel()
    return np.bincount(flat, minlength=n_bootstrap * n_groups).reshape(n_bootstrap, n_groups)


def bootstrap_scores(
    y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray, patient: np.ndarray, n_bootstrap: int, seed: int
) -> dict[str, np.ndarray]:
    """(n_bootstrap,) arrays of ``weighted_scores`` over patient resamples (NaN = undefined resample).

    patient: (n,) patient keys; patients are coded in sorted key order before drawing.
    """
    _, codes = np.unique(patient.astype(str), return_inverse=True)
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    counts = bootstrap_counts(n_groups, n_bootstrap, seed)
    chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // max(len(y_true), 1))
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(counts), chunk):
        row_weights = counts[start:start + chunk][:, codes]  # (b, n)
        for key, values in weighted_scores(y_true, y_pred, probs, row_weights).items():
            parts.setdefault(key, []).append(values)
    return {key: np.concatenate(values) for key, values in parts.items()} if parts else {
        key: np.zeros(0) for key in (*CI_METRICS, "binary_auc")}


def percentile_interval(values: np.ndarray) -> dict[str, Any]:
    """{"low", "high", "n_valid"}: 2.5th/97.5th percentiles of the finite values (None when none)."""
    valid = values[np.isfinite(values)]
    if len(valid) == 0:
        return {"low": None, "high": None, "n_valid": 0}
    low, high = np.percentile(valid, [2.5, 97.5])
    return {"low": float(low), "high": float(high), "n_valid": int(len(valid))}


def group_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray, patient: np.ndarray,
    classes: tuple[str, ...] | list[str], n_bootstrap: int, seed: int,
) -> dict[str, Any]:
    """One metrics block M for a set of rows. Shapes: y_true, y_pred, patient (n,); probs (n, K)."""
    n_classes = len(classes)
    point = {k: v[0] for k, v in weighted_scores(y_true, y_pred, probs, np.ones((1, len(y_true)))).items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined cases are reported as null, not as warnings
        macro_f1 = f1_score(y_true, y_pred, average="macro", zero_division=0)
        kappa = cohen_kappa_score(y_true, y_pred, labels=list(range(n_classes)), weights="quadratic")
    boot = bootstrap_scores(y_true, y_pred, probs, patient, n_bootstrap, seed)
    support = np.bincount(y_true, minlength=n_classes)
    n = int(len(y_true))
    return {
        "n": n,
        "n_patients": int(len(np.unique(patient.astype(str)))),
        "small_sample": n < SMALL_SAMPLE,
        "support": {name: int(count) for name, count in zip(classes, support)},
        "accuracy": _finite_or_none(point["accuracy"]),
        "balanced_accuracy": _finite_or_none(point["balanced_accuracy"]),
        "macro_f1": _finite_or_none(macro_f1),
        "macro_auc": _finite_or_none(point["macro_auc"]),
        "quadratic_kappa": _finite_or_none(kappa),
        "binary": {
            "sensitivity": _finite_or_none(point["sensitivity"]),
            "specificity": _finite_or_none(point["specificity"]),
            "auc": _finite_or_none(point["binary_auc"]),
            "n_abnormal": int((y_true > 0).sum()),
            "n_normal": int((y_true == 0).sum()),
        },
        "ece": _finite_or_none(expected_calibration_error(y_true, probs)),
        "ci95": {name: percentile_interval(boot[name]) for name in CI_METRICS},
        "per_class": per_class_scores(y_true, y_pred, probs, classes),
    }


def per_class_scores(
    y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray, classes: tuple[str, ...] | list[str],
) -> dict[str, dict[str, Any]]:
    """Per class: one-vs-rest AUC of its probability (null when the class or its complement is absent),
    sensitivity (recall) and precision of the argmax prediction (null when undefined), and support."""
    scores: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(classes):
        positive = y_true == index
        predicted = y_pred == index
        both_present = 0 < positive.sum() < len(y_true)
        scores[name] = {
            "auc_ovr": float(roc_auc_score(positive, probs[:, index])) if both_present else None,
            "sensitivity": float((predicted & positive).sum() / positive.sum()) if positive.any() else None,
            "precision": float((predicted & positive).sum() / predicted.sum()) if predicted.any() else None,
            "support": int(positive.sum()),
        }
    return scores


@dataclass(frozen=True)
class PatientArrays:
    """Per-patient aggregation; P = number of patients, in sorted key order.

    patient: (P,) keys; y_true, y_pred: (P,) worst (max) class index; probs: (P, K) distribution from
    the max of per-row tails (module doc); n_rows: (P,) rows per patient.
    """

    patient: np.ndarray
    y_true: np.ndarray
    y_pred: np.ndarray
    probs: np.ndarray
    n_rows: np.ndarray


def patient_level(arrays: PredictionArrays) -> PatientArrays:
    """Aggregate rows to patients: worst grade for label and prediction, tail-max probabilities."""
    keys, codes = np.unique(arrays.patient.astype(str), return_inverse=True)
    n_patients, n_classes = len(keys), arrays.probs.shape[1]
    y_true = np.zeros(n_patients, dtype=np.int64)
    y_pred = np.zeros(n_patients, dtype=np.int64)
    np.maximum.at(y_true, codes, arrays.y_true)
    np.maximum.at(y_pred, codes, arrays.y_pred)
    tails = np.cumsum(arrays.probs[:, ::-1], axis=1)[:, ::-1].copy()  # (n, K): T(c) = sum_{j>=c} p_j
    tails[:, 0] = 1.0
    patient_tails = np.full((n_patients, n_classes), -np.inf)
    np.maximum.at(patient_tails, codes, tails)
    probs = patient_tails - np.concatenate([patient_tails[:, 1:], np.zeros((n_patients, 1))], axis=1)
    return PatientArrays(patient=keys.astype(object), y_true=y_true, y_pred=y_pred, probs=probs,
                         n_rows=np.bincount(codes, minlength=n_patients))


def sorted_levels(levels: np.ndarray) -> list[str]:
    """Distinct levels: C1..S1 in anatomical order, then unknown names alphabetically, as given."""
    return sorted({str(v) for v in levels}, key=level_sort_key)


def metrics_from_arrays(arrays: PredictionArrays, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The metrics.json dictionary for validated arrays (see ``compute_metrics``)."""
    classes = list(arrays.classes)

    def block(mask: np.ndarray | None, pred: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
        rows = slice(None) if mask is None else mask
        return group_metrics(arrays.y_true[rows], pred[rows], probs[rows], arrays.patient[rows],
                             classes, n_bootstrap, seed)

    overall = block(None, arrays.y_pred, arrays.probs)
    per_vertebra = {level: block(arrays.level == level, arrays.y_pred, arrays.probs)
                    for level in sorted_levels(arrays.level)}
    patients = patient_level(arrays)
    per_patient = group_metrics(patients.y_true, patients.y_pred, patients.probs, patients.patient,
                                classes, n_bootstrap, seed)
    branches: dict[str, Any] = {}
    for branch in BRANCHES:
        if branch == "fused":
            branches[branch] = {**overall}
        elif branch in arrays.branch_probs:
            branches[branch] = block(None, arrays.branch_pred[branch], arrays.branch_probs[branch])
    return {
        "classes": classes,
        "overall": overall,
        "per_vertebra": per_vertebra,
        "per_patient": per_patient,
        "branches": branches,
        "bootstrap": {"n_resamples": int(n_bootstrap), "seed": int(seed), "unit": "patient",
                      "method": "percentile", "confidence": 0.95},
    }


def compute_metrics(
    predictions: pd.DataFrame, classes: list[str] | None = None, n_bootstrap: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """metrics.json as a dict: classes, overall, per_vertebra (anatomical order), per_patient,
    branches (g, p, side when their columns exist, and fused), bootstrap settings.

    ``classes`` = checkpoint class order (default: ``prob_`` column order). Definitions in the module
    doc. Raises ReportError for an invalid table.
    """
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    return metrics_from_arrays(prepare(predictions, classes), n_bootstrap=n_bootstrap, seed=seed)


def branch_differences(
    arrays: PredictionArrays, n_bootstrap: int, seed: int, reference: str = "g"
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Paired bootstrap of (branch - reference) for accuracy, balanced accuracy and macro AUC.

    Every branch is scored on the same patient resamples (same seed, same patients), so the
    difference per resample is paired. Returns {branch: {metric: {"diff", "low", "high", "n_valid"}}}
    for every available branch other than the reference; empty when the reference is absent.
    """
    if reference not in arrays.branch_probs:
        return {}
    sources = {b: (arrays.branch_pred[b], arrays.branch_probs[b]) for b in arrays.branch_probs}
    sources["fused"] = (arrays.y_pred, arrays.probs)
    ones = np.ones((1, len(arrays.y_true)))
    point = {b: weighted_scores(arrays.y_true, pred, probs, ones) for b, (pred, probs) in sources.items()}
    boot = {b: bootstrap_scores(arrays.y_true, pred, probs, arrays.patient, n_bootstrap, seed)
            for b, (pred, probs) in sources.items()}
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for branch in sources:
        if branch == reference:
            continue
        out[branch] = {}
        for metric in ("accuracy", "balanced_accuracy", "macro_auc"):
            interval = percentile_interval(boot[branch][metric] - boot[reference][metric])
            diff = point[branch][metric][0] - point[reference][metric][0]
            out[branch][metric] = {"diff": _finite_or_none(diff), **interval}
    return out


def per_vertebra_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """One row per level (C1..S1, then unknown levels as given) plus ``all`` (the overall block).

    Columns: level, n, n_patients, small_sample, accuracy(+_ci_low/_ci_high), balanced_accuracy(+CI),
    macro_f1, macro_auc(+CI), quadratic_kappa, sensitivity(+CI), specificity(+CI), binary_auc, ece,
    support_<class> for every class. Missing values are NaN.
    """
    classes = metrics["classes"]
    rows = []
    levels = sorted(metrics["per_vertebra"], key=level_sort_key)
    for level, block in [*((lv, metrics["per_vertebra"][lv]) for lv in levels), ("all", metrics["overall"])]:
        row: dict[str, Any] = {"level": level, "n": block["n"], "n_patients": block.get("n_patients"),
                               "small_sample": block.get("small_sample", block["n"] < SMALL_SAMPLE)}
        values = {
            "accuracy": block["accuracy"], "balanced_accuracy": block["balanced_accuracy"],
            "macro_f1": block["macro_f1"], "macro_auc": block["macro_auc"],
            "quadratic_kappa": block["quadratic_kappa"], "sensitivity": block["binary"]["sensitivity"],
            "specificity": block["binary"]["specificity"], "binary_auc": block["binary"]["auc"],
            "ece": block["ece"],
        }
        for name, value in values.items():
            row[name] = np.nan if value is None else value
            if name in CI_METRICS:
                interval = block["ci95"][name]
                row[f"{name}_ci_low"] = np.nan if interval["low"] is None else interval["low"]
                row[f"{name}_ci_high"] = np.nan if interval["high"] is None else interval["high"]
        for name in classes:
            row[f"support_{name}"] = block["support"][name]
        rows.append(row)
    return pd.DataFrame(rows)
