"""DFLNet, its backbones and its loss: shapes at every input size, geometry, weight loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from spine_dfl.model import (
    BACKBONES,
    DFLNet,
    PretrainedWeightsMissing,
    build_backbone,
    dfl_loss,
)

# (receptive field, stride, centre of location (0, 0), trunk channels, head channels), worked out by hand
# from the layer lists (e.g. VGG16: 3x3 convs and 2x2 pools up to conv4_3 give 92 px at stride 8).
EXPECTED_GEOMETRY = {
    "vgg16_bn": (92, 8, 4.0, 512, 512),
    "resnet18": (211, 16, 0.5, 256, 512),
    "resnet50": (267, 16, 0.5, 1024, 2048),
}


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_geometry_and_channels(name: str) -> None:
    backbone = build_backbone(name, "none")
    rf, stride, centre, trunk_channels, head_channels = EXPECTED_GEOMETRY[name]
    assert (backbone.receptive_field, backbone.stride, backbone.rf_center_offset) == (rf, stride, centre)
    assert (backbone.trunk_channels, backbone.head_channels) == (trunk_channels, head_channels)
    with torch.no_grad():
        features = backbone.trunk(torch.rand(1, 1, 64, 64))
        head_out = backbone.head(features)
    assert features.shape == (1, trunk_channels, 64 // stride, 64 // stride)
    assert head_out.shape[1] == head_channels
    assert backbone.input_mean == pytest.approx(0.449, abs=1e-3)
    assert backbone.input_std == pytest.approx(0.226, abs=1e-3)


def test_unknown_backbone_is_rejected() -> None:
    with pytest.raises(ValueError, match="vgg16_bn"):
        DFLNet("alexnet", 3)


def _slow_if(condition: bool) -> list[pytest.MarkDecorator]:
    return [pytest.mark.slow] if condition else []


FORWARD_CASES = [
    pytest.param(name, size, id=f"{name}-{size}", marks=_slow_if(name != "resnet18" and size >= 448))
    for name in BACKBONES
    for size in (160, 224, 448, 512)
]


@pytest.mark.parametrize(("name", "size"), FORWARD_CASES)
def test_forward_backward_at_every_input_size(name: str, size: int) -> None:
    num_classes, k = 3, 2
    batch = 2 if name == "resnet18" else 1  # the big backbones at batch 1 keep the CPU run short
    model = DFLNet(name, num_classes, filters_per_class=k)
    out = model(torch.rand(batch, 1, size, size), return_maps=True)

    side = size // model.stride
    assert out.feature_size == (side, side)
    for logits in (out.g, out.p, out.side, out.fused):
        assert logits.shape == (batch, num_classes)
    assert out.peak_index.shape == out.peak_score.shape == (batch, num_classes * k)
    assert out.peak_index.dtype == torch.long
    assert 0 <= int(out.peak_index.min()) and int(out.peak_index.max()) < side * side
    assert out.response_maps.shape == (batch, num_classes * k, side, side)

    loss, _ = dfl_loss(out, torch.arange(batch) % num_classes)
    loss.backward()
    stem = model.trunk[0]  # VGG features.0 / ResNet conv1
    for parameter in (stem.weight, model.p_filters.weight, model.p_classifier.weight, model.g_stream.classifier.weight):
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()
        assert parameter.grad.abs().sum() > 0


@pytest.mark.parametrize("num_classes", [3, 5])
def test_num_classes_respected_in_every_branch(num_classes: int) -> None:
    k = 4
    model = DFLNet("resnet18", num_classes, filters_per_class=k)
    assert model.p_filters.out_channels == num_classes * k
    assert (model.p_classifier.in_features, model.p_classifier.out_features) == (num_classes * k, num_classes)
    assert model.g_stream.classifier.out_features == num_classes
    out = model(torch.rand(2, 1, 96, 96))
    for logits in (out.g, out.p, out.side, out.fused):
        assert logits.shape == (2, num_classes)
    assert out.peak_index.shape == (2, num_classes * k)
    assert model.class_filter_slice(num_classes - 1) == slice((num_classes - 1) * k, num_classes * k)
    with pytest.raises(IndexError):
        model.class_filter_slice(num_classes)


def test_g_logits_can_be_negative() -> None:
    model = DFLNet("resnet18", 4).eval()
    with torch.no_grad():
        out = model(torch.rand(4, 1, 96, 96))
    assert (out.g < 0).any()


def test_branches_fused_pooled_and_side_are_consistent() -> None:
    num_classes, k = 3, 4
    model = DFLNet("resnet18", num_classes, filters_per_class=k, fuse_weights=(0.5, 2.0, 0.3)).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 96, 128), return_maps=True)
    maps = out.response_maps.flatten(2)  # (B, M*k, H*W)
    assert torch.equal(out.peak_score, maps.amax(dim=2))
    assert torch.equal(maps.gather(2, out.peak_index[..., None])[..., 0], out.peak_score)
    assert torch.allclose(out.side, out.peak_score.view(2, num_classes, k).mean(-1))
    assert torch.allclose(out.p, model.p_classifier(out.peak_score))
    assert torch.allclose(out.fused, 0.5 * out.g + 2.0 * out.p + 0.3 * out.side)

    # channels-last (used for training on CUDA) gives the same spatial flat indices
    x = torch.rand(2, 1, 96, 128)
    with torch.no_grad():
        reference = model(x)
        model.to(memory_format=torch.channels_last)
        last = model(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(last.peak_index, reference.peak_index)
    assert torch.allclose(last.peak_score, reference.peak_score, atol=1e-4)


def test_location_mask_keeps_centres_inside_the_box_and_the_nearest_for_a_thin_box() -> None:
    from spine_dfl.model.dfl import location_mask

    # stride 16, centre of location 0 at 0.5 px: centres 0.5, 16.5, 32.5, 48.5, 64.5, 80.5
    roi = torch.tensor([[10.0, 20.0, 60.0, 40.0], [5.0, 0.0, 6.0, 96.0]])
    mask = location_mask(roi, (6, 6), 16, 0.5)
    expected = torch.zeros(2, 6, 6, dtype=torch.bool)
    expected[0, 2, 1:4] = True  # rows: 32.5 in [20, 40); cols: 16.5, 32.5, 48.5 in [10, 60)
    expected[1, :, 0] = True  # no centre in [5, 6): the nearest column, 0.5
    assert torch.equal(mask, expected)


def test_pstream_region_roi_pools_only_inside_the_box() -> None:
    torch.manual_seed(0)
    x = torch.rand(3, 1, 96, 96)
    roi = torch.tensor([[20.0, 30.0, 70.0, 60.0], [0.0, 0.0, 96.0, 96.0], [40.0, 40.0, 50.0, 50.0]])
    inside_model = DFLNet("resnet18", 3, filters_per_class=2, pstream_layer="layer2", pstream_region="roi").eval()
    crop_model = DFLNet("resnet18", 3, filters_per_class=2, pstream_layer="layer2").eval()
    crop_model.load_state_dict(inside_model.state_dict())
    with torch.no_grad():
        inside = inside_model(x, return_maps=True, roi=roi)
        anywhere = crop_model(x, return_maps=True, roi=roi)
        plain = crop_model(x, return_maps=True)
    from spine_dfl.model.dfl import location_mask

    mask = location_mask(roi, inside.feature_size, inside_model.stride, inside_model.rf_center_offset).flatten(1)
    assert bool(mask.gather(1, inside.peak_index).all())  # every filter's peak lies in its sample's box
    maps = inside.response_maps.flatten(2)
    best_inside = maps.masked_fill(~mask[:, None], float("-inf")).amax(dim=2)
    assert torch.equal(inside.peak_score, best_inside)
    assert torch.equal(inside.peak_index[1], plain.peak_index[1])  # a box over the whole input changes nothing
    assert torch.equal(anywhere.peak_index, plain.peak_index)  # pstream_region "crop" ignores the box
    assert not torch.equal(inside.peak_index, plain.peak_index)
    assert torch.equal(inside.g, plain.g)  # the G-stream reads the whole crop either way


def test_input_is_normalised_with_backbone_statistics() -> None:
    model = DFLNet("resnet18", 2).eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        expected = model.trunk((x - 0.449) / 0.226)
        assert torch.allclose(model.trunk_features(x), expected, atol=1e-3, rtol=1e-3)


def _spot_geometry_case(name: str, height: int, width: int) -> None:
    """Locations whose features change when one input pixel changes are exactly those whose
    receptive-field box (from peak_boxes of their flat index) contains that pixel.

    The spot pixels run along a diagonal through every residue modulo the stride, so every box edge
    position is probed: an offset or size off by one pixel fails."""
    model = DFLNet(name, 2, filters_per_class=1).double().eval()
    spots = [(height // 4 + i, width // 3 + i) for i in range(model.stride)] + [(3, width - 5), (height - 2, 4)]
    images = torch.full((len(spots) + 1, 1, height, width), 0.5, dtype=torch.float64)
    for index, (row, col) in enumerate(spots, start=1):
        images[index, 0, row, col] = 5.0
    with torch.no_grad():
        features = model.trunk_features(images)
    map_height, map_width = features.shape[-2:]
    assert map_height != map_width
    flat = torch.arange(map_height * map_width)
    boxes = model.peak_boxes(flat, (map_height, map_width)).view(map_height, map_width, 4)
    assert torch.allclose(boxes[..., 2] - boxes[..., 0], torch.tensor(float(model.receptive_field)))
    for index, (row, col) in enumerate(spots, start=1):
        changed = (features[index] - features[0]).abs().amax(dim=0) > 1e-12
        contains = (boxes[..., 0] <= col) & (boxes[..., 2] >= col + 1) & (boxes[..., 1] <= row) & (boxes[..., 3] >= row + 1)
        assert changed.any() and not changed.all()
        assert torch.equal(changed, contains), f"pixel (row {row}, col {col})"


def test_peak_boxes_are_exact_receptive_fields_resnet18() -> None:
    _spot_geometry_case("resnet18", 224, 288)  # a 14 x 18 map: boxes (211 px) cover part of the image


def test_peak_boxes_are_exact_receptive_fields_vgg16_bn() -> None:
    _spot_geometry_case("vgg16_bn", 72, 104)  # a 9 x 13 map, 92 px boxes


def test_filter_peaks_where_its_channel_peaks_on_non_square_map() -> None:
    model = DFLNet("resnet18", 2, filters_per_class=3).eval()
    x = torch.rand(1, 1, 96, 224)  # 6 x 14 map
    with torch.no_grad():
        features = model.trunk_features(x)[0]
        channels = [7, 100, 200]
        model.p_filters.weight.zero_()
        for filter_index, channel in enumerate(channels):
            model.p_filters.weight[filter_index, channel] = 1.0
        out = model(x)
    assert out.feature_size == (6, 14)
    boxes = model.peak_boxes(out.peak_index, out.feature_size)
    for filter_index, channel in enumerate(channels):
        (row, col), *_ = torch.nonzero(features[channel] == features[channel].max()).tolist()
        assert int(out.peak_index[0, filter_index]) == row * 14 + col
        centre = (model.rf_center_offset + 16 * col, model.rf_center_offset + 16 * row)
        x_min, y_min, x_max, y_max = boxes[0, filter_index].tolist()
        assert ((x_min + x_max) / 2, (y_min + y_max) / 2) == pytest.approx(centre)


def _perturbed_state_dict(network: nn.Module) -> dict[str, torch.Tensor]:
    """Random weights plus BatchNorm statistics far from the defaults (0, 1), so a reset would show."""
    generator = torch.Generator().manual_seed(1)
    state = network.state_dict()
    for key, value in state.items():
        if key.endswith("running_mean"):
            state[key] = torch.randn(value.shape, generator=generator)
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=generator) + 0.5
    return state


@pytest.mark.parametrize(
    ("name", "stem_key", "bn_key", "dfl_stem", "dfl_bn"),
    [
        ("resnet18", "conv1", "layer2.0.bn1", "trunk.conv1", "trunk.layer2.0.bn1"),
        ("vgg16_bn", "features.0", "features.31", "trunk.0", "trunk.31"),
    ],
)
def test_rgb_state_dict_gives_summed_one_channel_stem_and_keeps_bn(
    tmp_path: Path, name: str, stem_key: str, bn_key: str, dfl_stem: str, dfl_bn: str
) -> None:
    rgb = getattr(models, name)(weights=None)
    state = _perturbed_state_dict(rgb)
    if name == "vgg16_bn":  # its 120M-parameter ImageNet classifier is ignored anyway: keep the file small
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)

    model = DFLNet(name, 3, pretrained=str(path))
    stem = model.get_submodule(dfl_stem)
    assert stem.in_channels == 1
    assert torch.allclose(stem.weight, state[f"{stem_key}.weight"].sum(dim=1, keepdim=True))
    bn = model.get_submodule(dfl_bn)
    assert torch.equal(bn.running_mean, state[f"{bn_key}.running_mean"])
    assert torch.equal(bn.running_var, state[f"{bn_key}.running_var"])
    assert torch.equal(bn.weight, state[f"{bn_key}.weight"])


def test_one_channel_and_ddp_prefixed_state_dicts_load(tmp_path: Path) -> None:
    network = models.resnet18(weights=None)
    network.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    state = {f"module.{k}": v for k, v in _perturbed_state_dict(network).items()}
    state.pop("module.fc.weight")  # a file without the ImageNet classifier loads too
    path = tmp_path / "gray.pth"
    torch.save({"state_dict": state}, path)
    model = DFLNet("resnet18", 2, pretrained=str(path))
    assert torch.equal(model.trunk.conv1.weight, state["module.conv1.weight"])
    assert torch.equal(model.g_stream.head[1].bn2.running_var, state["module.layer4.1.bn2.running_var"])


def test_state_dict_of_another_architecture_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "r50.pth"
    torch.save(models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="r50.pth"):
        DFLNet("resnet18", 2, pretrained=str(path))


def test_missing_imagenet_weights_name_file_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    with pytest.raises(PretrainedWeightsMissing) as caught:
        DFLNet("resnet18", 2, pretrained="imagenet")
    message = str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)
    assert "resnet18-f37072fd.pth" in message
    assert str(folder) in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert not folder.exists()  # nothing was downloaded or created


def test_imagenet_weights_are_read_from_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    state = _perturbed_state_dict(models.resnet18(weights=None))
    torch.save(state, folder / "resnet18-f37072fd.pth")
    model = DFLNet("resnet18", 2, pretrained="imagenet")
    assert torch.allclose(model.trunk.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(model.trunk.layer3[1].bn2.running_mean, state["layer3.1.bn2.running_mean"])


def test_param_groups_split_backbone_and_new_layers() -> None:
    model = DFLNet("resnet18", 3)
    groups = model.param_groups(lr_backbone=1e-4, lr_heads=1e-2, weight_decay=0.05)
    seen = [id(p) for group in groups for p in group["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())  # every parameter exactly once

    by_name = {group["name"]: group for group in groups}
    ids = {name: {id(p) for p in group["params"]} for name, group in by_name.items()}
    new_layers = [model.p_filters.weight, model.p_classifier.weight, model.g_stream.classifier.weight]
    assert all(id(p) in ids["heads"] for p in new_layers)
    assert id(model.p_classifier.bias) in ids["heads_no_decay"]
    assert id(model.trunk.conv1.weight) in ids["backbone"]
    assert id(model.g_stream.head[0].conv1.weight) in ids["backbone"]
    assert id(model.trunk.bn1.weight) in ids["backbone_no_decay"]
    assert by_name["backbone"]["lr"] == 1e-4 and by_name["heads"]["lr"] == 1e-2
    assert by_name["backbone"]["weight_decay"] == 0.05
    assert by_name["backbone_no_decay"]["weight_decay"] == 0.0 and by_name["heads_no_decay"]["weight_decay"] == 0.0
    bn_ids = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    assert bn_ids <= ids["backbone_no_decay"]
    torch.optim.AdamW(groups)  # the groups are valid optimizer input


def test_dfl_loss_weights_branches_and_classes() -> None:
    model = DFLNet("resnet18", 3).eval()
    with torch.no_grad():
        out = model(torch.rand(4, 1, 64, 64))
    target = torch.tensor([0, 1, 2, 1])
    total, parts = dfl_loss(out, target)
    assert parts["g"] == pytest.approx(float(F.cross_entropy(out.g, target)), rel=1e-5)
    assert parts["side"] == pytest.approx(float(F.cross_entropy(out.side, target)), rel=1e-5)
    assert float(total) == pytest.approx(float(parts["g"] + parts["p"] + 0.1 * parts["side"]), rel=1e-5)

    class_weights = torch.tensor([1.0, 0.0, 0.0])
    weighted_total, weighted = dfl_loss(out, target, weights=(0.0, 1.0, 0.0), class_weights=class_weights)
    assert float(weighted["p"]) == pytest.approx(float(F.cross_entropy(out.p[:1], target[:1])), rel=1e-5)
    assert float(weighted_total) == pytest.approx(float(weighted["p"]), rel=1e-6)
