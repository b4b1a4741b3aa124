"""CenterNet-style vertebra locator: a ResNet trunk, a top-down neck to stride 4, five heads.

A heatmap design trains from scratch on hundreds of images (anchor-based detectors trained from
scratch do poorly), and it regresses everything a vertebra needs from one peak:

    heatmap    1 channel   centre likelihood (logits; sigmoid + focal loss)
    size       2           box width, height                      } in output cells
    offset     2           sub-cell centre offset in [0, 1)       } (input pixels / stride)
    landmarks  12          six points (x, y) relative to the centre }
    levels     L           level logits (levels in anatomical order)

Input: one-channel whole radiographs (B, 1, H, W), H and W multiples of 32 (``letterbox``
makes them). Output maps are (B, C, H / 4, W / 4). Random init only: nothing is downloaded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

STRIDE = 4
HEAD_CHANNELS: dict[str, int] = {"heatmap": 1, "size": 2, "offset": 2, "landmarks": 12}
HEATMAP_PRIOR = 0.1  # initial centre probability everywhere (CenterNet's focal-loss prior)




class TopDownNeck(nn.Module):
    """Feature pyramid top-down path to the finest input level (nearest upsampling + lateral 1x1)."""

    def __init__(self, in_channels: Sequence[int], channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.smooth = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        out = self.lateral[-1](features[-1])
        for lateral, feature in zip(reversed(self.lateral[:-1]), reversed(features[:-1])):
            out = lateral(feature) + nn.functional.interpolate(out, size=feature.shape[-2:], mode="nearest")
        return self.smooth(out)


class VertebraLocator(nn.Module):
    """ResNet trunk (one input channel) -> top-down neck at stride 4 -> CenterNet heads.

    ``levels``: level names in anatomical order; the level head has one logit per name.
    ``blocks``: residual blocks per stage; (2, 2, 2, 2) is ResNet-18, (1, 1, 1, 1) the
    CPU config's half-depth trunk. ``arguments`` holds the constructor arguments, so that a
    checkpoint can rebuild the network. ``forward`` returns a dict of maps keyed like
    ``HEAD_CHANNELS`` plus "levels".
    """

    def __init__(self, levels: Sequence[str], blocks: Sequence[int] = (2, 2, 2, 2), neck_channels: int = 64,
                 head_channels: int = 64) -> None:
        super().__init__()
        if len(levels) < 2 or len(set(levels)) != len(levels):
            raise ValueError(f"a locator needs at least two distinct level names, got {list(levels)}")
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"blocks must be four positive counts (one per ResNet stage), got {list(blocks)}")
        self.levels = tuple(str(name) for name in levels)
        self.arguments = {"levels": list(self.levels), "blocks": [int(b) for b in blocks],
                          "neck_channels": int(neck_channels), "head_channels": int(head_channels)}
        trunk = ResNet(BasicBlock, list(self.arguments["blocks"]))
        trunk.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(trunk.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.stem = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool)
        self.stages = nn.ModuleList([trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4])
        self.neck = TopDownNeck((64, 128, 256, 512), neck_channels)
        # One shared 3x3 layer feeds every head's 1x1 output: separate 3x3 head towers at stride 4
        # would cost more than the whole trunk on a CPU.
        self.head_features = nn.Sequential(
            nn.Conv2d(neck_channels, head_channels, 3, padding=1, bias=True), nn.ReLU(inplace=True)
        )
        heads = dict(HEAD_CHANNELS, levels=len(self.levels))
        self.heads = nn.ModuleDict({name: nn.Conv2d(head_channels, c, 1) for name, c in heads.items()})
        nn.init.constant_(self.heads["heatmap"].bias, -math.log((1.0 - HEATMAP_PRIOR) / HEATMAP_PRIOR))

    def param_groups(self, lr_trunk: float, lr_heads: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups: the trunk (stem + stages) and the rest (neck and heads)."""
        trunk = [*self.stem.parameters(), *self.stages.parameters()]
        heads = [*self.neck.parameters(), *self.head_features.parameters(), *self.heads.parameters()]
        return [{"name": "trunk", "params": trunk, "lr": lr_trunk, "weight_decay": weight_decay},
                {"name": "heads", "params": heads, "lr": lr_heads, "weight_decay": weight_decay}]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"locator input must be (B, 1, H, W), got {tuple(images.shape)}")
        x = self.stem(images)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        fused = self.head_features(self.neck(features))
        return {name: head(fused) for name, head in self.heads.items()}
