"""Class-balanced sampling that draws the same samples on one process or split over DDP ranks,
and the per-sample seed that makes augmentation independent of workers, ranks and access order."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Sampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of one sample's augmentation: a hash of (seed, epoch, index), in [0, 2**32)."""
    return int(np.random.SeedSequence([int(seed) % 2**63, int(epoch), int(index)]).generate_state(1)[0])


def class_balanced_weights(
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    vertebrae: Sequence[str] | None = None,
    mode: Literal["class", "vertebra_class", "none"] = "class",
) -> torch.Tensor:
    """Per-sample sampling weights (float64, shape (N,), mean 1 over labelled samples).

    - ``class``: inverse class frequency; every class gets the same total weight.
    - ``vertebra_class``: every class gets the same total weight and, within a class, every
      vertebra level present in that class gets the same share (so an L1 fracture is drawn as
      often as a T7 one). Needs ``vertebrae``.
    - ``none``: uniform.
    Samples with label < 0 (unknown) get weight 0.
    """
    y = np.asarray(torch.as_tensor(labels).cpu().numpy() if isinstance(labels, torch.Tensor) else labels).astype(np.int64)
    known = y >= 0
    if not known.any():
        raise ValueError("no labelled samples to balance")
    weights = np.zeros(len(y), dtype=np.float64)
    if mode == "none":
        weights[known] = 1.0
    elif mode == "class":
        counts = Counter(y[known].tolist())
        weights[known] = [1.0 / counts[c] for c in y[known]]
    elif mode == "vertebra_class":
        if vertebrae is None or len(vertebrae) != len(y):
            raise ValueError("mode 'vertebra_class' needs one vertebra name per label")
        levels = [str(v) for v in vertebrae]
        cell = Counter((int(c), levels[i]) for i, c in enumerate(y) if c >= 0)
        levels_per_class = Counter(c for c, _ in cell)
        for i, c in enumerate(y):
            if c >= 0:
                weights[i] = 1.0 / (levels_per_class[int(c)] * cell[(int(c), levels[i])])
    else:
        raise ValueError(f"balance mode must be 'class', 'vertebra_class' or 'none', got {mode!r}")
    weights *= known.sum() / weights.sum()
    return torch.as_tensor(weights, dtype=torch.float64)


class DistributedWeightedSampler(Sampler[int]):
    """Weighted sampling that is the same draw on one process or split over ``world_size`` ranks.

    Each epoch one global draw of ``total = ceil(num_samples / world_size) * world_size``
    indices is made with ``torch.multinomial`` from a generator seeded by (seed, epoch); rank
    ``r`` takes the contiguous block ``[r * per_rank, (r + 1) * per_rank)``. The ranks' blocks
    concatenated are exactly the single-process draw of ``total`` samples, so the data seen per
    epoch does not depend on the number of processes. Call ``set_epoch`` before every epoch.

    weights: (N,) non-negative. num_samples: samples per epoch over all ranks (default N).
    """

    def __init__(self, weights: Sequence[float] | torch.Tensor, num_samples: int | None = None, rank: int = 0,
                 world_size: int = 1, seed: int = 0, replacement: bool = True) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.float64).flatten()
        if self.weights.numel() == 0 or (self.weights < 0).any() or not torch.isfinite(self.weights).all() \
                or self.weights.sum() <= 0:
            raise ValueError("weights must be finite, non-negative and not all zero")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        self.num_samples = int(num_samples) if num_samples is not None else int(self.weights.numel())
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        self.rank, self.world_size, self.seed, self.replacement = int(rank), int(world_size), int(seed), bool(replacement)
        self.per_rank = math.ceil(self.num_samples / self.world_size)
        self.total = self.per_rank * self.world_size
        if not replacement and self.total > int((self.weights > 0).sum()):
            raise ValueError(f"cannot draw {self.total} samples without replacement from "
                             f"{int((self.weights > 0).sum())} with positive weight")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_draw(self) -> torch.Tensor:
        """All ranks' indices of this epoch, (total,) int64."""
        generator = torch.Generator()
        generator.manual_seed(sample_seed(self.seed, self.epoch, 0))
        return torch.multinomial(self.weights, self.total, self.replacement, generator=generator)

    def __iter__(self) -> Iterator[int]:
        shard = self.global_draw()[self.rank * self.per_rank: (self.rank + 1) * self.per_rank]
        return iter(shard.tolist())

    def __len__(self) -> int:
        return self.per_rank
