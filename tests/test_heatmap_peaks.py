"""Honest patch geometry: effective receptive field, sub-cell peaks, distinct patches, exact mapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from spine_dfl.model.effective_field import effective_receptive_field, gradient_box_side, gradient_centres, model_patch_side
from spine_dfl.heatmap.peaks import (
    class_patches,
    grid_to_input,
    map_peak_to_original,
    refine_peaks,
    suppress_duplicates,
)
from spine_dfl.model import DFLNet
from spine_dfl.model.backbones import receptive_field


def constant_conv_stack(layers: int) -> nn.Sequential:
    convs = []
    for _ in range(layers):
        conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        nn.init.constant_(conv.weight, 1.0)
        convs.append(conv)
    return nn.Sequential(*convs)


def expected_side(layers: int, mass: float) -> int:
    """Known answer: the input gradient of the centre of n constant 3x3 convs is the outer product of
    the coefficients of (1 + x + x^2)^n with itself; the mass inside a (2m+1)^2 square is the square
    of the 1-D mass inside [-m, m]."""
    coefficients = np.array([1.0])
    for _ in range(layers):
        coefficients = np.convolve(coefficients, [1.0, 1.0, 1.0])
    coefficients /= coefficients.sum()
    centre = layers
    for m in range(layers + 1):
        if coefficients[centre - m: centre + m + 1].sum() ** 2 >= mass:
            return 2 * m + 1
    raise AssertionError


@pytest.mark.parametrize("layers", [2, 4, 7])
@pytest.mark.parametrize("mass", [0.5, 0.9])
def test_effective_receptive_field_of_constant_convs_is_the_known_answer(layers: int, mass: float) -> None:
    network = constant_conv_stack(layers)
    inputs = torch.rand(3, 1, 41, 41, generator=torch.Generator().manual_seed(1))
    side = effective_receptive_field(network, inputs, mass)
    assert side == pytest.approx(expected_side(layers, mass), abs=1e-6)
    assert side <= receptive_field(network).size + 1e-6  # the theoretical field is 2n+1
    assert all(p.grad is None for p in network.parameters())


def test_gradient_centre_is_where_a_shifted_kernel_reads() -> None:
    # A 5 x 5 kernel whose only weight sits at (row 0, col 4): output (r, c) reads input (r - 2, c + 2).
    conv = nn.Conv2d(1, 1, 5, padding=2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 4] = 1.0
    images = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)) + 0.5
    sample = torch.tensor([0, 1, 1])
    channel = torch.zeros(3, dtype=torch.long)
    rows, cols = torch.tensor([8, 5, 10]), torch.tensor([6, 3, 9])
    centres, mass = gradient_centres(conv, images, sample, channel, rows * 16 + cols)
    expected = torch.stack(((cols + 2).double() + 0.5, (rows - 2).double() + 0.5), dim=1)
    assert torch.allclose(centres, expected)
    assert mass.shape == (3, 16, 16) and torch.allclose(mass.sum(dim=(1, 2)), torch.ones(3, dtype=torch.float64))


def test_gradient_centre_of_symmetric_convs_is_the_cell_centre() -> None:
    network = constant_conv_stack(3)
    images = torch.ones(1, 1, 24, 24)
    centres, _ = gradient_centres(network, images, torch.tensor([0]), torch.tensor([0]), torch.tensor([12 * 24 + 12]))
    assert torch.allclose(centres, torch.tensor([[12.5, 12.5]], dtype=torch.float64))


def test_gradient_box_side_rejects_a_map_without_mass() -> None:
    with pytest.raises(ValueError, match="zero everywhere"):
        gradient_box_side(np.zeros((5, 5)))
    off_centre = np.zeros((9, 9))
    off_centre[1:4, 5:8] = 1.0  # a 3x3 block away from the middle: measured about its centroid
    assert gradient_box_side(off_centre, 1.0) == 3.0


def test_model_patch_side_is_measured_once_and_stored_value_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    model = DFLNet("resnet18", 3, filters_per_class=2).eval()
    calls = []
    import spine_dfl.model.effective_field as erf

    original = erf.measure_model_patch_side
    monkeypatch.setattr(erf, "measure_model_patch_side", lambda m, s: calls.append(s) or original(m, s))
    first = model_patch_side(model, 64)
    assert model_patch_side(model, 64) == first and calls == [64]
    assert 1 <= first < model.receptive_field
    assert model_patch_side(model, 64, stored=33.0) == 33.0


def test_sub_cell_refinement_finds_a_planted_quadratic_peak() -> None:
    rows, cols = np.mgrid[:12, :12].astype(np.float64)
    planted = [(4.3, 7.8), (5.0, 2.0), (8.45, 6.6)]
    maps = torch.from_numpy(np.stack([5.0 - (rows - r) ** 2 - 0.5 * (cols - c) ** 2 for r, c in planted]))
    row, col, value = refine_peaks(maps)
    np.testing.assert_allclose(row.numpy(), [p[0] for p in planted], atol=1e-9)
    np.testing.assert_allclose(col.numpy(), [p[1] for p in planted], atol=1e-9)
    np.testing.assert_allclose(value.numpy(), 5.0, atol=1e-9)
    # At the border (and on a flat plateau) there is nothing to fit: the integer cell stays.
    edge = torch.zeros(1, 6, 6)
    edge[0, 0, 3], edge[0, 1, 3] = 2.0, 1.0
    row, col, _ = refine_peaks(edge)
    assert (float(row[0]), float(col[0])) == (0.0, 3.0)


def test_duplicates_among_a_class_filters_are_suppressed() -> None:
    side = 20.0
    centres = torch.tensor([[50.0, 50.0], [52.0, 49.0], [90.0, 50.0], [50.0, 58.0], [50.0, 62.0]])
    boxes = torch.cat([centres - side / 2, centres + side / 2], dim=1)
    scores = torch.tensor([3.0, 5.0, 1.0, 2.0, 4.0])
    kept, owner = suppress_duplicates(boxes, scores)
    # 1 (strongest) swallows 0 (2 px away); 4 is 13 px below 1 (more than half a side): kept, and
    # swallows 3 (4 px from it; 3 and 1 overlap with IoU just under 1/3); 2 is far from all.
    assert kept.tolist() == [1, 4, 2]
    assert owner.tolist() == [1, 1, 2, 4, 4]
    assert suppress_duplicates(boxes, scores, iou_threshold=1.0)[0].tolist() == [1, 4, 0, 3, 2]


def one_hot_maps(k: int, classes: int, size: int, peaks: list[tuple[int, int]]) -> torch.Tensor:
    maps = torch.zeros(classes * k, size, size)
    for channel, (r, c) in enumerate(peaks):
        maps[channel, r, c] = 10.0 - channel
        maps[channel, r, c + 1] = 5.0 - channel  # pulls the refined peak right of the cell centre
        maps[channel, r, c - 1] = 1.0
    return maps


@pytest.mark.parametrize(("stride", "offset", "size"), [(8, 3.5, 12), (16, 7.5, 6)])
def test_refined_peaks_map_exactly_to_original_pixels(stride: int, offset: float, size: int) -> None:
    k = 3
    peaks = [(3, 2), (3, 2), (4, 4)] + [(1, 1)] * k  # class 0: two filters on one cell, one elsewhere
    maps = one_hot_maps(k, 2, size, peaks)
    peak_index = torch.tensor([r * size + c for r, c in peaks])
    # Network input (x, y) shows original (0.75 x + 100, 0.75 y + 40): a crop resized up, then offset.
    to_original = np.array([[0.75, 0.0, 100.0], [0.0, 0.75, 40.0], [0.0, 0.0, 1.0]])
    side = 1.5 * stride
    patches = class_patches(maps, peak_index, 0, "normal", k, (stride, offset, side), to_original, (400, 400), 5)
    assert [p["filter"] for p in patches] == [0, 2] and patches[0]["same_place_filters"] == [1]
    for patch, (r, c) in zip(patches, [(3, 2), (4, 4)]):
        # Parabola through (1, 10 - j, 5 - j) on columns c-1, c, c+1 for filter j.
        before, centre, after = 1.0, 10.0 - patch["filter"], 5.0 - patch["filter"]
        delta = (before - after) / (2 * (before - 2 * centre + after))
        x_in, y_in = offset + stride * (c + delta), offset + stride * r
        assert patch["peak_x"] == pytest.approx(0.75 * x_in + 100, abs=0.006)
        assert patch["peak_y"] == pytest.approx(0.75 * y_in + 40, abs=0.006)
        assert patch["x_max"] - patch["x_min"] == pytest.approx(0.75 * side, abs=0.011)
        assert (patch["x_min"] + patch["x_max"]) / 2 == pytest.approx(patch["peak_x"], abs=0.011)
    x, y = map_peak_to_original(maps[2], stride, offset, to_original)
    assert (x, y) == pytest.approx((patches[1]["peak_x"], patches[1]["peak_y"]), abs=0.006)
    assert grid_to_input(torch.tensor([0.0]), torch.tensor([0.0]), stride, offset)[0].item() == offset


def test_refined_peak_follows_the_backbones_grid_for_stride_8_and_16() -> None:
    """With the real backbones' grid geometry (VGG16-BN conv4_3: stride 8; ResNet-18 layer3: stride 16),
    a peak between cells maps to the fractional receptive-field centre."""
    for backbone, size in (("vgg16_bn", 64), ("resnet18", 96)):
        model = DFLNet(backbone, 2, filters_per_class=1).eval()
        grid = receptive_field(model.trunk)
        assert grid.stride in (8, 16)
        maps = torch.zeros(2, size // grid.stride, size // grid.stride)
        maps[0, 2:5, 2:5] = torch.tensor([[0.0, 1.0, 0.0], [2.0, 4.0, 3.0], [0.0, 1.0, 0.0]])
        to_original = np.eye(3)
        x, y = map_peak_to_original(maps[0], grid.stride, grid.center_offset, to_original)
        delta = (2.0 - 3.0) / (2 * (2.0 - 8.0 + 3.0))  # = 1/6 cell to the right
        assert x == pytest.approx(grid.center_offset + grid.stride * (3 + delta))
        assert y == pytest.approx(grid.center_offset + grid.stride * 3)


def test_patches_are_drawn_where_the_peak_reads_plus_the_sub_cell_shift() -> None:
    maps = torch.zeros(2, 6, 6)
    maps[0, 2, 2:5] = torch.tensor([1.0, 5.0, 2.0])  # filter 0: peak (2, 3), pulled right by 1/14 of a cell
    maps[1, 4, 1] = 3.0  # filter 1: peak (4, 1), no neighbours that bend: no shift
    peak_index = maps.flatten(1).argmax(dim=1)
    centres = torch.tensor([[40.0, 20.0], [10.0, 70.0]], dtype=torch.float64)  # input (x, y) each peak reads
    identity = np.eye(3)
    boxes = class_patches(maps, peak_index, 0, "mild", 2, (16.0, 7.5, 10.0), identity, (96, 96), 2, centres=centres)
    by_filter = {b["filter"]: b for b in boxes}
    assert (by_filter[0]["peak_x"], by_filter[0]["peak_y"]) == pytest.approx((40.0 + 16 / 14, 20.0), abs=0.01)
    assert (by_filter[1]["peak_x"], by_filter[1]["peak_y"]) == pytest.approx((10.0, 70.0))
    assert by_filter[1]["x_min"] == pytest.approx(5.0) and by_filter[1]["y_max"] == pytest.approx(75.0)
    theoretical = class_patches(maps, peak_index, 0, "mild", 2, (16.0, 7.5, 10.0), identity, (96, 96), 2)
    assert {b["filter"]: (b["peak_x"], b["peak_y"]) for b in theoretical}[1] == pytest.approx((7.5 + 16, 7.5 + 64))


def test_evidence_outside_the_searched_locations_is_the_lowest_searched_value() -> None:
    from spine_dfl.heatmap.evidence import class_evidence

    maps = torch.arange(2 * 4 * 3 * 3, dtype=torch.float32).reshape(1, 8, 3, 3)  # 2 classes x 4 filters
    searched = torch.zeros(1, 3, 3, dtype=torch.bool)
    searched[0, 1, 1:] = True
    evidence = class_evidence(maps, [1], 4, searched)[0]
    everywhere = class_evidence(maps, [1], 4)[0]
    assert torch.equal(everywhere, maps[0, 7])  # the class's strongest filter, the last one here
    assert torch.equal(evidence[1, 1:], everywhere[1, 1:])
    assert bool((evidence[~searched[0]] == everywhere[1, 1]).all())


def test_evidence_patches_are_the_refined_distinct_maxima_in_original_pixels() -> None:
    from spine_dfl.heatmap.evidence import EvidenceMap, evidence_patches

    values = np.zeros((6, 6), np.float32)
    values[2, 2:5] = (1.0, 5.0, 2.0)  # the maximum, pulled right by 1/14 of a cell
    values[4, 1] = 3.0  # a second place
    values[3, 3] = 4.0  # a shoulder of the first (not a local maximum)
    to_original = np.array([[2.0, 0.0, 10.0], [0.0, 2.0, 20.0], [0.0, 0.0, 1.0]])
    evidence = EvidenceMap(values, to_original, (0, 0, 200, 200), 96, 16, 7.5, patch_side=30.0)
    (x1, y1, box1), (x2, y2, _) = evidence_patches(evidence, top_n=3)
    assert x1 == pytest.approx(2 * (7.5 + 16 * (3 + 1 / 14)) + 10)
    assert y1 == pytest.approx(2 * (7.5 + 16 * (2 + 0.5 * (0 - 4.0) / (0 - 10.0 + 4.0))) + 20)
    assert box1[2] - box1[0] == pytest.approx(60.0) and (box1[0] + box1[2]) / 2 == pytest.approx(x1)
    assert (x2, y2) == pytest.approx((2 * (7.5 + 16) + 10, 2 * (7.5 + 64) + 20))
    no_side = EvidenceMap(values, to_original, (0, 0, 200, 200), 96, 16, 7.5)
    assert evidence_patches(no_side) == []
    flat = EvidenceMap(np.ones((4, 4), np.float32), to_original, (0, 0, 200, 200), 96, 16, 7.5, patch_side=30.0)
    assert evidence_patches(flat) == []


def test_overlay_draws_the_top_patch_in_the_first_rank_colour() -> None:
    from spine_dfl.dicom_out.findings import VertebraFinding
    from spine_dfl.dicom_out.overlay import render_roi_overlay
    from spine_dfl.heatmap.display import RANK_COLOURS
    from spine_dfl.heatmap.evidence import EvidenceMap

    values = np.zeros((6, 6), np.float32)
    values[2, 3] = 5.0
    evidence = EvidenceMap(values, np.eye(3), (0, 0, 96, 96), 96, 16, 7.5, patch_side=20.0)
    finding = VertebraFinding("L1", (10.0, 10.0, 90.0, 90.0), "b", {"a": 0.2, "b": 0.8}, evidence)
    image = np.full((120, 120), 100, np.uint8)
    rgb = render_roi_overlay(image, [finding], ["a", "b"], banner=None)
    cyan = np.array([int(RANK_COLOURS[0][i:i + 2], 16) for i in (1, 3, 5)])
    hits = np.argwhere((rgb == cyan).all(axis=2))
    # Peak at input (7.5 + 48, 7.5 + 32) = (55.5, 39.5); box 20 px: x 45.5 .. 65.5, y 29.5 .. 49.5.
    assert hits.size and hits[:, 1].min() >= 45 and hits[:, 1].max() <= 66
    assert hits[:, 0].min() >= 29 and hits[:, 0].max() <= 50
    plain = VertebraFinding("L1", (10.0, 10.0, 90.0, 90.0), "b", {"a": 0.2, "b": 0.8},
                            EvidenceMap(values, np.eye(3), (0, 0, 96, 96), 96, 16, 7.5))
    assert not (render_roi_overlay(image, [plain], ["a", "b"], banner=None) == cyan).all(axis=2).any()
