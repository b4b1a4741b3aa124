"""The acquisition augmentation's options (a plain dataclass, no torch: configs and checkpoints hold it).

The transforms are in :mod:`spine_dfl.data.transforms.acquisition`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class AcquisitionAugment:
    """Acquisition augmentation: a switch per part and its ranges; each part fires per sample
    with probability ``prob``.  Intensities are those of the network input, in [0, 1].

    Per sample, by TorchIO (after the cached crop):

    bias_field: multiplicative ``exp(sum c_k P_k(x, y))`` over the polynomials up to
        ``bias_order`` (heel effect, scatter; the constant term is a global exposure change),
        ``c_k`` uniform in [-bias_coefficient, +bias_coefficient] (TorchIO ``RandomBiasField``).
    pitch: one random in-plane axis sampled (nearest) onto a grid a factor uniform in
        ``pitch_factor`` coarser and resampled back linearly (detector pitch, resampling;
        TorchIO ``RandomAnisotropy`` samples axis and factor, ``resample_axis`` applies them).
    noise: additive Gaussian noise, std uniform in ``noise_std`` (TorchIO ``RandomNoise``).
    gamma: ``x ** exp(g)``, g uniform in ``log_gamma`` (TorchIO ``RandomGamma``).

    On whole batches, in the training loop (TorchIO has none of these):

    window: a new window, level ``0.5 +- window_level_shift``, width in ``window_width``
        (1 = unchanged), clipped to [0, 1].
    unsharp: ``x + gain * (x - blur_sigma(x))``, sigma in ``unsharp_sigma`` px, gain in
        ``unsharp_gain`` (negative gains soften).
    collimation: a band of width ``collimation_width`` (fraction of the side) at one random
        border set to ``fill``.

    Per sample, ROI-level (:class:`RandRoiReframed` on the cached crop):

    roi_jitter: margin per side uniform in ``roi_margin`` and shift per side in +-``roi_shift``,
        both fractions of the ROI's larger side.
    roi_follows_reframe: the ROI itself (the box a ``pstream_region: roi`` P-stream searches)
        grows and moves with the reframed crop, as another site's box would; off, the true box
        stays.  Off by default and in the CPU demo; on, in half of the reframed samples
        (``roi_follows_prob``), in ``spine_dfl/configs/cpu_multisite.yaml``, which halves the cross-site
        drop of macro AUC at the cost of wedge fractures' patches on two seeds of three (README
        "Moving to another site").
    roi_follows_prob: with ``roi_follows_reframe``, the fraction of reframed samples whose ROI
        follows; the rest keep the true box inside the reframed crop (1 = all).
    reframe_from_radiograph: the ROI-level part cuts each reframed crop afresh from a cached window
        of the radiograph around the ROI (``crop.RandRoiRecropd``: anatomy where a looser ROI shows
        more, the new crop's percentile window, as at another site) instead of zooming the cached
        crop (``RandRoiReframed``: ``fill`` where the anatomy would be).  The cache then holds the
        larger windows (``crop.window_margin``); evaluation is unchanged.  Off by default and in the
        CPU demo, on in ``spine_dfl/configs/cpu_multisite.yaml`` (README "Moving to another site").
    fill: the value of "no signal" in the input (0 after the percentile normalisation).
    """

    enabled: bool = False
    prob: float = 0.5
    bias_field: bool = True
    bias_coefficient: float = 0.15
    bias_order: int = 2
    pitch: bool = True
    pitch_factor: tuple[float, float] = (1.0, 2.0)
    noise: bool = True
    noise_std: tuple[float, float] = (0.0, 0.03)
    gamma: bool = True
    log_gamma: tuple[float, float] = (-0.3, 0.3)
    window: bool = True
    window_level_shift: float = 0.1
    window_width: tuple[float, float] = (0.8, 1.2)
    unsharp: bool = True
    unsharp_sigma: tuple[float, float] = (0.5, 2.0)
    unsharp_gain: tuple[float, float] = (-0.3, 1.0)
    collimation: bool = True
    collimation_width: tuple[float, float] = (0.02, 0.15)
    roi_jitter: bool = True
    roi_margin: tuple[float, float] = (-0.04, 0.15)
    roi_shift: float = 0.06
    roi_follows_reframe: bool = False
    roi_follows_prob: float = 1.0
    reframe_from_radiograph: bool = False
    fill: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple) and not (len(value) == 2 and value[0] <= value[1]):
                raise ValueError(f"acquisition augmentation: {f.name} must be a (low, high) range, got {value!r}")
        for name in ("prob", "roi_follows_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"acquisition augmentation: {name} must be in [0, 1], got {getattr(self, name)}")
        if self.pitch_factor[0] < 1.0 or min(self.noise_std) < 0 or min(self.unsharp_sigma) <= 0:
            raise ValueError("acquisition augmentation: pitch_factor must be >= 1, noise_std >= 0, unsharp_sigma > 0")
        if self.window_width[0] <= 0 or not 0.0 <= self.collimation_width[0] <= self.collimation_width[1] < 0.5:
            raise ValueError("acquisition augmentation: window_width must be > 0 and collimation_width in [0, 0.5)")
        if self.bias_coefficient < 0 or int(self.bias_order) < 1 or self.window_level_shift < 0 or self.roi_shift < 0:
            raise ValueError("acquisition augmentation: bias_coefficient, window_level_shift, roi_shift >= 0, bias_order >= 1")
