"""Where the renderer draws: the beam's attenuation constants and the world-to-image frame.

The spine is stacked in world millimetres (Y up, X towards posterior, see ``anatomy``);
``fit_frame`` rotates, scales and shifts the chain so that T4-L5 fill most of the image
rows, and ``Scene`` carries what every rendering phase needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from spine_dfl.synth.anatomy import LABELLED_LEVELS, PatientAnatomy, endplate_heights, rotation
from spine_dfl.synth.style import DEFAULT_STYLE, SynthStyle

# Attenuation of bone in excess of water, per mm of path, at the reference beam (80-90 kV
# effective); trabecular bone scales with bone volume fraction.
MU_CORTICAL_PER_MM = 0.022
MU_BONE_PER_MM = 0.06
MU_SOFT_PER_MM = 0.0105


@dataclass
class ImageFrame:
    """Mapping world mm (Y up) -> image continuous px (y down) by rotation rho, scale, shift."""

    rho: float
    mm_per_px: float
    world_anchor: np.ndarray
    image_anchor: np.ndarray

    def to_image(self, pts: np.ndarray) -> np.ndarray:
        rotated = (pts - self.world_anchor) @ rotation(self.rho).T
        return np.stack(
            [self.image_anchor[0] + rotated[..., 0] / self.mm_per_px, self.image_anchor[1] - rotated[..., 1] / self.mm_per_px],
            axis=-1,
        )


@dataclass
class Scene:
    """One patient placed in one image, at one tube voltage: what every rendering phase reads."""

    rows: int
    cols: int
    anat: PatientAnatomy
    frames: dict[str, tuple[np.ndarray, float]]  # world (origin mm, angle rad) of each body
    frame: ImageFrame
    kvp: float
    style: SynthStyle = DEFAULT_STYLE

    @property
    def mm_per_px(self) -> float:
        return self.frame.mm_per_px

    @property
    def px(self) -> float:
        """Pixels per mm."""
        return 1.0 / self.frame.mm_per_px

    @property
    def bone_contrast(self) -> float:
        return (85.0 / self.kvp) ** 1.3

    @property
    def mu_cortical(self) -> float:
        return MU_CORTICAL_PER_MM * self.bone_contrast

    def to_img(self, level: str, local_pts: np.ndarray) -> np.ndarray:
        """Points in a body's own frame (u, v mm) -> image continuous px."""
        origin, psi = self.frames[level]
        return self.frame.to_image(np.asarray(local_pts, dtype=np.float64) @ rotation(psi).T + origin)


def _body_corners_world(anat: PatientAnatomy, frames: dict[str, tuple[np.ndarray, float]], level: str) -> np.ndarray:
    """World (mm) of a body's four wall-top / wall-bottom corners."""
    body = anat.bodies[level]
    xs = np.array([-1.0, 1.0])
    top, bottom = endplate_heights(body, xs)
    local = np.array([[xs[0] * body.depth_mm / 2, top[0]], [xs[1] * body.depth_mm / 2, top[1]],
                      [xs[1] * body.depth_mm / 2, -bottom[1]], [xs[0] * body.depth_mm / 2, -bottom[0]]])
    origin, psi = frames[level]
    return local @ rotation(psi).T + origin


def fit_frame(anat: PatientAnatomy, frames: dict[str, tuple[np.ndarray, float]], rows: int, cols: int,
              rng: np.random.Generator) -> ImageFrame:
    """Rotate the T4-L5 axis upright (plus a small tilt), scale it to fill 78-88 % of the rows."""
    c_top = frames["T4"][0]
    c_bottom = frames["L5"][0]
    axis = c_top - c_bottom
    tilt = math.radians(float(rng.normal(0.0, 3.0)))
    rho = math.pi / 2 - math.atan2(axis[1], axis[0]) + tilt
    fill = float(rng.uniform(0.78, 0.88))
    probe = ImageFrame(rho, 1.0, np.zeros(2), np.zeros(2))
    top_corners = probe.to_image(_body_corners_world(anat, frames, "T4"))
    bottom_corners = probe.to_image(_body_corners_world(anat, frames, "L5"))
    y_extent = bottom_corners[:, 1].max() - top_corners[:, 1].min()
    mm_per_px = float(y_extent / (fill * rows))
    centres_world = np.array([frames[lv][0] for lv in LABELLED_LEVELS])
    y_mid_world = (bottom_corners[:, 1].max() + top_corners[:, 1].min()) / 2.0  # in probe px = mm
    x_mid_world = probe.to_image(centres_world)[:, 0].mean()
    anchor_world = np.linalg.solve(np.array([[1.0, 0.0], [0.0, -1.0]]) @ rotation(rho), np.array([x_mid_world, y_mid_world]))
    image_anchor = np.array([cols * rng.uniform(0.38, 0.47), rows * (0.5 + rng.uniform(-0.02, 0.02))])
    return ImageFrame(rho, mm_per_px, anchor_world, image_anchor)
