"""Manifest rows -> one locator sample per radiograph (letterboxed input + truth in original pixels).

A manifest has one row per vertebra; the locator learns from whole radiographs, so rows are
grouped by image: every row's box (``x_min .. y_max``), level (``vertebra``) and, where all twelve
cells are numbers, its six points (``sa_x .. ip_y``) become that image's truth. Rows without a
box cannot teach a detector and are an error naming the row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from spine_dfl.io import ROI_COLUMNS, read_image
from spine_dfl.io.orientation import CANONICAL, canonical_box, canonical_points, parse_orientation, stored_orientation
from spine_dfl.io.vocabulary import POINT_COLUMNS, sort_levels
from spine_dfl.locate.preprocess import letterbox


@dataclass
class LocatorSample:
    """One radiograph: ``tensor`` (1, H, W) letterboxed input, ``to_original`` its (3, 3) map back;
    truth in original pixels: ``boxes`` (N, 4), ``points`` (N, 6, 2) (NaN rows: no landmarks),
    ``levels`` (N,) indices into the level names (-1: unknown); ``spacing_mm`` (row, col) or None;
    ``image_shape`` (rows, cols) of the radiograph (decode drops peaks centred outside it). A film
    stored turned (its PatientOrientation) is held canonical: ``orientation`` names the turn, and
    ``canonical_pixels`` applies it to the stored pixels (for refinement at full resolution)."""

    image: str
    split: str
    tensor: torch.Tensor
    to_original: torch.Tensor
    boxes: np.ndarray
    points: np.ndarray
    levels: np.ndarray
    spacing_mm: tuple[float, float] | None
    spacing_source: str | None
    image_shape: tuple[int, int] | None = None  # (rows, cols) of the (canonical) radiograph
    orientation: str = "as stored"  # what turned the stored film to the canonical one the sample holds

    def canonical_pixels(self, stored: np.ndarray) -> np.ndarray:
        return parse_orientation(self.orientation).apply(stored)

    def input_truth(self) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (N, 4) and points (N, 6, 2) in input-tensor pixels (the inverse letterbox map)."""
        to_input = np.linalg.inv(self.to_original.numpy())
        linear, shift = to_input[:2, :2], to_input[:2, 2]
        corners = self.boxes.reshape(-1, 2) @ linear.T + shift
        return corners.reshape(-1, 4), self.points @ linear.T + shift


def manifest_levels(table: pd.DataFrame) -> list[str]:
    """Level names of a manifest table in anatomical order (the locator's level head)."""
    names = [v for v in table["vertebra"].astype(str).unique().tolist() if v]
    if len(names) < 2:
        raise ValueError("the manifest's 'vertebra' column names fewer than two levels; the locator needs levels")
    return sort_levels(names)


def _numeric_points(rows: pd.DataFrame) -> np.ndarray:
    if not all(c in rows.columns for c in POINT_COLUMNS):
        return np.full((len(rows), 6, 2), np.nan)
    values = rows[list(POINT_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64, copy=True)
    values[~np.isfinite(values).all(axis=1)] = np.nan
    return values.reshape(-1, 6, 2)


def image_truth(rows: pd.DataFrame, levels: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes, points, level indices) of one image's manifest rows; ValueError names a row without a box."""
    boxes = rows[list(ROI_COLUMNS)].to_numpy(np.float64, copy=True)
    missing = ~np.isfinite(boxes).all(axis=1)
    if missing.any():
        row = int(rows["row"].to_numpy()[np.flatnonzero(missing)[0]]) if "row" in rows else -1
        raise ValueError(f"manifest row {row}: no box (x_min .. y_max); the locator trains on boxed vertebrae")
    lookup = {name: i for i, name in enumerate(levels)}
    level_index = np.array([lookup.get(str(v), -1) for v in rows["vertebra"].tolist()], dtype=np.int64)
    return boxes, _numeric_points(rows), level_index


def load_samples(
    table: pd.DataFrame, levels: Sequence[str], size_hw: tuple[int, int],
    percentiles: tuple[float, float] = (1.0, 99.0), splits: Sequence[str] | None = None,
) -> list[LocatorSample]:
    """One sample per image of ``table`` (rows of ``splits`` only, when given), in image order."""
    if splits is not None and "split" in table.columns:
        table = table[table["split"].isin(list(splits))]
    samples = []
    for image, rows in table.groupby("image", sort=True):
        boxes, points, level_index = image_truth(rows, levels)
        radiograph = read_image(image)
        pixels, spacing = radiograph.pixels, radiograph.spacing_mm
        # A film stored turned or mirrored (its PatientOrientation) is learnt from, and evaluated on, its
        # canonical view, as score shows it: truth and image in canonical pixels.
        found = stored_orientation(str(image))
        orientation = CANONICAL if found is None else found[0]
        if not orientation.is_identity:
            shape = np.shape(pixels)[-2:]
            boxes = np.array([canonical_box(b, orientation, shape) for b in boxes]).reshape(-1, 4)
            points = canonical_points(points, orientation, shape)
            pixels, spacing = orientation.apply(pixels), orientation.spacing_to_canonical(spacing)
        tensor, to_original = letterbox(pixels, size_hw, percentiles)
        samples.append(LocatorSample(
            image=str(image), split=str(rows["split"].iloc[0]) if "split" in rows else "",
            tensor=tensor, to_original=to_original, boxes=boxes, points=points, levels=level_index,
            spacing_mm=spacing, spacing_source=radiograph.meta.spacing_source,
            image_shape=tuple(int(v) for v in np.shape(pixels)[-2:]), orientation=orientation.name,
        ))
    return samples

