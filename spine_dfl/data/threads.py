"""One intra-op thread for small per-sample or per-batch tensor work."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def single_thread(active: bool = True) -> Iterator[None]:
    """Run the enclosed tensor work on one intra-op thread, then restore the thread count.

    Crops, resampling, blurs of one small image and the ~20 element-wise ops of a batch
    augmentation gain nothing from OpenMP threads: synchronisation dominates (~5x slower on a
    2-core machine), and on a loaded machine each parallel region waits for descheduled threads
    (measured on 2 shared cores at load 9: 20 ms on one thread, 270 ms on two). DataLoader
    workers already run with one thread; this gives the same behaviour with ``num_workers=0``.
    `active=False` leaves the thread count alone (e.g. for work on a GPU).
    """
    previous = torch.get_num_threads()
    if not active or previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
