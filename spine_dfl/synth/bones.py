"""The skeleton in the beam: vertebral bodies (with their ground truth), posterior elements,
sacrum, ribs and aortic calcification, added to an attenuation image in the patient's order.

Each phase draws from the patient's random stream; ``render.render_patient`` calls them in a
fixed order, which is part of the same-seed-same-bytes contract.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from spine_dfl.synth.anatomy import CHAIN_LEVELS, LABELLED_LEVELS, BodyShape, body_heights_mm, endplate_heights, loss_profile
from spine_dfl.synth.drawing import add_hollow_polygon, add_polygon, bezier, polyline_normals
from spine_dfl.synth.scene import MU_BONE_PER_MM, Scene
from spine_dfl.synth.style import SynthStyle
from spine_dfl.synth.truth import VertebraTruth, body_fields, local_coordinates


@dataclass(frozen=True)
class _BodyStyle:
    """Patient-wide look of the vertebral bodies (attenuation per mm, cortex, texture)."""

    mu_trabecular: float
    mu_cortical: float
    endplate_mm: float
    cortex_rel: float
    striation: float


# --------------------------------------------------------------------------------------------
# Vertebral bodies
# --------------------------------------------------------------------------------------------
def vertebral_bodies(scene: Scene, attenuation: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[VertebraTruth]]:
    """Draw every body of the chain; return the labelled bodies' mask and their truth (T4-L5)."""
    anat = scene.anat
    style = _BodyStyle(
        mu_trabecular=MU_BONE_PER_MM * anat.bone_volume_fraction * scene.bone_contrast,
        mu_cortical=scene.mu_cortical,
        endplate_mm=float(rng.uniform(0.7, 1.1)) * (1.0 - 0.3 * min(anat.propensity * 2, 1.0)),
        cortex_rel=float(rng.uniform(0.05, 0.08)),
        striation=0.10 + 0.25 * min(anat.propensity * 2, 1.0),
    )
    bone_mask = np.zeros((scene.rows, scene.cols), dtype=bool)
    truths: list[VertebraTruth] = []
    for level in CHAIN_LEVELS:
        placed = _placed_body(scene, level)
        window = _body_window(placed, scene.rows, scene.cols)
        if window is None:
            continue
        coverage = _draw_body(attenuation, placed, window, style, anat.grades.get(level, "normal"), rng)
        if level in LABELLED_LEVELS:
            truths.append(_labelled_truth(placed, coverage, window, bone_mask, scene.style, rng))
        _osteophytes(scene, attenuation, level, style.mu_cortical)
    return bone_mask, truths


def _placed_body(scene: Scene, level: str) -> VertebraTruth:
    """The body's place in the image; heights, box and ROI are filled in once it is drawn."""
    body = scene.anat.bodies[level]
    origin, psi = scene.frames[level]
    centre_img = scene.frame.to_image(origin[None])[0]
    # image angle of the u axis: world angle psi + rho, y flipped
    angle = -(psi + scene.frame.rho)
    return VertebraTruth(
        level=level, label=scene.anat.grades.get(level, "normal"), shape=body.shape, height_loss=0.0,
        anterior_height_mm=0.0, middle_height_mm=0.0, posterior_height_mm=0.0, body=body,
        centre_x=float(centre_img[0]), centre_y=float(centre_img[1]), angle_deg=math.degrees(angle),
        mm_per_px=scene.mm_per_px, box=(0, 0, 0, 0), roi=(0, 0, 0, 0),
    )


def _body_window(placed: VertebraTruth, rows: int, cols: int) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the pixels the body can reach, clipped to the image; None if outside."""
    body, px = placed.body, 1.0 / placed.mm_per_px
    reach = (math.hypot(body.depth_mm, body.reference_height_mm * 1.1) / 2.0 + 2.0) * px
    x0 = int(max(math.floor(placed.centre_x - reach), 0))
    x1 = int(min(math.ceil(placed.centre_x + reach) + 1, cols))
    y0 = int(max(math.floor(placed.centre_y - reach), 0))
    y1 = int(min(math.ceil(placed.centre_y + reach) + 1, rows))
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def _draw_body(attenuation: np.ndarray, placed: VertebraTruth, window: tuple[int, int, int, int],
               style: _BodyStyle, grade: str, rng: np.random.Generator) -> np.ndarray:
    """Trabecular core with striated texture, cortical walls, endplates seen edge-on, and for
    moderate and severe fractures a broken endplate and an impaction band.  Returns coverage."""
    body, mm_per_px = placed.body, placed.mm_per_px
    x0, y0, x1, y1 = window
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    u, v = local_coordinates(placed, xs + 0.5, ys + 0.5)
    coverage, x_wall, d_top, d_bottom, _ = body_fields(body, u, v, mm_per_px)
    xw = np.clip(x_wall, -1.0, 1.0)
    chord = body.lateral_width_mm * np.sqrt(1.0 - xw**2)
    inner = body.lateral_width_mm * np.sqrt(np.clip((1.0 - style.cortex_rel) ** 2 - xw**2, 0.0, None))
    texture = ndimage.gaussian_filter(rng.normal(size=u.shape), sigma=(1.6, 0.7))
    texture *= style.striation / max(float(texture.std()), 1e-6)
    plate_top = np.clip((style.endplate_mm - d_top) / mm_per_px + 0.5, 0.0, 1.0)
    plate_bottom = np.clip((style.endplate_mm - d_bottom) / mm_per_px + 0.5, 0.0, 1.0)
    if grade in ("moderate", "severe"):
        plate_top, plate_bottom, strength, band = _impaction(body, u, d_top, d_bottom, plate_top, plate_bottom, rng)
    else:
        strength, band = 0.0, 0.0
    mu_trabecular, mu_cortical = style.mu_trabecular, style.mu_cortical
    plate = np.maximum(plate_top, plate_bottom)
    value = mu_trabecular * inner * (1.0 + texture) + mu_cortical * (chord - inner)
    value = value + plate * (mu_cortical - mu_trabecular) * inner
    value = value + strength * mu_trabecular * inner * band
    attenuation[y0:y1, x0:x1] += (coverage * value).astype(np.float32)
    return coverage


def _impaction(body: BodyShape, u: np.ndarray, d_top: np.ndarray, d_bottom: np.ndarray, plate_top: np.ndarray,
               plate_bottom: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Broken endplate cortex and dense impaction band of a moderate or severe fracture.

    Mild fractures show the height loss alone, which is what keeps them next to normal bodies.
    Returns (plate_top, plate_bottom, band strength, band profile).
    """
    broken = np.clip((loss_profile(body.shape, np.clip(u / (body.depth_mm / 2.0), -1, 1), body.crush_anterior_share) - 0.4) / 0.6, 0.0, 1.0)
    breakage = float(rng.uniform(0.4, 0.8)) * broken
    upper = body.upper_share >= 0.5 or body.shape == "biconcave"
    lower = body.upper_share < 0.5 or body.shape == "biconcave"
    if upper:
        plate_top = plate_top * (1.0 - breakage)
    if lower:
        plate_bottom = plate_bottom * (1.0 - breakage)
    band_mm = 2.5 * body.reference_height_mm / 20.0
    strength = float(rng.uniform(0.5, 1.0)) * (0.8 + 2.0 * body.fracture_depth)
    band = np.zeros_like(u)
    if upper:
        band = band + np.exp(-((d_top / band_mm) ** 2))
    if lower:
        band = band + np.exp(-((d_bottom / band_mm) ** 2))
    return plate_top, plate_bottom, strength, band


def _labelled_truth(placed: VertebraTruth, coverage: np.ndarray, window: tuple[int, int, int, int],
                    bone_mask: np.ndarray, style: SynthStyle, rng: np.random.Generator) -> VertebraTruth:
    """Mark the body in ``bone_mask``; its tight box, localiser ROI and measured heights."""
    rows, cols = bone_mask.shape
    x0, y0, x1, y1 = window
    inside = coverage >= 0.5
    bone_mask[y0:y1, x0:x1] |= inside
    rr, cc = np.nonzero(inside)
    if rr.size == 0:
        raise RuntimeError(f"vertebra {placed.level} fell outside the {rows}x{cols} image")
    box = (int(x0 + cc.min()), int(y0 + rr.min()), int(x0 + cc.max() + 1), int(y0 + rr.max() + 1))
    ha, hm, hp = body_heights_mm(placed.body)
    return replace(
        placed, height_loss=float(1.0 - min(ha, hm, hp) / placed.body.reference_height_mm),
        anterior_height_mm=ha, middle_height_mm=hm, posterior_height_mm=hp, box=box,
        roi=_localiser_roi(box, rows, cols, style.roi_margin, style.roi_jitter, rng),
    )


def _localiser_roi(box: tuple[int, int, int, int], rows: int, cols: int, margin: float, jitter_fraction: float,
                   rng: np.random.Generator) -> tuple[int, int, int, int]:
    """The body box padded by ``margin`` per side (default ~7 %) and jittered by +-``jitter_fraction``
    (default 4.5 %) like a localiser, in the image; one draw of 4 whatever the style."""
    bw, bh = box[2] - box[0], box[3] - box[1]
    pad = np.array([margin * bw, margin * bh, margin * bw, margin * bh])
    jitter = rng.uniform(-jitter_fraction, jitter_fraction, size=4) * np.array([bw, bh, bw, bh])
    return (
        int(max(math.floor(box[0] - pad[0] + jitter[0]), 0)),
        int(max(math.floor(box[1] - pad[1] + jitter[1]), 0)),
        int(min(math.ceil(box[2] + pad[2] + jitter[2]), cols)),
        int(min(math.ceil(box[3] + pad[3] + jitter[3]), rows)),
    )


def _osteophytes(scene: Scene, attenuation: np.ndarray, level: str, mu_cortical: float) -> None:
    """Small spurs at the anterior corners of a degenerated level."""
    spur = scene.anat.osteophytes[level]
    if spur <= 0:
        return
    body = scene.anat.bodies[level]
    for sign in (1.0, -1.0):
        top, bottom = endplate_heights(body, np.array([-1.0]))
        v_corner = float(top[0]) if sign > 0 else -float(bottom[0])
        u_corner = -body.depth_mm / 2.0
        tri = np.array([[u_corner + 0.5, v_corner], [u_corner - spur, v_corner + sign * spur * 0.35],
                        [u_corner + 0.5, v_corner - sign * 3.0]])
        add_polygon(attenuation, scene.to_img(level, tri), 0.5 * mu_cortical * body.lateral_width_mm * 0.5)


# --------------------------------------------------------------------------------------------
# Posterior elements, sacrum, ribs, aorta
# --------------------------------------------------------------------------------------------
def posterior_elements(scene: Scene, attenuation: np.ndarray, rng: np.random.Generator) -> None:
    """Pedicles, articular pillars and spinous processes of every level above S1."""
    anat, mu_cortical = scene.anat, scene.mu_cortical
    for idx, level in enumerate(CHAIN_LEVELS):
        if level == "S1":
            continue
        body = anat.bodies[level]
        h, d = body.reference_height_mm, body.depth_mm
        wall = d / 2.0
        ped_len = (0.33 if level.startswith("L") else 0.30) * d
        pillar = 11.0 * anat.scale
        disc_above = anat.discs.get(CHAIN_LEVELS[idx - 1], 5.0) if idx > 0 else 5.0
        disc_below = anat.discs[level]
        pedicle = np.array([[wall - 1.5, 0.02 * h], [wall - 1.5, 0.42 * h], [wall + ped_len, 0.36 * h], [wall + ped_len, 0.0]])
        add_hollow_polygon(attenuation, scene.to_img(level, pedicle), 0.35 * mu_cortical * body.lateral_width_mm * 0.45)
        base = wall + ped_len - 2.0
        articular = np.array([
            [base, 0.45 * h + 0.55 * disc_above + 2.0], [base + pillar * 0.8, 0.5 * h + 0.6 * disc_above + 4.0],
            [base + pillar, 0.1 * h], [base + pillar * 0.9, -0.5 * h - 0.5 * disc_below - 3.0],
            [base + 1.5, -0.5 * h - 0.4 * disc_below - 1.0], [base, 0.0],
        ])
        add_hollow_polygon(attenuation, scene.to_img(level, articular), 0.5 * mu_cortical * 14.0 * anat.scale)
        spinous = _spinous_process(level, h, np.array([base + pillar * 0.6, -0.05 * h]), anat.scale, rng)
        add_hollow_polygon(attenuation, scene.to_img(level, spinous), 0.45 * mu_cortical * 9.0 * anat.scale, 0.5)


def _spinous_process(level: str, h: float, start: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Outline (body frame, mm): short and level in the lumbar spine, long and drooping above."""
    if level.startswith("L"):
        droop, length, width_base, width_tip = math.radians(rng.uniform(3, 12)), 30.0, 0.62 * h, 0.55 * h
    elif level in ("T10", "T11", "T12"):
        droop, length, width_base, width_tip = math.radians(rng.uniform(20, 35)), 34.0, 0.55 * h, 0.35 * h
    else:
        droop, length, width_base, width_tip = math.radians(rng.uniform(40, 58)), 40.0, 0.5 * h, 0.28 * h
    length *= scale
    direction = np.array([math.cos(droop), -math.sin(droop)])
    normal = np.array([-direction[1], direction[0]])
    tip = start + direction * length
    return np.array([start + normal * width_base / 2, tip + normal * width_tip / 2,
                     tip + direction * 2.0, tip - normal * width_tip / 2, start - normal * width_base / 2])


def sacrum(scene: Scene, attenuation: np.ndarray) -> None:
    """The sacrum below the S1 body, continuing posteriorly-inferiorly."""
    s1 = scene.anat.bodies["S1"]
    sac = np.array([[-s1.depth_mm / 2, -s1.reference_height_mm / 2], [s1.depth_mm / 2, -s1.reference_height_mm / 2],
                    [s1.depth_mm / 2 + 10, -120.0], [-s1.depth_mm / 2 + 15, -120.0]])
    add_hollow_polygon(attenuation, scene.to_img("S1", sac), 0.6 * scene.mu_cortical * s1.lateral_width_mm * 0.4, 0.7)


def ribs(scene: Scene, attenuation: np.ndarray, rng: np.random.Generator) -> None:
    """Ribs of T3-T12 on both sides, the far side slightly offset by magnification."""
    anat, px = scene.anat, scene.px
    for level in ("T3", "T4", "T5", "T6", "T7", "T8", "T9", "T10", "T11", "T12"):
        body = anat.bodies[level]
        d, h = body.depth_mm, body.reference_height_mm
        rib_no = int(level[1:])
        reach = 1.0 if rib_no <= 10 else (0.55 if rib_no == 11 else 0.35)
        for side in (0, 1):
            offset = np.array([rng.uniform(2, 7), rng.uniform(-7, -1)]) * side
            ctrl = np.array([
                [d / 2 + 3.0, 0.35 * h],
                [d / 2 + 40.0, 0.15 * h + 5.0],
                [d / 2 + 20.0 - 50.0 * reach, -45.0 * reach],
                [-d / 2 - 150.0 * reach, -95.0 * reach - 8.0],
            ]) * anat.scale + offset
            centre = scene.to_img(level, bezier(ctrl, 48))
            half = np.full(len(centre), (7.0 + 0.3 * rib_no) * anat.scale * px / 2.0)
            half[:6] *= np.linspace(0.6, 1.0, 6)
            rib_value = scene.mu_cortical * 3.2 * anat.scale * float(rng.uniform(0.7, 1.2))
            _draw_rib(attenuation, centre, half, rib_value)


def _draw_rib(attenuation: np.ndarray, centre: np.ndarray, half: np.ndarray, rib_value: float) -> None:
    """A hollow band along ``centre`` (image px); the rib runs obliquely out of the beam
    anteriorly, so it fades in segments."""
    normal = polyline_normals(centre)
    for start, fade in ((0, 1.0), (12, 0.8), (24, 0.55), (36, 0.3)):
        seg = slice(start, min(start + 13, len(centre)))
        c, n, w = centre[seg], normal[seg], half[seg, None]
        add_polygon(attenuation, np.concatenate([c + n * w, (c - n * w)[::-1]]), fade * rib_value)
        add_polygon(attenuation, np.concatenate([c + n * w * 0.6, (c - n * w * 0.6)[::-1]]), -0.35 * fade * rib_value)


def aortic_calcification(scene: Scene, attenuation: np.ndarray, rng: np.random.Generator) -> None:
    """Calcified plaques anterior to L1-L4, more often with age."""
    anat = scene.anat
    if rng.random() < 0.1 + 0.5 * float(np.clip((anat.age_years - 55) / 35, 0, 1)):
        for level in rng.choice(["L1", "L2", "L3", "L4"], size=int(rng.integers(1, 4)), replace=False):
            body = anat.bodies[str(level)]
            u0 = -body.depth_mm / 2 - rng.uniform(4, 14)
            v0 = rng.uniform(-0.5, 0.5) * body.reference_height_mm
            seg = np.array([[u0, v0], [u0 - 1.2, v0], [u0 - 1.5, v0 - rng.uniform(3, 9)], [u0 - 0.3, v0 - rng.uniform(3, 9)]])
            add_polygon(attenuation, scene.to_img(str(level), seg), rng.uniform(0.15, 0.4) * scene.bone_contrast)
