"""The locator learns: a training pass lowers the loss, and locate() finds, orders and labels vertebrae."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spine_dfl.locate import (
    VertebraLocator,
    collate_targets,
    encode_targets,
    letterbox,
    locate,
    output_size,
)
from spine_dfl.locate.targets import locator_loss

pytestmark = pytest.mark.slow  # 40 real optimisation steps (about 25 s on 2 idle cores)

LEVELS = ("T12", "L1", "L2", "L3", "L4")
SIZE = (128, 64)


def toy_radiograph(rng: np.random.Generator, first_level: int, shift: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 256 x 128 'radiograph' with three bright bodies stacked down the image (original pixels)."""
    image = rng.normal(0.0, 0.03, size=(256, 128)).astype(np.float32)
    boxes, levels = [], []
    y = 24.0 + shift
    for k in range(3):
        w, h = 64.0, 40.0 + 4 * k
        x = 30.0 + 4 * k
        image[int(y): int(y + h), int(x): int(x + w)] += 1.0
        boxes.append([x, int(y), x + w, int(y + h)])
        levels.append(first_level + k)
        y += h + 24
    return image, np.array(boxes), np.array(levels)


def toy_batch(rng: np.random.Generator) -> tuple[list, tuple[torch.Tensor, dict]]:
    samples, images, targets = [], [], []
    for first, shift in ((0, 0.0), (1, 14.0), (2, 6.0), (0, 20.0)):
        image, boxes, levels = toy_radiograph(rng, first, shift)
        tensor, to_original = letterbox(image, SIZE)
        to_input = torch.linalg.inv(to_original).numpy()
        corners = np.c_[boxes.reshape(-1, 2), np.ones(len(boxes) * 2)] @ to_input.T
        images.append(tensor)
        targets.append(encode_targets(corners[:, :2].reshape(-1, 4), output_size(SIZE), None, levels))
        samples.append((tensor, to_original, boxes, levels))
    return samples, (torch.stack(images), collate_targets(targets))


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    samples, batch = toy_batch(np.random.default_rng(0))
    model = VertebraLocator(LEVELS, blocks=(1, 1, 1, 1), neck_channels=32, head_channels=32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = [_fit_step(model, batch, optimizer) for _ in range(40)]
    return model, samples, history


def _fit_step(model, batch, optimizer) -> dict[str, float]:
    """One plain optimisation step on the toy batch: the loss parts before the update."""
    model.train()
    images, targets = batch
    parts = locator_loss(model(images), targets)
    optimizer.zero_grad(set_to_none=True)
    parts["loss"].backward()
    optimizer.step()
    return {name: float(value.detach()) for name, value in parts.items()}


def test_training_lowers_every_loss_part(trained):
    _, _, history = trained
    for name in ("loss", "heatmap", "size", "offset", "levels"):
        assert history[-1][name] < 0.5 * history[0][name], name
    assert history[0]["landmarks"] == 0.0  # no points given: no landmark loss


def test_locate_finds_orders_and_labels_the_bodies_in_original_pixels(trained):
    model, samples, _ = trained
    for tensor, to_original, boxes, levels in samples:
        found = locate(model, tensor, to_original, threshold=0.3)
        assert len(found) == 3
        assert found.levels == tuple(LEVELS[i] for i in levels)  # cranial first
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        assert np.abs(found.detections.centres - centres).max() < 6.0  # 2 px of the 128-px input
        assert found.head_up and np.all(found.confidence > 0.3)


def test_bad_input_is_refused(trained):
    model, samples, _ = trained
    with pytest.raises(ValueError, match=r"\(1, H, W\)"):
        locate(model, samples[0][0][None], samples[0][1])
