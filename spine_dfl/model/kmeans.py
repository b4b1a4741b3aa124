"""k-means on torch tensors (CPU or CUDA): k-means++ seeding, batched restarts, Lloyd iterations.

Used by the filter-bank init (`filter_init`); compared with scikit-learn in
``benchmarks/filter_init.py``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["KMeansResult", "kmeans"]


class KMeansResult(NamedTuple):
    centres: Tensor  # (k, C) float32
    assignments: Tensor  # (N,) long, index of each point's nearest centre
    inertia: float  # sum over points of the squared distance to the nearest centre



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
