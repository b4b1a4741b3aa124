"""The locator's part of a run config (``locator:`` in the YAML; ``task: locator`` selects it).

Optimisation settings (epochs, batch size, learning rate, weight decay, warm-up, gradient clip,
early stop, time budget) are the run's ``train:`` section, shared with the grader; what only a
whole-radiograph detector needs lives here.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from spine_dfl.config.base import Strict
from spine_dfl.data.transforms.acquisition_options import AcquisitionAugment


# The loss parts of ``locate.targets.locator_loss`` (named here so that reading a config imports no torch).
LOSS_PARTS: tuple[str, ...] = ("heatmap", "size", "offset", "landmarks", "levels")


class LocatorAugment(Strict):
    """Training augmentation of the letterboxed input; geometry moves the targets with the image.

    Geometry is one random affine about the input centre (rotation, isotropic scale, translation
    as a fraction of the input size, optional left-right flip); intensity is gamma, contrast and
    brightness, then Gaussian noise, on the [0, 1] input.
    """

    enabled: bool = True
    rotate_deg: float = Field(6.0, ge=0.0, le=45.0)
    scale: float = Field(0.1, ge=0.0, lt=0.5, description="scale drawn from [1 - s, 1 + s]")
    translate: float = Field(0.06, ge=0.0, lt=0.5, description="shift up to this fraction of the input size")
    flip: float = Field(0.0, ge=0.0, le=1.0, description="probability of a left-right flip")
    gamma: tuple[float, float] = (0.7, 1.5)
    contrast: float = Field(0.25, ge=0.0, lt=1.0, description="gain drawn from [1 - c, 1 + c]")
    brightness: float = Field(0.1, ge=0.0, lt=1.0)
    noise_std: float = Field(0.03, ge=0.0, lt=1.0, description="largest noise standard deviation")

    @field_validator("gamma")
    @classmethod
    def _gamma_ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < value[0] <= value[1]:
            raise ValueError("need 0 < low <= high")
        return value


class LocatorConfig(Strict):
    input_size: tuple[int, int] = Field((320, 192), description="letterbox size (rows, cols), multiples of 32")
    blocks: tuple[int, int, int, int] = Field((1, 1, 1, 1), description="residual blocks per ResNet stage")
    neck_channels: int = Field(64, ge=8)
    head_channels: int = Field(64, ge=8)
    intensity_percentiles: tuple[float, float] = (1.0, 99.0)
    threshold: float = Field(0.3, gt=0.0, lt=1.0, description="centre-heatmap score that makes a detection")
    loss_weights: dict[str, float] = Field(default_factory=dict, description="overrides of the loss parts' weights")
    augment: LocatorAugment = LocatorAugment()
    # Another site's beam, detector and processing (TorchIO's bias field, anisotropy, noise and
    # gamma per image; window, unsharp mask and collimation per batch), after ``augment``; intensity
    # only, so the targets stay where they are. Its ROI jitter does not apply (no ROI here).
    acquisition: AcquisitionAugment = AcquisitionAugment()

    @field_validator("input_size")
    @classmethod
    def _multiple_of_32(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) <= 0 or value[0] % 32 or value[1] % 32:
            raise ValueError("rows and cols must be positive multiples of 32")
        return value

    @field_validator("loss_weights")
    @classmethod
    def _known_parts(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(LOSS_PARTS))
        if unknown:
            raise ValueError(f"unknown loss parts {unknown}; known: {list(LOSS_PARTS)}")
        return value
