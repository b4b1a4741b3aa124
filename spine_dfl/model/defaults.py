"""The model's names and default settings, in plain Python (no torch), so that ``spine_dfl.config``
validates against them without importing the network.

DEFAULT_BRANCH_WEIGHTS: (g, p, side) weights of the fused logits and of the loss; the public
DFL-CNN code's 1, 1, 0.1 (the side branch is a regulariser, not a classifier of its own).
BACKBONES: the backbone names ``model.backbones`` builds (it checks it builds exactly these).
PSTREAM_LAYERS: where the P-stream may read, per backbone; the first is the default (the paper's cut).
"""

from __future__ import annotations

DEFAULT_BRANCH_WEIGHTS: tuple[float, float, float] = (1.0, 1.0, 0.1)

BACKBONES: tuple[str, ...] = ("vgg16_bn", "resnet50", "resnet18")
# An earlier layer gives a finer map (stride 8 instead of 16 for ResNet) and smaller patches; the
# G-stream always runs on to the backbone's deepest features.
PSTREAM_LAYERS: dict[str, tuple[str, ...]] = {
    "vgg16_bn": ("conv4_3", "conv3_3"),
    "resnet50": ("layer3", "layer2"),
    "resnet18": ("layer3", "layer2"),
}
