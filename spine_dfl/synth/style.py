"""Acquisition styles: how one site's radiographs differ from another's, for the same patients.

A ``SynthStyle`` holds the knobs of image formation that differ between sites: detector physics
(dose and quantum noise, blur, detector pitch), processing (log or linear response,
equalisation, edge enhancement, MONOCHROME1 or 2), heel effect and scatter, patient habitus
(soft-tissue thickness) and the localiser's ROI convention (margin and jitter).

What a style must not change: the anatomy and the Genant truth.  The renderer draws the same
values from the patient's random stream in the same order whatever the style (a style only
rescales the range of a draw, which consumes the same stream), and effects that exist only in
some styles (heel direction, dose thinning, pitch) draw from a separate style stream.  So the
same seed gives the same patients, levels, grades, body outlines and ``vertebrae.csv`` in every
style.  The quantum noise depends on the signal, so the patient stream after the detector
(processing parameters, stored bits, exposure details, dates) differs between styles: a
different site stores and processes differently.

``STYLES["default"]`` is the generator's own style: its output is byte-identical to a cohort
written before styles existed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any
from spine_dfl.io.errors import InputError

PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")


@dataclass(frozen=True)
class SynthStyle:
    """Knobs of one site's acquisition; ranges are (low, high) of a per-image uniform draw.

    Attributes:
        name: preset name, recorded in cohort.json.
        dose_scale: detected photons relative to the default exposure (noise ~ 1 / sqrt(dose)).
        blur_sigma: detector blur (Gaussian sigma, px) of the primary image.
        noise_correlation: sigma (px) of the quanta's spread over neighbouring pixels.
        pixel_binning: detector elements k x k pixels wide (coarser pitch), resampled back to the
            image grid so the geometry (and every ROI) stays the same; 1 = native pitch.
        scatter_per_attenuation: scatter-to-primary strength per unit of traversed attenuation.
        heel_effect: fall of beam intensity from the cathode to the anode end of the long axis
            (0.2 = 20 % less at the anode end); the direction is drawn per image.
        response_exponent: detector response before processing, Box-Cox of the transmission T:
            0 = logarithmic ``-log T`` (default), 1 = linear ``1 - T``, in between a power law.
        equalisation: strength of the multi-scale latitude compression.
        edge_sigma: scale (px) of the unsharp mask; edge_gain: its gain.
        photometric: store every image as this photometric; None = dealt half and half.
        soft_tissue_scale: soft-tissue attenuation relative to the default habitus.
        roi_margin: localiser ROI padding per side, fraction of the body's size.
        roi_jitter: its uniform jitter per side (+-, same unit); at most ``roi_margin`` so the
            ROI always holds the whole body.
    """

    name: str = "default"
    dose_scale: float = 1.0
    blur_sigma: tuple[float, float] = (0.5, 0.9)
    noise_correlation: float = 0.45
    pixel_binning: int = 1
    scatter_per_attenuation: tuple[float, float] = (0.08, 0.25)
    heel_effect: float = 0.0
    response_exponent: float = 0.0
    equalisation: tuple[float, float] = (0.6, 0.85)
    edge_sigma: tuple[float, float] = (1.5, 3.0)
    edge_gain: tuple[float, float] = (0.0, 0.6)
    photometric: str | None = None
    soft_tissue_scale: float = 1.0
    roi_margin: float = 0.07
    roi_jitter: float = 0.045

    def __post_init__(self) -> None:
        for field_name in ("blur_sigma", "scatter_per_attenuation", "equalisation", "edge_sigma", "edge_gain"):
            low, high = getattr(self, field_name)
            if not 0.0 <= low <= high:
                raise ValueError(f"style {self.name!r}: {field_name} must be 0 <= low <= high, got {(low, high)}")
        if self.dose_scale <= 0 or self.soft_tissue_scale <= 0:
            raise ValueError(f"style {self.name!r}: dose_scale and soft_tissue_scale must be positive")
        if isinstance(self.pixel_binning, bool) or int(self.pixel_binning) != self.pixel_binning or self.pixel_binning < 1:
            raise ValueError(f"style {self.name!r}: pixel_binning must be a positive integer, got {self.pixel_binning!r}")
        if not 0.0 <= self.heel_effect < 1.0 or not 0.0 <= self.response_exponent <= 1.0:
            raise ValueError(f"style {self.name!r}: heel_effect must be in [0, 1) and response_exponent in [0, 1]")
        if self.photometric is not None and self.photometric not in PHOTOMETRICS:
            raise ValueError(f"style {self.name!r}: photometric must be one of {PHOTOMETRICS} or None")
        if not 0.0 <= self.roi_jitter <= self.roi_margin:
            raise ValueError(f"style {self.name!r}: need 0 <= roi_jitter <= roi_margin so the ROI holds the body")

    def as_dict(self) -> dict[str, Any]:
        """The knobs as plain JSON values (tuples as lists), for cohort.json."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


STYLES: dict[str, SynthStyle] = {
    "default": SynthStyle(),
    # A flat-panel DX room run at low dose: a sharp detector with fine-grained noise, a near-linear
    # response (T^0.6), a good grid, heavy vendor edge enhancement and strong equalisation,
    # MONOCHROME2, a slimmer population, tight ROIs.
    "site_b": SynthStyle(
        name="site_b", dose_scale=0.5, blur_sigma=(0.25, 0.45), noise_correlation=0.25,
        scatter_per_attenuation=(0.04, 0.1), heel_effect=0.25, response_exponent=0.6, equalisation=(0.9, 1.0),
        edge_sigma=(1.0, 2.0), edge_gain=(1.2, 2.0), photometric="MONOCHROME2", soft_tissue_scale=0.85,
        roi_margin=0.03, roi_jitter=0.02,
    ),
    # An older CR reader: low dose, blurred, twice the pitch, more scatter, strong heel effect,
    # a power-law response (T^0.3), little equalisation and edge enhancement, MONOCHROME1, a heavier
    # population, loose ROIs.
    "site_c": SynthStyle(
        name="site_c", dose_scale=0.35, blur_sigma=(0.9, 1.4), noise_correlation=0.7, pixel_binning=2,
        scatter_per_attenuation=(0.2, 0.4), heel_effect=0.3, response_exponent=0.3, equalisation=(0.3, 0.5),
        edge_sigma=(3.0, 5.0), edge_gain=(0.0, 0.2), photometric="MONOCHROME1", soft_tissue_scale=1.3,
        roi_margin=0.15, roi_jitter=0.08,
    ),
}
DEFAULT_STYLE = STYLES["default"]


def synth_style(style: str | SynthStyle) -> SynthStyle:
    """A preset by name (see ``STYLES``), or the given style itself."""
    if isinstance(style, SynthStyle):
        return style
    try:
        return STYLES[style]
    except KeyError:
        raise InputError(f"unknown synth style {style!r}; choose one of {', '.join(STYLES)}") from None
