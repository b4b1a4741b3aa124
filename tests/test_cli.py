"""The command line: help for every command, synth -> validate, exit statuses on bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from spine_dfl.cli import build_parser, main

COMMANDS = ["demo", "synth", "validate", "train", "evaluate", "explain", "score", "serve"]


def test_top_level_help_lists_every_command(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in COMMANDS:
        assert command in text


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_a_meaning(command: str, capsys) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices[command]
    for action in sub._actions:
        if action.dest != "help":
            assert action.help, f"{command} {action.option_strings or action.dest} has no help text"
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "usage: spine-dfl " + command in capsys.readouterr().out


def test_console_script_and_module_entry_points() -> None:
    done = subprocess.run([sys.executable, "-m", "spine_dfl", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("spine-dfl ")


def test_synth_then_validate(tmp_path: Path, capsys) -> None:
    out = tmp_path / "c"
    assert main(["synth", str(out), "--patients", "8", "--seed", "1"]) == 0
    import pydicom

    images = sorted((out / "images").iterdir())
    assert len(images) == 8
    for path in images:
        ds = pydicom.dcmread(path)
        assert ds.pixel_array.ndim == 2
    capsys.readouterr()
    assert main(["validate", str(out / "manifest.csv")]) == 0
    summary = capsys.readouterr().out
    assert "train" in summary and "normal" in summary
    assert main(["synth", str(out), "--patients", "8", "--seed", "1"]) == 2  # refuses to overwrite silently
    assert "--overwrite" in capsys.readouterr().err


def test_validate_reports_rows_and_exits_nonzero(small_cohort: Path, tmp_path: Path, capsys) -> None:
    table = pd.read_csv(small_cohort / "manifest.csv")
    table["image"] = table["image"].map(lambda p: str(small_cohort / p))
    table.loc[1, "split"] = "holdout"
    table.loc[2, "x_max"] = table.loc[2, "x_min"] - 5
    bad = tmp_path / "bad.csv"
    table.to_csv(bad, index=False)
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "row 2" in err and "holdout" in err
    assert "row 3" in err and "x_max" in err


def test_bad_config_and_checkpoint_exit_2(small_cohort: Path, tmp_path: Path, capsys) -> None:
    assert main(["train", str(small_cohort / "manifest.csv"), "--set", "train.epoch=1", "--out", str(tmp_path)]) == 2
    assert "train.epoch" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["evaluate", str(junk), str(small_cohort / "manifest.csv"), "--out", str(tmp_path / "e")]) == 2
    assert "junk.pt" in capsys.readouterr().err


def test_evaluate_names_the_row_of_a_label_the_checkpoint_does_not_know(small_cohort: Path, tmp_path: Path, capsys) -> None:
    from spine_dfl.engine.checkpoint import atomic_torch_save, checkpoint_payload
    from spine_dfl.config import config_to_dict, load_config
    from spine_dfl.data.transforms import Preprocessing
    from spine_dfl.model import DFLNet

    model = DFLNet("resnet18", num_classes=4, filters_per_class=2)
    checkpoint = tmp_path / "model.pt"
    atomic_torch_save(checkpoint_payload(model, config_to_dict(load_config("cpu_demo")),
                                         ["normal", "mild", "moderate", "severe"], Preprocessing(input_size=64)),
                      checkpoint)
    table = pd.read_csv(small_cohort / "manifest.csv")
    table["image"] = table["image"].map(lambda p: str(small_cohort / p))
    table.loc[4, "label"] = "fractured"
    bad = tmp_path / "bad.csv"
    table.to_csv(bad, index=False)
    assert main(["evaluate", str(checkpoint), str(bad), "--split", str(table.loc[4, "split"]),
                 "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "row 5" in err and "fractured" in err
    assert not (tmp_path / "e" / "metrics.json").exists()


def _bad_manifest(small_cohort: Path, tmp_path: Path) -> Path:
    table = pd.read_csv(small_cohort / "manifest.csv")
    table["image"] = table["image"].map(lambda p: str(small_cohort / p))
    table.loc[1, "split"] = "holdout"
    table.loc[2, "label"] = ""
    bad = tmp_path / "bad.csv"
    table.to_csv(bad, index=False)
    return bad


@pytest.mark.parametrize("command", ["validate", "train"])
def test_manifest_errors_are_printed_once(command: str, small_cohort: Path, tmp_path: Path) -> None:
    bad = _bad_manifest(small_cohort, tmp_path)
    argv = [str(bad)] if command == "validate" else [str(bad), "--out", str(tmp_path / "run")]
    done = subprocess.run([sys.executable, "-m", "spine_dfl", command, *argv], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    lines = [line.strip() for line in done.stderr.splitlines() if "row " in line]
    assert any("holdout" in line for line in lines) and any("empty label" in line for line in lines), done.stderr
    assert len(lines) == len(set(lines)), done.stderr
    assert "Traceback" not in done.stderr


def test_help_and_validate_import_no_torch(small_cohort: Path) -> None:
    probe = ("import sys\nfrom spine_dfl.cli import main\n"
             "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
             "heavy = sorted(m for m in ('torch', 'torchvision', 'monai') if m in sys.modules)\n"
             "print('HEAVY', ','.join(heavy))\n")
    for argv in (["--help"], ["validate", "--help"], ["score", "--help"], ["explain", "--help"],
                 ["validate", str(small_cohort / "manifest.csv")]):
        done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True)
        assert done.stdout.strip().splitlines()[-1] == "HEAVY", (argv, done.stdout[-500:], done.stderr[-2000:])
