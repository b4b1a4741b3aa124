"""The acquisition augmentation's options (a plain dataclass, no torch: configs and checkpoints hold it).

The transforms are in :mod:`spine_dfl.data.transforms.acquisition`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class AcquisitionAugment:
    """Acquisition augmentation: what another site's beam, detector, console and localiser change.

    A switch per part and its range; each part fires per sample with probability ``prob``, on
    network inputs in [0, 1].  TorchIO per sample: ``bias_field`` (``bias_coefficient``,
    ``bias_order``), ``pitch`` (``pitch_factor``), ``noise`` (``noise_std``), ``gamma``
    (``log_gamma``).  Per batch: ``window`` (level ``0.5 +- window_level_shift``,
    ``window_width``), ``unsharp`` (``unsharp_sigma`` px, ``unsharp_gain``), ``collimation``
    (``collimation_width`` of a side, set to ``fill``).  ROI-level: ``roi_jitter`` (``roi_margin``
    per side, ``roi_shift``, fractions of the ROI's larger side); ``roi_follows_reframe`` hands the
    P-stream the grown box too (in ``roi_follows_prob`` of the samples); ``reframe_from_radiograph``
    cuts the crop afresh from a cached window instead of zooming the cached crop.  ``fill`` is "no
    signal" (0 after the percentile window).  See ``docs/moving-sites.md`` for what each buys.
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
