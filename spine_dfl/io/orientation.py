"""The eight ways a lateral film can be stored (4 rotations x mirror) and the header's word on them.

A film is *canonical* when the head is up and the patient faces left (anterior at column 0): the
synth films' ``PatientOrientation`` (P, F), and what the locator and the grader are trained on.
An :class:`Orientation` names what takes the stored pixels to canonical: first a left-right flip
(``flip``), then ``k`` quarter turns counter-clockwise (``numpy.rot90``). ``predictions.csv``
writes it as ``as stored``, ``rot90``, ``flip``, ``flip+rot270`` and so on.

Coordinates: continuous pixels, pixel ``i`` covers ``[i, i + 1)``, ``x`` = column, ``y`` = row.
:meth:`Orientation.to_stored` is the (3, 3) homogeneous matrix from canonical to stored
pixels, the form ``to_original`` matrices take, so every output computed on the canonical image
lands on the file's own pixels.

Imports nothing of the package (``io`` rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CANONICAL", "ORIENTATIONS", "Orientation", "canonical_box", "orientation_from_header", "parse_orientation",
           "stored_orientation"]

# PatientOrientation direction words of the canonical film: columns run posterior, rows to the feet.
_CANONICAL_WORDS = ("P", "F")
_OPPOSITE = {"A": "P", "P": "A", "H": "F", "F": "H", "L": "R", "R": "L"}


@dataclass(frozen=True)
class Orientation:
    """Flip left-right (``flip``), then ``k`` counter-clockwise quarter turns: stored -> canonical."""

    flip: bool = False
    k: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", int(self.k) % 4)

    @property
    def name(self) -> str:
        turn = f"rot{90 * self.k}" if self.k else ""
        if self.flip:
            return "flip" + (f"+{turn}" if turn else "")
        return turn or "as stored"

    @property
    def is_identity(self) -> bool:
        return not self.flip and self.k == 0

    @property
    def index(self) -> int:
        """0..7: ``ORIENTATIONS.index(self)`` (a class index for an orientation classifier)."""
        return 4 * int(self.flip) + self.k

    def canonical_shape(self, shape: Sequence[int]) -> tuple[int, int]:
        """(rows, cols) of the canonical image of a stored (rows, cols) image."""
        rows, cols = int(shape[-2]), int(shape[-1])
        return (cols, rows) if self.k % 2 else (rows, cols)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """The canonical image of stored ``pixels`` (..., rows, cols); a contiguous copy."""
        out = np.asarray(pixels)
        if self.flip:
            out = out[..., :, ::-1]
        out = np.rot90(out, self.k, axes=(-2, -1))
        return np.ascontiguousarray(out)

    def to_stored(self, stored_shape: Sequence[int]) -> np.ndarray:
        """(3, 3) float64: homogeneous canonical (x, y, 1) -> stored (x, y, 1), for a stored image of
        (rows, cols) ``stored_shape``."""
        rows, cols = int(stored_shape[-2]), int(stored_shape[-1])
        matrix = np.eye(3)
        if self.flip:  # flipped (x, y) -> stored (cols - x, y)
            matrix = matrix @ np.array([[-1.0, 0.0, cols], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        h, w = rows, cols
        for _ in range(self.k):
            # one counter-clockwise turn of an (h, w) image: out (x', y') takes in (w - y', x'); out is (w, h)
            matrix = matrix @ np.array([[0.0, -1.0, w], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
            h, w = w, h
        return matrix

    def to_canonical(self, stored_shape: Sequence[int]) -> np.ndarray:
        """(3, 3) float64: stored -> canonical pixel coordinates (the inverse of :meth:`to_stored`)."""
        return np.linalg.inv(self.to_stored(stored_shape))

    def points_to_stored(self, points: np.ndarray, stored_shape: Sequence[int]) -> np.ndarray:
        """(..., 2) canonical (x, y) -> stored (x, y)."""
        return _map(points, self.to_stored(stored_shape))

    def boxes_to_stored(self, boxes: np.ndarray, stored_shape: Sequence[int]) -> np.ndarray:
        """(N, 4) canonical (x_min, y_min, x_max, y_max) -> the same boxes in stored pixels (quarter
        turns and flips keep boxes axis-aligned)."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        corners = _map(boxes.reshape(-1, 2, 2), self.to_stored(stored_shape))
        return np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)

    def spacing_to_canonical(self, spacing: tuple[float, float] | None) -> tuple[float, float] | None:
        """(row, col) pixel spacing of the canonical image: swapped by a quarter turn."""
        if spacing is None:
            return None
        return (spacing[1], spacing[0]) if self.k % 2 else (spacing[0], spacing[1])

    def then(self, other: Orientation) -> Orientation:
        """The orientation that applies ``self``, then ``other``."""
        # rot(k) then flip = flip then rot(-k): move the second flip to the front
        if other.flip:
            return Orientation(not self.flip, other.k - self.k)
        return Orientation(self.flip, self.k + other.k)

    @property
    def mirrored(self) -> Orientation:
        """The orientation whose canonical image is this one's mirrored left-right: the same head-foot
        axis, anterior on the other side (``self.then(Orientation(True, 0))``)."""
        return Orientation(not self.flip, -self.k)

    def inverse(self) -> Orientation:
        """What takes the canonical image back to the stored one."""
        return Orientation(True, self.k) if self.flip else Orientation(False, -self.k)


CANONICAL = Orientation()
ORIENTATIONS: tuple[Orientation, ...] = tuple(Orientation(flip, k) for flip in (False, True) for k in range(4))


def parse_orientation(name: str) -> Orientation:
    """The :class:`Orientation` of a name :attr:`Orientation.name` writes; ValueError otherwise."""
    for candidate in ORIENTATIONS:
        if candidate.name == str(name).strip():
            return candidate
    raise ValueError(f"unknown orientation {name!r}; known: {[o.name for o in ORIENTATIONS]}")


def _map(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    flat = pts.reshape(-1, 2)
    out = flat @ matrix[:2, :2].T + matrix[:2, 2]
    return out.reshape(pts.shape)


def _direction(word: str) -> str | None:
    """The dominant patient direction of one PatientOrientation value ('P', 'FP' -> 'F', '' -> None)."""
    word = str(word).strip().upper()
    return word[0] if word and word[0] in _OPPOSITE else None


def orientation_from_header(patient_orientation: Sequence[str] | None) -> Orientation | None:
    """The orientation that makes a lateral film canonical, from its PatientOrientation (0020,0020):
    the directions of increasing column and row. None when absent, malformed or not a lateral
    pair (one of A/P and one of H/F): a frontal film's L/R words are the header gate's business."""
    if patient_orientation is None or isinstance(patient_orientation, str):
        return None
    words = [_direction(value) for value in patient_orientation]
    if len(words) != 2 or None in words:
        return None
    axes = {w: i for i, w in enumerate(words)}  # 0: column direction, 1: row direction
    ap = next((w for w in words if w in "AP"), None)
    hf = next((w for w in words if w in "HF"), None)
    if ap is None or hf is None:
        return None
    for candidate in ORIENTATIONS:
        if _words_after(candidate, axes[ap], ap, axes[hf], hf) == _CANONICAL_WORDS:
            return candidate
    return None


def _words_after(orientation: Orientation, ap_axis: int, ap: str, hf_axis: int, hf: str) -> tuple[str, str]:
    """The (column, row) direction words after ``orientation`` of a film whose column/row axes carry them."""
    # Unit steps along stored +x and +y, mapped to canonical by the linear part of to_canonical.
    linear = np.linalg.inv(orientation.to_stored((2, 2)))[:2, :2]
    words = [None, None]
    for axis, word in ((ap_axis, ap), (hf_axis, hf)):
        step = linear @ (np.array([1.0, 0.0]) if axis == 0 else np.array([0.0, 1.0]))
        target = 0 if abs(step[0]) > abs(step[1]) else 1
        words[target] = word if step[target] > 0 else _OPPOSITE[word]
    return (str(words[0]), str(words[1]))


def stored_orientation(path: str) -> tuple[Orientation, tuple[int, int]] | None:
    """(the orientation that makes a DICOM film canonical per its PatientOrientation, its stored (rows,
    cols)), or None for a file that is not DICOM, has no lateral PatientOrientation or no size:
    what training reads so that every model learns from canonical films (a DRR cohort, a PACS
    export, stores LL and RL films facing opposite ways)."""
    from spine_dfl.io.discovery import is_dicom
    from spine_dfl.io.header import read_dicom_header

    if not is_dicom(path):
        return None
    header = read_dicom_header(path, specific_tags=["PatientOrientation", "Rows", "Columns"])
    orientation = orientation_from_header(header.get("PatientOrientation"))
    if orientation is None or "Rows" not in header or "Columns" not in header:
        return None
    return orientation, (int(header.Rows), int(header.Columns))


def canonical_box(box: Sequence[float], orientation: Orientation, stored_shape: Sequence[int]) -> tuple[float, ...]:
    """A stored-pixel (x_min, y_min, x_max, y_max) box on the canonical film."""
    back = orientation.inverse()  # canonical -> stored, undone
    out = back.boxes_to_stored(np.asarray(box, dtype=np.float64)[None], orientation.canonical_shape(stored_shape))[0]
    return tuple(float(v) for v in out)


def canonical_points(points: np.ndarray, orientation: Orientation, stored_shape: Sequence[int]) -> np.ndarray:
    """Stored-pixel (..., 2) points on the canonical film."""
    return orientation.inverse().points_to_stored(points, orientation.canonical_shape(stored_shape))
