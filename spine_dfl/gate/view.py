"""The learned lateral-spine-view score and orientation classifier: one small CNN, nine logits.

``ViewNet`` reads a square letterboxed thumbnail of a whole image (``thumbnail``: the aspect ratio
kept, intensities mapped from two percentiles to [0, 1], zero padding) and gives nine logits:
class ``i`` < 8 = "a lateral spine film stored in orientation ``ORIENTATIONS[i]``" (the
:class:`~spine_dfl.io.orientation.Orientation` whose ``apply`` makes the stored pixels canonical,
``Orientation.index == i``), class 8 = "not a lateral spine film".  ``predict_view`` turns one
image's pixels into a :class:`ViewPrediction`: the lateral probability (the sum of the eight),
the most probable orientation and its share among the eight.

Knows no files: checkpoints are ``gate.view_checkpoint``'s business.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spine_dfl.io.orientation import ORIENTATIONS, Orientation

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = ["NOT_LATERAL", "NUM_CLASSES", "LoadedView", "ViewNet", "ViewPrediction", "predict_thumbnails",
           "predict_view", "thumbnail"]

NUM_CLASSES = len(ORIENTATIONS) + 1
NOT_LATERAL = len(ORIENTATIONS)  # the class index of "not a lateral spine film"
DEFAULT_SIZE = 128
DEFAULT_PERCENTILES = (1.0, 99.0)


def thumbnail(pixels: ArrayLike, size: int = DEFAULT_SIZE, percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> np.ndarray:
    """(size, size) float32 in [0, 1]: ``pixels`` (rows, cols) resized to fit (bilinear, antialiased),
    mapped from its (low, high) percentiles to [0, 1] (clipped), centred on a zero background."""
    image = np.asarray(pixels, dtype=np.float32)
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 2 or min(image.shape) < 1:
        raise ValueError(f"an image must be (rows, cols) or (1, rows, cols), got {tuple(image.shape)}")
    if not np.isfinite(image).all():
        image = np.nan_to_num(image, nan=0.0, posinf=0.0, neginf=0.0)
    rows, cols = image.shape
    scale = min(size / rows, size / cols)
    out_h, out_w = min(size, max(1, round(rows * scale))), min(size, max(1, round(cols * scale)))
    resized = F.interpolate(torch.from_numpy(np.ascontiguousarray(image))[None, None], size=(out_h, out_w),
                            mode="bilinear", align_corners=False, antialias=True)[0, 0].numpy()
    low, high = np.percentile(resized, [float(percentiles[0]), float(percentiles[1])])
    scaled = np.clip((resized - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(resized)
    out = np.zeros((size, size), dtype=np.float32)
    top, left = (size - out_h) // 2, (size - out_w) // 2
    out[top: top + out_h, left: left + out_w] = scaled
    return out


def _stage(c_in: int, c_out: int, convs: int = 2) -> nn.Sequential:
    """``convs`` 3x3 convolutions (the first with stride 2), each with batch norm and ReLU."""
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, stride=2 if i == 0 else 1, padding=1, bias=False),
                   nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class ViewNet(nn.Module):
    """Five stride-2 stages (a 4 x 4 map at 128 px; one convolution in the first, two in the others),
    then a linear head on the flattened, squeezed map (where things lie decides the orientation)
    beside the global mean; nine logits."""

    def __init__(self, widths: Sequence[int] = (8, 16, 32, 48, 64), size: int = DEFAULT_SIZE, dropout: float = 0.2):
        super().__init__()
        widths = [int(w) for w in widths]
        reduction = 2 ** len(widths)
        if size % reduction:
            raise ValueError(f"thumbnail size {size} must be a multiple of {reduction}")
        self.arguments = {"widths": widths, "size": int(size), "dropout": float(dropout)}
        chans = [1, *widths]
        # one convolution at the first (largest) scale, two at the others
        self.features = nn.Sequential(*(_stage(a, b, 1 if i == 0 else 2) for i, (a, b) in enumerate(zip(chans, chans[1:]))))
        grid = size // reduction
        self.squeeze = nn.Conv2d(widths[-1], 16, 1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(16 * grid * grid + widths[-1], NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, size, size) thumbnails -> (B, 9) logits."""
        f = self.features(x)
        spatial = F.relu(self.squeeze(f)).flatten(1)
        pooled = f.mean(dim=(2, 3))
        return self.head(self.dropout(torch.cat([spatial, pooled], dim=1)))


@dataclass
class LoadedView:
    """A ready view classifier (eval mode) and how to make its thumbnail."""

    model: ViewNet
    size: int
    percentiles: tuple[float, float]
    training: dict[str, Any]
    raw: dict[str, Any]


@dataclass(frozen=True)
class ViewPrediction:
    """``lateral_probability``: P(a lateral spine film) = the sum of the eight orientation classes;
    ``orientation``: the most probable of them (what takes the stored pixels to canonical);
    ``orientation_probability``: its share among the eight; ``probabilities``: all nine (float64)."""

    lateral_probability: float
    orientation: Orientation
    orientation_probability: float
    probabilities: np.ndarray

    @property
    def is_lateral(self) -> bool:
        return self.lateral_probability >= 0.5

    def share(self, orientation: Orientation) -> float:
        """``orientation``'s share among the eight orientation classes."""
        lateral = np.asarray(self.probabilities[:NOT_LATERAL], dtype=np.float64)
        total = float(lateral.sum())
        return float(lateral[orientation.index] / total) if total > 0 else 1.0 / len(ORIENTATIONS)

    def head_axis_share(self, orientation: Orientation) -> float:
        """The share of the two orientations that put the head where ``orientation`` does (it and its
        mirror image): what counting levels needs, whichever side the patient faces."""
        return self.share(orientation) + self.share(orientation.mirrored)


def _prediction(probs: np.ndarray) -> ViewPrediction:
    lateral = probs[:NOT_LATERAL]
    total = float(lateral.sum())
    best = int(np.argmax(lateral))
    share = float(lateral[best] / total) if total > 0 else 1.0 / len(ORIENTATIONS)
    return ViewPrediction(lateral_probability=min(1.0, total), orientation=ORIENTATIONS[best],
                          orientation_probability=share, probabilities=probs)


@torch.no_grad()
def predict_thumbnails(model: ViewNet, thumbnails: torch.Tensor | np.ndarray, batch_size: int = 256) -> np.ndarray:
    """(N, 9) float64 probabilities of (N, size, size) or (N, 1, size, size) thumbnails (eval mode)."""
    x = torch.as_tensor(np.asarray(thumbnails, dtype=np.float32))
    if x.ndim == 3:
        x = x[:, None]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [torch.softmax(model(x[i: i + batch_size].to(device)).double(), dim=1).cpu()
           for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, NUM_CLASSES))


def predict_view(loaded: LoadedView, pixels: np.ndarray, turned: bool = True) -> ViewPrediction:
    """The view and orientation of one image's stored pixels (rows, cols), bone bright.

    ``turned``: the thumbnail is also read in the other 7 orientations (one batch of 8) and the
    probabilities averaged, each mapped back to the stored film (a thumbnail turned by ``g`` and
    read as needing ``o`` means the film needs ``g`` then ``o``): a steadier reading, whose
    orientation share is what ``gate.orientation`` trusts for counting levels.
    """
    thumb = thumbnail(pixels, loaded.size, loaded.percentiles)
    if not turned:
        return _prediction(predict_thumbnails(loaded.model, thumb[None])[0])
    probs = predict_thumbnails(loaded.model, np.stack([g.apply(thumb) for g in ORIENTATIONS]))  # (8, 9)
    combined = np.zeros(NUM_CLASSES)
    combined[NOT_LATERAL] = probs[:, NOT_LATERAL].sum()
    for g, row in zip(ORIENTATIONS, probs):
        for i, o in enumerate(ORIENTATIONS):
            combined[g.then(o).index] += row[i]
    return _prediction(combined / len(ORIENTATIONS))
