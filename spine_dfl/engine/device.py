"""Device resolution: the one place that turns ``auto`` / ``cpu`` / ``cuda[:i]`` into a torch.device."""

from __future__ import annotations

import torch
from spine_dfl.io.errors import UnavailableError


class DeviceUnavailable(UnavailableError, ValueError):
    """A CUDA device was asked for on a machine without one."""


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda`` without CUDA is a DeviceUnavailable.

    With ``local_rank`` (one process per GPU, as under torchrun), a CUDA device without an index
    means this process's GPU: ``cuda:(local_rank % device_count)``.
    """
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"device {name!r} requested but no CUDA device is available")
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device
