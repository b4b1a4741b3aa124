"""Config loading, overrides and their errors."""

from __future__ import annotations

import pytest

from spine_dfl.config import ConfigError, DataConfig, config_to_dict, load_config, shipped_config_names
from spine_dfl.data.transforms.settings import Preprocessing


@pytest.mark.parametrize("name", shipped_config_names())
def test_shipped_configs_reload_from_what_a_checkpoint_stores(name: str) -> None:
    config = load_config(name)
    assert type(config).model_validate(config_to_dict(config)) == config


def test_the_data_sections_defaults_and_percentile_rule_are_the_transforms() -> None:
    data, pre = DataConfig(), Preprocessing()
    assert (data.input_size, data.roi_margin, data.intensity_percentiles) == (
        pre.input_size, pre.roi_margin, pre.intensity_percentiles)
    for bad in ((99.0, 1.0), (5.0, 5.0), (-1.0, 50.0), (50.0, 101.0)):
        with pytest.raises(ValueError, match="0 <= low < high <= 100"):
            Preprocessing(intensity_percentiles=bad)
        with pytest.raises(ValueError, match="0 <= low < high <= 100"):
            DataConfig(intensity_percentiles=bad)


def test_shipped_configs_cover_the_paper_and_cpu_settings() -> None:
    assert load_config("dfl_vgg16_448").model.backbone == "vgg16_bn"
    assert load_config("dfl_vgg16_448").data.input_size == 448
    assert load_config("dfl_resnet50_448").model.backbone == "resnet50"
    assert load_config("cpu_demo").model.backbone == "resnet18"


def test_overrides_are_parsed_as_yaml_and_nested() -> None:
    config = load_config("cpu_demo", ["train.epochs=3", "model.loss_weights.side=0.25", "data.augment.gamma=[0.9, 1.1]"])
    assert config.train.epochs == 3
    assert config.model.loss_weights.side == 0.25
    assert config.data.augment.gamma == (0.9, 1.1)


def test_unknown_key_is_refused_with_its_name() -> None:
    with pytest.raises(ConfigError, match="train.epoch"):
        load_config("cpu_demo", ["train.epoch=3"])


def test_bad_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match="model.backbone"):
        load_config(None, ["model.backbone=alexnet"])
    with pytest.raises(ConfigError, match="intensity_percentiles"):
        load_config(None, ["data.intensity_percentiles=[99, 1]"])


def test_missing_file_lists_shipped_configs(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cpu_demo"):
        load_config(tmp_path / "nope.yaml")


def test_malformed_override() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.epochs"])


def test_dict_round_trip_is_json_plain() -> None:
    import json

    tree = config_to_dict(load_config("dfl_vgg16_448"))
    assert load_config(None, [f"{k}={json.dumps(v)}" for k, v in tree.items()]) == load_config("dfl_vgg16_448")


def test_augmentation_settings_are_the_transforms_own_and_checked() -> None:
    from spine_dfl.data.transforms import AugmentConfig

    config = load_config("cpu_demo", ["data.augment.rotate_deg=3"])
    assert isinstance(config.data.augment, AugmentConfig) and config.data.augment.rotate_deg == 3
    with pytest.raises(ConfigError, match="prob"):
        load_config("cpu_demo", ["data.augment.prob=2"])
    with pytest.raises(ConfigError, match="gama"):
        load_config("cpu_demo", ["data.augment.gama=[1, 2]"])


def test_importing_the_config_imports_no_torch_monai_or_torchvision() -> None:
    """The CLI's --help and validate paths read the config; they must not pay for the deep-learning stack."""
    import subprocess
    import sys

    code = ("import sys, spine_dfl.config; "
            "print(','.join(m for m in ('torch', 'torchvision', 'monai') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""


def test_branch_weight_defaults_are_the_models() -> None:
    from spine_dfl.config import RunConfig
    from spine_dfl.model import DFLNet, dfl_loss
    from spine_dfl.model.defaults import DEFAULT_BRANCH_WEIGHTS
    import inspect

    config = RunConfig()
    assert config.model.fuse_weights.as_tuple() == DEFAULT_BRANCH_WEIGHTS
    assert config.model.loss_weights.as_tuple() == DEFAULT_BRANCH_WEIGHTS
    assert inspect.signature(DFLNet).parameters["fuse_weights"].default == DEFAULT_BRANCH_WEIGHTS
    assert inspect.signature(dfl_loss).parameters["weights"].default == DEFAULT_BRANCH_WEIGHTS


def test_a_config_that_extends_another_changes_only_what_it_names(tmp_path) -> None:
    multisite, demo = load_config("cpu_multisite"), load_config("cpu_demo")
    acquisition = multisite.data.acquisition
    assert (acquisition.prob, acquisition.reframe_from_radiograph, acquisition.roi_follows_prob) == (1.0, True, 0.5)
    # everything it does not name is the demo's, nested sections included
    assert multisite.model == demo.model and multisite.train == demo.train
    assert multisite.data.model_copy(update={"acquisition": demo.data.acquisition}) == demo.data
    assert acquisition.bias_coefficient == demo.data.acquisition.bias_coefficient
    # overrides go over the merged tree; a file's own keys over its base's
    assert load_config("cpu_multisite", ["data.acquisition.prob=0.5"]).data.acquisition.prob == 0.5
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {tmp_path / 'base.yaml'}\ntrain:\n  epochs: 2\n")
    (tmp_path / "base.yaml").write_text("extends: cpu_demo\ntrain:\n  epochs: 5\n  batch_size: 8\n")
    config = load_config(child)
    assert (config.train.epochs, config.train.batch_size, config.model.backbone) == (2, 8, "resnet18")


def test_extends_errors_name_the_file(tmp_path) -> None:
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"extends: {loop}\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(loop)
    missing = tmp_path / "orphan.yaml"
    missing.write_text("extends: no_such_config\n")
    with pytest.raises(ConfigError, match="no_such_config"):
        load_config(missing)
    listed = tmp_path / "listed.yaml"
    listed.write_text("extends: [cpu_demo]\n")
    with pytest.raises(ConfigError, match="listed.yaml: extends must name one config"):
        load_config(listed)
