"""spine_dfl.heatmap: the one geometry, evidence map and display window that explain, score and
dicom_out share."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spine_dfl.heatmap import (
    EvidenceMap,
    class_evidence,
    clip_boxes,
    display_window,
    evidence_on_source,
    feature_map_to_original,
    feature_map_to_tensor_space,
    grey_rgb,
    tensor_map_to_original,
    to_display_uint8,
    view_region,
)
from spine_dfl.model import DFLNet


def test_geometry_helpers_follow_receptive_field_centres() -> None:
    # One hot location (row 2, col 3) of a stride-8 grid whose location 0 is centred at 4.0.
    maps = torch.zeros(1, 1, 8, 8)
    maps[0, 0, 2, 3] = 1.0
    tensor_map = feature_map_to_tensor_space(maps, 64, 8, 4.0)[0, 0]
    row, col = np.unravel_index(int(tensor_map.argmax()), tensor_map.shape)
    assert (col + 0.5, row + 0.5) in {(28.5, 20.5), (27.5, 19.5), (27.5, 20.5), (28.5, 19.5)}  # centre (28, 20)
    # Input pixel (x, y) shows at original 2x + 10, 3y + 5: the peak moves with it.
    to_original = np.array([[2.0, 0.0, 10.0], [0.0, 3.0, 5.0], [0.0, 0.0, 1.0]])
    region = view_region(to_original, 64, (500, 500))
    assert region == (10, 5, 138, 197)
    warped = tensor_map_to_original(tensor_map[None], to_original, region)[0]
    peak_row, peak_col = np.unravel_index(np.nanargmax(warped), warped.shape)
    assert abs(region[0] + peak_col + 0.5 - (2 * 28 + 10)) <= 2
    assert abs(region[1] + peak_row + 0.5 - (3 * 20 + 5)) <= 3
    # A region larger than the input's footprint: pixels the network never saw are NaN.
    wider = tensor_map_to_original(tensor_map[None], to_original, (0, 0, 150, 200))[0]
    assert np.isnan(wider[:, :5]).all() and np.isfinite(wider[10:190, 12:136]).all()


def test_feature_map_to_original_in_strips_equals_one_piece() -> None:
    values = np.random.default_rng(0).random((4, 5), dtype=np.float32)
    to_original = np.array([[1.5, 0.0, -7.0], [0.0, 1.5, 12.0], [0.0, 0.0, 1.0]])
    region = (-3, 4, 90, 120)  # starts left of the image: clipped
    one = tensor_map_to_original(feature_map_to_tensor_space(torch.from_numpy(values)[None, None], 64, 16, 7.5)[0],
                                 to_original, (0, 4, 80, 100))[0]
    clipped, strips = feature_map_to_original(values, 64, 16, 7.5, to_original, region, (100, 80), strip_pixels=7 * 80)
    assert clipped == (0, 4, 80, 100)
    np.testing.assert_array_equal(strips, one)
    assert feature_map_to_original(values, 64, 16, 7.5, to_original, (200, 200, 300, 300), (100, 80)) is None
    with pytest.raises(ValueError, match="non-empty"):
        feature_map_to_original(np.zeros((0, 3)), 64, 16, 7.5, to_original, region, (100, 80))


def test_class_evidence_is_the_max_of_the_chosen_class_filters() -> None:
    k, classes = 3, 4
    maps = torch.randn(5, classes * k, 6, 7)
    chosen = np.array([0, 3, 1, 1, 2])
    evidence = class_evidence(maps, chosen, k)
    assert evidence.shape == (5, 6, 7) and evidence.dtype == torch.float32
    for i, c in enumerate(chosen):
        torch.testing.assert_close(evidence[i], maps[i, c * k:(c + 1) * k].amax(dim=0))
    # The channel order is the model's own: class c's filters are DFLNet.class_filter_slice(c).
    model = DFLNet("resnet18", num_classes=classes, filters_per_class=k)
    assert model.class_filter_slice(3) == slice(3 * k, 4 * k)
    with pytest.raises(ValueError, match="class indices"):
        class_evidence(maps, [0, 1], k)


def test_evidence_on_source_peaks_at_the_hot_cell() -> None:
    values = np.zeros((4, 4), np.float32)
    values[1, 2] = 3.0  # centred at input (7.5 + 32, 7.5 + 16) = (39.5, 23.5)
    to_original = np.array([[2.0, 0.0, 10.0], [0.0, 2.0, 20.0], [0.0, 0.0, 1.0]])
    evidence = EvidenceMap(values, to_original, (10, 20, 138, 148), 64, 16.0, 7.5)
    (x0, y0, _, _), on_source = evidence_on_source(evidence, (300, 300))
    row, col = np.unravel_index(np.nanargmax(on_source), on_source.shape)
    assert abs(x0 + col + 0.5 - (2 * 39.5 + 10)) <= 1 and abs(y0 + row + 0.5 - (2 * 23.5 + 20)) <= 1


def test_clip_boxes_keeps_the_callers_type() -> None:
    boxes = [[-3.0, 2.0, 500.0, 7.5], [10.0, -1.0, 12.0, 40.0]]
    clipped = clip_boxes(np.array(boxes), (10, 20))
    assert isinstance(clipped, np.ndarray)
    np.testing.assert_array_equal(clipped, [[0, 2, 20, 7.5], [10, 0, 12, 10]])
    as_tensor = clip_boxes(torch.tensor(boxes), (10, 20))
    assert isinstance(as_tensor, torch.Tensor)
    np.testing.assert_array_equal(as_tensor.numpy(), clipped)


def test_display_window_is_robust_and_never_empty() -> None:
    ramp = np.arange(1000, dtype=np.float32)
    ramp[0], ramp[-1] = -1e6, 1e6  # two extreme pixels must not set the window
    low, high = display_window(ramp)
    assert 0 < low < 10 and 990 < high < 999
    flat = np.zeros(1000, np.float32)
    flat[:2] = 50.0  # percentiles coincide: the finite range instead
    assert display_window(flat) == (0.0, 50.0)
    assert display_window(np.full(9, 7.0)) == (7.0, 8.0)
    assert display_window(np.full(4, np.nan)) == (0.0, 1.0)
    image = np.linspace(0, 1, 200, dtype=np.float32).reshape(10, 20)
    image[0, 0] = np.nan
    grey, as_uint8 = grey_rgb(image), to_display_uint8(image)
    assert grey.shape == (10, 20, 3) and grey.min() == 0.0 and grey.max() == 1.0
    assert as_uint8.dtype == np.uint8 and as_uint8[0, 0] == 0 and as_uint8.max() == 255
    np.testing.assert_array_equal(as_uint8, np.round(grey[..., 0] * 255).astype(np.uint8))
