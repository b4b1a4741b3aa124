"""Consecutive level labelling of detected vertebrae by dynamic programming along the spine.

Each detection has level logits (one per level, levels in anatomical order, index 0 the most
cranial). Labelling each detection on its own gives duplicates and gaps; instead:

1. Order the detections along the spine (``gate.column.spine_order``): the principal axis of the centres, with a polynomial
   curve fitted across it, and the arc length along that curve between consecutive detections.
2. Dynamic programming over that sequence: levels strictly increase along it (or strictly
   decrease: the image may show the head at the top or at the bottom, so both directions are
   scored), any start and end level (a field of view starts and ends anywhere), and a step of
   more than one level (a missed vertebra) costs ``skip_penalty`` per skipped level plus a
   geometric term: a gap about twice the local spacing supports a skip, a regular gap does not.
3. Per-detection confidence is the posterior probability of the chosen level (forward-backward
   over all labellings of both directions); the image is ``ambiguous`` when the best labelling
   that differs from the chosen one anywhere scores within ``ambiguity_margin`` (nats) of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spine_dfl.gate.column import expected_steps, spine_order

__all__ = ["LevelAssignment", "assign_levels"]

_NEG = -1e18


@dataclass(frozen=True)
class LevelAssignment:
    """Levels for N detections (in the caller's order).

    ``levels``: (N,) level indices; ``confidence``: (N,) posterior probability of each level;
    ``ambiguous``: the runner-up labelling is within the margin; ``margin``: best minus runner-up
    score (inf when there is no alternative); ``order``: detection indices from the most cranial
    to the most caudal; ``head_up``: True when the levels increase down the image (the principal
    axis is oriented towards +y, or +x for a horizontal spine), False for a head-down image.
    """

    levels: np.ndarray
    confidence: np.ndarray
    ambiguous: bool
    margin: float
    order: np.ndarray
    head_up: bool


def _transition_scores(steps: np.ndarray, n_levels: int, max_skip: int, skip_penalty: float,
                       gap_weight: float) -> np.ndarray:
    """(N-1, L) log-scores of a level step d = 1..L-1 (index d) between consecutive detections."""
    d = np.arange(n_levels, dtype=np.float64)[None, :]
    score = -skip_penalty * (d - 1.0) - gap_weight * (d - steps[:, None]) ** 2
    score[:, 0] = _NEG
    score[:, max_skip + 2:] = _NEG
    return score


def _chain(unary: np.ndarray, trans: np.ndarray, reduce) -> tuple[np.ndarray, np.ndarray]:
    """Forward and backward messages for increasing levels; ``reduce`` is max or logsumexp."""
    n, n_levels = unary.shape
    fwd, bwd = np.full((n, n_levels), _NEG), np.zeros((n, n_levels))
    fwd[0] = unary[0]
    # pair[l_prev, l] = trans[l - l_prev]; below the diagonal impossible
    li = np.arange(n_levels)
    diff = li[None, :] - li[:, None]
    for i in range(1, n):
        pair = np.where(diff >= 1, trans[i - 1][np.clip(diff, 0, n_levels - 1)], _NEG)
        fwd[i] = reduce(fwd[i - 1][:, None] + pair, axis=0) + unary[i]
    for i in range(n - 2, -1, -1):
        pair = np.where(diff >= 1, trans[i][np.clip(diff, 0, n_levels - 1)], _NEG)
        bwd[i] = reduce(pair + (unary[i + 1] + bwd[i + 1])[None, :], axis=1)
    return fwd, bwd


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(x, axis=axis, keepdims=True)
    top = np.where(top <= _NEG / 2, 0.0, top)
    with np.errstate(divide="ignore"):  # a level no labelling reaches has log(0) = -inf
        return np.maximum(np.log(np.sum(np.exp(x - top), axis=axis)) + np.squeeze(top, axis=axis), _NEG)


def _viterbi_path(fwd_max: np.ndarray, unary: np.ndarray, trans: np.ndarray) -> np.ndarray:
    n, n_levels = unary.shape
    li = np.arange(n_levels)
    path = np.zeros(n, dtype=np.int64)
    path[-1] = int(np.argmax(fwd_max[-1]))
    for i in range(n - 1, 0, -1):
        d = path[i] - li
        step = np.where(d >= 1, trans[i - 1][np.clip(d, 0, n_levels - 1)], _NEG)
        path[i - 1] = int(np.argmax(fwd_max[i - 1] + step))
    return path


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    return logits - _logsumexp(logits, axis=1)[:, None]


def assign_levels(
    centres: np.ndarray,
    level_logits: np.ndarray,
    skip_penalty: float = 1.0,
    gap_weight: float = 2.0,
    max_skip: int = 2,
    ambiguity_margin: float = 1.0,
) -> LevelAssignment:
    """Consecutive levels for N detections from their (N, 2) centres and (N, L) level logits.

    Raises ValueError when there are more detections than levels (keep the best L first).
    """
    logits = np.asarray(level_logits, dtype=np.float64)
    n = len(np.asarray(centres))
    if logits.ndim != 2 or logits.shape[0] != n:
        raise ValueError(f"level logits must have shape (N={n}, levels), got {logits.shape}")
    n_levels = logits.shape[1]
    if n > n_levels:
        raise ValueError(f"{n} detections but only {n_levels} levels: keep the {n_levels} most confident")
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return LevelAssignment(empty, np.zeros(0), False, float("inf"), empty, True)
    order, gaps = spine_order(centres)
    trans_down = _transition_scores(expected_steps(gaps), n_levels, max_skip, skip_penalty, gap_weight)
    unary = _log_softmax(logits)[order]
    # direction 0: levels increase along `order` (head at the top); 1: along the reversed order.
    runs = [(unary, trans_down), (unary[::-1], trans_down[::-1])]
    best_scores, paths, log_z, marginals, runner_up = [], [], [], [], []
    for u, tr in runs:
        fmax, bmax = _chain(u, tr, np.max)
        fsum, bsum = _chain(u, tr, _logsumexp)
        z = float(_logsumexp(fsum[-1], axis=0))
        best_scores.append(float(fmax[-1].max()))
        paths.append(_viterbi_path(fmax, u, tr))
        log_z.append(z)
        marginals.append(np.exp(fsum + bsum - z))
        runner_up.append(fmax + bmax)  # max-marginals: best score with detection i at level l
    head_up = best_scores[0] >= best_scores[1]
    k = 0 if head_up else 1
    path = paths[k]
    mm_best = runner_up[k].copy()
    mm_best[np.arange(n), path] = _NEG
    second = float(mm_best.max())
    if n > 1:  # one detection reads the same in both directions
        second = max(second, best_scores[1 - k])
    margin = best_scores[k] - second
    total = np.logaddexp(log_z[0], log_z[1])
    seq_order = order if head_up else order[::-1]
    # marginals[1 - k][::-1] lists the same detections in run k's sequence order
    post = marginals[k] * np.exp(log_z[k] - total) + marginals[1 - k][::-1] * np.exp(log_z[1 - k] - total)
    levels = np.empty(n, dtype=np.int64)
    confidence = np.empty(n)
    levels[seq_order] = path
    confidence[seq_order] = post[np.arange(n), path]
    return LevelAssignment(levels, confidence, bool(margin < ambiguity_margin), float(margin), seq_order,
                           bool(head_up))
