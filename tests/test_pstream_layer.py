"""Where the P-stream reads (model.pstream_layer), the G-stream-only ablation (model.streams), and
the effective receptive field a checkpoint carries."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spine_dfl.config import ModelConfig
from spine_dfl.data.transforms import Preprocessing
from spine_dfl.engine.checkpoint import atomic_torch_save, checkpoint_payload, load_checkpoint
from spine_dfl.model.effective_field import model_patch_side
from spine_dfl.model import DFLNet, dfl_loss
from spine_dfl.model.backbones import receptive_field


@pytest.mark.parametrize(("backbone", "layer", "stride", "size", "channels"), [
    ("resnet18", "layer3", 16, 96, 256), ("resnet18", "layer2", 8, 96, 128), ("vgg16_bn", "conv3_3", 4, 64, 256),
])
def test_pstream_layer_sets_the_map_and_its_geometry(backbone: str, layer: str, stride: int, size: int,
                                                     channels: int) -> None:
    model = DFLNet(backbone, 3, filters_per_class=2, pstream_layer=layer).eval()
    out = model(torch.rand(2, 1, size, size), return_maps=True)
    assert out.feature_size == (size // stride, size // stride) and model.stride == stride
    assert model.p_filters.in_channels == channels
    assert receptive_field(model.trunk).stride == stride and model.pstream_layer == layer
    # The G-stream still ends on the deep features: its head output has the backbone's deepest stride.
    head = model.g_stream.head(model.trunk_features(torch.rand(1, 1, size, size)))
    assert head.shape[-1] == size // 32 or backbone == "vgg16_bn" and head.shape[-1] == size // 16


def test_unknown_pstream_layer_is_refused_by_model_and_config() -> None:
    with pytest.raises(ValueError, match="layer2, not 'conv4_3'|layer3, layer2"):
        DFLNet("resnet18", 3, pstream_layer="conv4_3")
    with pytest.raises(ValueError, match="does not exist in resnet18"):
        ModelConfig(backbone="resnet18", pstream_layer="conv3_3")
    assert ModelConfig(backbone="vgg16_bn", pstream_layer="conv3_3").pstream_layer == "conv3_3"


def test_g_only_is_the_plain_classifier() -> None:
    torch.manual_seed(0)
    model = DFLNet("resnet18", 3, filters_per_class=2, streams="g_only")
    assert model.p_filters is None and model.p_classifier is None
    x, target = torch.rand(4, 1, 64, 64), torch.tensor([0, 1, 2, 1])
    out = model(x)
    assert torch.equal(out.fused, out.g) and not out.p.any() and not out.side.any()
    loss, parts = dfl_loss(out, target)
    loss.backward()  # only the backbone and the G classifier learn; P and side add a constant
    assert parts["p"].item() == pytest.approx(torch.log(torch.tensor(3.0)).item())
    names = {n for g in model.param_groups(1e-3, 1e-2, 0.0) for n in [g["name"]]}
    assert names == {"backbone", "backbone_no_decay", "heads", "heads_no_decay"}


def test_checkpoint_keeps_layer_and_streams_and_saving_measures_no_receptive_field(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import spine_dfl.model.effective_field as effective_field

    model = DFLNet("resnet18", 2, filters_per_class=2, pstream_layer="layer2").eval()
    measured = effective_field.measure_model_patch_side(model, 64)

    def refuse(*_: object) -> float:
        raise AssertionError("measured")

    monkeypatch.setattr(effective_field, "measure_model_patch_side", refuse)
    payload = checkpoint_payload(model, {}, ["a", "b"], Preprocessing(input_size=64))  # saving measures nothing
    assert "effective_receptive_field" not in payload
    atomic_torch_save(payload, tmp_path / "m.pt")
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.model.pstream_layer == "layer2" and loaded.model.stride == 8
    monkeypatch.undo()
    assert model_patch_side(loaded.model, 64) == measured  # measured where it is needed, from the weights alone
    # a checkpoint that carries a measurement (as earlier ones do) is read, not measured again
    atomic_torch_save({**payload, "effective_receptive_field": {"side": 21.0, "mass": 0.5, "input_size": 64}},
                      tmp_path / "stored.pt")
    monkeypatch.setattr(effective_field, "measure_model_patch_side", refuse)
    assert model_patch_side(load_checkpoint(tmp_path / "stored.pt").model, 64) == 21.0
    plain = DFLNet("resnet18", 2, streams="g_only")
    atomic_torch_save(checkpoint_payload(plain, {}, ["a", "b"], Preprocessing(input_size=64)), tmp_path / "g.pt")
    assert load_checkpoint(tmp_path / "g.pt").model.streams == "g_only"
