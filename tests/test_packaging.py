"""Package data: the shipped configs and static assets are found through importlib.resources, and
pyproject.toml ships every non-Python file of the package (a wheel install has no source tree).
.ci/run checks the same from a built wheel in a fresh virtual environment."""

from __future__ import annotations

import fnmatch
import tomllib
from importlib import resources
from pathlib import Path

import pytest

import spine_dfl
from spine_dfl.config import ConfigError, load_config, resolve_config_path, shipped_config_names

PACKAGE = Path(spine_dfl.__file__).resolve().parent
PYPROJECT = PACKAGE.parent / "pyproject.toml"


def test_shipped_names_are_the_yaml_files_of_the_package_folder() -> None:
    assert shipped_config_names() == sorted(p.stem for p in (PACKAGE / "configs").glob("*.yaml"))
    assert {"cpu_demo", "cpu_multisite", "locator_cpu", "locator_gpu"} <= set(shipped_config_names())


@pytest.mark.parametrize("name", shipped_config_names())
def test_every_shipped_config_loads_by_name_from_the_resources(name: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no relative path to the source tree can help
    source = resolve_config_path(name)
    assert str(source) == str(resources.files("spine_dfl").joinpath("configs", f"{name}.yaml"))
    assert resolve_config_path(f"{name}.yaml") == source
    assert resolve_config_path(f"configs/{name}.yaml") == source  # the old repo-relative spelling
    assert load_config(name) == load_config(source)


def test_a_missing_path_elsewhere_is_not_the_shipped_config_of_its_name(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no such config file"):
        resolve_config_path(tmp_path / "exp" / "cpu_demo.yaml")


def test_extends_finds_the_shipped_base_from_anywhere(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config("cpu_multisite").data.acquisition.enabled
    child = tmp_path / "mine.yaml"
    child.write_text("extends: cpu_multisite\ntrain:\n  epochs: 2\n")
    config = load_config(child)
    assert config.train.epochs == 2 and config.data.acquisition.enabled
    assert config.model == load_config("cpu_demo").model


def test_a_users_file_wins_over_a_shipped_name(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cpu_demo.yaml").write_text("train:\n  epochs: 3\n")
    assert load_config("cpu_demo.yaml").train.epochs == 3
    assert load_config("cpu_demo").train.epochs != 3  # a bare name is the shipped config


@pytest.mark.skipif(not PYPROJECT.is_file(), reason="needs the source tree's pyproject.toml")
def test_every_non_python_file_of_the_package_is_package_data() -> None:
    package_data = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"]
    missing = []
    for path in PACKAGE.rglob("*"):
        if (not path.is_file() or path.suffix in {".py", ".pyc", ".pyi"} or "__pycache__" in path.parts
                or path.name.startswith(".")):
            continue
        relative = path.relative_to(PACKAGE.parent)
        covered = False
        for package, patterns in package_data.items():
            root = Path(*package.split("."))
            if root in relative.parents:
                inside = relative.relative_to(root).as_posix()
                covered = covered or any(fnmatch.fnmatch(inside, pattern) for pattern in patterns)
        if not covered:
            missing.append(str(relative))
    assert not missing, f"not package data in pyproject.toml: {missing}"


def test_no_module_reads_files_relative_to_its_source() -> None:
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if "Path(__file__)" in p.read_text(encoding="utf-8")]
    assert not offenders, f"use importlib.resources instead of Path(__file__) in {offenders}"
