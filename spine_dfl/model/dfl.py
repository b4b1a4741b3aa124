"""DFL-CNN (Wang, Morariu & Davis, CVPR 2018): a discriminative filter bank inside a CNN.

    x (B,1,S,S) in [0,1] -> normalise -> trunk -> f (B,C,H,W)            H = W = S/stride (rounded)
    G-stream: f -> head -> global average pool -> Linear(head_channels, M) -> g (B,M)
    P-stream: f -> 1x1 conv, M*k filters -> global max pool (+ argmax) -> Linear(M*k, M) -> p (B,M)
    side:     the same M*k pooled responses, averaged per class (k each) -> side (B,M)
    fused = wg*g + wp*p + ws*side

Filter j of class c is channel c*k + j of `p_filters`. Every pooling is adaptive: any input size works.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import PSTREAM_LAYERS, build_backbone
from .defaults import DEFAULT_BRANCH_WEIGHTS

__all__ = ["DFLNet", "DFLOutput", "branch_loss", "dfl_loss"]


@dataclass
class DFLOutput:
    """What DFLNet.forward returns. B images, M classes, k filters per class, (H, W) conv4 map."""

    g: Tensor  # (B, M) G-stream logits
    p: Tensor  # (B, M) P-stream logits
    side: Tensor  # (B, M) side-branch logits: mean of each class's k pooled responses
    fused: Tensor  # (B, M) wg*g + wp*p + ws*side
    peak_index: Tensor  # (B, M*k) long: flat index row*W + col of each filter's maximum in the conv4 map
    peak_score: Tensor  # (B, M*k) each filter's maximum response
    feature_size: tuple[int, int]  # (H, W) of the conv4 map
    response_maps: Tensor | None = None  # (B, M*k, H, W) when forward(x, return_maps=True)
    embedding: Tensor | None = None  # (B, head_channels) the G-stream's globally pooled features (before its Linear)


class DFLNet(nn.Module):
    """DFL-CNN on a one-channel image.

    Args:
        backbone: "vgg16_bn" (paper; stride 8, receptive field 92 px), "resnet50" or "resnet18"
            (stride 16).
        num_classes: M.
        filters_per_class: k (the paper's 10).
        fuse_weights: (wg, wp, ws) for the fused logits (`DEFAULT_BRANCH_WEIGHTS`).
        pretrained: "none", "imagenet" (local torch hub cache only) or a state-dict path; see
            `build_backbone`.
        pstream_layer: where the trunk ends and the P-stream reads (``backbones.PSTREAM_LAYERS``:
            ResNet "layer3" (stride 16, default) or "layer2" (stride 8); VGG "conv4_3" (default) or
            "conv3_3"); the G-stream runs on to the deep features either way.
        streams: "dfl" (G + P + side) or "g_only": the plain backbone classifier, for ablations: no
            filter bank; p and side are zero logits (constant loss, no gradient) and fused = wg * g.

    Attributes:
        trunk: image -> conv4 features (B, C, H, W).
        g_stream: Sequential(head, pool, flatten, classifier): conv4 features -> g logits (B, M).
        p_filters: Conv2d(C, M*k, 1, bias=False), the discriminative filter bank.
        p_classifier: Linear(M*k, M).
        stride, receptive_field, rf_center_offset: conv4 geometry in input pixels (see `peak_boxes`).
        input_mean, input_std: buffers (1,1,1,1) normalising the [0, 1] input for the backbone.
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        filters_per_class: int = 10,
        fuse_weights: tuple[float, float, float] = DEFAULT_BRANCH_WEIGHTS,
        pretrained: str = "none",
        pstream_layer: str | None = None,
        streams: str = "dfl",
        pstream_region: str = "crop",
    ) -> None:
        super().__init__()
        if pstream_region not in ("crop", "roi"):
            raise ValueError(f"pstream_region must be 'crop' or 'roi', got {pstream_region!r}")
        if streams not in ("dfl", "g_only"):
            raise ValueError(f"streams must be 'dfl' or 'g_only', got {streams!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if filters_per_class < 1:
            raise ValueError(f"filters_per_class must be at least 1, got {filters_per_class}")
        if len(fuse_weights) != 3:
            raise ValueError(f"fuse_weights must be (g, p, side), got {fuse_weights}")
        parts = build_backbone(backbone, pretrained, pstream_layer)
        self.backbone_name = backbone
        self.pstream_layer = pstream_layer or PSTREAM_LAYERS[backbone][0]
        self.streams = streams
        self.pstream_region = pstream_region
        self.num_classes = num_classes
        self.filters_per_class = filters_per_class
        self.fuse_weights = tuple(float(w) for w in fuse_weights)
        self.stride = parts.stride
        self.receptive_field = parts.receptive_field
        self.rf_center_offset = parts.rf_center_offset
        self.register_buffer("input_mean", torch.full((1, 1, 1, 1), parts.input_mean))
        self.register_buffer("input_std", torch.full((1, 1, 1, 1), parts.input_std))

        num_filters = num_classes * filters_per_class
        self.trunk = parts.trunk
        self.g_stream = nn.Sequential(
            OrderedDict(
                head=parts.head,
                pool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(1),
                # Logits straight from the Linear (no BN/ReLU after it), so they can be negative.
                classifier=nn.Linear(parts.head_channels, num_classes),
            )
        )
        self.p_pool = nn.AdaptiveMaxPool2d(1, return_indices=True)
        self.p_filters: nn.Conv2d | None = None
        self.p_classifier: nn.Linear | None = None
        if streams == "dfl":
            self.p_filters = nn.Conv2d(parts.trunk_channels, num_filters, kernel_size=1, bias=False)
            self.p_classifier = nn.Linear(num_filters, num_classes)

    def trunk_features(self, x: Tensor) -> Tensor:
        """(B, 1, S, S) image in [0, 1] -> conv4 features (B, C, H, W)."""
        return self.trunk((x - self.input_mean) / self.input_std)

    def filter_responses(self, x: Tensor) -> Tensor:
        """(B, 1, S, S) image -> (B, M*k, H, W) P-stream filter responses (trunk, then the filter bank),
        before any pooling: what the input-gradient measurements of ``model.effective_field`` differentiate."""
        if self.p_filters is None:
            raise ValueError("a G-stream-only model (streams='g_only') has no P-stream filters")
        return self.p_filters(self.trunk_features(x))

    def forward(self, x: Tensor, return_maps: bool = False, roi: Tensor | None = None) -> DFLOutput:
        """x: (B, 1, S, S) intensities scaled to about [0, 1] (normalised here for the backbone).

        roi: (B, 4) the vertebra's box in input pixels (x_min, y_min, x_max, y_max), or None. With
        ``pstream_region == "roi"`` each filter's global max pool searches only the locations whose
        centre lies in it (``location_mask``): the G-stream reads the whole crop, margin included, for
        context, while the patches, the evidence a clinician reviews, lie on the vertebra. Without a
        roi (a whole-image model) the P-stream searches the whole crop.
        """
        features = self.trunk_features(x)
        stream = self.g_stream
        embedding = stream.flatten(stream.pool(stream.head(features)))  # what g_stream(features) computes on the way
        g = stream.classifier(embedding)
        if self.p_filters is None:
            return self._g_only(g, features, embedding)

        response_maps = self.p_filters(features)  # (B, M*k, H, W)
        searched = response_maps
        inside = self.searched_locations(roi, response_maps.shape[-2:])
        if inside is not None:
            searched = response_maps.masked_fill(~inside[:, None], torch.finfo(response_maps.dtype).min)
        pooled, peak_index = self.p_pool(searched)  # (B, M*k, 1, 1) each; index = row*W + col
        pooled = pooled.flatten(1)
        p = self.p_classifier(pooled)
        side = pooled.view(-1, self.num_classes, self.filters_per_class).mean(dim=-1)

        wg, wp, ws = self.fuse_weights
        return DFLOutput(
            g=g,
            p=p,
            side=side,
            fused=wg * g + wp * p + ws * side,
            peak_index=peak_index.flatten(1),
            peak_score=pooled,
            feature_size=(features.shape[-2], features.shape[-1]),
            response_maps=response_maps if return_maps else None,
            embedding=embedding,
        )

    def searched_locations(self, roi: Tensor | None, feature_size: tuple[int, int]) -> Tensor | None:
        """(B, H, W) bool: where the P-stream's max pool searches for these ROI boxes (input pixels),
        or None when it searches the whole crop (``pstream_region == "crop"`` or no boxes)."""
        if roi is None or self.pstream_region != "roi":
            return None
        return location_mask(roi, feature_size, self.stride, self.rf_center_offset)

    def _g_only(self, g: Tensor, features: Tensor, embedding: Tensor | None = None) -> DFLOutput:
        """The plain classifier's output: zero P and side logits, no peaks."""
        zeros = torch.zeros_like(g).detach()
        none = torch.zeros((g.shape[0], self.num_classes * self.filters_per_class), dtype=torch.long, device=g.device)
        return DFLOutput(g=g, p=zeros, side=zeros, fused=self.fuse_weights[0] * g, peak_index=none,
                         peak_score=none.to(g.dtype), feature_size=(features.shape[-2], features.shape[-1]),
                         embedding=embedding)

    def class_filter_slice(self, class_index: int) -> slice:
        """Channels of `p_filters` (and columns of `p_classifier`) belonging to class `class_index`."""
        if not 0 <= class_index < self.num_classes:
            raise IndexError(f"class index {class_index} outside 0..{self.num_classes - 1}")
        k = self.filters_per_class
        return slice(class_index * k, (class_index + 1) * k)

    def peak_boxes(self, peak_index: Tensor, feature_size: tuple[int, int]) -> Tensor:
        """Receptive-field boxes of flat conv4 indices, in input-tensor continuous pixels.

        peak_index: (...) long, row*W + col with (H, W) = feature_size.
        Returns (..., 4) float32 (x_min, y_min, x_max, y_max): a receptive_field-sized square centred at
        (rf_center_offset + stride*col, rf_center_offset + stride*row). Boxes may extend past the image
        (the theoretical receptive field includes the zero padding).
        """
        width = feature_size[1]
        row = torch.div(peak_index, width, rounding_mode="floor")  # integer division, never true division
        col = peak_index - row * width
        return location_boxes(row, col, self.stride, self.receptive_field, self.rf_center_offset)

    def param_groups(self, lr_backbone: float, lr_heads: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups: pretrained backbone (trunk + G head) vs new layers.

        New layers: g_stream.classifier, p_filters, p_classifier. Within each, BatchNorm parameters and
        biases (every 1-D parameter) get no weight decay. Each group carries a "name" key for logging.
        """
        backbone = [*self.trunk.named_parameters(), *self.g_stream.head.named_parameters()]
        heads = [*self.g_stream.classifier.named_parameters()]
        if self.p_filters is not None and self.p_classifier is not None:
            heads += [*self.p_filters.named_parameters(), *self.p_classifier.named_parameters()]
        groups = []
        for name, params, lr in (("backbone", backbone, lr_backbone), ("heads", heads, lr_heads)):
            decay = [p for _, p in params if p.ndim > 1]
            no_decay = [p for _, p in params if p.ndim <= 1]
            if decay:
                groups.append({"name": name, "params": decay, "lr": lr, "weight_decay": weight_decay})
            if no_decay:
                groups.append({"name": f"{name}_no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})
        return groups


def location_mask(roi: Tensor, feature_size: tuple[int, int], stride: float, center_offset: float) -> Tensor:
    """(B, H, W) bool: the feature locations whose centre lies in each sample's box.

    roi: (B, 4) input pixels (x_min, y_min, x_max, y_max); a location's centre is
    (center_offset + stride * col, center_offset + stride * row). Along an axis where no centre lies
    in the box (a box thinner than the stride), the centres nearest to it count, so every sample
    keeps at least one location.
    """
    height, width = int(feature_size[0]), int(feature_size[1])
    box = roi.to(torch.float32)

    def along(count: int, low: Tensor, high: Tensor) -> Tensor:  # (B, count) bool
        centres = center_offset + stride * torch.arange(count, device=box.device, dtype=torch.float32)
        outside = (low[:, None] - centres).clamp(min=0) + (centres - high[:, None]).clamp(min=0)
        return outside <= outside.amin(dim=1, keepdim=True)

    rows = along(height, box[:, 1], box[:, 3])
    cols = along(width, box[:, 0], box[:, 2])
    return rows[:, :, None] & cols[:, None, :]


def location_boxes(row: Tensor, col: Tensor, stride: int, receptive_field: int, center_offset: float) -> Tensor:
    """(...) rows and cols of feature-map locations -> (..., 4) receptive-field boxes (x_min, y_min,
    x_max, y_max) in input continuous pixels."""
    center_x = center_offset + stride * col.to(torch.float32)
    center_y = center_offset + stride * row.to(torch.float32)
    half = receptive_field / 2
    return torch.stack((center_x - half, center_y - half, center_x + half, center_y + half), dim=-1)


def dfl_loss(
    out: DFLOutput,
    target: Tensor,
    weights: tuple[float, float, float] = DEFAULT_BRANCH_WEIGHTS,
    class_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of the three branches' cross entropies.

    target: (B,) long class indices in 0..M-1. weights: (g, p, side). class_weights: (M,) or None,
    passed to cross_entropy (e.g. inverse class frequency).
    Returns (total, {"g": ..., "p": ..., "side": ...}): the weighted total to back-propagate and the
    unweighted per-branch losses (still attached to the graph; call .item() to log them).
    """
    return branch_loss(out.g, out.p, out.side, target, weights, class_weights)


def branch_loss(
    g: Tensor,
    p: Tensor,
    side: Tensor,
    target: Tensor,
    weights: tuple[float, float, float] = DEFAULT_BRANCH_WEIGHTS,
    class_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """`dfl_loss` on bare (B, M) logits of each branch (e.g. logits collected over a validation set)."""
    losses = {
        "g": F.cross_entropy(g.float(), target, weight=class_weights),
        "p": F.cross_entropy(p.float(), target, weight=class_weights),
        "side": F.cross_entropy(side.float(), target, weight=class_weights),
    }
    wg, wp, ws = weights
    total = wg * losses["g"] + wp * losses["p"] + ws * losses["side"]
    return total, losses
