"""Filter-bank initialisation: energy, NMS peaks, torch k-means, reservoir sampling, init_filter_bank."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from spine_dfl.model import DFLNet, energy_map, init_filter_bank, peak_locations
from spine_dfl.model.kmeans import kmeans
from spine_dfl.model import filter_init
from spine_dfl.model.filter_init import ReservoirSampler

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    area = (a[2] - a[0]) * (a[3] - a[1])
    return inter / (2 * area - inter)


def _box(row: int, col: int, stride: int, rf: int, offset: float) -> tuple[float, ...]:
    cx, cy = offset + stride * col, offset + stride * row
    return (cx - rf / 2, cy - rf / 2, cx + rf / 2, cy + rf / 2)


def _greedy_nms_reference(energy: np.ndarray, stride: int, rf: int, offset: float, iou: float, top: int) -> list:
    """Plain-Python greedy NMS of one (H, W) energy map -> [(row, col), ...] by decreasing energy."""
    height, width = energy.shape
    order = sorted(itertools.product(range(height), range(width)), key=lambda rc: -energy[rc])
    kept: list[tuple[int, int]] = []
    for row, col in order:
        box = _box(row, col, stride, rf, offset)
        if all(_iou(box, _box(r, c, stride, rf, offset)) <= iou for r, c in kept):
            kept.append((row, col))
    return kept[:top]


def test_energy_map_is_channel_l2_norm() -> None:
    features = torch.randn(2, 5, 3, 4)
    expected = np.sqrt((features.numpy() ** 2).sum(axis=1))
    np.testing.assert_allclose(energy_map(features).numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize(("stride", "rf", "offset", "iou"), [(16, 211, 0.5, 0.3), (8, 92, 4.0, 0.3), (8, 92, 4.0, 0.5)])
def test_peak_locations_match_greedy_nms(stride: int, rf: int, offset: float, iou: float) -> None:
    generator = torch.Generator().manual_seed(3)
    energy = torch.rand(3, 9, 13, generator=generator)  # distinct values: no ties
    top = 4
    peaks = peak_locations(energy, stride, rf, offset, peaks_per_image=top, nms_iou=iou)
    for image in range(3):
        mine = peaks.image_index == image
        got = list(zip(peaks.row[mine].tolist(), peaks.col[mine].tolist()))
        assert got == _greedy_nms_reference(energy[image].numpy(), stride, rf, offset, iou, top)
        assert torch.equal(peaks.score[mine], energy[image][peaks.row[mine], peaks.col[mine]])
        boxes = [_box(r, c, stride, rf, offset) for r, c in got]
        assert all(_iou(a, b) <= iou for a, b in itertools.combinations(boxes, 2))
    assert torch.equal(peaks.image_index, torch.sort(peaks.image_index, stable=True).values)


def test_kmeans_inertia_within_two_percent_of_sklearn_on_blobs() -> None:
    points, _ = make_blobs(n_samples=3000, centers=12, n_features=16, cluster_std=2.0, random_state=0)
    ours = kmeans(torch.from_numpy(points).float(), 12, iters=100, n_init=3, seed=0)
    theirs = KMeans(n_clusters=12, n_init=3, random_state=0).fit(points)
    assert ours.inertia <= theirs.inertia_ * 1.02
    # the returned inertia is the true one of the returned centres and assignments
    recomputed = ((points - ours.centres.double().numpy()[ours.assignments.numpy()]) ** 2).sum()
    assert ours.inertia == pytest.approx(recomputed, rel=1e-5)


def test_kmeans_is_deterministic_and_a_lloyd_fixed_point() -> None:
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(1)) * 3
    first = kmeans(x, 5, iters=300, n_init=2, seed=7, tol=0.0)
    second = kmeans(x, 5, iters=300, n_init=2, seed=7, tol=0.0)
    assert torch.equal(first.centres, second.centres) and torch.equal(first.assignments, second.assignments)
    assert torch.equal(torch.cdist(x, first.centres).argmin(dim=1), first.assignments)
    for cluster in range(5):
        members = x[first.assignments == cluster]
        assert len(members) > 0
        assert torch.allclose(members.mean(dim=0), first.centres[cluster], atol=1e-4)


def test_kmeans_reseeds_empty_clusters_and_handles_duplicates() -> None:
    # Two distinct points, 50 copies each, 4 clusters: seeding must pick coinciding centres, whose
    # clusters come out empty and are re-seeded; the result stays finite and exact.
    x = torch.cat((torch.zeros(50, 2), torch.full((50, 2), 10.0)))
    result = kmeans(x, 4, iters=20, n_init=2, seed=0)
    assert torch.isfinite(result.centres).all()
    assert result.inertia == pytest.approx(0.0, abs=1e-6)
    assert torch.equal(result.centres[result.assignments], x)
    with pytest.raises(ValueError):
        kmeans(torch.randn(3, 2), 4)


def test_reservoir_equals_sequential_algorithm_r() -> None:
    capacity, total = 20, 500
    stream = torch.arange(total, dtype=torch.float32)[:, None]
    sampler = ReservoirSampler(capacity, torch.Generator().manual_seed(5))
    start = 0
    for chunk in itertools.cycle([1, 7, 33, 2, 60]):
        if start >= total:
            break
        sampler.add(stream[start : start + chunk])
        start += chunk

    # Algorithm R one row at a time, consuming the same random draws.
    draws = torch.rand(total - capacity, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    reference = list(range(capacity))
    for t in range(capacity, total):
        slot = math.floor(float(draws[t - capacity]) * (t + 1))
        if slot < capacity:
            reference[slot] = t
    assert sampler.seen == total
    assert sampler.sample[:, 0].long().tolist() == reference


def test_reservoir_sample_is_uniform() -> None:
    capacity, total, trials = 100, 1000, 300
    included = torch.zeros(total)
    for trial in range(trials):
        sampler = ReservoirSampler(capacity, torch.Generator().manual_seed(trial))
        for start in range(0, total, 37):
            sampler.add(torch.arange(start, min(start + 37, total))[:, None])
        rows = sampler.sample[:, 0]
        assert len(rows) == capacity and len(rows.unique()) == capacity
        included[rows] += 1
    # each row is kept with probability 0.1; per block of 100 rows the mean is ~0.1 +- 0.002
    block_rates = (included / trials).view(10, 100).mean(dim=1)
    assert torch.all((block_rates - 0.1).abs() < 0.015), block_rates


def _synthetic_batches(num_batches: int, batch: int, size: int, num_classes: int, seed: int) -> list:
    """Noise images with a bright class-dependent bar, labels cycling over the classes."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for index in range(num_batches):
        images = 0.2 * torch.rand(batch, 1, size, size, generator=generator)
        labels = (torch.arange(batch) + index) % num_classes
        for image, label in zip(images, labels.tolist()):
            top = int(torch.randint(0, size - 24, (1,), generator=generator))
            image[0, top : top + 12 + 6 * label, 10 : size - 10] += 0.8
        batches.append((images, labels))
    return batches


def _peak_features(model: DFLNet, batches: list, num_classes: int, device: torch.device) -> list[torch.Tensor]:
    """Independent recomputation: trunk features at the NMS peaks, per class, in stream order."""
    per_class: list[list[torch.Tensor]] = [[] for _ in range(num_classes)]
    model.eval()
    with torch.no_grad():
        for images, labels in batches:
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                features = model.trunk_features(images.to(device))
            features = features.float()
            energy = features.pow(2).sum(dim=1).sqrt()
            peaks = peak_locations(energy, model.stride, model.receptive_field, model.rf_center_offset, 3, 0.3)
            for image, row, col in zip(peaks.image_index.tolist(), peaks.row.tolist(), peaks.col.tolist()):
                per_class[int(labels[image])].append(features[image, :, row, col])
    return [torch.stack(vectors) for vectors in per_class]


@pytest.fixture
def reservoirs(monkeypatch) -> list:
    """The init's per-class reservoir samplers, in class order (the sampled peak vectors are in them)."""
    made = []

    class RecordingSampler(filter_init.ReservoirSampler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(filter_init, "ReservoirSampler", RecordingSampler)
    return made


@pytest.mark.parametrize("device", DEVICES)
def test_filter_bank_equals_kmeans_centres_of_peak_features(device: str, reservoirs: list) -> None:
    device = torch.device(device)
    num_classes, k = 3, 4
    model = DFLNet("resnet18", num_classes, filters_per_class=k).to(device).train()
    model.trunk.bn1.eval()  # a caller's frozen BatchNorm must stay in eval mode afterwards
    batches = _synthetic_batches(num_batches=4, batch=6, size=128, num_classes=num_classes, seed=0)

    report = init_filter_bank(model, batches, peaks_per_image=3, nms_iou=0.3, kmeans_iters=50, n_init=3, seed=11)

    assert model.training and not model.trunk.bn1.training and model.trunk.layer1.training
    assert report.device == str(device) and report.missing_classes == [] and report.padded_classes == []
    assert report.images_per_class == [8, 8, 8]
    expected_features = _peak_features(model, batches, num_classes, device)
    for c in range(num_classes):
        vectors = expected_features[c]
        assert report.peaks_per_class[c] == report.features_per_class[c] == len(vectors)
        assert torch.allclose(reservoirs[c].sample.cpu(), vectors.cpu(), atol=1e-5)
        expected = kmeans(vectors, k, iters=50, n_init=3, seed=11 + c)
        bank = model.p_filters.weight[model.class_filter_slice(c), :, 0, 0]
        assert torch.allclose(bank, F.normalize(expected.centres, dim=1), atol=1e-5)
        assert torch.allclose(bank.norm(dim=1), torch.ones(k, device=device), atol=1e-5)
        assert report.inertia_per_class[c] == pytest.approx(expected.inertia, rel=1e-5)

    expected_classifier = torch.zeros(num_classes, num_classes * k, device=device)
    for c in range(num_classes):
        expected_classifier[c, c * k : (c + 1) * k] = 1.0 / k
    assert torch.equal(model.p_classifier.weight, expected_classifier)
    assert torch.equal(model.p_classifier.bias, torch.zeros(num_classes, device=device))
    # with this classifier the P logits start equal to the side branch
    with torch.no_grad():
        out = model.eval()(batches[0][0].to(device))
    assert torch.allclose(out.p, out.side, atol=1e-4)


def test_reservoir_cap_is_respected_and_samples_real_peaks(reservoirs: list) -> None:
    num_classes, k, cap = 2, 2, 5
    model = DFLNet("resnet18", num_classes, filters_per_class=k)
    batches = _synthetic_batches(num_batches=3, batch=8, size=128, num_classes=num_classes, seed=1)
    report = init_filter_bank(model, batches, max_features_per_class=cap, n_init=1)
    all_features = _peak_features(model, batches, num_classes, torch.device("cpu"))
    for c in range(num_classes):
        assert report.peaks_per_class[c] == len(all_features[c]) > cap
        assert report.features_per_class[c] == cap == len(reservoirs[c].sample.cpu())
        distances = torch.cdist(reservoirs[c].sample.cpu(), all_features[c])
        assert torch.all(distances.min(dim=1).values < 1e-4)  # every sampled row is one of the peaks


def test_class_with_too_few_peaks_is_padded_and_missing_class_left_alone(reservoirs: list) -> None:
    num_classes, k = 3, 6
    model = DFLNet("resnet18", num_classes, filters_per_class=k)
    images = _synthetic_batches(1, 3, 96, num_classes, seed=2)[0][0]
    labels = torch.tensor([0, 1, -1])  # class 2 has no image; -1 (unknown) is skipped
    untouched = model.p_filters.weight[model.class_filter_slice(2)].clone()
    with pytest.warns(UserWarning, match=r"\[2\]"):
        report = init_filter_bank(model, [(images, labels)], peaks_per_image=3, n_init=1)
    assert report.missing_classes == [2] and math.isnan(report.inertia_per_class[2])
    assert report.images_per_class == [1, 1, 0]
    assert torch.equal(model.p_filters.weight[model.class_filter_slice(2)], untouched)
    for c in (0, 1):
        assert report.features_per_class[c] <= 3 < k and c in report.padded_classes
        bank = model.p_filters.weight[model.class_filter_slice(c), :, 0, 0]
        peaks = F.normalize(reservoirs[c].sample.cpu(), dim=1)
        assert torch.allclose(bank.norm(dim=1), torch.ones(k), atol=1e-5)
        assert torch.all((bank @ peaks.T).amax(dim=1) > 0.999)  # every filter is (nearly) one of the peaks


def test_labels_out_of_range_are_rejected() -> None:
    model = DFLNet("resnet18", 2, filters_per_class=2)
    with pytest.raises(ValueError, match="labels"):
        init_filter_bank(model, [(torch.rand(2, 1, 64, 64), torch.tensor([0, 2]))])
