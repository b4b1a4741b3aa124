"""Process-group setup shared by training and scoring (one process per rank, as torchrun starts them).

Collective tensors live on the backend's device: NCCL moves only CUDA tensors, gloo only CPU
tensors. `collective_device` is that rule; every tensor a `Distributed` sends is made there.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as torch_dist

#: backends whose collectives take CUDA tensors only
_CUDA_BACKENDS = ("nccl",)


def collective_device(backend: str, local_device: torch.device) -> torch.device:
    """The device a collective tensor must live on for ``backend``: this rank's GPU for NCCL, else CPU."""
    if str(backend).lower() in _CUDA_BACKENDS:
        if local_device.type != "cuda":
            raise ValueError(f"backend {backend!r} needs a CUDA device, got {local_device}")
        return local_device
    return torch.device("cpu")


@dataclass
class Distributed:
    """This process's place in the run. A single-process run (world_size 1) makes every call a no-op."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "gloo"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where collective tensors live
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``obj`` of rank ``src`` on every rank (pickled; for small things such as summaries)."""
        if not self.enabled:
            return obj
        holder = [obj]
        torch_dist.broadcast_object_list(holder, src=src, device=self.device)
        return holder[0]

    def broadcast_code(self, code: int, src: int = 0) -> int:
        """Rank ``src``'s small integer ``code`` (a decision such as "stop") on every rank."""
        if not self.enabled:
            return int(code)
        tensor = torch.tensor([int(code)], dtype=torch.int64, device=self.device)
        torch_dist.broadcast(tensor, src=src)
        return int(tensor.item())

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` over all ranks (float64)."""
        if not self.enabled:
            return [float(v) for v in values]
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor.cpu().tolist()

    def all_reduce_max(self, values: Sequence[float]) -> list[float]:
        """Element-wise maximum of ``values`` over all ranks (float64)."""
        if not self.enabled:
            return [float(v) for v in values]
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.MAX)
        return tensor.cpu().tolist()

    def close(self) -> None:
        """Leave the process group when this object created it."""
        if self.owns_group and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
            self.owns_group = False


def init_distributed(
    device: str = "auto", backend: str | None = None, timeout: datetime.timedelta | None = None
) -> Distributed:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1), else a single process.

    ``backend`` defaults to NCCL when this rank computes on CUDA (``device`` is not ``cpu`` and CUDA
    is present), gloo otherwise. Under NCCL this rank's GPU becomes the current CUDA device.
    ``timeout`` bounds every collective (torch's default when None).
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Distributed()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    on_cuda = device != "cpu" and torch.cuda.is_available()
    backend = backend or ("nccl" if on_cuda else "gloo")
    owns = False
    if not torch_dist.is_initialized():
        kwargs = {} if timeout is None else {"timeout": timeout}
        torch_dist.init_process_group(backend=backend, **kwargs)
        owns = True
    backend = str(torch_dist.get_backend())
    local_device = torch.device("cpu")
    if on_cuda:
        local_device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(local_device)
    return Distributed(rank=rank, world_size=world, local_rank=local_rank, backend=backend,
                       device=collective_device(backend, local_device), owns_group=owns)
