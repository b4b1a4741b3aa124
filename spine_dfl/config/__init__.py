"""Run configuration: pydantic models, YAML loading and ``--set key=value`` overrides.

A config is the full description of a training run; every checkpoint carries it, so
scoring, evaluation and explanation need nothing else. The ``locator:`` section is
``config.locator``'s. Reading a config imports no torch: names it checks (backbones, P-stream
layers) come from ``model.defaults``.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from spine_dfl.config.base import Strict
from spine_dfl.config.locator import LocatorAugment, LocatorConfig
from spine_dfl.data.transforms.acquisition_options import AcquisitionAugment
from spine_dfl.data.transforms.settings import AugmentConfig, Preprocessing, check_intensity_percentiles
from spine_dfl.io.errors import ConfigError
from spine_dfl.model.defaults import BACKBONES, DEFAULT_BRANCH_WEIGHTS, PSTREAM_LAYERS

__all__ = [
    "SELECT_METRICS", "SHIPPED_CONFIGS", "BranchWeights", "ConfigError", "DataConfig", "LocatorAugment",
    "LocatorConfig", "ModelConfig", "RunConfig", "TrainConfig", "apply_override", "config_to_dict", "load_config",
    "parse_override", "resolve_config_path", "shipped_config_names", "validate_tree",
]

# The shipped configs are package data (spine_dfl/configs/*.yaml), read through importlib.resources
# so an installed wheel finds them as a source checkout does.
SHIPPED_CONFIGS: Traversable = resources.files("spine_dfl").joinpath("configs")


def shipped_config_names() -> list[str]:
    """The names of the shipped configs (``cpu_demo``, ...), sorted; none if the folder is missing."""
    if not SHIPPED_CONFIGS.is_dir():
        return []
    return sorted(entry.name.removesuffix(".yaml") for entry in SHIPPED_CONFIGS.iterdir()
                  if entry.name.endswith(".yaml") and entry.is_file())


class BranchWeights(Strict):
    """Weights of the G-stream, P-stream and side-branch terms (loss or fused logits)."""

    g: float = DEFAULT_BRANCH_WEIGHTS[0]
    p: float = DEFAULT_BRANCH_WEIGHTS[1]
    side: float = DEFAULT_BRANCH_WEIGHTS[2]

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.g, self.p, self.side)


class ModelConfig(Strict):
    backbone: str = Field("resnet18", description=f"one of {', '.join(BACKBONES)}")
    pretrained: str = Field("none", description="'imagenet' (local torch hub cache), 'none', or a state-dict path")
    filters_per_class: int = Field(10, ge=1, description="k: P-stream 1x1 filters per class")
    loss_weights: BranchWeights = BranchWeights()
    fuse_weights: BranchWeights = BranchWeights()
    init: Literal["nms_kmeans", "random"] = "nms_kmeans"
    init_peaks_per_image: int = Field(3, ge=1)
    init_nms_iou: float = Field(0.3, gt=0.0, le=1.0)
    init_max_features_per_class: int = Field(4096, ge=1)
    init_max_images_per_class: int = Field(400, ge=1, description="images sampled per class for the init")
    pstream_layer: str | None = Field(None, description="where the P-stream reads: resnet layer3 (default) or "
                                      "layer2; vgg16_bn conv4_3 (default) or conv3_3")
    streams: Literal["dfl", "g_only"] = Field("dfl", description="g_only: the plain backbone classifier (ablation)")
    pstream_region: Literal["crop", "roi"] = Field(
        "crop", description="where each P-stream filter's max pool searches: the whole crop, or the vertebra's box "
                            "(its ROI; the margin stays context for the G-stream)")

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        if value not in BACKBONES:
            raise ValueError(f"unknown backbone {value!r} (choose from {', '.join(BACKBONES)})")
        return value

    @field_validator("pstream_layer")
    @classmethod
    def _pstream_layer_fits_backbone(cls, value: str | None, info: Any) -> str | None:
        backbone = info.data.get("backbone")
        if value is not None and backbone in PSTREAM_LAYERS and value not in PSTREAM_LAYERS[backbone]:
            raise ValueError(f"{value!r} does not exist in {backbone} (choose from {', '.join(PSTREAM_LAYERS[backbone])})")
        return value


_PRE = Preprocessing()  # the transforms' defaults: one source


class DataConfig(Strict):
    input_size: int = Field(_PRE.input_size, ge=32, description="network input is 1 x S x S pixels")
    roi_margin: float = Field(_PRE.roi_margin, ge=0.0, description="fraction of the ROI's larger side added on every side")
    intensity_percentiles: tuple[float, float] = _PRE.intensity_percentiles
    use_roi: Literal["auto", "yes", "no"] = "auto"
    cache: Literal["none", "memory", "disk"] = "memory"
    cache_dir: str | None = None
    workers: int = Field(2, ge=0)
    balance: Literal["class", "vertebra_class", "none"] = "class"
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    # The transforms' own dataclass (fields, defaults and range checks live there, once).
    augment: AugmentConfig = AugmentConfig()
    # What changes between sites (scanner, processing, ROI convention): off unless switched on.
    acquisition: AcquisitionAugment = AcquisitionAugment()

    @field_validator("intensity_percentiles")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        return check_intensity_percentiles(value)


class TrainConfig(Strict):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=1)
    lr_backbone: float = Field(1e-3, gt=0, description="learning rate of pretrained/backbone layers")
    lr_heads: float = Field(1e-2, gt=0, description="learning rate of the new heads (classifiers, filter bank)")
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    final_lr_fraction: float = Field(0.0, ge=0, lt=1, description="the cosine schedule ends at this fraction of "
                                     "each learning rate (the locator's default: 0.01)")
    grad_clip: float = Field(5.0, ge=0, description="max gradient norm; 0 disables")
    amp: bool = Field(True, description="mixed precision on CUDA (ignored on CPU)")
    channels_last: bool = Field(True, description="channels-last memory format on CUDA")
    class_weighted_loss: bool = Field(False, description="weight the grader's loss by inverse class frequency")
    select_metric: Literal["macro_auc", "balanced_accuracy", "macro_f1", "accuracy", "loss",
                           "identification_rate"] = "macro_auc"
    early_stop_patience: int = Field(10, ge=0, description="epochs without improvement; 0 disables")
    tensorboard: bool = False
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap for quick runs")
    time_budget_s: float | None = Field(None, gt=0, description="stop after the epoch that passes this wall time")


# Validation figures each task can select on (the grader's from its predictions table, the locator's
# from spine_dfl.locate.evaluate).
SELECT_METRICS: dict[str, tuple[str, ...]] = {
    "grader": ("macro_auc", "balanced_accuracy", "macro_f1", "accuracy", "loss"),
    "locator": ("identification_rate", "loss"),
}


class RunConfig(Strict):
    task: Literal["grader", "locator"] = Field("grader", description="grader: DFL-CNN; locator: vertebra locator")
    seed: int = 0
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
                        description="auto (CUDA when present), cpu, cuda or cuda:N")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    locator: LocatorConfig = LocatorConfig()

    @model_validator(mode="after")
    def _fits_task(self) -> RunConfig:
        """The task's own defaults where the config is silent; settings that do not apply are errors."""
        train, given = self.train, self.train.model_fields_set
        allowed = SELECT_METRICS[self.task]
        if "select_metric" not in given:
            train.select_metric = allowed[0]
        if train.select_metric not in allowed:
            raise ValueError(f"train.select_metric {train.select_metric!r} does not apply to task "
                             f"{self.task!r} (choose from {', '.join(allowed)})")
        if self.task == "locator":
            if train.class_weighted_loss:
                raise ValueError("train.class_weighted_loss applies to the grader only (the locator has no classes)")
            if "lr_heads" not in given:  # a random-init trunk: one rate for trunk and heads
                train.lr_heads = train.lr_backbone
            if "final_lr_fraction" not in given:
                train.final_lr_fraction = 0.01
        return self


def resolve_config_path(name_or_path: str | Path) -> Path | Traversable:
    """A path to an existing file, or else the shipped config of that name (``cpu_demo``,
    ``cpu_demo.yaml`` or ``configs/cpu_demo.yaml`` all name ``spine_dfl/configs/cpu_demo.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    # Only a bare name or the old repo-relative spelling names a shipped config: a mistyped path to
    # the user's own copy (``~/exp/cpu_demo.yaml``) is an error, not the shipped file.
    if path.parent.as_posix() in (".", "configs", "spine_dfl/configs"):
        for name in (path.name, f"{path.name}.yaml"):
            candidate = SHIPPED_CONFIGS.joinpath(name)
            if name.endswith(".yaml") and candidate.is_file():
                return candidate
    shipped = ", ".join(shipped_config_names()) or "none found"
    raise ConfigError(f"{name_or_path}: no such config file (shipped configs in {SHIPPED_CONFIGS}: {shipped})")


def _identity(source: Path | Traversable) -> str:
    """What tells two config files apart for the ``extends`` loop check."""
    return str(source.resolve()) if isinstance(source, Path) else str(source)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.epochs=5`` -> (['train', 'epochs'], 5); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. train.epochs=5")
    key, raw = text.split("=", 1)
    keys = [part for part in key.strip().split(".") if part]
    if not keys:
        raise ConfigError(f"--set {text!r}: empty key")
    return keys, yaml.safe_load(raw)


def apply_override(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set ``value`` at ``keys`` (from :func:`parse_override`) in a raw config tree, making sections."""
    node = tree
    for part in keys[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(keys)}: {part!r} is not a section")
        node = child
    node[keys[-1]] = value


def _merged(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``child``'s keys over it, section by section."""
    out = dict(base)
    for key, value in child.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_tree(path: str | Path | Traversable, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """The mapping of the YAML config at ``path``; ``extends: NAME`` puts it over the config
    NAME (a path or a shipped name, resolved as ``--config`` is), so a variant names only what it
    changes."""
    source = resolve_config_path(path) if isinstance(path, (str, Path)) else path  # a Traversable is resolved
    resolved = _identity(source)
    if resolved in chain:
        raise ConfigError(f"{resolved}: extends itself through {' -> '.join(chain)}")
    try:
        loaded = yaml.safe_load(source.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{resolved}: not valid YAML: {exc}") from exc
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{resolved}: expected a mapping at the top level")
    tree = dict(loaded or {})
    base = tree.pop("extends", None)
    if base is None:
        return tree
    if not isinstance(base, str):
        raise ConfigError(f"{resolved}: extends must name one config, got {base!r}")
    return _merged(_read_tree(base, (*chain, resolved)), tree)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        resolved = resolve_config_path(path)
        source = str(resolved)
        tree = _read_tree(resolved)
    for text in overrides or []:
        apply_override(tree, *parse_override(text))
    return validate_tree(tree, source)


def validate_tree(tree: dict[str, Any], source: str) -> RunConfig:
    """The :class:`RunConfig` of a raw config tree; ConfigError naming ``source`` and every bad key."""
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from exc


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """Plain JSON-able dict (tuples as lists), as stored in checkpoints."""
    return config.model_dump(mode="json")
