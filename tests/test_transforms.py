"""Transforms (geometry, intensity, augmentation), cached datasets and class-balanced sampling."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest
import skimage.io
import torch

import spine_dfl.io
from dicom_factory import make_gray_dicom
from spine_dfl.data.dataset import build_dataset
from spine_dfl.data.samplers import DistributedWeightedSampler, class_balanced_weights, sample_seed
from spine_dfl.data.transforms import (
    AffineResampled,
    AugmentConfig,
    Preprocessing,
    RandRadiographAffined,
    ResizePad,
    RoiCrop,
    eval_transforms,
    map_boxes_to_original,
    map_points_to_original,
    roi_crop_box,
)
from spine_dfl.heatmap import clip_boxes

FULL_RANGE = (0.0, 100.0)  # percentile window that keeps a single planted pixel the maximum


# --------------------------------------------------------------------------- helpers
def write_dicom(path: Path, pixels: np.ndarray, bits_stored: int = 16) -> Path:
    """Minimal single-frame MONOCHROME2 CR file (16-bit allocated), with a patient name and id."""
    make_gray_dicom(path, pixels, bits_stored=bits_stored, pixel_spacing=(0.2, 0.25),
                    patient_name="Doe^Jane", patient_id="PID-SECRET-123")
    return path


def write_tiff(path: Path, pixels: np.ndarray) -> Path:
    skimage.io.imsave(path, pixels.astype(np.uint16), check_contrast=False)
    return path


def textured(rows: int, cols: int, high: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, size=(rows, cols)).astype(np.uint16)


def argmax_xy(image: torch.Tensor) -> tuple[float, float]:
    """Continuous (x, y) centre of the brightest output pixel of a (1, S, S) tensor."""
    flat = int(torch.argmax(image[0]))
    row, col = divmod(flat, image.shape[-1])
    return col + 0.5, row + 0.5


def centroid_xy(image: torch.Tensor) -> tuple[float, float]:
    """Intensity-weighted continuous (x, y) centre of a (1, H, W) tensor."""
    w = image[0].double()
    rows, cols = torch.meshgrid(torch.arange(w.shape[0]) + 0.5, torch.arange(w.shape[1]) + 0.5, indexing="ij")
    return float((w * cols).sum() / w.sum()), float((w * rows).sum() / w.sum())


def to_original_xy(xy: tuple[float, float], to_original: torch.Tensor) -> tuple[float, float]:
    mapped = map_points_to_original(torch.tensor([xy], dtype=torch.float64), to_original)[0]
    return float(mapped[0]), float(mapped[1])


# --------------------------------------------------------------------------- geometry
# (rows, cols, ROI or None, planted (row, col), input size)
GEOMETRY_CASES = [
    (120, 200, (40.0, 30.0, 110.0, 60.0), (45, 80), 64),     # wide ROI, downsampled
    (200, 120, (30.0, 40.0, 60.0, 150.0), (100, 41), 64),    # tall ROI
    (100, 100, (10.5, 20.25, 33.7, 29.9), (24, 20), 96),     # fractional, very flat ROI, upsampled ~3x
    (90, 140, (-15.0, 60.0, 25.0, 110.0), (70, 3), 48),      # ROI partly outside (left, bottom)
    (90, 140, (120.0, -10.0, 150.0, 12.0), (2, 133), 48),    # ROI partly outside (right, top)
    (150, 90, None, (37, 61), 64),                           # whole image, tall, downsampled
    (60, 250, None, (11, 200), 64),                          # whole image, very wide
]


@pytest.mark.parametrize("rows, cols, roi, planted, size", GEOMETRY_CASES)
def test_planted_pixel_maps_back_to_its_original_position(tmp_path: Path, rows: int, cols: int,
                                                          roi: tuple[float, float, float, float] | None,
                                                          planted: tuple[int, int], size: int) -> None:
    pixels = np.full((rows, cols), 1000, np.uint16)
    pixels[planted] = 4000
    path = write_tiff(tmp_path / "img.tif", pixels)
    pre = Preprocessing(input_size=size, roi_margin=0.2, use_roi=True, intensity_percentiles=FULL_RANGE)
    sample = eval_transforms(pre)({"image": str(path), "roi": roi})
    assert sample["image"].shape == (1, size, size)
    x, y = to_original_xy(argmax_xy(sample["image"]), sample["to_original"])
    scale = float(sample["to_original"][0, 0])  # original pixels per tensor pixel
    # half a pixel of whichever grid is coarser (a downsampled pixel cannot locate better)
    tolerance = 0.5 * max(1.0, scale) + 1e-6
    assert abs(x - (planted[1] + 0.5)) <= tolerance and abs(y - (planted[0] + 0.5)) <= tolerance, (x, y, planted)
    # The intensity centroid (background is exactly 0) locates the pixel to a small fraction of a pixel.
    cx, cy = to_original_xy(centroid_xy(sample["image"]), sample["to_original"])
    assert abs(cx - (planted[1] + 0.5)) < 0.1 and abs(cy - (planted[0] + 0.5)) < 0.1, (cx, cy, planted)


def test_roi_crop_box_and_affine_are_exact() -> None:
    image = torch.arange(100 * 200, dtype=torch.float32).reshape(1, 100, 200)
    roi = (40.0, 30.0, 110.0, 60.0)  # 70 x 30
    assert roi_crop_box(roi, 0.1, 100, 200) == (33, 23, 117, 67)
    crop, crop_to_input = RoiCrop(margin=0.1)(image, roi)
    out, resized_to_crop = ResizePad(84, fill=float(image.min()))(crop)
    to_original = crop_to_input @ resized_to_crop
    # crop 84 x 44 -> 84 x 44 (no resize), padded 20 rows above and below
    assert out.shape == (1, 84, 84)
    assert torch.allclose(to_original, torch.tensor([[1.0, 0, 33], [0, 1, 23 - 20], [0, 0, 1]], dtype=torch.float64))
    assert torch.equal(out[0, 20:64, :], image[0, 23:67, 33:117])
    assert (out[0, :20] == image.min()).all() and (out[0, 64:] == image.min()).all()
    # the tensor's content box maps onto the crop box
    box = map_boxes_to_original(torch.tensor([[0.0, 20.0, 84.0, 64.0]]), to_original)
    assert torch.allclose(box, torch.tensor([[33.0, 23.0, 117.0, 67.0]], dtype=torch.float64))


def test_map_and_clip_boxes_numpy_and_batched() -> None:
    to_original = np.array([[2.0, 0, 10], [0, 3.0, -5], [0, 0, 1]])
    boxes = np.array([[0.0, 0.0, 4.0, 4.0], [1.0, 2.0, 3.0, 5.0]])
    mapped = map_boxes_to_original(boxes, to_original)
    assert isinstance(mapped, np.ndarray)
    np.testing.assert_allclose(mapped, [[10, -5, 18, 7], [12, 1, 16, 10]])
    np.testing.assert_allclose(clip_boxes(mapped, (8, 15)), [[10, 0, 15, 7], [12, 1, 15, 8]])
    batched = map_boxes_to_original(torch.tensor(boxes)[None].repeat(2, 1, 1), torch.tensor(to_original)[None].repeat(2, 1, 1))
    assert batched.shape == (2, 2, 4) and torch.allclose(batched[1], torch.tensor(mapped))


def test_out_of_image_parts_are_the_normalised_minimum(tmp_path: Path) -> None:
    pixels = textured(80, 80, 4096, seed=1) + 100
    path = write_tiff(tmp_path / "img.tif", pixels)
    pre = Preprocessing(input_size=40, roi_margin=0.0)
    sample = eval_transforms(pre)({"image": str(path), "roi": (-40.0, 0.0, 40.0, 80.0)})  # left half outside
    assert torch.all(sample["image"][0, :, :19] == 0.0)
    assert float(sample["image"][0, :, 21:].mean()) > 0.3  # the image half keeps its content


# --------------------------------------------------------------------------- sample content
def test_dicom_sample_fields_and_minimal_meta(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "x.dcm", textured(70, 50, 4096), bits_stored=12)
    sample = eval_transforms(Preprocessing(input_size=32))({"image": str(path), "roi": (5.0, 10.0, 30.0, 40.0), "label": 2, "row": 7})
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (1, 32, 32)
    assert type(sample["image"]) is torch.Tensor  # plain tensor: caches and collates cleanly
    assert sample["to_original"].dtype == torch.float64 and sample["to_original"].shape == (3, 3)
    assert torch.allclose(sample["spacing_mm"], torch.tensor([0.2, 0.25], dtype=torch.float64))
    assert sample["label"] == 2 and sample["row"] == 7 and sample["roi"] == (5.0, 10.0, 30.0, 40.0)
    meta = sample["meta"]
    assert meta["modality"] == "CR" and meta["rows"] == 70 and meta["cols"] == 50 and meta["sop_instance_uid"]
    assert not any("Doe" in str(v) or "SECRET" in str(v) for v in meta.values())
    assert not any("patient" in k.lower() for k in meta)


@pytest.mark.parametrize("bits", [12, 16])
def test_percentile_normalisation_maps_high_bit_depths_to_unit_range(tmp_path: Path, bits: int) -> None:
    high = 2**bits
    pixels = textured(64, 64, high, seed=bits)
    pixels[:8, :8] = high - 1
    path = write_dicom(tmp_path / f"x{bits}.dcm", pixels, bits_stored=bits)
    image = eval_transforms(Preprocessing(input_size=64, use_roi=False))({"image": str(path), "roi": None})["image"]
    assert float(image.min()) == 0.0 and float(image.max()) == 1.0
    assert 0.3 < float(image.mean()) < 0.7  # a uniform texture stays mid-grey: the window follows the data


def test_eval_is_deterministic(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "img.tif", textured(90, 120, 4096))
    pre = Preprocessing(input_size=48)
    item = {"image": str(path), "roi": (20.0, 20.0, 80.0, 60.0)}
    a, b = eval_transforms(pre)(dict(item)), eval_transforms(pre)(dict(item))
    assert a["image"].shape == (1, 48, 48)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["to_original"], b["to_original"])


@pytest.mark.parametrize("angle, zoom, shift", [(5.0, 1.08, (2.0, -3.0)), (-4.0, 0.93, (-1.5, 2.5)), (0.0, 1.0, (0.0, 0.0))])
def test_random_affine_keeps_to_original_exact(angle: float, zoom: float, shift: tuple[float, float]) -> None:
    image = torch.zeros(1, 64, 64)
    image[0, 20:23, 40:43] = 1.0  # 3x3 square centred at (41.5, 21.5)
    to_original = torch.tensor([[2.0, 0, 100], [0, 2.0, 50], [0, 0, 1]], dtype=torch.float64)
    out = AffineResampled("image", angle, zoom, shift)({"image": image, "to_original": to_original})
    x, y = to_original_xy(argmax_xy(out["image"]), out["to_original"])
    # within one tensor pixel (2 original pixels here): rotation spreads the square over a new grid
    assert abs(x - (100 + 2 * 41.5)) <= 2.0 and abs(y - (50 + 2 * 21.5)) <= 2.0
    # the centre of mass maps back far more precisely
    x, y = to_original_xy(centroid_xy(out["image"]), out["to_original"])
    assert abs(x - 183.0) < 0.3 and abs(y - 93.0) < 0.3


def test_random_affine_probability_zero_is_identity() -> None:
    t = RandRadiographAffined("image", prob=0.0)
    t.set_random_state(0)
    image = torch.rand(1, 16, 16)
    out = t({"image": image, "to_original": torch.eye(3, dtype=torch.float64)})
    assert torch.equal(out["image"], image) and torch.equal(out["to_original"], torch.eye(3, dtype=torch.float64))


# --------------------------------------------------------------------------- datasets and caching
class CountingReader:
    """Wraps the real spine_dfl.io.read_image and counts calls per path (thread-safe)."""

    def __init__(self) -> None:
        self.real = spine_dfl.io.read_image
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, path: object) -> object:
        with self.lock:
            self.calls.append(str(path))
        return self.real(path)


def make_records(tmp_path: Path, n_images: int = 3, per_image: int = 2) -> list[dict[str, object]]:
    records = []
    tmp_path.mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        path = write_dicom(tmp_path / f"img{i}.dcm", textured(60, 80, 4096, seed=i))
        for j in range(per_image):
            records.append({"index": len(records), "image": str(path), "roi": (10.0 + 20 * j, 10.0, 30.0 + 20 * j, 40.0),
                            "label": (i + j) % 2, "label_name": "", "vertebra": f"L{j + 1}", "patient_id": f"P{i}", "row": len(records) + 1})
    return records


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_cache_avoids_decoding_after_the_first_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: str) -> None:
    records = make_records(tmp_path / "images")
    counter = CountingReader()
    monkeypatch.setattr(spine_dfl.io, "read_image", counter)
    pre, aug = Preprocessing(input_size=32), AugmentConfig(prob=1.0)
    cache_dir = tmp_path / "cache"
    dataset = build_dataset(records, pre, aug=aug, cache=cache, cache_dir=cache_dir, seed=1, lru_size=0)
    first = [dataset[i] for i in range(len(dataset))]
    assert len(counter.calls) == len(records)  # lru_size=0: one decode per sample, once
    dataset.set_epoch(1)
    second = [dataset[i] for i in range(len(dataset))]
    assert len(counter.calls) == len(records)  # epoch 2: nothing decoded
    assert not torch.equal(first[0]["image"], second[0]["image"])  # but augmented afresh
    assert first[3]["label"] == records[3]["label"] and first[3]["index"] == 3 and first[3]["patient_id"] == "P1"
    if cache == "disk":
        assert len(list(cache_dir.glob("*.pt"))) == len(records)
        again = build_dataset(records, pre, aug=aug, cache="disk", cache_dir=cache_dir, seed=1, lru_size=0)
        again.set_epoch(1)
        third = [again[i] for i in range(len(again))]
        assert len(counter.calls) == len(records)  # a new run reuses the files
        assert all(torch.equal(a["image"], b["image"]) for a, b in zip(second, third))
        # another preprocessing never reuses those files
        build_dataset(records, Preprocessing(input_size=24), cache="disk", cache_dir=cache_dir)[0]
        assert len(counter.calls) == len(records) + 1


def test_uncached_dataset_decodes_every_epoch_and_matches_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = make_records(tmp_path / "images")
    counter = CountingReader()
    monkeypatch.setattr(spine_dfl.io, "read_image", counter)
    pre = Preprocessing(input_size=32)
    plain = build_dataset(records, pre, cache="none", lru_size=0)
    samples = [plain[i] for i in range(len(plain))] + [plain[i] for i in range(len(plain))]
    assert len(counter.calls) == 2 * len(records)
    cached = build_dataset(records, pre, cache="memory")
    for i in range(len(records)):
        assert torch.equal(samples[i]["image"], cached[i]["image"])
        assert torch.equal(samples[i]["to_original"], cached[i]["to_original"])
    # the default LRU decodes each image once for its consecutive rows
    counter.calls.clear()
    lru = build_dataset(records, pre, cache="none")
    _ = [lru[i] for i in range(len(lru))]
    assert len(counter.calls) == 3
    # a caller modifying a sample must not change the cache
    item = cached[0]
    item["image"].fill_(7.0)
    assert float(cached[0]["image"].max()) <= 1.0


def test_augmentation_depends_on_seed_epoch_and_index_only(tmp_path: Path) -> None:
    records = make_records(tmp_path / "images", n_images=2)
    pre, aug = Preprocessing(input_size=32), AugmentConfig(prob=1.0)
    a = build_dataset(records, pre, aug=aug, cache="memory", seed=3)
    b = build_dataset(records, pre, aug=aug, cache="none", seed=3)
    forward = [a[i]["image"] for i in range(len(a))]
    backward = [b[i]["image"] for i in reversed(range(len(b)))][::-1]  # other order, other cache mode
    assert all(torch.equal(x, y) for x, y in zip(forward, backward))
    a.set_epoch(2)
    assert not torch.equal(a[0]["image"], forward[0])
    assert sample_seed(3, 2, 0) != sample_seed(3, 0, 2)


def test_unreadable_image_error_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not an image")
    with pytest.raises(Exception) as info:
        eval_transforms(Preprocessing())({"image": str(bad), "roi": None})
    chain, exc = [], info.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__
    assert any(isinstance(e, spine_dfl.io.ImageReadError) and "bad.dcm" in str(e) for e in chain)


# --------------------------------------------------------------------------- balanced sampling
def test_class_balanced_weights() -> None:
    labels = np.array([0] * 90 + [1] * 8 + [2] * 2 + [-1] * 5)
    w = class_balanced_weights(labels, mode="class")
    assert w.dtype == torch.float64 and w.shape == (105,)
    mass = [float(w[labels == c].sum()) for c in range(3)]
    assert np.allclose(mass, mass[0]) and float(w[labels == -1].sum()) == 0.0
    assert math.isclose(float(w.sum()), 100.0)
    uniform = class_balanced_weights(labels, mode="none")
    assert torch.equal(uniform[:100], torch.ones(100, dtype=torch.float64))

    levels = ["L1"] * 80 + ["L2"] * 10 + ["L1"] * 6 + ["L2"] * 2 + ["L1"] * 2 + ["L1"] * 5
    wv = class_balanced_weights(labels, levels, mode="vertebra_class")
    mass = [float(wv[labels == c].sum()) for c in range(3)]
    assert np.allclose(mass, mass[0])  # classes still balanced
    in_class0 = labels == 0
    l1 = np.array(levels) == "L1"
    assert math.isclose(float(wv[in_class0 & l1].sum()), float(wv[in_class0 & ~l1].sum()))  # levels within a class
    with pytest.raises(ValueError):
        class_balanced_weights(labels, mode="vertebra_class")
    with pytest.raises(ValueError):
        class_balanced_weights([-1, -1])


def test_distributed_sampler_shards_are_one_global_draw() -> None:
    labels = np.array([0] * 300 + [1] * 30 + [2] * 6)
    weights = class_balanced_weights(labels)
    single = DistributedWeightedSampler(weights, num_samples=336, rank=0, world_size=1, seed=7)
    for epoch in (0, 3):
        single.set_epoch(epoch)
        whole = list(single)
        for world in (2, 3, 4):
            shards = []
            for rank in range(world):
                s = DistributedWeightedSampler(weights, num_samples=336, rank=rank, world_size=world, seed=7)
                s.set_epoch(epoch)
                assert len(s) == 336 // world
                shards.append(list(s))
            assert sum(shards, []) == whole
            assert not set(range(world)) - {r for r in range(world) if shards[r]}
    single.set_epoch(0)
    e0 = list(single)
    single.set_epoch(1)
    assert list(single) != e0
    assert list(DistributedWeightedSampler(weights, 336, seed=8)) != e0


def test_distributed_sampler_uneven_size_and_balance() -> None:
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    weights = class_balanced_weights(labels)
    sizes = [len(DistributedWeightedSampler(weights, num_samples=1001, rank=r, world_size=4)) for r in range(4)]
    assert sizes == [251] * 4  # every rank the same number of steps
    draws = []
    for epoch in range(10):
        s = DistributedWeightedSampler(weights, num_samples=3000, rank=0, world_size=1, seed=0)
        s.set_epoch(epoch)
        draws += list(s)
    freq = np.bincount(labels[draws], minlength=3) / len(draws)
    assert np.all(np.abs(freq - 1 / 3) < 0.02), freq  # 30k draws: sd ~0.003
    with pytest.raises(ValueError):
        DistributedWeightedSampler(weights, rank=2, world_size=2)
    with pytest.raises(ValueError):
        DistributedWeightedSampler(torch.zeros(3))


def test_without_augmentation_shares_the_cache_and_is_deterministic(tmp_path, monkeypatch) -> None:
    records = make_records(tmp_path, n_images=2, per_image=2)
    pre = Preprocessing(input_size=32)
    reference = build_dataset(records, pre, aug=None, cache="none")
    expected = [reference[i]["image"] for i in range(len(records))]
    train_set = build_dataset(records, pre, aug=AugmentConfig(prob=1.0), cache="memory", seed=3)

    counter = CountingReader()  # from here on, any decode would be counted
    monkeypatch.setattr(spine_dfl.io, "read_image", counter)
    plain = train_set.without_augmentation()
    for i in range(len(records)):
        assert torch.equal(plain[i]["image"], expected[i])
    assert counter.calls == []
    assert not torch.equal(train_set[0]["image"], plain[0]["image"])  # the training view stays augmented
