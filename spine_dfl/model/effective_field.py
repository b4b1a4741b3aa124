"""The effective receptive field: the side of the box that holds most of a location's input gradient.

A feature location's theoretical receptive field (every input pixel it can depend on) is far larger
than the region that actually drives it: the input gradient of a response is roughly Gaussian and
concentrated near the centre (Luo, Li, Urtasun & Zemel, NeurIPS 2016). A ResNet-18 layer3 location
has a 211 px theoretical field, larger than a 96 px vertebra crop; drawing that box says nothing
about where the evidence lies. Patches are therefore drawn with the effective side measured here.

Measurement: the |d response / d input| of the map's central location (its field is not cut by the
input's border), the strongest channel there, averaged over a few fixed-seed noise inputs after
normalising each to unit mass; the side is that of the smallest square, centred on the gradient's
centroid, holding ``ERF_MASS`` of it. Noise inputs make the answer a property of the model alone
(the same on every run). It is measured where patches are drawn (explain, score's Secondary
Capture), once per model and input size, not when a checkpoint is saved.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["ERF_INPUTS", "ERF_MASS", "ERF_SEED", "effective_receptive_field", "gradient_box_side", "gradient_centres",
           "measure_model_patch_side", "model_patch_side", "remember_patch_side"]

# Share of the input-gradient mass the drawn box holds: half, the core of the roughly Gaussian
# effective field (a square of half-side ~1 sigma; Luo et al. describe the ERF by its sigma). At 0.9
# (+-2 sigma) the CPU demo's layer2 box was 1.3 x the vertebral body height: a patch the size of the
# vertebra says nothing about where on it the evidence lies.
ERF_MASS = 0.5
ERF_INPUTS = 4  # noise inputs averaged (their spread is small: the side varies by < 1 px)
ERF_SEED = 0

_MEASURED: "weakref.WeakKeyDictionary[nn.Module, dict[int, float]]" = weakref.WeakKeyDictionary()


def gradient_box_side(mass_map: np.ndarray, mass: float = ERF_MASS) -> float:
    """Side (pixels) of the smallest square centred on the centroid of (h, w) non-negative `mass_map`
    that holds at least `mass` of its total; whole pixels (pixel i covers [i, i + 1))."""
    values = np.asarray(mass_map, dtype=np.float64)
    if values.ndim != 2 or not np.isfinite(values).all() or (values < 0).any():
        raise ValueError("a gradient mass map must be a finite, non-negative (h, w) array")
    total = values.sum()
    if total <= 0:
        raise ValueError("the gradient mass map is zero everywhere: the location does not depend on the input")
    ys, xs = np.mgrid[: values.shape[0], : values.shape[1]] + 0.5
    cx, cy = (values * xs).sum() / total, (values * ys).sum() / total
    # Chebyshev distance of every pixel's far edge from the centroid: the half-side that takes it in.
    reach = np.maximum(np.abs(xs - cx), np.abs(ys - cy)) + 0.5
    order = np.argsort(reach, axis=None, kind="stable")
    cumulative = np.cumsum(values.reshape(-1)[order])
    needed = int(np.searchsorted(cumulative, mass * total * (1.0 - 1e-12)))
    return float(2.0 * reach.reshape(-1)[order][min(needed, order.size - 1)])


def gradient_centres(
    network: Callable[[Tensor], Tensor], images: Tensor, sample: Tensor, channel: Tensor, flat_index: Tensor
) -> tuple[Tensor, Tensor]:
    """Where in the input each chosen response reads: the centroid of its |input gradient|.

    network: (B, C_in, S, S) -> (B, C, H, W), in eval mode (each sample's output must depend on that
    sample alone). images: (B, C_in, S, S). sample, channel, flat_index: (n,) the n responses
    ``network(images)[sample, channel].flatten()[flat_index]``; a sample may be chosen several times.
    Returns (centres (n, 2) as continuous input (x, y), pixel i covering [i, i + 1); mass maps
    (n, S, S) float64 of |d response / d input| summed over input channels, each of unit mass).

    Why not the cell's theoretical centre: a trained network's response at a cell is driven by the
    pixels its gradient weighs, and on a vertebra crop that mass is not centred on the cell (the
    demo's layer3 peaks drawn at cell centres fell above or below the body; at the gradient's
    centroid they lie on it). One backward pass over the chosen responses, each on its own copy of
    its image, gives every centroid at once.
    """
    n = int(sample.numel())
    if n == 0:
        return torch.zeros(0, 2, dtype=torch.float64), torch.zeros(0, *images.shape[-2:], dtype=torch.float64)
    copies = images.detach()[sample.long().to(images.device)].clone().requires_grad_(True)  # (n, C_in, S, S)
    with torch.enable_grad():
        out = network(copies)
        flat = out.reshape(n, out.shape[1], -1)
        rows = torch.arange(n, device=out.device)
        target = flat[rows, channel.long().to(out.device), flat_index.long().to(out.device)].sum()
        (grad,) = torch.autograd.grad(target, copies)
    mass = grad.detach().abs().double().sum(dim=1).cpu()  # (n, S, S)
    mass = mass / mass.sum(dim=(1, 2), keepdim=True).clamp(min=1e-300)
    height, width = mass.shape[-2:]
    ys = torch.arange(height, dtype=torch.float64) + 0.5
    xs = torch.arange(width, dtype=torch.float64) + 0.5
    centre_x = (mass.sum(dim=1) * xs).sum(dim=1)
    centre_y = (mass.sum(dim=2) * ys).sum(dim=1)
    return torch.stack((centre_x, centre_y), dim=1), mass


def effective_receptive_field(
    network: Callable[[Tensor], Tensor], inputs: Tensor, mass: float = ERF_MASS
) -> float:
    """Effective receptive-field side (input pixels) of `network`'s central output location.

    network: (B, C_in, S, S) -> (B, C, H, W), evaluated as given (put modules in eval mode first, so
    batch statistics do not couple the samples). inputs: (B, C_in, S, S). Each sample's target is its
    strongest channel at location (H // 2, W // 2); its |input gradient| (summed over input channels)
    is normalised to unit mass, averaged over the samples, and measured by ``gradient_box_side``.
    No parameter's ``.grad`` is touched.
    """
    x = inputs.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = network(x)
        if out.ndim != 4:
            raise ValueError(f"the network must return (B, C, H, W) maps, got shape {tuple(out.shape)}")
        centre = out[:, :, out.shape[2] // 2, out.shape[3] // 2]  # (B, C)
        target = centre.gather(1, centre.argmax(dim=1, keepdim=True)).sum()
        (grad,) = torch.autograd.grad(target, x)
    per_sample = grad.detach().abs().double().sum(dim=1)  # (B, S, S)
    per_sample = per_sample / per_sample.sum(dim=(1, 2), keepdim=True).clamp(min=1e-300)
    return gradient_box_side(per_sample.mean(dim=0).cpu().numpy(), mass)


def model_patch_side(model: nn.Module, input_size: int, stored: float | None = None) -> float:
    """The P-stream patch side of a DFLNet in input pixels: `stored` when given, else measured once per
    model and input size (``effective_receptive_field`` of trunk + filter bank on ``ERF_INPUTS`` seeded
    uniform-noise inputs) and remembered."""
    if stored is not None and float(stored) > 0:
        return float(stored)
    cache = _MEASURED.setdefault(model, {})
    if int(input_size) not in cache:
        cache[int(input_size)] = measure_model_patch_side(model, int(input_size))
    return cache[int(input_size)]


def remember_patch_side(model: nn.Module, input_size: int, side: float) -> None:
    """Record a measurement made elsewhere (one a checkpoint carries) so ``model_patch_side`` does not
    measure again."""
    _MEASURED.setdefault(model, {})[int(input_size)] = float(side)


def measure_model_patch_side(model: nn.Module, input_size: int) -> float:
    """``effective_receptive_field`` of a DFLNet's P-stream (trunk, then filter bank), in eval mode."""
    generator = torch.Generator().manual_seed(ERF_SEED)
    device = next(model.parameters()).device
    inputs = torch.rand(ERF_INPUTS, 1, int(input_size), int(input_size), generator=generator).to(device)
    was_training = model.training
    model.eval()
    try:
        if model.p_filters is None:  # a G-stream-only model: the trunk's own locations
            return effective_receptive_field(model.trunk_features, inputs)
        return effective_receptive_field(model.filter_responses, inputs)
    finally:
        model.train(was_training)
