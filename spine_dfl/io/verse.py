"""VerSe centroid files (``*_seg-subreg_ctd.json``), read and written exactly as VerSe defines them.

The file is a JSON list: the first entry ``{"direction": ["P", "I", "R"]}`` holds the axis codes,
then one ``{"label": L, "X": x, "Y": y, "Z": z}`` per vertebra, where X, Y, Z are voxel indices of
the image *reoriented to those axis codes* (a flipped axis maps index i to n - 1 - i, as nibabel's
reorientation does).  Labels: 1-7 C1-C7, 8-19 T1-T12, 20-25 L1-L6, 26 sacrum, 27 coccyx, 28 T13.
Entries with a NaN coordinate are skipped.  Here centroids are voxel indices (i, j, k) of the
*stored* array, so they combine with the NIfTI affine directly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from spine_dfl.io.errors import InputError

__all__ = ["VERSE_LABELS", "VerseFormatError", "level_label", "read_centroids", "vertebra_label", "voxel_to_world",
           "write_centroids"]

VERSE_LABELS: dict[int, str] = {
    **{i: f"C{i}" for i in range(1, 8)},
    **{i + 7: f"T{i}" for i in range(1, 13)},
    **{i + 19: f"L{i}" for i in range(1, 7)},
    26: "S1", 27: "Co", 28: "T13",
}
_LABEL_OF_LEVEL = {name: label for label, name in VERSE_LABELS.items()}


class VerseFormatError(InputError):
    """A centroid file that is not VerSe's format, or whose centroids do not fit the image."""


def level_label(name: str) -> int | None:
    """The VerSe label of a level name (``"T13"`` -> 28, ``"S1"`` -> 26); None when unknown."""
    return _LABEL_OF_LEVEL.get(str(name).strip().upper())


def vertebra_label(text: str) -> int | None:
    """The VerSe label a grades-table ``vertebra`` cell names: a label number or a level name; None when
    it is neither (a number outside ``VERSE_LABELS`` comes back as given, for the caller to refuse)."""
    text = str(text).strip()
    return int(text) if text.isdigit() else level_label(text)


def voxel_to_world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Voxel indices (N, 3) of the stored array -> world (RAS mm) (N, 3)."""
    ijk = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
    affine = np.asarray(affine, dtype=np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _transform(axcodes: Sequence[str], affine: np.ndarray):
    """The nibabel orientation transform from the stored array to the axis codes, and its inverse."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    stored = io_orientation(np.asarray(affine, dtype=np.float64))
    target = axcodes2ornt(tuple(axcodes))
    return ornt_transform(stored, target), ornt_transform(target, stored)


def _apply(ornt: np.ndarray, xyz: np.ndarray, shape_in: Sequence[int]) -> np.ndarray:
    """Voxel indices through a nibabel orientation transform (axis permutation and flips), as
    ``nibabel.orientations.apply_orientation`` moves the array: out axis ornt[i, 0] takes in axis i."""
    out = np.empty(3)
    for axis_in, (axis_out, flip) in enumerate(ornt):
        value = xyz[axis_in]
        out[int(axis_out)] = (shape_in[axis_in] - 1 - value) if flip < 0 else value
    return out


def _axcodes(entry: object, path: Path) -> tuple[str, str, str]:
    if not isinstance(entry, Mapping) or "direction" not in entry:
        raise VerseFormatError(f"{path}: entry 0 must be {{'direction': [three axis codes]}} (key 'direction' missing)")
    codes = entry["direction"]
    if (not isinstance(codes, (list, tuple)) or len(codes) != 3 or not all(isinstance(c, str) for c in codes)
            or sorted({"L": "R", "R": "R", "A": "A", "P": "A", "S": "S", "I": "S"}.get(c.upper(), "?") for c in codes)
            != ["A", "R", "S"]):
        raise VerseFormatError(f"{path}: entry 0, key 'direction': {codes!r} is not three axis codes "
                               f"(one of L/R, one of A/P, one of S/I)")
    return tuple(c.upper() for c in codes)  # type: ignore[return-value]


def read_centroids(path: str | Path, shape: Sequence[int], affine: np.ndarray) -> dict[int, np.ndarray]:
    """Label -> centroid (3,) as voxel indices (i, j, k) of the stored array of shape ``shape``.

    Raises VerseFormatError naming the entry and key: not a JSON list, no axis codes, a missing or
    non-numeric key, a label outside 1-28, a label twice, or a centroid outside the volume.
    """
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerseFormatError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(entries, list) or not entries:
        raise VerseFormatError(f"{path}: a VerSe centroid file is a JSON list whose entry 0 holds 'direction'")
    codes = _axcodes(entries[0], path)
    shape = tuple(int(n) for n in shape[:3])
    to_codes, to_stored = _transform(codes, affine)
    coded_shape = [0, 0, 0]
    for axis_in, (axis_out, _) in enumerate(to_codes):
        coded_shape[int(axis_out)] = shape[axis_in]
    centroids: dict[int, np.ndarray] = {}
    for index, entry in enumerate(entries[1:], start=1):
        if not isinstance(entry, Mapping):
            raise VerseFormatError(f"{path}: entry {index} is not an object with keys label, X, Y, Z")
        values = []
        for key in ("label", "X", "Y", "Z"):
            if key not in entry:
                raise VerseFormatError(f"{path}: entry {index}: key {key!r} missing")
            value = entry[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise VerseFormatError(f"{path}: entry {index}, key {key!r}: {value!r} is not a number")
            values.append(float(value))
        label, xyz = values[0], np.array(values[1:])
        if not np.isfinite(xyz).all():
            continue  # VerSe marks a centroid it could not place with NaN
        if not math.isfinite(label) or label != int(label) or not 1 <= int(label) <= 28:
            raise VerseFormatError(f"{path}: entry {index}, key 'label': {entry['label']!r} is outside "
                                   "VerSe's labels 1-28")
        if int(label) in centroids:
            raise VerseFormatError(f"{path}: entry {index}, key 'label': label {int(label)} appears twice")
        if any(c < -0.5 or c > n - 0.5 for c, n in zip(xyz, coded_shape)):
            raise VerseFormatError(f"{path}: entry {index} (label {int(label)}): centroid ({xyz[0]:g}, {xyz[1]:g}, "
                                   f"{xyz[2]:g}) lies outside the volume ({coded_shape[0]} x {coded_shape[1]} x "
                                   f"{coded_shape[2]} voxels in {''.join(codes)} order)")
        centroids[int(label)] = _apply(to_stored, xyz, coded_shape)
    return centroids


def write_centroids(path: str | Path, centroids: Mapping[int, Sequence[float]], shape: Sequence[int],
                    affine: np.ndarray, axcodes: Sequence[str] = ("P", "I", "R")) -> None:
    """Write ``centroids`` (label -> stored-array voxel indices) as a VerSe file in ``axcodes`` order
    (coordinates to 0.001 voxel; written to a temporary file and renamed, so no partial file)."""
    import os
    import tempfile

    path = Path(path)
    shape = tuple(int(n) for n in shape[:3])
    to_codes, _ = _transform(_axcodes({"direction": list(axcodes)}, path), affine)
    entries: list[dict[str, object]] = [{"direction": [c.upper() for c in axcodes]}]
    for label in sorted(centroids):
        if not 1 <= int(label) <= 28:
            raise VerseFormatError(f"{path}: label {label} is outside VerSe's labels 1-28")
        x, y, z = (round(float(v), 3) for v in _apply(to_codes, np.asarray(centroids[label], dtype=np.float64), shape))
        entries.append({"label": int(label), "X": x, "Y": y, "Z": z})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(entries, fh, indent=1)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
