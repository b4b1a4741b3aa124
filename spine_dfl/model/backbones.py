"""Backbones for DFL-CNN: a torchvision classifier cut into a shared trunk and a G-stream head.

The trunk ends at the paper's mid-level layer (VGG16 conv4_3, ResNet layer3); the head is the
rest of the convolutional backbone (VGG pool4 + conv5 block, ResNet layer4). Both see a one-channel
radiograph: the first convolution of an RGB-pretrained network is replaced by a one-channel one whose
weight is the RGB weight summed over its input channels, so that a grey image replicated over R, G, B
gives the same response.

Architecture and weight loading are separate steps (as in torchvision): the torchvision model is built
with its default random initialisation (VGG without its unused ImageNet classifier), weights are loaded into it (ImageNet file from the local torch hub cache or a
local state dict), then the stem is made one-channel and the model is cut. Nothing is downloaded, and
loaded BatchNorm statistics are never reset.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch import nn
from torchvision import models

from .defaults import BACKBONES, PSTREAM_LAYERS
from spine_dfl.io.errors import InputError, UnavailableError

__all__ = [
    "BACKBONES",
    "PSTREAM_LAYERS",
    "Backbone",
    "PretrainedWeightsMissing",
    "ReceptiveField",
    "build_backbone",
    "imagenet_weights_path",
    "receptive_field",
]

# ImageNet statistics of torchvision's weights (R, G, B), folded into one grey channel by plain
# averaging: mean 0.449, std 0.226. Averaging (not luma weighting) because the one-channel stem feeds
# the same grey value to what were all three input channels with equal weight (their weights are summed),
# so each channel's own normalisation contributes equally.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
GRAY_MEAN = sum(IMAGENET_MEAN_RGB) / 3
GRAY_STD = sum(IMAGENET_STD_RGB) / 3


class PretrainedWeightsMissing(UnavailableError, FileNotFoundError):
    """The ImageNet weight file is not in the local torch hub cache (and is never downloaded)."""


class ReceptiveField(NamedTuple):
    """Geometry of a feature map relative to the input tensor, in input pixels.

    size: side of the (theoretical) receptive field of one location.
    stride: distance between neighbouring locations.
    center_offset: continuous input coordinate (pixel i covers [i, i+1)) of the receptive-field centre
        of location (0, 0); location (row, col) is centred at (offset + stride*col, offset + stride*row).
    """

    size: int
    stride: int
    center_offset: float


@dataclass
class Backbone:
    """A backbone cut for DFL-CNN.

    trunk: (B, 1, S, S) normalised image -> (B, trunk_channels, S/stride, S/stride) conv4 features.
    head: conv4 features -> (B, head_channels, h, w), the G-stream's convolutional part.
    input_mean / input_std: statistics of the one grey channel the pretrained weights expect, applied
        to an input in [0, 1] (ImageNet statistics folded to grey; also used for random init so that
        every backbone sees the same input scale).
    """

    name: str
    trunk: nn.Module
    head: nn.Module
    trunk_channels: int
    head_channels: int
    stride: int
    receptive_field: int
    rf_center_offset: float
    input_mean: float
    input_std: float
    pretrained: str


@dataclass(frozen=True)
class _Spec:
    """How one torchvision classifier is built, which weights it uses, and where it is cut."""

    builder: Callable[[], nn.Module]  # the torchvision architecture with random (default) weights
    weights: models.WeightsEnum
    stem_key: str  # state-dict key of the first convolution's weight
    classifier_prefix: str  # state-dict prefix of the ImageNet classifier, discarded by the cut


# ResNet-50 uses IMAGENET1K_V1 (76.1% top-1), not V2 (80.9%): V1 is the classic recipe the paper's
# ResNet-50 used, and V2's recipe (label smoothing, mixup, cutmix, long schedule) raises ImageNet
# accuracy while making intermediate features transfer worse (Kornblith et al., NeurIPS 2021,
# "Why do better loss functions lead to less transferable features?"), and the P-stream reads
# exactly those intermediate (layer3) features.
_SPECS: dict[str, _Spec] = {
    "vgg16_bn": _Spec(lambda: _VGG16BNFeatures(), models.VGG16_BN_Weights.IMAGENET1K_V1, "features.0.weight", "classifier."),
    "resnet50": _Spec(lambda: models.resnet50(weights=None), models.ResNet50_Weights.IMAGENET1K_V1, "conv1.weight", "fc."),
    "resnet18": _Spec(lambda: models.resnet18(weights=None), models.ResNet18_Weights.IMAGENET1K_V1, "conv1.weight", "fc."),
}
assert tuple(_SPECS) == BACKBONES, "model.defaults.BACKBONES names the backbones built here"
# VGG16-BN `features` index just after each readable conv's BN + ReLU.
_VGG_CUTS = {"conv3_3": 23, "conv4_3": 33}


class _VGG16BNFeatures(nn.Module):
    """torchvision's VGG16-BN without its ImageNet classifier.

    Same `features` module, state-dict keys and initialisation as `torchvision.models.vgg16_bn()`; the
    classifier (120M parameters, discarded by the cut) is not built, which saves seconds per model.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = models.vgg.make_layers(models.vgg.cfgs["D"], batch_norm=True)
        for module in self.features.modules():  # torchvision VGG's own initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(module.bias, 0)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)


def imagenet_weights_path(name: str) -> Path:
    """Where torchvision's ImageNet weights for backbone `name` live in the local torch hub cache.

    `torch.hub.get_dir()/checkpoints/<file name of the weights URL>`; TORCH_HOME moves the hub folder.
    """
    url = _spec(name).weights.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def receptive_field(trunk: nn.Module) -> ReceptiveField:
    """Receptive field, stride and (0, 0) centre of `trunk`'s output, from its Conv2d/MaxPool2d layers.

    Walks the layers in registration order, which is execution order for torchvision's VGG and ResNet
    modules; ResNet `downsample` shortcuts are skipped because the main path dominates (it has the
    larger field and the same stride). Standard recurrence, with jump j (input pixels between
    neighbouring locations) and start (continuous coordinate of location 0's centre, pixel 0 centred
    at 0.5): rf += (k-1)*d*j; start += ((k-1)*d/2 - p)*j; j *= s.
    """
    size, jump, start = 1, 1, 0.5
    for name, layer in trunk.named_modules():
        if "downsample" in name.split("."):
            continue
        if not isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
            continue
        kernel, stride, padding, dilation = (
            _first(layer.kernel_size),
            _first(layer.stride),
            _first(layer.padding),
            _first(layer.dilation),
        )
        size += (kernel - 1) * dilation * jump
        start += ((kernel - 1) * dilation / 2 - padding) * jump
        jump *= stride
    return ReceptiveField(size=size, stride=jump, center_offset=start)


def build_backbone(name: str, pretrained: str = "none", pstream_layer: str | None = None) -> Backbone:
    """Build backbone `name` ("vgg16_bn", "resnet50", "resnet18") with one input channel.

    pstream_layer: where the trunk ends (the P-stream reads there; the head runs on to the deep
        features): one of ``PSTREAM_LAYERS[name]``, default its first (VGG conv4_3, ResNet layer3).

    pretrained:
        "none": torchvision's default random initialisation.
        "imagenet": torchvision's ImageNet weights (VGG16_BN IMAGENET1K_V1, ResNet50 IMAGENET1K_V1,
            ResNet18 IMAGENET1K_V1), read only from the local torch hub cache; raises
            PretrainedWeightsMissing naming the file and folder when the file is absent.
        any other string: path of a local state dict (torch.load(weights_only=True)) of the torchvision
            model, with an RGB or one-channel stem; its classifier keys are ignored.
    """
    spec = _spec(name)
    network = spec.builder()
    if pretrained == "imagenet":
        _load_weights(name, network, _read_state_dict(_imagenet_file(name)), source="imagenet")
    elif pretrained != "none":
        _load_weights(name, network, _read_state_dict(Path(pretrained)), source=pretrained)
    _make_stem_one_channel(network, spec)  # after loading: the summed weight is the pretrained one
    layer = pstream_layer or PSTREAM_LAYERS[name][0]
    if layer not in PSTREAM_LAYERS[name]:
        raise ValueError(f"the P-stream of {name} reads at one of {', '.join(PSTREAM_LAYERS[name])}, not {layer!r}")
    trunk, head, trunk_channels, head_channels = _cut(name, network, layer)
    geometry = receptive_field(trunk)
    return Backbone(
        name=name,
        trunk=trunk,
        head=head,
        trunk_channels=trunk_channels,
        head_channels=head_channels,
        stride=geometry.stride,
        receptive_field=geometry.size,
        rf_center_offset=geometry.center_offset,
        input_mean=GRAY_MEAN,
        input_std=GRAY_STD,
        pretrained=pretrained,
    )


def _spec(name: str) -> _Spec:
    if name not in _SPECS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return _SPECS[name]


def _first(value: int | tuple[int, ...]) -> int:
    """Square kernels/strides only: torchvision stores them as int or (n, n)."""
    return value if isinstance(value, int) else value[0]


def _imagenet_file(name: str) -> Path:
    path = imagenet_weights_path(name)
    if not path.is_file():
        url = _spec(name).weights.url
        raise PretrainedWeightsMissing(
            f"ImageNet weights for {name} are not in the local torch hub cache: expected the file "
            f"{path.name!r} in the folder '{path.parent}'. Nothing is downloaded; copy the file there "
            f"(on a machine with internet it is at {url}), or point TORCH_HOME at a folder holding "
            f"hub/checkpoints/{path.name}, or use pretrained 'none' or a local state-dict path."
        )
    return path


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InputError(f"{path}: pretrained weight file not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: not a state dict of tensors (a torchvision model's state_dict())")
    # DataParallel / DDP checkpoints prefix every key with "module.".
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_weights(name: str, network: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into the torchvision `network`, ignoring its ImageNet classifier."""
    spec = _spec(name)
    if spec.stem_key in state and state[spec.stem_key].shape[1] == 1:
        _make_stem_one_channel(network, spec)  # a file saved from a one-channel model
    state = {k: v for k, v in state.items() if not k.startswith(spec.classifier_prefix)}
    try:
        result = network.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches raise even when strict=False
        raise InputError(f"{source}: state dict does not fit torchvision's {name}: {error}") from None
    missing = [k for k in result.missing_keys if not k.startswith(spec.classifier_prefix)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{source}: state dict does not fit torchvision's {name}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {result.unexpected_keys[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}"
        )


def _make_stem_one_channel(network: nn.Module, spec: _Spec) -> None:
    """Replace the first convolution by a one-channel one with the RGB weight summed over channels."""
    parent_name, _, attr = spec.stem_key.removesuffix(".weight").rpartition(".")
    parent = network.get_submodule(parent_name) if parent_name else network
    old = getattr(parent, attr)
    if old.in_channels == 1:
        return
    new = nn.Conv2d(
        1,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        bias=old.bias is not None,
    )
    with torch.no_grad():
        new.weight.copy_(old.weight.sum(dim=1, keepdim=True))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    setattr(parent, attr, new)


def _cut(name: str, network: nn.Module, layer: str) -> tuple[nn.Module, nn.Module, int, int]:
    """Split a torchvision classifier after `layer` into (trunk, head, trunk_channels, head_channels).

    The default cuts keep their historical module names (checkpoints load unchanged)."""
    if name == "vgg16_bn":
        features = network.features
        # features[:33] = conv1_1 .. conv4_3 with its BN + ReLU ([:23] up to conv3_3); up to [43] =
        # pool4 + conv5 block (pool5 is dropped: global average pooling follows). Indices kept, so a
        # conv3_3 head numbers its layers from 0 again.
        cut = _VGG_CUTS[layer]
        trunk = nn.Sequential(*features[:cut])
        head = nn.Sequential(*features[cut:43])
        return trunk, head, 512 if layer == "conv4_3" else 256, 512
    stages = OrderedDict(conv1=network.conv1, bn1=network.bn1, relu=network.relu, maxpool=network.maxpool,
                         layer1=network.layer1, layer2=network.layer2, layer3=network.layer3)
    if layer == "layer3":
        trunk, head, first = nn.Sequential(stages), network.layer4, network.layer4[0]
    else:  # layer2: the head is layer3 then layer4
        del stages["layer3"]
        trunk = nn.Sequential(stages)
        head = nn.Sequential(OrderedDict(layer3=network.layer3, layer4=network.layer4))
        first = network.layer3[0]
    # The head's first block reads the trunk's output (ResNet-18: 128 after layer2, 256 after layer3).
    return trunk, head, first.conv1.in_channels, network.fc.in_features
