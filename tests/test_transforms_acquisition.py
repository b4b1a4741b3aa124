"""Acquisition augmentation: intensity-only (geometry and ROI mapping exact), seeded, batch and TorchIO paths."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from spine_dfl.data.transforms.acquisition import (
    AcquisitionAugment,
    RandomAcquisition,
    RandRoiJitterd,
    RandRoiReframed,
    TorchioAcquisitiond,
    apply_acquisition,
)
from spine_dfl.data.transforms.crop import RoiCropd

ALL_ON = AcquisitionAugment(enabled=True, prob=1.0)
PARTS = ("bias_field", "pitch", "noise", "gamma", "window", "unsharp", "collimation")


def _only(*parts: str, **ranges) -> AcquisitionAugment:
    return dataclasses.replace(ALL_ON, **{p: p in parts for p in PARTS}, **ranges)


def _planted(batch: int = 6, size: int = 48, seed: int = 0) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """A textured background in [0.2, 0.4] with one bright pixel per sample, away from the borders."""
    generator = torch.Generator().manual_seed(seed)
    images = 0.2 + 0.2 * torch.rand(batch, 1, size, size, generator=generator)
    spots = [(int(r), int(c)) for r, c in torch.randint(12, size - 12, (batch, 2), generator=generator)]
    for index, (row, col) in enumerate(spots):
        images[index, 0, row, col] = 0.6
    return images, spots


def _without_spots(images: torch.Tensor, spots: list[tuple[int, int]]) -> torch.Tensor:
    flat = images.clone()
    for index, (row, col) in enumerate(spots):
        flat[index, 0, row, col] = 0.3  # the same background, no spot
    return flat


def test_point_operations_change_only_the_planted_pixel() -> None:
    """Bias field, gamma, window and noise are per-pixel maps: with the same parameters, planting a
    bright pixel changes the output at that pixel and nowhere else."""
    images, spots = _planted()
    options = _only("bias_field", "gamma", "window", "noise")
    params = RandomAcquisition(options).sample(images.shape[0], 48, 48, torch.Generator().manual_seed(1))
    out = apply_acquisition(images, params, options)
    assert out.shape == images.shape and not torch.equal(out, images)
    changed = out != apply_acquisition(_without_spots(images, spots), params, options)
    for index, spot in enumerate(spots):
        assert [tuple(map(int, rc)) for rc in torch.nonzero(changed[index, 0])] == [spot]


@pytest.mark.parametrize("part", ["pitch", "unsharp"])
def test_neighbourhood_operations_keep_a_bright_pixel_centred(part: str) -> None:
    """Blur, resampling and edge enhancement spread a point symmetrically: the response's centroid stays."""
    images, spots = _planted()
    flat = _without_spots(images, spots)
    options = _only(part, pitch_factor=(1.5, 2.0))
    params = RandomAcquisition(options).sample(*images.shape[0:1], *images.shape[-2:], torch.Generator().manual_seed(2))
    response = (apply_acquisition(images, params, options) - apply_acquisition(flat, params, options)).abs()[:, 0]
    rows, cols = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    for index, (row, col) in enumerate(spots):
        weight = response[index] / response[index].sum()
        centroid = (float((weight * rows).sum()), float((weight * cols).sum()))
        assert abs(centroid[0] - row) < 1.0 and abs(centroid[1] - col) < 1.0, (part, centroid, (row, col))


def test_collimation_blanks_one_border_band_and_nothing_else() -> None:
    images, _ = _planted()
    out = RandomAcquisition(_only("collimation"))(images, torch.Generator().manual_seed(3))
    for index in range(images.shape[0]):
        changed = out[index, 0] != images[index, 0]
        assert (out[index, 0][changed] == 0.0).all()
        rows, cols = torch.nonzero(changed, as_tuple=True)
        top, bottom, left, right = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
        assert bool(changed[top : bottom + 1, left : right + 1].all())  # one solid rectangle ...
        full_height = (top, bottom) == (0, 47) and (left == 0 or right == 47)
        full_width = (left, right) == (0, 47) and (top == 0 or bottom == 47)
        assert full_height or full_width  # ... a full-length band at one border


def test_no_part_firing_is_exactly_the_identity() -> None:
    images, _ = _planted()
    out = RandomAcquisition(dataclasses.replace(ALL_ON, prob=0.0))(images, torch.Generator().manual_seed(4))
    assert torch.equal(out, images)
    assert RandomAcquisition(AcquisitionAugment(enabled=False))(images, torch.Generator()) is images


def test_the_same_seed_reproduces_the_batch_bit_for_bit_and_another_differs() -> None:
    images, _ = _planted(batch=8)
    augment = RandomAcquisition(dataclasses.replace(ALL_ON, prob=0.5))
    first = augment(images, torch.Generator().manual_seed(11))
    again = augment(images, torch.Generator().manual_seed(11))
    other = augment(images, torch.Generator().manual_seed(12))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_switching_one_part_off_leaves_the_other_parts_draws_alone() -> None:
    images, _ = _planted()
    full = RandomAcquisition(ALL_ON).sample(6, 48, 48, torch.Generator().manual_seed(5))
    no_noise = RandomAcquisition(dataclasses.replace(ALL_ON, noise=False)).sample(6, 48, 48, torch.Generator().manual_seed(5))
    assert torch.equal(full.gammas, no_noise.gammas) and torch.equal(full.collimation_sides, no_noise.collimation_sides)


def test_torchio_path_is_intensity_only_and_seeded() -> None:
    images, spots = _planted(batch=1, size=40)
    sample = {"image": images[0], "to_original": torch.tensor([[0.5, 0.0, 10.0], [0.0, 0.5, 20.0], [0.0, 0.0, 1.0]],
                                                             dtype=torch.float64), "roi": (10, 20, 30, 40)}
    transform = TorchioAcquisitiond("image", _only("bias_field", "gamma"))
    transform.set_random_state(7)
    global_state = torch.random.get_rng_state()
    out = transform(sample)
    assert torch.equal(torch.random.get_rng_state(), global_state)  # TorchIO ran on a forked stream
    assert out["image"].shape == sample["image"].shape and out["image"].dtype == torch.float32
    assert not torch.equal(out["image"], sample["image"])
    assert torch.equal(out["to_original"], sample["to_original"]) and out["roi"] == sample["roi"]
    transform.set_random_state(7)
    flat = transform({**sample, "image": _without_spots(images, spots)[0]})["image"]
    assert [tuple(map(int, rc)) for rc in torch.nonzero(out["image"][0] != flat[0])] == [spots[0]]
    transform.set_random_state(7)
    assert torch.equal(transform(sample)["image"], out["image"])
    full = TorchioAcquisitiond("image", ALL_ON)
    full.set_random_state(8)
    assert full(sample)["image"].shape == sample["image"].shape


def test_roi_jitter_moves_the_crop_and_to_original_still_maps_every_pixel_home() -> None:
    rows, cols = 60, 50
    image = torch.arange(rows * cols, dtype=torch.float32).view(1, rows, cols)
    jitter = RandRoiJitterd("image", dataclasses.replace(ALL_ON, roi_margin=(0.05, 0.2), roi_shift=0.1))
    crop = RoiCropd("image", margin=0.1)
    jitter.set_random_state(9)
    moved = 0
    for _ in range(5):
        sample = {"image": image, "roi": (12.0, 15.0, 30.0, 41.0), "to_original": torch.eye(3, dtype=torch.float64)}
        jittered = jitter(sample)
        moved += jittered["roi"] != sample["roi"]
        out = crop(jittered)
        _, h, w = out["image"].shape
        ys, xs = np.mgrid[0:h, 0:w]
        homogeneous = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5, np.ones(h * w)])
        original = out["to_original"].numpy() @ homogeneous
        ox, oy = np.floor(original[0]).astype(int), np.floor(original[1]).astype(int)
        inside = (ox >= 0) & (ox < cols) & (oy >= 0) & (oy < rows)
        assert inside.sum() > 0.5 * h * w
        np.testing.assert_array_equal(out["image"][0].numpy().ravel()[inside], image[0].numpy()[oy[inside], ox[inside]])
    assert moved >= 3
    assert jitter({"image": image, "roi": None})["roi"] is None


def test_roi_reframe_after_the_crop_keeps_to_original_exact_and_zooms_out_for_looser_rois() -> None:
    rows, cols = 80, 70
    ys, xs = np.mgrid[0:rows, 0:cols]
    # a linear ramp: bilinear resampling reproduces it exactly, so every value names its original position
    ramp = lambda x, y: 0.01 * x + 0.02 * y  # noqa: E731
    image = torch.as_tensor(ramp(xs + 0.5, ys + 0.5), dtype=torch.float32)[None]
    crop = RoiCropd("image", margin=0.2)({"image": image, "roi": (20.0, 25.0, 44.0, 52.0),
                                          "to_original": torch.eye(3, dtype=torch.float64)})
    reframe = RandRoiReframed("image", dataclasses.replace(ALL_ON, roi_margin=(-0.04, 0.15), roi_shift=0.06),
                              crop_margin=0.2, fill=-1.0)
    reframe.set_random_state(3)
    zooms = []
    for _ in range(6):
        out = reframe(crop)
        _, h, w = out["image"].shape
        assert (h, w) == tuple(crop["image"].shape[-2:])
        gy, gx = np.mgrid[0:h, 0:w]
        mapped = out["to_original"].numpy() @ np.stack([gx.ravel() + 0.5, gy.ravel() + 0.5, np.ones(h * w)])
        # pixels whose source lies at least one pixel inside the crop carry the original's value there
        source = np.linalg.inv(crop["to_original"].numpy()) @ mapped
        inside = (source[0] > 1) & (source[0] < w - 1) & (source[1] > 1) & (source[1] < h - 1)
        assert inside.sum() > 0.5 * h * w
        np.testing.assert_allclose(out["image"][0].numpy().ravel()[inside], ramp(mapped[0], mapped[1])[inside],
                                   atol=1e-4)
        zooms.append(float(out["to_original"][0, 0] / crop["to_original"][0, 0]))
    # a margin m per side makes the crop (1.4 + 2 m) / 1.4 times wider: m in [-0.04, 0.15]
    assert all(1.32 / 1.4 - 1e-9 <= z <= 1.7 / 1.4 + 1e-9 for z in zooms) and max(zooms) > 1.1
    never = RandRoiReframed("image", dataclasses.replace(ALL_ON, prob=0.0), crop_margin=0.2)
    assert torch.equal(never(crop)["image"], crop["image"]) and torch.equal(never(crop)["to_original"], crop["to_original"])


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="pitch_factor"):
        AcquisitionAugment(pitch_factor=(0.5, 2.0))
    with pytest.raises(ValueError, match="log_gamma"):
        AcquisitionAugment(log_gamma=(0.3, -0.3))
    with pytest.raises(ValueError, match="prob"):
        AcquisitionAugment(prob=1.5)
