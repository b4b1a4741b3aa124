"""The preprocessing and augmentation settings (plain dataclasses: no torch, stored in checkpoints and configs)."""

from __future__ import annotations

from dataclasses import dataclass


def check_intensity_percentiles(value: tuple[float, float]) -> tuple[float, float]:
    """``value`` when it is a (low, high) pair with 0 <= low < high <= 100; else a ValueError."""
    low, high = value
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"intensity_percentiles need 0 <= low < high <= 100, got {tuple(value)}")
    return value


@dataclass(frozen=True)
class Preprocessing:
    """Deterministic preprocessing; stored in every checkpoint (``dataclasses.asdict``).

    input_size: S, the network input is 1 x S x S pixels.
    roi_margin: fraction of the ROI's larger side added on every side before cropping.
    use_roi: False: the whole image is the sample (ROIs ignored).
    intensity_percentiles: (low, high) percentiles of the crop mapped to 0 and 1 (clipped).
    """

    input_size: int = 160
    roi_margin: float = 0.15
    use_roi: bool = True
    intensity_percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        if int(self.input_size) < 1:
            raise ValueError(f"input_size must be positive, got {self.input_size}")
        if self.roi_margin < 0:
            raise ValueError(f"roi_margin must be >= 0, got {self.roi_margin}")
        check_intensity_percentiles(self.intensity_percentiles)


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation; each transform fires with probability ``prob``.

    rotate_deg: rotation uniform in [-rotate_deg, +rotate_deg] degrees.
    scale: isotropic zoom uniform in [1 - scale, 1 + scale].
    translate: shift uniform in [-translate, +translate] x S pixels, per axis.
    gamma: contrast gamma uniform in this range (MONAI RandAdjustContrast on [0, 1] data).
    noise_std: Gaussian noise std uniform in [0, noise_std] (intensities are in [0, 1]).
    blur_sigma: Gaussian blur sigma per axis uniform in this range, in output pixels.
    """

    rotate_deg: float = 5.0
    scale: float = 0.08
    translate: float = 0.04
    gamma: tuple[float, float] = (0.8, 1.25)
    noise_std: float = 0.02
    blur_sigma: tuple[float, float] = (0.0, 1.0)
    prob: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {self.prob}")
        if not 0.0 <= self.scale < 1.0:
            raise ValueError(f"scale must be in [0, 1), got {self.scale}")
        if min(self.gamma) <= 0 or min(self.blur_sigma) < 0 or self.noise_std < 0 or self.rotate_deg < 0 or self.translate < 0:
            raise ValueError(f"augmentation ranges must be non-negative (gamma positive): {self}")
