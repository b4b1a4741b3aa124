"""Levels named only from a visible anchor (locate.anchors) and the column gate (gate.column)."""

from __future__ import annotations

import numpy as np
import pytest

from spine_dfl.gate.column import NO_COLUMN, column_refusal, measure_column
from spine_dfl.locate.anchors import anchor_levels

LEVELS = [f"T{i}" for i in range(4, 13)] + [f"L{i}" for i in range(1, 6)]  # T4-L5, as the synth locator


def chain(n: int, top: float = 100.0, gap: float = 60.0, height: float = 40.0, depth: float = 50.0, x: float = 300.0,
          anterior_left: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres (n, 2), boxes (n, 4), six points (n, 6, 2) of a straight canonical column, cranial first."""
    ys = top + gap * np.arange(n)
    centres = np.stack([np.full(n, x), ys], axis=1)
    boxes = np.stack([centres[:, 0] - depth / 2, ys - height / 2, centres[:, 0] + depth / 2, ys + height / 2], axis=1)
    a, p = (-depth / 2, depth / 2) if anterior_left else (depth / 2, -depth / 2)
    points = np.stack([
        np.stack([x + a + 0 * ys, ys - height / 2], 1), np.stack([x + 0 * ys, ys - height / 2], 1),
        np.stack([x + p + 0 * ys, ys - height / 2], 1), np.stack([x + a + 0 * ys, ys + height / 2], 1),
        np.stack([x + 0 * ys, ys + height / 2], 1), np.stack([x + p + 0 * ys, ys + height / 2], 1)], axis=1)
    return centres, boxes, points


def logits_for(first: str, n: int, levels=LEVELS, strength: float = 4.0) -> np.ndarray:
    start = levels.index(first)
    out = np.zeros((n, len(levels)))
    for i in range(n):
        out[i, min(start + i, len(levels) - 1)] = strength
    return out


def test_sacrum_in_the_field_anchors_the_count_from_l5() -> None:
    centres, boxes, _ = chain(6)  # lowest box bottom at 420
    # The locator's own logits say T12-L4+: shifted by one; the anchor counts up from L5.
    result = anchor_levels(centres, boxes, logits_for("L1", 6) + logits_for("T12", 6) * 0.5, LEVELS, image_rows=520)
    assert result.anchored and result.anchor == "sacrum"
    assert result.names == ("T12", "L1", "L2", "L3", "L4", "L5")
    assert result.level_confidence.shape == (6,) and np.all(result.level_confidence > 0.5)


def test_a_film_ending_at_the_lowest_vertebra_is_not_counted() -> None:
    centres, boxes, _ = chain(8)
    result = anchor_levels(centres, boxes, logits_for("L3", 8) * 0 + logits_for("T10", 8), LEVELS, image_rows=530)
    assert not result.anchored and result.anchor == ""
    assert result.names == tuple(f"V{i}" for i in range(1, 9))
    assert "film ends" in result.why and np.all(result.levels == -1)


def test_a_lowest_vertebra_unlike_l5_is_not_taken_for_it() -> None:
    centres, boxes, _ = chain(5)
    result = anchor_levels(centres, boxes, logits_for("T5", 5, strength=8.0), LEVELS, image_rows=700)
    assert not result.anchored and "does not look like the last lumbar" in result.why


def test_top_anchor_where_the_locator_counts_from_t1() -> None:
    levels = [f"T{i}" for i in range(1, 13)]
    centres, boxes, _ = chain(5, top=200)
    result = anchor_levels(centres, boxes, logits_for("T1", 5, levels), levels, image_rows=500)
    assert result.anchored and result.anchor == "C7/T1" and result.names[0] == "T1"


def test_a_film_with_both_ends_counts_from_both_and_reports_where_they_differ() -> None:
    from spine_dfl.io.vocabulary import LEVELS as ALL

    c7_l5 = list(ALL[ALL.index("C7"): ALL.index("L5") + 1])  # a locator trained on C7 .. L5
    centres, boxes, _ = chain(18)  # C7 .. L5, with film above C7 and below L5
    both = anchor_levels(centres, boxes, logits_for("C7", 18, c7_l5), c7_l5, image_rows=1300)
    assert both.anchored and both.anchor == "C7/T1 and sacrum" and both.names[0] == "C7" and both.names[-1] == "L5"
    assert both.transitional == ""
    # a lumbarised S1: 19 mobile vertebrae from C7, the lowest looking like L5 to a locator that counts by
    # position; from the sacrum every level would be one too low, from C7 the last is L6
    centres, boxes, _ = chain(19)
    lumbarised = anchor_levels(centres, boxes, logits_for("C7", 19, c7_l5), c7_l5, image_rows=1360)
    assert lumbarised.anchored and lumbarised.anchor == "C7/T1" and lumbarised.names[-1] == "L6"
    assert lumbarised.names[-2] == "L5" and "one more mobile vertebra" in lumbarised.transitional
    sacrum_only = anchor_levels(centres[7:], boxes[7:], logits_for("C7", 19, c7_l5)[7:], c7_l5, image_rows=1360)
    assert sacrum_only.anchor == "sacrum" and sacrum_only.names[-1] == "L5"  # the film cannot tell: the known limit


def test_a_chain_read_head_down_is_not_counted() -> None:
    centres, boxes, _ = chain(6)
    result = anchor_levels(centres, boxes, logits_for("T12", 6), LEVELS, image_rows=600, head_up=False)
    assert not result.anchored and "head down" in result.why


def test_a_regular_column_passes_the_gate() -> None:
    _, boxes, points = chain(10)
    assert column_refusal(points, boxes, (0.5, 0.5)) is None  # 20 mm tall, 25 mm deep bodies
    assert column_refusal(points, boxes, None) is None


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda c, b, p: (b[:2], p[:2]), "2 vertebra-like bodies"),
        (lambda c, b, p: (b, p + np.random.default_rng(0).uniform(-400, 400, (len(p), 1, 2))), "off a smooth curve"),
        (lambda c, b, p: (b, np.concatenate([p[:5], chain(5, anterior_left=False)[2]])), "anterior side"),
    ],
)
def test_what_is_not_a_column_is_refused_with_what_was_missing(change, words) -> None:
    centres, boxes, points = chain(10)
    boxes, points = change(centres, boxes, points)
    reason = column_refusal(points, boxes, (0.5, 0.5))
    assert reason is not None and reason.startswith(NO_COLUMN) and words in reason


def test_body_sizes_in_mm_and_the_view_score() -> None:
    _, boxes, points = chain(10)
    assert "mm tall" in column_refusal(points, boxes, (0.05, 0.05))  # 2 mm bodies: not vertebrae
    assert "view score 0.10" in column_refusal(points, boxes, (0.5, 0.5), view_probability=0.1)
    assert column_refusal(points, boxes, (0.5, 0.5), view_probability=0.9) is None


def test_a_sideways_chain_is_not_a_canonical_column() -> None:
    centres, boxes, points = chain(8)
    turned = points[..., ::-1].copy()  # x <-> y: the chain runs left-right
    turned_boxes = boxes[:, [1, 0, 3, 2]]
    check = measure_column(turned, turned_boxes, None)
    assert check.axis_deg > 80
    assert "off head-foot" in column_refusal(turned, turned_boxes, None)


def test_report_counts_images_by_how_their_levels_were_counted() -> None:
    import pandas as pd

    from spine_dfl.report.trust import levels_html, levels_report

    table = pd.DataFrame({"image": ["a", "a", "b", "b", "c"], "level_anchored": ["yes", "yes", "no", "no", ""]})
    counted = levels_report(table)
    assert counted == {"images": 2, "anchored": 1, "unanchored": 1, "unanchored_images": ["b"]}
    assert "V1, V2" in levels_html(counted) and "<li>b</li>" in levels_html(counted)
    assert levels_report(table.drop(columns="level_anchored")) is None and levels_html(None) == ""


def _view(shares: dict, lateral: float = 0.9):
    """A ``gate.view.ViewPrediction`` whose eight orientation classes have ``shares`` (the rest spread evenly)."""
    import numpy as np

    from spine_dfl.gate.view import NUM_CLASSES, _prediction
    from spine_dfl.io.orientation import ORIENTATIONS

    rest = (1.0 - sum(shares.values())) / (len(ORIENTATIONS) - len(shares))
    probs = np.zeros(NUM_CLASSES)
    for o in ORIENTATIONS:
        probs[o.index] = lateral * shares.get(o, rest)
    probs[-1] = 1.0 - lateral
    return _prediction(probs)


def test_no_level_is_named_on_a_film_whose_head_axis_was_guessed() -> None:
    from spine_dfl.gate.orientation import choose_orientation, head_axis_is_sure
    from spine_dfl.io.orientation import CANONICAL, Orientation

    centres, boxes, _ = chain(6)
    result = anchor_levels(centres, boxes, logits_for("T12", 6), LEVELS, image_rows=520, orientation_sure=False)
    assert not result.anchored and "uncertain" in result.why
    vflip = Orientation(True, 2)  # stored head down: its mirror image is rot180
    assert vflip.mirrored == Orientation(False, 2)
    unsure = _view({vflip: 0.6})  # the other 0.4 spread over seven orientations, three with the head the other way
    facing_unknown = _view({vflip: 0.58, vflip.mirrored: 0.40})  # the head is down, the facing side in doubt
    sure = _view({vflip: 0.96})
    assert choose_orientation(None, unsure) == vflip and not head_axis_is_sure(None, unsure, vflip)
    assert choose_orientation(None, facing_unknown) == vflip and head_axis_is_sure(None, facing_unknown, vflip)
    assert head_axis_is_sure(None, sure, vflip) and not head_axis_is_sure(None, sure, CANONICAL)
    assert head_axis_is_sure(["P", "F"], None, CANONICAL) and not head_axis_is_sure(None, None, CANONICAL)
    # the most probable of the eight is chosen; where the head is stays unsure at 0.40 + 0.05
    split = _view({vflip: 0.40, vflip.mirrored: 0.05, CANONICAL: 0.30, CANONICAL.mirrored: 0.25})
    assert choose_orientation(None, split) == vflip and not head_axis_is_sure(None, split, vflip)


def test_a_lumbarised_s1_is_counted_as_l6_and_reported_transitional() -> None:
    levels = LEVELS + ["L6"]
    centres, boxes, _ = chain(6)
    result = anchor_levels(centres, boxes, logits_for("L2", 6, levels), levels, image_rows=520)
    assert result.anchored and result.names == ("L1", "L2", "L3", "L4", "L5", "L6")
    assert result.transitional == "lumbarised S1 (L6)"
    plain = anchor_levels(centres, boxes, logits_for("T12", 6, levels), levels, image_rows=520)
    assert plain.names[-1] == "L5" and plain.transitional == ""


def test_no_count_crosses_a_gap_of_one_and_a_half_vertebrae() -> None:
    centres, boxes, _ = chain(7)
    centres[3:, 1] += 30.0  # half a vertebra more between the 3rd and 4th bodies
    boxes[3:, [1, 3]] += 30.0
    result = anchor_levels(centres, boxes, logits_for("T11", 7), LEVELS, image_rows=600)
    assert not result.anchored and "no whole number" in result.why


def test_one_body_with_misplaced_points_does_not_refuse_a_column_two_do() -> None:
    _, boxes, points = chain(10)
    flipped = points.copy()
    flipped[4] = flipped[4][[3, 4, 5, 0, 1, 2]]  # one body's superior and inferior points swapped
    assert column_refusal(flipped, boxes, (0.5, 0.5)) is None
    flipped[7] = flipped[7][[3, 4, 5, 0, 1, 2]]
    assert "tilted" in column_refusal(flipped, boxes, (0.5, 0.5))


def test_an_anchored_count_is_withdrawn_on_an_image_unlike_the_training_images() -> None:
    from spine_dfl.locate.anchors import withdraw_levels
    from spine_dfl.score.scorer import _withdraw_levels

    def located(anchored: str) -> dict:
        cells = [{"level_anchored": anchored, "level_anchor": "sacrum" if anchored == "yes" else "",
                  "level_confidence": 0.9, "transitional": "lumbarised S1 (L6)" if anchored == "yes" else ""}
                 for _ in range(3)]
        return {"vertebrae": ["L4", "L5", "L6"] if anchored == "yes" else ["V1", "V2", "V3"], "extras": cells}

    item = located("yes")
    _withdraw_levels(item)
    assert item["vertebrae"] == ["V1", "V2", "V3"]
    assert all(c["level_anchored"] == "no" and c["level_anchor"] == "" and c["transitional"] == ""
               and c["level_confidence"] == 0.0 for c in item["extras"])
    unanchored = located("no")
    assert withdraw_levels(unanchored["extras"]) is None and unanchored["extras"][0]["level_confidence"] == 0.9
    manifest_rois = {"vertebrae": ["L1", "L2"], "extras": [{"roi_source": "file"}, {"roi_source": "file"}]}
    _withdraw_levels(manifest_rois)  # levels from an ROI file are the file's, not a count: kept
    assert manifest_rois["vertebrae"] == ["L1", "L2"]
