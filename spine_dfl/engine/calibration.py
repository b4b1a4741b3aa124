"""Temperature scaling of the grader's logits (Guo et al., *On Calibration of Modern Neural Networks*, 2017).

One temperature per branch (``g``, ``p``, ``side``) and one for the ``fused`` logits, each fitted on the
validation split at the end of training by minimising the negative log-likelihood of
``softmax(logits / T)``. The NLL is convex in ``1 / T``, so a bounded golden-section search on ``log T``
(``T`` in [``T_MIN``, ``T_MAX``]) finds its minimum; dividing logits by a positive number never changes
the argmax, so calibration changes the probabilities, never a prediction.

The expected calibration error here is the top-label ECE with ``ECE_BINS`` = 15 equal-width bins on the
highest class probability (bin ``b`` holds confidences in [b/15, (b+1)/15), the last bin includes 1):
``ECE = sum_b n_b / n * |accuracy_b - confidence_b|``. (The report's table uses 10 bins; see
``metrics.scores``.)

What a checkpoint stores under ``calibration`` (plain numbers and strings only, weights_only-safe):
``{"method": "temperature", "temperatures": {"g", "p", "side", "fused"}, "fitted_on": "val", "n": ...,
"ece_bins": 15, "ece_before": {...}, "ece_after": {...}, "nll_before": {...}, "nll_after": {...},
"reliability_before": {branch: [bin, ...]}, "reliability_after": {...}}``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("spine_dfl")

CALIBRATED_BRANCHES = ("g", "p", "side", "fused")
ECE_BINS = 15
T_MIN, T_MAX = 0.05, 20.0
UNCALIBRATED_WARNING = "uncalibrated checkpoint: it has no fitted temperatures, probabilities are the raw softmax"


@dataclass(frozen=True)
class Temperatures:
    """The temperature of every branch; all 1 (no change) for a checkpoint without calibration."""

    g: float = 1.0
    p: float = 1.0
    side: float = 1.0
    fused: float = 1.0
    fitted: bool = False

    def of(self, branch: str) -> float:
        return float(getattr(self, branch))

    def as_dict(self) -> dict[str, float]:
        return {b: self.of(b) for b in CALIBRATED_BRANCHES}


def temperatures_from_checkpoint(raw: Mapping[str, Any], warn: bool = True) -> Temperatures:
    """The checkpoint's fitted temperatures; all 1, and one warning line, when it has none."""
    record = raw.get("calibration") if isinstance(raw, Mapping) else None
    values = record.get("temperatures") if isinstance(record, Mapping) else None
    if not isinstance(values, Mapping) or not all(b in values for b in CALIBRATED_BRANCHES):
        if warn:
            log.warning(UNCALIBRATED_WARNING)
        return Temperatures()
    return Temperatures(**{b: float(values[b]) for b in CALIBRATED_BRANCHES}, fitted=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def calibrated_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature) in float64, (n, M) -> (n, M)."""
    return np.exp(log_softmax(np.asarray(logits, dtype=np.float64) / float(temperature)))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits / temperature)."""
    labels = np.asarray(labels, dtype=np.int64)
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / float(temperature))
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, t_min: float = T_MIN, t_max: float = T_MAX,
                    iterations: int = 80) -> float:
    """The temperature in [t_min, t_max] that minimises the NLL (golden-section search on log T).

    The NLL is convex in 1/T (a log-sum-exp of a linear function of it, minus a linear term), hence
    unimodal in log T: the search converges to the bounded minimum (to ~1e-12 in log T after 80 steps).
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"need (n, M) logits and n labels, n > 0; got {logits.shape} and {labels.shape}")
    if not np.isfinite(logits).all():
        raise ValueError("logits are not all finite: cannot fit a temperature")
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    low, high = math.log(t_min), math.log(t_max)
    a, b = high - golden * (high - low), low + golden * (high - low)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    for _ in range(iterations):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - golden * (high - low)
            fa = nll(logits, labels, math.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + golden * (high - low)
            fb = nll(logits, labels, math.exp(b))
    return float(math.exp((low + high) / 2.0))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per equal-width confidence bin: low, high, count, confidence (mean top probability), accuracy
    (of the argmax). Empty bins: count 0, confidence and accuracy None (JSON-ready)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    index = np.clip(np.floor(confidence * n_bins).astype(np.int64), 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        members = index == b
        count = int(members.sum())
        bins.append({"low": b / n_bins, "high": (b + 1) / n_bins, "count": count,
                     "confidence": float(confidence[members].mean()) if count else None,
                     "accuracy": float(correct[members].mean()) if count else None})
    return bins


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE with ``n_bins`` equal-width bins (module doc); probs (n, M), labels (n,)."""
    bins = reliability_bins(probs, labels, n_bins)
    n = max(1, len(labels))
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]))


def fit_calibration(logits: Mapping[str, np.ndarray], labels: np.ndarray, fitted_on: str = "val") -> dict[str, Any]:
    """Temperatures of every branch fitted on ``logits`` (``{"g"|"p"|"side"|"fused": (n, M)}``) and their
    ECE / NLL / reliability bins before and after: the checkpoint's ``calibration`` record."""
    labels = np.asarray(labels, dtype=np.int64)
    record: dict[str, Any] = {"method": "temperature", "fitted_on": fitted_on, "n": int(len(labels)),
                              "ece_bins": ECE_BINS, "temperatures": {}, "ece_before": {}, "ece_after": {},
                              "nll_before": {}, "nll_after": {}, "reliability_before": {}, "reliability_after": {}}
    for branch in CALIBRATED_BRANCHES:
        values = np.asarray(logits[branch], dtype=np.float64)
        if not np.any(values):  # a G-stream-only model's p and side: all-zero logits, nothing to scale
            temperature = 1.0
        else:
            temperature = fit_temperature(values, labels)
        before, after = calibrated_softmax(values), calibrated_softmax(values, temperature)
        record["temperatures"][branch] = temperature
        record["ece_before"][branch] = expected_calibration_error(before, labels)
        record["ece_after"][branch] = expected_calibration_error(after, labels)
        record["nll_before"][branch] = nll(values, labels)
        record["nll_after"][branch] = nll(values, labels, temperature)
        record["reliability_before"][branch] = reliability_bins(before, labels)
        record["reliability_after"][branch] = reliability_bins(after, labels)
    return record


def calibration_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """What ``calibration.json`` and the reports show: temperatures and ECE before/after per branch."""
    keys = ("method", "fitted_on", "n", "ece_bins", "temperatures", "ece_before", "ece_after", "nll_before",
            "nll_after", "reliability_before", "reliability_after")
    return {k: record[k] for k in keys if k in record}
