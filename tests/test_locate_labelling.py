"""Consecutive level labelling by dynamic programming on constructed spines."""

from __future__ import annotations

import numpy as np
import pytest

from spine_dfl.gate.column import expected_steps, spine_order
from spine_dfl.locate.labelling import assign_levels

N_LEVELS = 14  # T4 .. L5


def spine_centres(levels: np.ndarray) -> np.ndarray:
    """Centres of a gently curved (kyphotic) upright spine; spacing grows down the spine like real bodies."""
    levels = np.asarray(levels, dtype=np.float64)
    y = 80.0 + np.cumsum(np.concatenate([[0.0], np.full(N_LEVELS - 1, 1.0)]) * (50.0 + 2.0 * np.arange(N_LEVELS)))
    x = 250.0 + 60.0 * np.sin(np.arange(N_LEVELS) / 4.0)
    return np.stack([x, y], axis=1)[levels.astype(int)]


def logits_for(levels: np.ndarray, strength: float = 3.0, noise: float = 0.7, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = rng.normal(0.0, noise, size=(len(levels), N_LEVELS))
    out[np.arange(len(levels)), levels] += strength
    return out


def test_spine_order_runs_along_the_curve_from_the_top_whatever_the_input_order():
    truth = np.arange(2, 12)
    centres = spine_centres(truth)
    perm = np.random.default_rng(1).permutation(len(truth))
    order, gaps = spine_order(centres[perm])
    np.testing.assert_array_equal(perm[order], np.arange(len(truth)))
    chords = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    np.testing.assert_allclose(gaps, chords, rtol=0.02)  # the fitted curve runs close to the centres


def test_expected_steps_spot_a_double_gap():
    steps = expected_steps(np.array([50.0, 52.0, 106.0, 55.0, 56.0]))
    assert steps[2] == pytest.approx(106.0 / 53.5)
    assert np.all(np.abs(np.delete(steps, 2) - 1.0) < 0.1)


def test_full_clean_spine():
    truth = np.arange(N_LEVELS)
    result = assign_levels(spine_centres(truth), logits_for(truth))
    np.testing.assert_array_equal(result.levels, truth)
    assert not result.ambiguous and result.head_up
    assert result.confidence.min() > 0.9


def test_missing_vertebra_is_skipped_where_the_gap_is():
    truth = np.delete(np.arange(2, 12), 4)  # level 6 not detected
    logits = logits_for(truth)
    # only the two end detections say which level they are: the skip must come from the geometry
    flat = np.zeros_like(logits)
    flat[[0, -1]] = logits[[0, -1]]
    for case in (logits, flat):
        result = assign_levels(spine_centres(truth), case)
        np.testing.assert_array_equal(result.levels, truth)


def test_shifted_field_of_view_starts_and_ends_anywhere():
    for truth in (np.arange(0, 6), np.arange(7, 14), np.arange(4, 9)):
        result = assign_levels(spine_centres(truth), logits_for(truth, seed=int(truth[0])))
        np.testing.assert_array_equal(result.levels, truth)
        assert not result.ambiguous


def test_reversed_orientation_and_shuffled_input():
    truth = np.arange(3, 12)
    centres = spine_centres(truth)
    head_down = centres * np.array([1.0, -1.0]) + np.array([0.0, 2000.0])  # image flipped upside down
    perm = np.random.default_rng(3).permutation(len(truth))
    result = assign_levels(head_down[perm], logits_for(truth)[perm])
    np.testing.assert_array_equal(result.levels, truth[perm])
    assert not result.head_up
    np.testing.assert_array_equal(result.levels[result.order], truth)  # order is cranial first
    horizontal = centres[:, ::-1]  # spine lying along x (a rotated image)
    np.testing.assert_array_equal(assign_levels(horizontal, logits_for(truth)).levels, truth)


def test_noisy_logits_are_outvoted_by_the_sequence():
    truth = np.arange(2, 12)
    logits = logits_for(truth, strength=2.0, noise=0.3, seed=7)
    # three detections whose own argmax is a neighbouring level
    for i, wrong in ((1, 4), (5, 6), (8, 11)):
        logits[i, wrong] = logits[i].max() + 1.0
    assert (logits.argmax(axis=1) != truth).sum() == 3
    result = assign_levels(spine_centres(truth), logits)
    np.testing.assert_array_equal(result.levels, truth)
    wrong_rows = [1, 5, 8]
    assert result.confidence[wrong_rows].min() < result.confidence.max()


def test_uninformative_logits_are_flagged_ambiguous():
    truth = np.arange(3, 10)
    result = assign_levels(spine_centres(truth), np.zeros((len(truth), N_LEVELS)))
    assert result.ambiguous and result.margin == pytest.approx(0.0, abs=1e-9)
    assert result.confidence.max() < 0.5
    # a one-level shift scoring nearly as well is ambiguous too
    logits = logits_for(truth, strength=3.0, noise=0.0)
    logits[np.arange(len(truth)), truth + 1] += 2.9  # 7 x 0.1 nats behind
    close = assign_levels(spine_centres(truth), logits)
    np.testing.assert_array_equal(close.levels, truth)
    assert close.ambiguous and close.margin == pytest.approx(0.7)


def test_levels_are_unique_and_strictly_ordered_along_the_spine():
    rng = np.random.default_rng(11)
    truth = np.arange(1, 13)
    result = assign_levels(spine_centres(truth), rng.normal(0, 2, size=(len(truth), N_LEVELS)))
    assert np.all(np.diff(result.levels[result.order]) >= 1)
    assert np.all((result.confidence >= 0) & (result.confidence <= 1 + 1e-9))


def test_edge_cases():
    empty = assign_levels(np.zeros((0, 2)), np.zeros((0, N_LEVELS)))
    assert empty.levels.size == 0 and not empty.ambiguous
    one = assign_levels(np.array([[10.0, 20.0]]), logits_for(np.array([5])))
    assert one.levels.tolist() == [5] and not one.ambiguous
    with pytest.raises(ValueError, match="only 3 levels"):
        assign_levels(spine_centres(np.arange(4)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="shape"):
        assign_levels(spine_centres(np.arange(4)), np.zeros((3, N_LEVELS)))
