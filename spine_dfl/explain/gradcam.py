"""MONAI Grad-CAM of the G-stream, run on a private copy so the caller's model is never touched."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

__all__ = ["GStreamLogits", "GradCamRunner", "gradcam_target_layer"]


class GStreamLogits(nn.Module):
    """conv4 features (B, C, H, W) -> G-stream logits (B, M): the G-stream alone, for Grad-CAM.

    Holds a private deep copy of the model's G-stream so that the hooks MONAI registers (and the
    in-place ReLUs it must switch off for backward hooks) never touch the caller's model. The trunk
    is run once by the caller and its (detached) features fed here: the Grad-CAM target lies in the
    head, so gradients never need to reach the trunk.
    """

    def __init__(self, g_stream: nn.Module) -> None:
        super().__init__()
        self.g_stream = copy.deepcopy(g_stream)
        for module in self.g_stream.modules():
            if hasattr(module, "inplace"):
                module.inplace = False  # full backward hooks reject outputs modified in place
        for parameter in self.g_stream.parameters():
            parameter.requires_grad_(True)
        self.eval()

    def forward(self, features: Tensor) -> Tensor:
        return self.g_stream(features)


def gradcam_target_layer(wrapper: GStreamLogits) -> str:
    """Name (in `wrapper`) of the G-stream head's last block: ResNet layer4[-1], VGG conv5_3's ReLU."""
    head = wrapper.g_stream.head
    last = list(head.named_children())[-1][0]
    return f"g_stream.head.{last}"


class GradCamRunner:
    """MONAI GradCAM over a GStreamLogits wrapper; one instance per `explain` run.

    stride, center_offset: the geometry of the maps it returns (the G-stream head's output grid)
    in network-input pixels, for ``spine_dfl.heatmap.geometry``.
    """

    def __init__(self, model: nn.Module) -> None:
        from monai.visualize import GradCAM

        from spine_dfl.model.backbones import receptive_field

        self.wrapper = GStreamLogits(model.g_stream).to(next(model.parameters()).device)
        self.target = gradcam_target_layer(self.wrapper)
        # Raw maps (no MONAI upsampling/normalisation): they are mapped to original pixels with the
        # head's own receptive-field geometry, and normalised per sample for display.
        self.cam = GradCAM(nn_module=self.wrapper, target_layers=self.target,
                           upsampler=lambda size: (lambda x: x), postprocessing=lambda x: x)
        geometry = receptive_field(nn.Sequential(model.trunk, model.g_stream.head))
        self.stride = float(geometry.stride)
        self.center_offset = float(geometry.center_offset)

    def maps(self, features: Tensor, classes: Tensor) -> Tensor:
        """features (B, C, H, W), classes (B,) -> Grad-CAM (B, 1, h, w) at the head's resolution (>= 0)."""
        out: Tensor | None = None
        with torch.enable_grad():
            for class_index in torch.unique(classes).tolist():
                # MONAI scores logits[:, class_idx] summed over the batch: one class per call.
                rows = (classes == class_index).nonzero().flatten()
                subset = features[rows].detach().clone().requires_grad_(True)
                cam = self.cam.compute_map(subset, class_idx=int(class_index)).detach()
                if out is None:
                    out = torch.zeros((features.shape[0], *cam.shape[1:]), dtype=cam.dtype, device=cam.device)
                out[rows] = cam
        assert out is not None
        return out
