"""Acquisition augmentation: intensity-only (geometry and ROI mapping exact), seeded; TorchIO per sample
inside the training pipeline, window / unsharp mask / collimation on whole batches."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from spine_dfl.data.dataset import build_dataset, records_from_table
from spine_dfl.data.manifest import load_manifest
from spine_dfl.data.transforms import AugmentConfig, Preprocessing
from spine_dfl.data.transforms.acquisition import (
    AcquisitionAugment,
    RandomBatchAcquisition,
    RandRoiReframed,
    TorchioAcquisition,
    TorchioAcquisitiond,
    apply_processing,
    resample_axis,
)
from spine_dfl.data.transforms.crop import ResizePadd, RoiCropd
from spine_dfl.engine.predict import collate_samples

ALL_ON = AcquisitionAugment(enabled=True, prob=1.0)
BATCH_PARTS = ("window", "unsharp", "collimation")
TORCHIO_PARTS = ("bias_field", "pitch", "noise", "gamma")


def _only(*parts: str, **ranges) -> AcquisitionAugment:
    return dataclasses.replace(ALL_ON, **{p: p in parts for p in (*BATCH_PARTS, *TORCHIO_PARTS)}, **ranges)


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


# ------------------------------------------------------------------------------- batch path
def test_window_is_a_point_operation_changing_only_the_planted_pixel() -> None:
    images, spots = _planted()
    options = _only("window", window_width=(0.5, 0.6))
    params = RandomBatchAcquisition(options).sample(images.shape[0], torch.Generator().manual_seed(1))
    out = apply_processing(images, params, options)
    assert out.shape == images.shape and not torch.equal(out, images)
    changed = out != apply_processing(_without_spots(images, spots), params, options)
    for index, spot in enumerate(spots):
        assert [tuple(map(int, rc)) for rc in torch.nonzero(changed[index, 0])] == [spot]


def test_unsharp_mask_keeps_a_bright_pixel_centred() -> None:
    """Edge enhancement spreads a point symmetrically: the response's centroid stays where it was."""
    images, spots = _planted()
    flat = _without_spots(images, spots)
    options = _only("unsharp", unsharp_gain=(0.5, 1.0))
    params = RandomBatchAcquisition(options).sample(images.shape[0], torch.Generator().manual_seed(2))
    response = (apply_processing(images, params, options) - apply_processing(flat, params, options)).abs()[:, 0]
    rows, cols = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    for index, (row, col) in enumerate(spots):
        weight = response[index] / response[index].sum()
        centroid = (float((weight * rows).sum()), float((weight * cols).sum()))
        assert abs(centroid[0] - row) < 1.0 and abs(centroid[1] - col) < 1.0, (centroid, (row, col))


def test_collimation_blanks_one_border_band_and_nothing_else() -> None:
    images, _ = _planted()
    out = RandomBatchAcquisition(_only("collimation"))(images, torch.Generator().manual_seed(3))
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
    out = RandomBatchAcquisition(dataclasses.replace(ALL_ON, prob=0.0))(images, torch.Generator().manual_seed(4))
    assert torch.equal(out, images)
    assert RandomBatchAcquisition(AcquisitionAugment(enabled=False))(images, torch.Generator()) is images
    # TorchIO's parts are not the batch path's: with only those on, the batch path does nothing
    assert RandomBatchAcquisition(_only(*TORCHIO_PARTS))(images, torch.Generator()) is images


def test_the_same_seed_reproduces_the_batch_bit_for_bit_and_another_differs() -> None:
    images, _ = _planted(batch=8)
    augment = RandomBatchAcquisition(dataclasses.replace(ALL_ON, prob=0.5))
    first = augment(images, torch.Generator().manual_seed(11))
    again = augment(images, torch.Generator().manual_seed(11))
    other = augment(images, torch.Generator().manual_seed(12))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_switching_one_part_off_leaves_the_other_parts_draws_alone() -> None:
    full = RandomBatchAcquisition(ALL_ON).sample(6, torch.Generator().manual_seed(5))
    no_unsharp = RandomBatchAcquisition(dataclasses.replace(ALL_ON, unsharp=False)).sample(6, torch.Generator().manual_seed(5))
    assert torch.equal(full.window_low, no_unsharp.window_low)
    assert torch.equal(full.collimation_sides, no_unsharp.collimation_sides)


# ------------------------------------------------------------------------------- TorchIO, per sample
def _sample(image: torch.Tensor) -> dict:
    to_original = torch.tensor([[0.5, 0.0, 10.0], [0.0, 0.5, 20.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return {"image": image, "to_original": to_original, "roi": (10.0, 20.0, 30.0, 40.0)}


def test_torchio_point_operations_change_only_the_planted_pixel_and_leave_the_mapping() -> None:
    """Bias field, noise and gamma are per-pixel maps: with the same seed, planting a bright pixel
    changes the output there and nowhere else; ``to_original`` and the ROI pass unchanged."""
    images, spots = _planted(batch=1, size=40)
    sample = _sample(images[0])
    transform = TorchioAcquisitiond("image", _only("bias_field", "noise", "gamma"))
    transform.set_random_state(7)
    global_state = torch.random.get_rng_state()
    out = transform(sample)
    assert torch.equal(torch.random.get_rng_state(), global_state)  # TorchIO ran on a forked stream
    assert out["image"].shape == sample["image"].shape and out["image"].dtype == torch.float32
    assert not torch.equal(out["image"], sample["image"])
    assert float(out["image"].min()) >= 0.0 and float(out["image"].max()) <= 1.0
    assert torch.equal(out["to_original"], sample["to_original"]) and out["roi"] == sample["roi"]
    assert torch.equal(sample["image"], images[0])  # the input was not modified in place
    transform.set_random_state(7)
    flat = transform({**sample, "image": _without_spots(images, spots)[0]})["image"]
    assert [tuple(map(int, rc)) for rc in torch.nonzero(out["image"][0] != flat[0])] == [spots[0]]


def test_torchio_anisotropy_moves_no_pixel() -> None:
    """A linear ramp names every pixel's position by its value: after downsampling along one axis and
    resampling back, every inner pixel keeps its value within half a pixel's step, centred on it."""
    rows, cols = np.mgrid[0:40, 0:48]
    slope_x, slope_y = 0.01, 0.005
    ramp = torch.as_tensor(slope_x * (cols + 0.5) + slope_y * (rows + 0.5), dtype=torch.float32)[None]
    transform = TorchioAcquisitiond("image", _only("pitch", pitch_factor=(1.5, 2.0)))
    transform.set_random_state(3)
    for _ in range(6):
        out = transform(_sample(ramp))
        error = (out["image"] - ramp)[0, 2:-2, 2:-2]
        assert float(error.abs().max()) > 1e-4  # it did resample
        assert float(error.abs().max()) <= 0.5 * slope_x + 1e-5
        assert abs(float(error.mean())) < 0.05 * slope_y  # no shift on average
        assert torch.equal(out["to_original"], _sample(ramp)["to_original"])


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("factor", [1.01, 1.3, 1.5, 1.77, 1.999, 2.0, 3.0])
def test_resample_axis_is_torchios_anisotropy_inside_and_holds_the_edges(axis: int, factor: float) -> None:
    """The torch resampling gives TorchIO's ``RandomAnisotropy`` result at every pixel TorchIO's
    coarse grid covers (same axis, same factor); beyond it TorchIO pads with 0 (a black line at the
    detector's edge), where ours holds the outermost coarse sample."""
    import torchio as tio

    volume = torch.rand(1, 48, 40, 1, generator=torch.Generator().manual_seed(0))  # TorchIO's (C, W, H, 1)
    theirs = tio.RandomAnisotropy(axes=(axis,), downsampling=(factor, factor))(tio.ScalarImage(tensor=volume.clone())).data
    ours = resample_axis(volume, 1 + axis, factor)
    dims = tuple(d for d in range(4) if d != 1 + axis)
    padded = theirs.abs().sum(dim=dims) == 0  # TorchIO's zero lines (the image is positive everywhere)
    size = volume.shape[1 + axis]
    assert int(padded[: int(np.ceil(factor))].sum() + padded[size - int(np.ceil(factor)):].sum()) == int(padded.sum())
    covered = torch.nonzero(~padded).flatten()
    torch.testing.assert_close(ours.index_select(1 + axis, covered), theirs.index_select(1 + axis, covered), atol=1e-5, rtol=0)
    assert float(ours.min()) >= float(volume.min())  # no black line at the edges
    assert torch.equal(resample_axis(volume, 1 + axis, 1.0), volume)


@pytest.mark.parametrize("part", ["bias_field", "noise", "gamma"])
def test_each_torchio_part_is_torchios_public_random_transform(part: str) -> None:
    """Bias field, noise and gamma are TorchIO's own random transforms: with the same seed, the
    part alone gives what TorchIO's transform gives on the same volume."""
    import torchio as tio

    options = _only(part, prob=0.7)
    theirs = {"bias_field": tio.RandomBiasField(coefficients=options.bias_coefficient, order=options.bias_order, p=0.7),
              "noise": tio.RandomNoise(std=options.noise_std, p=0.7),
              "gamma": tio.RandomGamma(log_gamma=options.log_gamma, p=0.7)}[part]
    ours = TorchioAcquisition(options)
    for seed in range(8):
        volume = 0.1 + 0.8 * torch.rand(1, 33, 40, 1, generator=torch.Generator().manual_seed(seed))
        torch.manual_seed(seed)
        got = ours(volume)
        torch.manual_seed(seed)
        assert torch.equal(got, theirs(tio.ScalarImage(tensor=volume.clone())).data), seed


def test_torchio_the_same_seed_reproduces_the_sample_and_another_differs() -> None:
    images, _ = _planted(batch=1, size=40)
    transform = TorchioAcquisitiond("image", dataclasses.replace(ALL_ON, prob=0.5))
    outputs = []
    for seed in (7, 7, 8):
        transform.set_random_state(seed)
        outputs.append(torch.stack([transform(_sample(images[0]))["image"] for _ in range(4)]))
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.equal(outputs[0], outputs[2])


# ------------------------------------------------------------------------------- the training pipeline
PRE = Preprocessing(input_size=48, roi_margin=0.2, use_roi=True)
AUG = AugmentConfig(prob=1.0)
INTENSITY_ONLY = dataclasses.replace(ALL_ON, roi_jitter=False)


def _records(cohort: Path) -> list[dict]:
    manifest = load_manifest(cohort / "manifest.csv")
    return records_from_table(manifest.table, manifest.class_names)[:6]


def _augmented_batch(records: list[dict], acquisition: AcquisitionAugment, seed: int, epoch: int = 1) -> dict:
    """One training batch as the engine makes it: the dataset's per-sample pipeline (TorchIO inside),
    collated, then the batch part from a generator seeded like the training loop's."""
    dataset = build_dataset(records, PRE, aug=AUG, seed=seed, acquisition=acquisition)
    dataset.set_epoch(epoch)
    items = [dataset[i] for i in range(len(dataset))]
    batch = collate_samples(items)
    batch["image"] = RandomBatchAcquisition(acquisition)(batch["image"], torch.Generator().manual_seed(seed + epoch))
    batch["to_original"] = torch.stack([item["to_original"] for item in items])
    batch["roi"] = [item["roi"] for item in items]
    return batch


def test_pipeline_intensity_only_parts_leave_to_original_and_the_roi_mapping_unchanged(small_cohort: Path) -> None:
    """With TorchIO and the batch parts on (every part firing), the pipeline's ``to_original`` (what
    maps the crop, and every heatmap box, back to the radiograph) and the ROIs are bit for bit those
    of the same pipeline without them; only the pixels differ."""
    records = _records(small_cohort)
    with_acquisition = _augmented_batch(records, INTENSITY_ONLY, seed=5)
    without = _augmented_batch(records, AcquisitionAugment(enabled=False), seed=5)
    assert torch.equal(with_acquisition["to_original"], without["to_original"])
    assert with_acquisition["roi"] == without["roi"] == [r["roi"] for r in records]
    plain = build_dataset(records, PRE, aug=None)  # the generic augmentation did move the crops
    assert not torch.equal(without["to_original"], torch.stack([plain[i]["to_original"] for i in range(len(plain))]))
    for a, b in zip(with_acquisition["image"], without["image"]):
        assert not torch.equal(a, b)


def test_pipeline_the_same_seed_gives_bit_identical_batches_and_another_seed_differs(small_cohort: Path) -> None:
    records = _records(small_cohort)
    options = dataclasses.replace(ALL_ON, prob=0.5)
    first = _augmented_batch(records, options, seed=3)
    again = _augmented_batch(records, options, seed=3)
    other = _augmented_batch(records, options, seed=4)
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["to_original"], again["to_original"])
    assert not torch.equal(first["image"], other["image"])


def test_pipeline_runs_torchio_per_sample(small_cohort: Path, monkeypatch) -> None:
    """Every training sample goes through TorchIO (prob 1): each random transform draws its
    parameters once, and the pitch is resampled once by ``resample_axis``."""
    import torchio as tio

    from spine_dfl.data.transforms import acquisition

    calls: dict[str, int] = {}

    def count(owner, name: str, label: str) -> None:
        real = getattr(owner, name)

        def counted(*args, **kwargs):
            calls[label] = calls.get(label, 0) + 1
            return real(*args, **kwargs)
        monkeypatch.setattr(owner, name, counted)

    for cls in (tio.RandomBiasField, tio.RandomAnisotropy, tio.RandomNoise, tio.RandomGamma):
        count(cls, "get_params", cls.__name__)
    count(acquisition, "resample_axis", "resample")
    records = _records(small_cohort)
    _augmented_batch(records, ALL_ON, seed=1)
    n = len(records)
    assert calls == {"RandomBiasField": n, "RandomAnisotropy": n, "RandomNoise": n, "RandomGamma": n, "resample": n}


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
    assert never(crop)["roi"] == crop["roi"]
    assert torch.equal(never(crop)["image"], crop["image"]) and torch.equal(never(crop)["to_original"], crop["to_original"])


def test_roi_reframe_hands_on_the_other_sites_roi_grown_by_the_margin_and_moved_with_the_crop() -> None:
    image = torch.rand(1, 80, 70)
    roi = (20.0, 25.0, 44.0, 52.0)  # 24 x 27 px: the larger side is 27
    crop = ResizePadd("image", size=48)(RoiCropd("image", margin=0.2)(
        {"image": image, "roi": roi, "to_original": torch.eye(3, dtype=torch.float64)}))
    options = dataclasses.replace(ALL_ON, prob=1.0, roi_margin=(-0.04, 0.15), roi_shift=0.06, roi_follows_reframe=True)
    reframe = RandRoiReframed("image", options, crop_margin=0.2)
    reframe.set_random_state(5)
    centre = torch.tensor([24.0, 24.0, 1.0], dtype=torch.float64)
    grown = []
    for _ in range(8):
        out = reframe(crop)
        x0, y0, x1, y1 = out["roi"]
        # the same growth on every side, as the crop's zoom says: (1.4 + 2 m) / 1.4 = zoom
        margin = (float(out["to_original"][0, 0] / crop["to_original"][0, 0]) * 1.4 - 1.4) / 2.0
        for new, old in zip(((x1 - x0), (y1 - y0)), ((roi[2] - roi[0]), (roi[3] - roi[1]))):
            assert new - old == pytest.approx(2.0 * margin * 27.0, abs=1e-9)
        # moved with the crop's centre, so it sits in the new input where the old one sat in the old
        moved = (out["to_original"] @ centre - crop["to_original"] @ centre)[:2]
        assert ((x0 + x1) / 2 - (roi[0] + roi[2]) / 2, (y0 + y1) / 2 - (roi[1] + roi[3]) / 2) == pytest.approx(
            tuple(moved.tolist()), abs=1e-9)
        grown.append(margin)
    assert min(grown) < 0.0 < max(grown)  # tighter and looser boxes both drawn
    assert reframe({**crop, "roi": None})["roi"] is None
    # off (the default): the true box stays while the crop is reframed
    kept = RandRoiReframed("image", dataclasses.replace(options, roi_follows_reframe=False), crop_margin=0.2)
    kept.set_random_state(5)
    out = kept(crop)
    assert out["roi"] == roi and not torch.equal(out["to_original"], crop["to_original"])


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="pitch_factor"):
        AcquisitionAugment(pitch_factor=(0.5, 2.0))
    with pytest.raises(ValueError, match="log_gamma"):
        AcquisitionAugment(log_gamma=(0.3, -0.3))
    with pytest.raises(ValueError, match="prob"):
        AcquisitionAugment(prob=1.5)
