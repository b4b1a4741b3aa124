"""Locator geometry: letterbox, target encoding, decoding back to original pixels, losses, network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spine_dfl.data.transforms import map_points_to_original
from spine_dfl.locate.decode import decode
from spine_dfl.locate.network import STRIDE, VertebraLocator
from spine_dfl.locate.preprocess import letterbox, output_size
from spine_dfl.locate.targets import (
    collate_targets,
    encode_targets,
    focal_loss,
    gaussian_radius,
    locator_loss,
)

LEVELS = ("T10", "T11", "T12", "L1", "L2")


def spine_boxes(n: int, rng: np.random.Generator, x0: float = 60.0, top: float = 20.0, scale: float = 1.0):
    """n stacked vertebra boxes (input pixels) with six points inside each and their levels 0..n-1."""
    boxes, points = [], []
    y = top
    for _ in range(n):
        w, h = rng.uniform(30, 44) * scale, rng.uniform(22, 30) * scale
        x = x0 + rng.uniform(-8, 8) * scale
        boxes.append([x, y, x + w, y + h])
        xs = np.array([x + 2, x + w / 2, x + w - 2]) + rng.uniform(-1, 1, 3)
        sup, inf = y + 2 + rng.uniform(0, 3, 3), y + h - 2 - rng.uniform(0, 3, 3)
        points.append(np.stack([np.concatenate([xs, xs]), np.concatenate([sup, inf])], axis=1))
        y += h + rng.uniform(6, 10) * scale
    return np.array(boxes), np.array(points), np.arange(n)


def outputs_from_targets(t: dict[str, torch.Tensor], n_levels: int) -> dict[str, torch.Tensor]:
    """Output maps a perfect network would produce: the targets written at their centre cells."""
    _, h, w = t["heatmap"].shape
    out = {"heatmap": torch.logit(t["heatmap"].clamp(1e-4, 1 - 1e-4))[None]}
    for name, c in (("size", 2), ("offset", 2), ("landmarks", 12)):
        m = torch.zeros(c, h * w)
        m[:, t["index"][t["mask"]]] = t[name][t["mask"]].T
        out[name] = m.reshape(1, c, h, w)
    levels = torch.zeros(n_levels, h * w)
    levels[t["level"][t["mask"]], t["index"][t["mask"]]] = 5.0
    out["levels"] = levels.reshape(1, n_levels, h, w)
    return out


def match(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Row of ``found`` nearest each row of ``truth`` (by first two coordinates)."""
    d = np.linalg.norm(found[None, :, :2] - truth[:, None, :2], axis=-1)
    return d.argmin(axis=1)


def test_letterbox_keeps_aspect_and_maps_back_exactly():
    rows, cols = 1000, 600
    image = np.zeros((rows, cols), dtype=np.float32)
    image[400:500, 200:260] = 1000.0  # a bright block
    tensor, to_original = letterbox(image, (384, 192))
    assert tensor.shape == (1, 384, 192) and tensor.dtype == torch.float32
    assert float(tensor.min()) >= 0.0 and float(tensor.max()) <= 1.0
    # the input's corners of the image area map to the original's corners
    scale = min(384 / rows, 192 / cols)  # width-limited here: 320 x 192 of image, 32 rows of padding each side
    out_h, out_w = round(rows * scale), round(cols * scale)
    pad_x, pad_y = (192 - out_w) // 2, (384 - out_h) // 2
    assert (out_h, pad_y) == (320, 32)
    assert float(tensor[0, :pad_y].abs().max()) == 0.0
    corners = map_points_to_original(
        torch.tensor([[pad_x, pad_y], [pad_x + out_w, pad_y + out_h]], dtype=torch.float64), to_original)
    np.testing.assert_allclose(corners.numpy(), [[0.0, 0.0], [cols, rows]], atol=1e-9)
    # the bright block is where the inverse map puts it
    centre_in = torch.linalg.inv(to_original) @ torch.tensor([230.0, 450.0, 1.0], dtype=torch.float64)
    x, y = int(centre_in[0]), int(centre_in[1])
    assert float(tensor[0, y, x]) == pytest.approx(1.0)
    assert float(tensor[0, 10, x]) == 0.0
    with pytest.raises(ValueError, match="multiples of 32"):
        letterbox(image, (380, 192))


def test_gaussian_radius_grows_with_the_box():
    assert 0 < gaussian_radius(5, 8) < gaussian_radius(10, 16)


def test_encode_decode_round_trip_recovers_boxes_points_and_levels():
    rng = np.random.default_rng(0)
    boxes, points, levels = spine_boxes(5, rng)
    size = (256, 192)
    t = encode_targets(boxes, output_size(size), points, levels)
    assert int(t["mask"].sum()) == 5 and float(t["heatmap"].max()) == 1.0
    assert t["heatmap"].shape == (1, 256 // STRIDE, 192 // STRIDE)
    found = decode(outputs_from_targets(t, len(LEVELS)), threshold=0.5)
    assert len(found) == 5
    i = match(found.boxes, boxes)
    assert np.abs(found.boxes[i] - boxes).max() < 1e-3  # well within 1 px
    assert np.abs(found.points[i] - points).max() < 1e-3
    np.testing.assert_array_equal(found.level_logits[i].argmax(axis=1), levels)
    np.testing.assert_allclose(found.scores, 1.0, atol=1e-3)


def test_decode_maps_to_original_pixels_through_the_letterbox_affine():
    rng = np.random.default_rng(1)
    rows, cols = 1200, 700
    boxes, points, levels = spine_boxes(6, rng, x0=250.0, top=100.0, scale=2.5)  # original pixels
    size = (384, 192)
    _, to_original = letterbox(np.ones((rows, cols), dtype=np.float32), size)
    to_input = torch.linalg.inv(to_original)
    boxes_in = map_points_to_original(boxes.reshape(-1, 2, 2), to_input).reshape(-1, 4)
    points_in = map_points_to_original(points, to_input)
    t = encode_targets(boxes_in, output_size(size), points_in, levels)
    found = decode(outputs_from_targets(t, len(LEVELS) + 1), to_original=to_original, threshold=0.5)
    i = match(found.boxes, boxes)
    np.testing.assert_allclose(found.boxes[i], boxes, atol=1e-3 * 2.5 * 1200 / 384)
    np.testing.assert_allclose(found.points[i], points, atol=1e-3 * 2.5 * 1200 / 384)
    np.testing.assert_allclose(found.centres[i], (boxes[:, :2] + boxes[:, 2:]) / 2, atol=1e-2)


def test_encode_refuses_bad_boxes_and_skips_centres_outside():
    with pytest.raises(ValueError, match="x_min < x_max"):
        encode_targets(np.array([[10.0, 10.0, 5.0, 20.0]]), (16, 16))
    t = encode_targets(np.array([[10.0, 10.0, 20.0, 20.0], [500.0, 10.0, 520.0, 20.0]]), (16, 16))
    assert t["mask"].tolist()[:2] == [True, False]
    assert not bool(t["landmark_mask"].any()) and t["level"][0] == -1


def test_losses_are_lower_for_the_perfect_output_and_every_head_gets_gradient():
    rng = np.random.default_rng(2)
    boxes, points, levels = spine_boxes(5, rng)
    size = (256, 128)
    batch = collate_targets([encode_targets(boxes, output_size(size), points, levels)] * 2)
    perfect = {k: v.repeat(2, 1, 1, 1) for k, v in outputs_from_targets(
        {k: v[0] for k, v in batch.items()}, len(LEVELS)).items()}
    model = VertebraLocator(LEVELS, blocks=(1, 1, 1, 1))
    outputs = model(torch.rand(2, 1, *size))
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {
        "heatmap": (2, 1, 64, 32), "size": (2, 2, 64, 32), "offset": (2, 2, 64, 32),
        "landmarks": (2, 12, 64, 32), "levels": (2, len(LEVELS), 64, 32)}
    random_parts = locator_loss(outputs, batch)
    perfect_parts = locator_loss(perfect, batch)
    for name in ("heatmap", "size", "offset", "landmarks", "levels"):
        assert float(perfect_parts[name]) < float(random_parts[name].detach()), name
    assert float(perfect_parts["size"]) == 0.0 and float(perfect_parts["landmarks"]) == 0.0
    random_parts["loss"].backward()
    for name, head in model.heads.items():
        assert head.weight.grad is not None and float(head.weight.grad.abs().sum()) > 0, name


def test_focal_loss_rewards_peaks_at_the_centres():
    target = torch.zeros(1, 1, 8, 8)
    target[0, 0, 3, 4] = 1.0
    good = torch.full_like(target, -6.0)
    good[0, 0, 3, 4] = 6.0
    assert float(focal_loss(good, target)) < 0.01 < float(focal_loss(torch.zeros_like(target), target))


def test_network_refuses_bad_input_and_bad_levels():
    model = VertebraLocator(LEVELS, blocks=(1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="distinct"):
        VertebraLocator(("L1", "L1"))
    assert model.arguments["levels"] == list(LEVELS)
    rebuilt = VertebraLocator(**model.arguments)
    rebuilt.load_state_dict(model.state_dict())


def test_no_peak_above_the_threshold_gives_empty_detections_of_the_right_shapes():
    maps = {"heatmap": torch.full((1, 1, 16, 8), -9.0), "size": torch.zeros(1, 2, 16, 8),
            "offset": torch.zeros(1, 2, 16, 8), "landmarks": torch.zeros(1, 12, 16, 8),
            "levels": torch.zeros(1, len(LEVELS), 16, 8)}
    found = decode(maps, to_original=torch.eye(3, dtype=torch.float64), threshold=0.3)
    assert len(found) == 0
    assert (found.boxes.shape, found.points.shape, found.centres.shape, found.level_logits.shape) == (
        (0, 4), (0, 6, 2), (0, 2), (0, len(LEVELS)))
