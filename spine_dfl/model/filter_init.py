"""Non-random initialisation of the DFL filter bank (Wang et al., CVPR 2018, Sec. 3.3), in torch.

For the training images of each class: conv4 features -> energy map (L2 norm over channels at each
location) -> non-maximum suppression of the energy with receptive-field boxes -> the top peaks' feature
vectors -> k-means into k centres -> the centres, L2-normalised, become that class's k 1x1 filters.

Everything runs on the model's device (CUDA when the model is there, with AMP). Images are streamed
batch by batch and only a bounded reservoir sample of peak vectors per class is kept, so a large cohort
never has to fit in memory.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms

from .dfl import DFLNet, location_boxes

__all__ = [
    "FilterInitReport",
    "KMeansResult",
    "Peaks",
    "ReservoirSampler",
    "energy_map",
    "init_filter_bank",
    "kmeans",
    "peak_locations",
]


class Peaks(NamedTuple):
    """N feature-map locations, grouped by image and, within an image, by decreasing energy."""

    image_index: Tensor  # (N,) long, index of the image in the batch
    row: Tensor  # (N,) long
    col: Tensor  # (N,) long
    score: Tensor  # (N,) float32 energy at the location


class KMeansResult(NamedTuple):
    centres: Tensor  # (k, C) float32
    assignments: Tensor  # (N,) long, index of each point's nearest centre
    inertia: float  # sum over points of the squared distance to the nearest centre


def energy_map(features: Tensor) -> Tensor:
    """(B, C, H, W) features -> (B, H, W) float32 energy: the L2 norm over channels at each location."""
    return torch.linalg.vector_norm(features.float(), dim=1)


def peak_locations(
    energy: Tensor,
    stride: int,
    receptive_field: int,
    rf_center_offset: float,
    peaks_per_image: int = 3,
    nms_iou: float = 0.3,
) -> Peaks:
    """Top energy peaks of every image whose receptive fields overlap by at most `nms_iou`.

    energy: (B, H, W). Every location is a receptive_field-sized box in input pixels (see
    DFLNet.peak_boxes) scored by its energy; greedy NMS (torchvision batched_nms, the image index as the
    group) removes every box whose IoU with a higher-energy kept box of the same image exceeds
    `nms_iou`; the `peaks_per_image` highest survivors of each image are returned (fewer when NMS leaves
    fewer, e.g. on a small map with a large receptive field).
    """
    batch, height, width = energy.shape
    rows = torch.arange(height, device=energy.device).repeat_interleave(width)
    cols = torch.arange(width, device=energy.device).repeat(height)
    boxes = location_boxes(rows, cols, stride, receptive_field, rf_center_offset).repeat(batch, 1)
    image_of_box = torch.arange(batch, device=energy.device).repeat_interleave(height * width)
    keep = batched_nms(boxes, energy.reshape(-1).float(), image_of_box, nms_iou)  # by decreasing energy

    # Group the survivors by image (stable sort keeps the energy order inside each image) and keep the
    # first peaks_per_image of each group.
    keep = keep[torch.argsort(image_of_box[keep], stable=True)]
    image = image_of_box[keep]
    counts = torch.bincount(image, minlength=batch)
    group_start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(keep), device=energy.device) - group_start[image]
    keep = keep[rank < peaks_per_image]

    location = keep % (height * width)
    row = torch.div(location, width, rounding_mode="floor")
    return Peaks(
        image_index=image_of_box[keep],
        row=row,
        col=location - row * width,
        score=energy.reshape(-1)[keep].float(),
    )


def kmeans(
    x: Tensor,
    k: int,
    iters: int = 100,
    n_init: int = 3,
    seed: int = 0,
    generator: torch.Generator | None = None,
    tol: float = 1e-4,
) -> KMeansResult:
    """k-means of the rows of x (N, C), on x's device; the best of `n_init` runs (lowest inertia).

    Greedy k-means++ seeding (2 + log k candidates per step, as scikit-learn) and Lloyd iterations,
    all `n_init` runs batched in one set of tensor operations. A run stops when its centres move less
    than tol * mean per-feature variance (scikit-learn's criterion) or after `iters` iterations. An
    empty cluster is re-seeded with the point farthest from its current centre. Deterministic for a
    given seed (or generator, which must live on x's device). Computed in float32 on centred data.
    """
    if x.ndim != 2 or len(x) < k:
        raise ValueError(f"kmeans needs a (N, C) tensor with N >= k={k}, got shape {tuple(x.shape)}")
    if generator is None:
        generator = torch.Generator(device=x.device).manual_seed(seed)
    data = x.float()
    data_mean = data.mean(dim=0)
    data = data - data_mean  # centring keeps |x|^2 - 2x.c + |c|^2 accurate in float32
    tol_abs = tol * data.var(dim=0, unbiased=False).mean()

    points_sq = data.pow(2).sum(dim=1)  # (N,)
    centres = _kmeans_plus_plus(data, points_sq, k, n_init, generator)  # (R, k, C)
    for _ in range(iters):
        nearest, assignments = _nearest_centres(data, points_sq, centres)
        new_centres = _cluster_means(data, assignments, centres, nearest)
        shift = (new_centres - centres).pow(2).sum(dim=(1, 2))
        centres = new_centres
        if bool((shift <= tol_abs).all()):
            break

    # Final assignment step, so that assignments and inertia belong to the returned centres.
    nearest, assignments = _nearest_centres(data, points_sq, centres)
    best = int(nearest.sum(dim=1).argmin())
    centres, assignments = centres[best], assignments[best].contiguous()
    inertia = float((data - centres[assignments]).double().pow(2).sum())
    return KMeansResult(centres=centres + data_mean, assignments=assignments, inertia=inertia)


def _nearest_centres(data: Tensor, points_sq: Tensor, centres: Tensor) -> tuple[Tensor, Tensor]:
    """(N, C) points, their (N,) squared norms, (R, k, C) centres -> (R, N) squared distance to the
    nearest centre of each run and (R, N) its index. One (N, C) x (C, R*k) matrix product."""
    runs, k, channels = centres.shape
    flat_centres = centres.reshape(runs * k, channels)
    distances = torch.addmm(
        points_sq[:, None] + flat_centres.pow(2).sum(dim=1)[None], data, flat_centres.T, alpha=-2.0
    )  # (N, R*k): |x|^2 + |c|^2 - 2 x.c
    nearest, assignments = distances.view(-1, runs, k).min(dim=2)
    return nearest.clamp_min_(0).T, assignments.T


def _kmeans_plus_plus(data: Tensor, points_sq: Tensor, k: int, runs: int, generator: torch.Generator) -> Tensor:
    """Greedy k-means++ seeding for `runs` independent runs at once -> (runs, k, C)."""
    num_points = len(data)
    trials = 2 + int(math.log(k))
    run_index = torch.arange(runs, device=data.device)

    first = torch.randint(num_points, (runs,), generator=generator, device=data.device)
    centres = data.new_empty(runs, k, data.shape[1])
    centres[:, 0] = data[first]
    closest = (points_sq[None] + points_sq[first][:, None] - 2 * data[first] @ data.T).clamp_min_(0)  # (R, N)
    for i in range(1, k):
        # Sample candidates with probability proportional to D^2 (uniform when every point coincides
        # with a centre) and keep the one that lowers the potential most.
        weights = closest + (closest.sum(dim=1, keepdim=True) <= 0).to(closest.dtype)
        candidates = torch.multinomial(weights, trials, replacement=True, generator=generator)  # (R, T)
        candidate_vectors = data[candidates]  # (R, T, C)
        to_candidates = torch.addmm(
            points_sq[None] + points_sq[candidates].reshape(-1, 1), candidate_vectors.reshape(-1, data.shape[1]), data.T, alpha=-2.0
        ).clamp_min_(0).view(runs, trials, num_points)  # (R, T, N), one (R*T, C) x (C, N) product
        closest_if_chosen = torch.minimum(closest[:, None], to_candidates)
        best = closest_if_chosen.sum(dim=2).argmin(dim=1)  # (R,)
        closest = closest_if_chosen[run_index, best]
        centres[:, i] = candidate_vectors[run_index, best]
    return centres


# Above this many one-hot entries (R*k*N floats, 256 MiB) the cluster sums use index_add_ instead.
_ONE_HOT_LIMIT = 1 << 26


def _cluster_means(data: Tensor, assignments: Tensor, centres: Tensor, nearest: Tensor) -> Tensor:
    """Lloyd update for every run: (R, k, C) means of the assigned points; empty clusters re-seeded
    with the points farthest from their centres."""
    runs, k, channels = centres.shape
    cluster = assignments + torch.arange(runs, device=data.device)[:, None] * k  # (R, N) in 0..R*k-1
    if runs * k * len(data) <= _ONE_HOT_LIMIT:
        # A one-hot matrix product: one GEMM, much faster than index_add_ on CPU.
        one_hot = data.new_zeros(runs * k, len(data)).scatter_(0, cluster, 1.0)
        sums = (one_hot @ data).view(runs, k, channels)
    else:
        sums = data.new_zeros(runs, k, channels)
        for run in range(runs):
            sums[run].index_add_(0, assignments[run], data)
    counts = torch.bincount(cluster.reshape(-1), minlength=runs * k).view(runs, k)
    means = sums / counts.clamp_min(1)[..., None].to(data.dtype)
    empty = counts == 0
    if bool(empty.any()):
        for run in torch.nonzero(empty.any(dim=1)).flatten().tolist():
            empty_clusters = torch.nonzero(empty[run]).flatten()
            farthest = torch.topk(nearest[run], len(empty_clusters)).indices
            means[run, empty_clusters] = data[farthest]
    return means


class ReservoirSampler:
    """Uniform sample of at most `capacity` rows from a stream of (n, C) chunks (Algorithm R, vectorised).

    Each row of the stream ends up in the sample with probability capacity / rows seen. Within a chunk,
    several rows may draw the same slot; sequential Algorithm R keeps the last of them, and so does this.
    """

    def __init__(self, capacity: int, generator: torch.Generator) -> None:
        if capacity < 1:
            raise ValueError(f"reservoir capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.generator = generator
        self.seen = 0
        self.sample: Tensor | None = None  # (min(seen, capacity), C)

    def add(self, rows: Tensor) -> None:
        """Offer (n, C) rows (same device as the generator)."""
        if len(rows) == 0:
            return
        stored = 0 if self.sample is None else len(self.sample)
        fill = min(self.capacity - stored, len(rows))
        if fill > 0:
            self.sample = rows[:fill].clone() if self.sample is None else torch.cat((self.sample, rows[:fill]))
        rest = rows[fill:]
        if len(rest):
            # Row with 0-based stream index t replaces slot j ~ U{0..t} when j < capacity.
            index = self.seen + fill + torch.arange(len(rest), device=rows.device, dtype=torch.float64)
            draw = torch.rand(len(rest), generator=self.generator, device=rows.device, dtype=torch.float64)
            slot = torch.floor(draw * (index + 1)).long()
            accepted = torch.nonzero(slot < self.capacity).flatten()
            slot = slot[accepted]
            last = torch.full((self.capacity,), -1, dtype=torch.long, device=rows.device)
            last.scatter_reduce_(0, slot, torch.arange(len(slot), device=rows.device), reduce="amax")
            winners = last[last >= 0]
            self.sample[slot[winners]] = rest[accepted[winners]]
        self.seen += len(rows)


@dataclass
class FilterInitReport:
    """What init_filter_bank did. Lists are indexed by class."""

    images_per_class: list[int]
    peaks_per_class: list[int]  # peak vectors seen (before sampling)
    features_per_class: list[int]  # peak vectors clustered (reservoir sample, <= max_features_per_class)
    inertia_per_class: list[float]  # k-means inertia; NaN for a class without images
    padded_classes: list[int]  # fewer than k vectors: duplicated with small noise before k-means
    missing_classes: list[int]  # no images: filters left as they were
    peaks_per_image: int
    nms_iou: float
    seconds: float
    device: str
    sampled_features: list[Tensor | None] | None = None  # per class (n, C) on CPU, with keep_features


@torch.no_grad()
def init_filter_bank(
    model: DFLNet,
    batches: Iterable[tuple[Tensor, Tensor]],
    peaks_per_image: int = 3,
    nms_iou: float = 0.3,
    max_features_per_class: int = 4096,
    kmeans_iters: int = 50,
    n_init: int = 3,
    seed: int = 0,
    keep_features: bool = False,
) -> FilterInitReport:
    """Initialise `model.p_filters` from k-means centres of per-class conv4 energy peaks (paper Sec. 3.3).

    batches: (images (B, 1, S, S) in [0, 1], labels (B,) long) pairs, e.g. a DataLoader over the training
        split; labels of -1 (unknown) are skipped.
    peaks_per_image: 3 by default. The paper leaves it open. A vertebra crop holds a few distinct
        structures (two endplates, anterior and posterior walls); 3 well-separated peaks cover them while
        lower-ranked peaks drift to soft tissue or padding, and a few hundred training images per class
        still give hundreds of vectors for k = 10 centres.
    nms_iou: 0.3 by default: two kept receptive fields may share at most ~46% of their side along one
        axis, so the peaks of one image are distinct patches (a VGG16 map, rf 92 px at stride 8, keeps
        peaks >= 7 locations apart along a row), while nearby but different structures can still both
        be chosen (IoU 0.5, the detection default, lets near-duplicates of the same patch through).
    max_features_per_class: reservoir-sample cap, bounding memory to M * cap * C * 4 bytes.
    kmeans_iters, n_init: Lloyd iterations and k-means restarts. Class c is clustered with
        kmeans(vectors, k, kmeans_iters, n_init, seed=seed + c); the reservoir uses seed.

    Class c's filters (channels c*k .. c*k+k-1) become its L2-normalised centres: k-means runs on the raw
    peak vectors (as in the paper; high-energy patches weigh in with their magnitude), and the unit norm
    makes every filter's response a projection of comparable scale. A class with fewer than k vectors
    gets them duplicated with noise of 1e-3 times their RMS value per channel, so k-means still returns
    k (near-duplicate) filters. `p_classifier` starts as the block one-hot matrix with weight 1/k (class c
    averages its own k pooled responses, the same value as the side branch) and zero bias.
    The model's training/eval mode is restored afterwards.
    """
    device = next(model.parameters()).device
    num_classes, k = model.num_classes, model.filters_per_class
    started = time.perf_counter()
    generator = torch.Generator(device=device).manual_seed(seed)
    reservoirs = [ReservoirSampler(max_features_per_class, generator) for _ in range(num_classes)]
    images_per_class = torch.zeros(num_classes, dtype=torch.long)

    # Restore every module's own mode afterwards (a caller may keep e.g. frozen BatchNorms in eval).
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        for images, labels in batches:
            images = images.to(device, non_blocking=True)
            labels = torch.as_tensor(labels, device=device).long()
            if bool(((labels < -1) | (labels >= num_classes)).any()):
                raise ValueError(f"labels must be in -1..{num_classes - 1}, got {labels.unique().tolist()}")
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                features = model.trunk_features(images)
            features = features.float()
            peaks = peak_locations(
                energy_map(features), model.stride, model.receptive_field, model.rf_center_offset,
                peaks_per_image, nms_iou,
            )
            vectors = features[peaks.image_index, :, peaks.row, peaks.col]  # (N, C)
            peak_labels = labels[peaks.image_index]
            images_per_class += torch.bincount(labels[labels >= 0].cpu(), minlength=num_classes)
            for c in peak_labels[peak_labels >= 0].unique().tolist():
                reservoirs[c].add(vectors[peak_labels == c])
    finally:
        for module, training in modes:
            module.training = training

    weight = model.p_filters.weight  # (M*k, C, 1, 1)
    inertia, padded, missing = [], [], []
    for c, reservoir in enumerate(reservoirs):
        if reservoir.sample is None:
            missing.append(c)
            inertia.append(math.nan)
            continue
        vectors = reservoir.sample
        if len(vectors) < k:
            padded.append(c)
            vectors = _pad_with_noise(vectors, k, generator)
        result = kmeans(vectors, k, iters=kmeans_iters, n_init=n_init, seed=seed + c)
        weight[model.class_filter_slice(c), :, 0, 0] = F.normalize(result.centres, dim=1).to(weight.dtype)
        inertia.append(result.inertia)
    if missing:
        warnings.warn(f"filter-bank init: no training images for classes {missing}; their filters stay random")

    model.p_classifier.weight.zero_()
    model.p_classifier.bias.zero_()
    for c in range(num_classes):
        model.p_classifier.weight[c, model.class_filter_slice(c)] = 1.0 / k

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return FilterInitReport(
        images_per_class=images_per_class.tolist(),
        peaks_per_class=[r.seen for r in reservoirs],
        features_per_class=[0 if r.sample is None else len(r.sample) for r in reservoirs],
        inertia_per_class=inertia,
        padded_classes=padded,
        missing_classes=missing,
        peaks_per_image=peaks_per_image,
        nms_iou=nms_iou,
        seconds=time.perf_counter() - started,
        device=str(device),
        sampled_features=[None if r.sample is None else r.sample.cpu() for r in reservoirs] if keep_features else None,
    )


def _pad_with_noise(vectors: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """(n < k, C) -> (k, C): the rows repeated cyclically; the copies get noise of 1e-3 x RMS value."""
    repeats = vectors[torch.arange(k, device=vectors.device) % len(vectors)]
    scale = 1e-3 * vectors.pow(2).mean().sqrt().clamp_min(1e-12)
    noise = torch.randn(repeats.shape, generator=generator, device=vectors.device) * scale
    noise[: len(vectors)] = 0
    return repeats + noise
