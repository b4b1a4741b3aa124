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

from .dfl import DFLNet, location_boxes, location_mask
from .kmeans import kmeans

__all__ = [
    "FilterInitReport",
    "Peaks",
    "ReservoirSampler",
    "energy_map",
    "init_filter_bank",
    "peak_locations",
]


class Peaks(NamedTuple):
    """N feature-map locations, grouped by image and, within an image, by decreasing energy."""

    image_index: Tensor  # (N,) long, index of the image in the batch
    row: Tensor  # (N,) long
    col: Tensor  # (N,) long
    score: Tensor  # (N,) float32 energy at the location


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


def _peaks_where(peaks: Peaks, keep: Tensor) -> Peaks:
    return Peaks(image_index=peaks.image_index[keep], row=peaks.row[keep], col=peaks.col[keep],
                 score=peaks.score[keep])


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
) -> FilterInitReport:
    """Initialise `model.p_filters` from k-means centres of per-class conv4 energy peaks (paper Sec. 3.3).

    batches: (images (B, 1, S, S) in [0, 1], labels (B,) long) pairs, e.g. a DataLoader over the training
        split; labels of -1 (unknown) are skipped. A third element, (B, 4) ROI boxes in input pixels,
        keeps the peaks of a ``pstream_region == "roi"`` model where its max pool searches
        (``location_mask``): locations outside get no energy.
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
    started = time.perf_counter()
    generator = torch.Generator(device=device).manual_seed(seed)
    reservoirs = [ReservoirSampler(max_features_per_class, generator) for _ in range(model.num_classes)]
    images_per_class = _sample_peak_vectors(model, batches, reservoirs, peaks_per_image, nms_iou)
    inertia, padded, missing = _set_filters(model, reservoirs, generator, kmeans_iters, n_init, seed)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return FilterInitReport(
        images_per_class=images_per_class,
        peaks_per_class=[r.seen for r in reservoirs],
        features_per_class=[0 if r.sample is None else len(r.sample) for r in reservoirs],
        inertia_per_class=inertia,
        padded_classes=padded,
        missing_classes=missing,
        peaks_per_image=peaks_per_image,
        nms_iou=nms_iou,
        seconds=time.perf_counter() - started,
        device=str(device),
    )


def _sample_peak_vectors(
    model: DFLNet, batches: Iterable[tuple[Tensor, Tensor]], reservoirs: list[ReservoirSampler],
    peaks_per_image: int, nms_iou: float,
) -> list[int]:
    """Stream the batches through the trunk; offer each class's peak vectors to its reservoir.

    Returns the number of images of each class. The model runs in eval mode and every module's own
    mode is restored afterwards (a caller may keep e.g. frozen BatchNorms in eval).
    """
    device = next(model.parameters()).device
    num_classes = model.num_classes
    images_per_class = torch.zeros(num_classes, dtype=torch.long)
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        for images, labels, *roi in batches:
            images = images.to(device, non_blocking=True)
            labels = torch.as_tensor(labels, device=device).long()
            if bool(((labels < -1) | (labels >= num_classes)).any()):
                raise ValueError(f"labels must be in -1..{num_classes - 1}, got {labels.unique().tolist()}")
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                features = model.trunk_features(images)
            features = features.float()
            energy = energy_map(features)
            inside = None
            if roi and model.pstream_region == "roi":
                inside = location_mask(roi[0].to(device), energy.shape[-2:], model.stride, model.rf_center_offset)
                energy = energy.masked_fill(~inside, -1.0)  # below every real (non-negative) energy
            peaks = peak_locations(energy, model.stride, model.receptive_field, model.rf_center_offset,
                                   peaks_per_image, nms_iou)
            if inside is not None:
                peaks = _peaks_where(peaks, inside[peaks.image_index, peaks.row, peaks.col])
            vectors = features[peaks.image_index, :, peaks.row, peaks.col]  # (N, C)
            peak_labels = labels[peaks.image_index]
            images_per_class += torch.bincount(labels[labels >= 0].cpu(), minlength=num_classes)
            for c in peak_labels[peak_labels >= 0].unique().tolist():
                reservoirs[c].add(vectors[peak_labels == c])
    finally:
        for module, training in modes:
            module.training = training
    return images_per_class.tolist()


def _set_filters(
    model: DFLNet, reservoirs: list[ReservoirSampler], generator: torch.Generator, kmeans_iters: int,
    n_init: int, seed: int,
) -> tuple[list[float], list[int], list[int]]:
    """Class filters from the k-means centres of its sampled vectors; the block one-hot P classifier.

    Returns (inertia per class, padded classes, missing classes).
    """
    k = model.filters_per_class
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
    for c in range(model.num_classes):
        model.p_classifier.weight[c, model.class_filter_slice(c)] = 1.0 / k
    return inertia, padded, missing


def _pad_with_noise(vectors: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """(n < k, C) -> (k, C): the rows repeated cyclically; the copies get noise of 1e-3 x RMS value."""
    repeats = vectors[torch.arange(k, device=vectors.device) % len(vectors)]
    scale = 1e-3 * vectors.pow(2).mean().sqrt().clamp_min(1e-12)
    noise = torch.randn(repeats.shape, generator=generator, device=vectors.device) * scale
    noise[: len(vectors)] = 0
    return repeats + noise
