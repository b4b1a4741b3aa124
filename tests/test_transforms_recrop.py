"""Another site's ROI convention cut from the radiograph (``reframe_from_radiograph``): the cached
window holds every crop, the record's own ROI gives the evaluation sample bit for bit, another
site's ROI gives what the evaluation pipeline gives for that ROI, geometry exact, seeded."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from spine_dfl.data.dataset import SampleCacheKey, build_dataset, records_from_table
from spine_dfl.data.manifest import load_manifest
from spine_dfl.data.transforms import AugmentConfig, Preprocessing
from spine_dfl.data.transforms.acquisition_options import AcquisitionAugment
from spine_dfl.data.transforms.compose import deterministic_transforms, window_transforms
from spine_dfl.data.transforms.crop import RandRoiRecropd, RoiRecropd, draw_roi_reframe, grown_roi, window_margin
from spine_dfl.data.transforms.geometry import roi_crop_box

PRE = Preprocessing(input_size=48, roi_margin=0.2)
RECROP = AcquisitionAugment(enabled=True, prob=1.0, roi_margin=(-0.04, 0.15), roi_shift=0.06,
                            reframe_from_radiograph=True)


def _pipeline(transforms, data):
    for transform in transforms:
        data = transform(data)
    return data


def _image(rows: int = 90, cols: int = 80, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, rows, cols, generator=torch.Generator().manual_seed(seed)) * 1000.0


def _window(image: torch.Tensor, roi) -> dict:
    """What the training cache holds: the window around ``roi`` (LoadRadiographd's part skipped)."""
    return _pipeline(window_transforms(PRE, RECROP)[1:], {"image": image, "roi": roi,
                                                          "to_original": torch.eye(3, dtype=torch.float64)})


def _evaluated(image: torch.Tensor, roi) -> dict:
    """The deterministic pipeline's sample for ``roi`` (LoadRadiographd's part skipped)."""
    return _pipeline(deterministic_transforms(PRE)[1:], {"image": image, "roi": roi,
                                                         "to_original": torch.eye(3, dtype=torch.float64)})


@pytest.mark.parametrize("roi", [(30.0, 35.0, 54.0, 62.0), (0.0, 2.0, 20.0, 19.0), (61.5, 70.2, 80.0, 90.0)])
def test_the_records_own_roi_cut_from_the_window_is_the_evaluation_sample_bit_for_bit(roi) -> None:
    image = _image()
    ours = RoiRecropd("image", PRE)(_window(image, roi))
    expected = _evaluated(image, roi)
    assert torch.equal(ours["image"], expected["image"])  # edge ROIs too: out-of-image parts are the image minimum
    assert torch.equal(ours["to_original"], expected["to_original"])


def test_another_sites_roi_is_cut_from_the_radiograph_as_evaluation_would_cut_it() -> None:
    image, roi = _image(), (30.0, 35.0, 54.0, 62.0)
    window = _window(image, roi)
    options = dataclasses.replace(RECROP, roi_follows_reframe=True)
    recrop = RandRoiRecropd("image", options, PRE)
    recrop.set_random_state(7)
    draws = np.random.RandomState(7)  # the documented draw on the same stream: what the transform did
    margins = []
    for _ in range(12):
        out = recrop(window)
        fires, margin, shift_x, shift_y, follows = draw_roi_reframe(draws, options)
        assert fires and follows
        other = grown_roi(roi, margin, (shift_x, shift_y))
        expected = _evaluated(image, other)  # a site whose localiser drew ``other``
        assert torch.equal(out["image"], expected["image"])
        # the same map, composed window-first: equal to rounding
        torch.testing.assert_close(out["to_original"], expected["to_original"], rtol=0.0, atol=1e-9)
        assert out["roi"] == other  # roi_follows_reframe: the P-stream searches the other site's box
        margins.append(margin)
    assert min(margins) < 0.0 < max(margins)
    kept = RandRoiRecropd("image", RECROP, PRE)
    kept.set_random_state(7)
    assert kept(window)["roi"] == roi  # off: the true box stays
    never = RandRoiRecropd("image", dataclasses.replace(RECROP, prob=0.0), PRE)
    assert torch.equal(never(window)["image"], _evaluated(image, roi)["image"])


def test_a_fraction_of_reframed_rois_follows_and_the_crop_is_the_same_either_way() -> None:
    image, roi = _image(), (30.0, 35.0, 54.0, 62.0)
    window = _window(image, roi)
    options = dataclasses.replace(RECROP, roi_follows_reframe=True, roi_follows_prob=0.5)
    part = RandRoiRecropd("image", options, PRE)
    part.set_random_state(3)
    draws = np.random.RandomState(3)
    followed = 0
    for _ in range(200):
        out = part(window)
        fires, margin, shift_x, shift_y, follows = draw_roi_reframe(draws, options)
        other = grown_roi(roi, margin, (shift_x, shift_y))
        assert torch.equal(out["image"], _evaluated(image, other)["image"])  # the crop is another site's either way
        assert out["roi"] == (other if follows else roi)
        followed += follows
    assert 70 < followed < 130  # binomial(200, 0.5): outside this range with probability ~1e-4
    # a fraction of 1 draws nothing more: the whole-stream setting keeps its random stream
    whole, all_follow = (RandRoiRecropd("image", dataclasses.replace(RECROP, roi_follows_reframe=flag), PRE)
                         for flag in (False, True))
    whole.set_random_state(5)
    all_follow.set_random_state(5)
    for _ in range(5):
        assert torch.equal(whole(window)["image"], all_follow(window)["image"])
    with pytest.raises(ValueError, match="roi_follows_prob"):
        dataclasses.replace(RECROP, roi_follows_prob=1.5)


@pytest.mark.parametrize("roi", [(10.0, 10.0, 40.0, 22.0), (10.0, 10.0, 22.0, 40.0), (10.0, 10.0, 30.0, 30.0)])
def test_the_window_holds_the_crop_of_every_roi_that_can_be_drawn(roi) -> None:
    window = roi_crop_box(roi, window_margin(PRE.roi_margin, RECROP), 200, 200)
    for margin in RECROP.roi_margin:
        for shift in ((-0.06, -0.06), (0.06, 0.06), (-0.06, 0.06)):
            x0, y0, x1, y1 = roi_crop_box(grown_roi(roi, margin, shift), PRE.roi_margin, 200, 200)
            assert window[0] <= x0 and window[1] <= y0 and x1 <= window[2] and y1 <= window[3]


def test_grown_roi_never_inverts_and_moves_by_the_larger_side() -> None:
    assert grown_roi((0.0, 0.0, 20.0, 10.0), 0.1, (0.5, 0.0)) == pytest.approx((8.0, -2.0, 32.0, 12.0))
    x0, y0, x1, y1 = grown_roi((0.0, 0.0, 40.0, 8.0), -0.5, (0.0, 0.0))
    assert x1 - x0 == pytest.approx(20.0) and y1 - y0 == pytest.approx(4.0)  # half of each side at most


def test_training_dataset_caches_windows_and_hands_out_finished_seeded_samples(small_cohort: Path) -> None:
    manifest = load_manifest(small_cohort / "manifest.csv")
    records = records_from_table(manifest.table, manifest.class_names)[:5]
    aug = AugmentConfig(prob=0.0)
    train = build_dataset(records, PRE, aug=aug, seed=3, acquisition=RECROP, cache="memory", num_workers=1)
    evaluation = build_dataset(records, PRE, aug=None)
    assert train.base[0]["image"].shape[-1] > PRE.input_size  # the cache holds the window, at original pixels
    plain = train.without_augmentation()  # e.g. the filter bank's initialisation
    for i in range(len(records)):
        assert torch.equal(plain[i]["image"], evaluation[i]["image"])
        assert torch.equal(plain[i]["roi_input"], evaluation[i]["roi_input"])
    first = [train[i]["image"] for i in range(len(records))]
    again = build_dataset(records, PRE, aug=aug, seed=3, acquisition=RECROP)
    assert all(torch.equal(a, again[i]["image"]) for i, a in enumerate(first))
    train.set_epoch(1)
    assert not all(torch.equal(a, train[i]["image"]) for i, a in enumerate(first))
    assert all(train[i]["image"].shape == (1, PRE.input_size, PRE.input_size) for i in range(len(records)))


def test_windows_and_finished_crops_never_share_a_disk_cache_entry() -> None:
    item = {"image": "/no/such/file.dcm", "roi": (1.0, 2.0, 3.0, 4.0)}
    assert SampleCacheKey(PRE)(item) != SampleCacheKey(PRE, window_margin(0.2, RECROP))(item)
    assert SampleCacheKey(PRE)(item) == SampleCacheKey(PRE, None)(item)
