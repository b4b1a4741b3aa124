"""``spine-dfl train MANIFEST --init CHECKPOINT``: fine-tuning a grader and a locator through the real CLI.

A tiny grader and a tiny locator are trained on the session's small cohort, then fine-tuned on
another site's films (a second synthetic cohort, another seed, the ``site_c`` style): the weights
start as the parent's, every checkpoint records the parent's SHA-256, the grader's calibration and
shift statistics are refitted on the new data, and what cannot be fine-tuned is refused in one line.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
import torch

from quick_training import QUICK
from spine_dfl.cli import main
from spine_dfl.config import load_config
from spine_dfl.engine.finetune import FINETUNE_MAX_EPOCHS, FINETUNE_PATIENCE, finetune_config, read_parent

TINY_LOCATOR = ["locator.input_size=[128, 64]", "locator.neck_channels=16", "locator.head_channels=16",
                "train.batch_size=4", "train.time_budget_s=null", "train.epochs=1"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def site_cohort(tmp_path_factory) -> Path:
    """The new site: 6 other patients, drawn in another style (dose, blur, binning)."""
    from spine_dfl.synth import generate_cohort

    out = tmp_path_factory.mktemp("site")
    generate_cohort(out, patients=6, seed=5, style="site_c")
    return out


@pytest.fixture(scope="module")
def parents(small_cohort: Path, tmp_path_factory) -> dict[str, Path]:
    """A tiny grader and a tiny locator, trained through the CLI on the small cohort."""
    root = tmp_path_factory.mktemp("parents")
    manifest = str(small_cohort / "manifest.csv")
    sets = [arg for value in QUICK for arg in ("--set", value)]
    assert main(["train", manifest, "--config", "cpu_demo", "--device", "cpu", "--no-report",
                 "--out", str(root / "grader"), *sets]) == 0
    sets = [arg for value in TINY_LOCATOR for arg in ("--set", value)]
    assert main(["train", manifest, "--config", "locator_cpu", "--device", "cpu",
                 "--out", str(root / "locator"), *sets]) == 0
    return {"grader": root / "grader" / "best.pt", "locator": root / "locator" / "best.pt"}


def test_the_config_is_the_parents_with_few_label_defaults_that_set_overrides(parents):
    parent = read_parent(parents["grader"])
    stored = load_config("cpu_demo", QUICK)
    config = finetune_config(parent, None, [])
    assert config.task == "grader" and config.model.pretrained == "none"
    assert config.train.lr_backbone == pytest.approx(stored.train.lr_backbone * 0.1)
    assert config.train.lr_heads == pytest.approx(stored.train.lr_heads * 0.1)
    assert config.train.epochs == min(stored.train.epochs, FINETUNE_MAX_EPOCHS)
    assert config.train.early_stop_patience == FINETUNE_PATIENCE
    assert config.data.input_size == 64  # the parent's preprocessing
    assert finetune_config(parent, None, ["data.input_size=64"]).data.input_size == 64  # the parent's value: allowed
    chosen = finetune_config(parent, None, ["train.lr_backbone=0.5", "train.early_stop_patience=0"])
    assert chosen.train.lr_backbone == 0.5 and chosen.train.early_stop_patience == 0
    assert chosen.train.lr_heads == pytest.approx(stored.train.lr_heads * 0.1)
    # --config gives the training settings, never the architecture or preprocessing
    other = finetune_config(parent, "train_cpu", [])
    assert other.data.input_size == 64 and other.model.filters_per_class == stored.model.filters_per_class
    assert other.train.lr_backbone == pytest.approx(load_config("train_cpu").train.lr_backbone * 0.1)


def test_weights_start_as_the_parents(parents, site_cohort, tmp_path):
    from spine_dfl.engine.distributed import init_distributed
    from spine_dfl.engine.loop import RunContext
    from spine_dfl.workflows.train import TASKS

    for kind, overrides in (("grader", []), ("locator", [])):
        parent = read_parent(parents[kind])
        config = finetune_config(parent, None, ["device=cpu", *overrides])
        context = RunContext(site_cohort / "manifest.csv", config, tmp_path / kind, init_distributed("cpu"),
                             torch.device("cpu"), parent=parent)
        task = TASKS[kind](context)
        fresh = {k: v.clone() for k, v in task.model.state_dict().items()}
        task.start_from(parent)
        state = task.model.state_dict()
        assert all(torch.equal(state[k], parent.raw["model_state"][k]) for k in state)
        assert any(not torch.equal(fresh[k], state[k]) for k in state)  # not the random init


def test_grader_fine_tuned_records_its_parent_and_refits_calibration_and_shift(parents, site_cohort, tmp_path,
                                                                                capsys):
    out = tmp_path / "tuned"
    assert main(["train", str(site_cohort / "manifest.csv"), "--init", str(parents["grader"]), "--device", "cpu",
                 "--out", str(out), "--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=2",
                 "--no-report"]) == 0
    assert "fine-tuning the grader" in capsys.readouterr().out
    parent = torch.load(parents["grader"], weights_only=True)
    for name in ("best.pt", "last.pt"):
        raw = torch.load(out / name, weights_only=True)
        assert raw["parent"]["sha256"] == _sha256(parents["grader"])
        assert raw["parent"]["name"] == "best.pt" and raw["parent"]["kind"] == "grader"
    tuned = torch.load(out / "best.pt", weights_only=True)
    assert tuned["class_names"] == parent["class_names"] and tuned["preprocessing"] == parent["preprocessing"]
    assert tuned["config"]["train"]["lr_backbone"] == pytest.approx(parent["config"]["train"]["lr_backbone"] * 0.1)
    # refitted on the new site's validation and training split, not carried over
    assert tuned["calibration"]["temperatures"] != parent["calibration"]["temperatures"]
    assert tuned["calibration"]["n"] == int((pd.read_csv(site_cohort / "manifest.csv")["split"] == "val").sum())
    assert not torch.equal(tuned["shift"]["mean"], parent["shift"]["mean"])
    assert tuned["shift"]["threshold"] != parent["shift"]["threshold"]
    assert not (out / "filter_init.json").exists()  # the parent's filter bank is kept


def test_locator_fine_tuned_keeps_its_levels_and_records_its_parent(parents, site_cohort, tmp_path):
    out = tmp_path / "tuned_locator"
    assert main(["train", str(site_cohort / "manifest.csv"), "--init", str(parents["locator"]), "--device", "cpu",
                 "--out", str(out)]) == 0
    parent = torch.load(parents["locator"], weights_only=True)
    tuned = torch.load(out / "best.pt", weights_only=True)
    assert tuned["kind"] == "locator" and tuned["levels"] == parent["levels"]
    assert tuned["parent"] == {"sha256": _sha256(parents["locator"]), "name": "best.pt",
                               "path": str(parents["locator"]), "kind": "locator"}
    assert tuned["config"]["train"]["lr_backbone"] == pytest.approx(parent["config"]["train"]["lr_backbone"] * 0.1)


def test_other_classes_are_refused_in_one_line_naming_them(parents, site_cohort, tmp_path, capsys):
    table = pd.read_csv(site_cohort / "manifest.csv", dtype=str)
    table["image"] = [str(site_cohort / p) for p in table["image"]]
    table.loc[table.index[:3], "label"] = "wedge"
    table.loc[table.index[3:5], "label"] = "crush"
    manifest = tmp_path / "other_classes.csv"
    table.to_csv(manifest, index=False)
    code = main(["train", str(manifest), "--init", str(parents["grader"]), "--device", "cpu",
                 "--out", str(tmp_path / "run")])
    lines = _error_lines(capsys)
    assert code == 2 and len(lines) == 1
    assert str(manifest) in lines[0] and "wedge" in lines[0] and "crush" in lines[0] and "normal" not in \
        lines[0].split("are not classes")[0]
    assert not (tmp_path / "run" / "best.pt").exists()


@pytest.mark.parametrize("problem", ["missing", "not_torch", "task", "resume", "kept_key"])
def test_what_cannot_be_fine_tuned_is_one_line_and_exit_2(problem, parents, site_cohort, tmp_path, capsys):
    checkpoint, extra = parents["grader"], []
    if problem == "missing":
        checkpoint = tmp_path / "nowhere.pt"
    elif problem == "not_torch":
        checkpoint = tmp_path / "notes.pt"
        checkpoint.write_text("not a checkpoint")
    elif problem == "task":
        extra = ["--config", "locator_cpu"]
    elif problem == "resume":
        extra = ["--resume"]
    else:
        extra = ["--set", "data.input_size=96"]
    code = main(["train", str(site_cohort / "manifest.csv"), "--init", str(checkpoint), "--device", "cpu",
                 "--out", str(tmp_path / "run"), *extra])
    lines = _error_lines(capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    expected = {"missing": "nowhere.pt: checkpoint file not found", "not_torch": "notes.pt: not a spine-dfl checkpoint",
                "task": "trains the locator", "resume": "--resume and --init exclude each other",
                "kept_key": "data.input_size=96: fine-tuning keeps the checkpoint's value (64"}[problem]
    assert expected in lines[0]
    assert not (tmp_path / "run").exists()
