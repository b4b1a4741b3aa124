"""Level names only where the film shows what they are counted from.

A chain of located vertebrae has no level names of its own: a thoracic cut T4-L1 and a full film's
T9-L5 look alike vertebra by vertebra, and the locator's level logits, learnt on whole films, count
such a cut confidently and wrongly. Clinicians count from an anchor the film shows:

- the sacrum: the chain stops above it with film to spare, so its lowest vertebra is the last
  mobile one (L5), counted upward;
- C7/T1 at the top, where the locator's levels reach that far (its range starts at T1 or higher);
- both, where the film shows both ends: the counts must agree, or the column has a transitional
  vertebra (a lumbarised S1 counted from the sacrum names every level one too low) and the count from
  C7/T1 stands, reported ``transitional``;
- the last rib-bearing vertebra (T12): not detected by this locator (no rib head); a site whose
  locator is trained with rib labels can add it here.

:func:`anchor_levels` decides which anchor, if any, the chain shows, counts the chain from it body by
body (``COUNT_LEVELS``: C1-L5 and L6, so a count may run past the locator's own range) and, where none is
visible, names the vertebrae ``V1``, ``V2``, ... top to bottom. Works on a canonical film (head up).
:func:`withdraw_levels` takes a count back where the image turns out unlike the training images (the
grader's shift flag): a locator counting another generator's bodies misses some and counts wrongly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from spine_dfl.io.vocabulary import LEVELS
from spine_dfl.gate.column import spine_order

ROOM_BODY_HEIGHTS = 0.8  # film beyond the chain's end, in body heights, for that end to be the column's end
ANCHOR_LOG_MARGIN = 2.0  # the end vertebra's own logit for the anchor level within this of its best (nats)
TOP_ANCHORS = ("C7", "T1")
MIN_GAP_CLARITY = 0.2  # every gap within 0.4 vertebra of a whole number (1.4-1.6: one missed or not?), or no count
LAST_MOBILE = ("L5", "L6")  # L6: a lumbarised S1, where the locator has learnt one
# What a count names: C1 .. L5 and, after L5, L6 (a count from a lumbarised S1 names it L6).
COUNT_LEVELS: tuple[str, ...] = LEVELS[: LEVELS.index("L5") + 1] + ("L6",)


@dataclass(frozen=True)
class AnchoredLevels:
    """Names for a chain of N vertebrae (cranial first).

    ``names``: level names, or ``V1``.. when ``anchored`` is False; ``level_confidence``: (N,)
    confidence in each name (the count's, anchored; the locator's own level posterior, unanchored);
    ``anchor``: what the levels were counted from ("sacrum", "C7/T1", "C7/T1 and sacrum" where both counts
    agree, or "" when unanchored);
    ``levels``: (N,) indices into ``COUNT_LEVELS`` (-1 where unanchored); ``why``: why no anchor, when none;
    ``transitional``: transitional anatomy the count went through ("lumbarised S1 (L6)"), or "".
    """

    names: tuple[str, ...]
    level_confidence: np.ndarray
    anchored: bool
    anchor: str
    levels: np.ndarray
    why: str = ""
    transitional: str = ""


def relative_names(n: int) -> tuple[str, ...]:
    """``V1`` .. ``Vn``, top to bottom: what vertebrae are called when no anchor is visible."""
    return tuple(f"V{i + 1}" for i in range(n))


def _room(boxes: np.ndarray, image_rows: int) -> tuple[float, float, float]:
    heights = boxes[:, 3] - boxes[:, 1]
    body = float(np.median(heights)) if len(heights) else 0.0
    return float(boxes[0, 1]), float(image_rows - boxes[-1, 3]), body


def _end_looks_like(logits: np.ndarray, level: int) -> bool:
    log_p = logits - np.logaddexp.reduce(logits)
    return bool(log_p.max() - log_p[level] <= ANCHOR_LOG_MARGIN)


def anchor_levels(
    centres: np.ndarray, boxes: np.ndarray, level_logits: np.ndarray, levels: Sequence[str],
    image_rows: int, head_up: bool = True, orientation_sure: bool = True,
) -> AnchoredLevels:
    """Levels of N located vertebrae, cranial first, on a canonical film of ``image_rows`` rows.

    ``centres`` (N, 2), ``boxes`` (N, 4) in canonical pixels, ``level_logits`` (N, L) over
    ``levels`` (anatomical order). ``head_up``: the labelling read the chain head up; a chain read
    head down on a canonical film is not counted (its orientation is in doubt), nor one on a film
    whose orientation was guessed (``orientation_sure`` False: the locator counts by position on the
    film, so a film turned upside down would be counted upside down).
    """
    levels = list(levels)
    n = len(centres)
    unanchored = _unanchored(n, level_logits)
    if n == 0:
        return unanchored("no vertebrae")
    if not head_up:
        return unanchored("the chain reads head down on a head-up film")
    if not orientation_sure:
        return unanchored("the film's orientation is uncertain")
    boxes = np.asarray(boxes, dtype=np.float64)
    logits = np.asarray(level_logits, dtype=np.float64)
    centres = np.asarray(centres, dtype=np.float64)
    room_above, room_below, body = _room(boxes, image_rows)
    reasons: list[str] = []
    from_sacrum = from_top = None
    if room_below >= ROOM_BODY_HEIGHTS * body:
        level = _looks_like(logits[-1], levels, LAST_MOBILE)
        if level is not None:
            transitional = "lumbarised S1 (L6)" if level == "L6" else ""
            from_sacrum = _count_from(centres, boxes, n - 1, COUNT_LEVELS.index(level), "sacrum", unanchored, transitional)
        else:
            reasons.append("the lowest vertebra does not look like the last lumbar")
    else:
        reasons.append("the film ends at the lowest vertebra")
    if room_above >= ROOM_BODY_HEIGHTS * body:
        level = _looks_like(logits[0], levels, TOP_ANCHORS)
        if level is not None:
            from_top = _count_from(centres, boxes, 0, COUNT_LEVELS.index(level), "C7/T1", unanchored)
    if from_sacrum is not None and from_top is not None and from_sacrum.anchored and from_top.anchored:
        return _both_ends(from_top, from_sacrum)
    if from_sacrum is not None:
        return from_sacrum
    if from_top is not None:
        return from_top
    if not any(name in levels for name in TOP_ANCHORS):
        reasons.append(f"the locator counts no higher than {levels[0]}")
    return unanchored("no anchor visible: " + "; ".join(reasons))


def _both_ends(from_top: AnchoredLevels, from_sacrum: AnchoredLevels) -> AnchoredLevels:
    """A film that shows C7/T1 and the sacrum: the two counts agree (anchored on both), or the column has
    one mobile vertebra more or fewer than usual (a lumbarised S1, a sacralised L5: the counts differ by
    the difference) and the levels are those counted from C7/T1, reported ``transitional``."""
    shift = int(from_sacrum.levels[-1] - from_top.levels[-1])
    if shift == 0:
        confidence = np.maximum(from_top.level_confidence, from_sacrum.level_confidence)
        return AnchoredLevels(from_top.names, confidence, True, "C7/T1 and sacrum", from_top.levels,
                              transitional=from_sacrum.transitional)
    extra = "one more mobile vertebra" if shift < 0 else "one mobile vertebra fewer"
    extra = extra if abs(shift) == 1 else f"{abs(shift)} mobile vertebrae {'more' if shift < 0 else 'fewer'}"
    return AnchoredLevels(from_top.names, from_top.level_confidence, True, "C7/T1", from_top.levels,
                          transitional=f"counts from C7/T1 and the sacrum differ: {extra} than C7-L5")


def withdraw_levels(cells: Sequence[dict]) -> tuple[str, ...] | None:
    """Relative names ``V1``.. for the located vertebrae of one image (``cells``: their table cells, cranial
    first, from ``locate.locating.locate_rois``) whose anchored count is withdrawn; the cells
    then say ``level_anchored`` no, no anchor, no transitional count and ``level_confidence`` 0 (no level is
    claimed). None, and nothing changed, when the levels were not anchored."""
    if not any(str(cell.get("level_anchored", "")) == "yes" for cell in cells):
        return None
    for cell in cells:
        cell.update(level_anchored="no", level_anchor="", transitional="", level_confidence=0.0)
    return relative_names(len(cells))


def _looks_like(logits: np.ndarray, levels: list[str], candidates: Sequence[str]) -> str | None:
    """The candidate level the end vertebra looks like most, if its logit is within the margin of its
    best (None: none of them, or none in the locator's levels)."""
    known = [name for name in candidates if name in levels]
    if not known:
        return None
    best = max(known, key=lambda name: logits[levels.index(name)])
    return best if _end_looks_like(logits, levels.index(best)) else None


def _steps(centres: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N-1,) each gap in vertebrae: the gap over its two bodies' mean height, over the chain's median of
    that ratio. Bodies grow from T1 to L5 and their gaps with them; a missed vertebra doubles the ratio."""
    if len(centres) < 2:
        return np.zeros(0)
    gaps = spine_order(centres)[1]
    heights = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-9)
    ratio = gaps / (0.5 * (heights[:-1] + heights[1:]))
    return ratio / float(np.median(ratio))


def _count_from(centres: np.ndarray, boxes: np.ndarray, start: int, start_level: int, anchor: str, unanchored,
                transitional: str = "") -> AnchoredLevels:
    """Levels counted body by body from the anchor vertebra ``start`` (level ``start_level`` in
    ``io.LEVELS``), cranial first: a gap about twice the local one is a vertebra missed, counted.

    Each gap's size in vertebrae comes from the bodies' heights (``_steps``). Counting is by anatomy,
    not by the locator's level logits: learnt on whole films, they name
    by position on the film and, on a cut, pull a count to skip where no vertebra is missing.
    Each vertebra's confidence is the product, over the gaps between it and the anchor, of how
    clearly each gap is a whole number of vertebrae (1 for a regular gap, 0 half-way between).
    """
    n = len(centres)
    steps = _steps(centres, boxes)
    whole = np.maximum(1, np.rint(steps)).astype(np.int64)
    clarity = np.clip(1.0 - 2.0 * np.abs(steps - np.rint(steps)), 0.0, 1.0)
    if clarity.size and clarity.min() < MIN_GAP_CLARITY:
        # a gap that is no whole number of vertebrae (a locator that misses bodies): no count crosses it
        return unanchored("a gap in the chain is no whole number of vertebrae")
    index = np.empty(n, np.int64)
    confidence = np.empty(n)
    index[start], confidence[start] = start_level, 1.0
    for i in range(start - 1, -1, -1):  # upwards
        index[i], confidence[i] = index[i + 1] - whole[i], confidence[i + 1] * clarity[i]
    for i in range(start + 1, n):  # downwards
        index[i], confidence[i] = index[i - 1] + whole[i - 1], confidence[i - 1] * clarity[i - 1]
    if index.min() < 0 or index.max() >= len(COUNT_LEVELS):
        return unanchored("the count from the anchor runs past C1 or the sacrum")
    return AnchoredLevels(tuple(COUNT_LEVELS[i] for i in index), confidence, True, anchor, index,
                          transitional=transitional)


def _unanchored(n: int, level_logits: np.ndarray):
    def make(why: str) -> AnchoredLevels:
        logits = np.asarray(level_logits, dtype=np.float64).reshape(n, -1) if n else np.zeros((0, 1))
        confidence = np.exp(logits.max(axis=1) - np.logaddexp.reduce(logits, axis=1)) if n else np.zeros(0)
        return AnchoredLevels(relative_names(n), confidence, False, "", np.full(n, -1, np.int64), why)

    return make
