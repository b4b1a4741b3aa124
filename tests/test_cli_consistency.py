"""The commands agree: one error model, one meaning per option name, one output-folder rule, one set of
exit statuses (issue 22, items 6 and 7)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from spine_dfl.cli import build_parser, main
from spine_dfl.cli.common import EXPLAIN_BATCH_SIZE, INFERENCE_BATCH_SIZE, prepare_out
from spine_dfl.io.errors import EXIT_INPUTS_FAILED, InputError

# Every command that runs a model, with the arguments it needs to parse.
MODEL_COMMANDS = {
    "demo": ["demo"],
    "train": ["train", "m.csv"],
    "evaluate": ["evaluate", "c.pt", "m.csv"],
    "explain": ["explain", "c.pt", "m.csv"],
    "score": ["score", "c.pt", "folder"],
    "serve start": ["serve", "start", "c.pt", "--spool", "s", "--send-to", "PACS@host:104"],
}


def _non_empty(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "earlier.txt").write_text("an earlier run\n")
    return folder


# Every command that writes a folder: its argv for that folder, and whether it can --resume.
def _folder_commands(out: Path) -> dict[str, tuple[list[str], bool]]:
    o = str(out)
    return {
        "synth": (["synth", o], False),
        "phantom": (["phantom", o], False),
        "drr": (["drr", "ct.nii.gz", "--out", o], False),
        "demo": (["demo", "--out", o], False),
        "train": (["train", "m.csv", "--config", "cpu_demo", "--out", o], True),
        "evaluate": (["evaluate", "c.pt", "m.csv", "--out", o], False),
        "explain": (["explain", "c.pt", "m.csv", "--out", o], False),
        "score": (["score", "c.pt", "folder", "--out", o], True),
        "view-train": (["view-train", o, "--manifest", "m.csv"], False),
        "import": (["import", "buu", "source", o], False),
        "review": (["review", "results", "--out", o], True),
    }


# --------------------------------------------------------------------------- error model and -v
@pytest.mark.parametrize("argv", [["-v", "validate", "m.csv"], ["validate", "-v", "m.csv"], ["validate", "m.csv", "-v"],
                                  ["serve", "status", "--spool", "s", "-v"], ["-v", "serve", "start", "c.pt",
                                                                              "--spool", "s", "--send-to", "A@h:1"]])
def test_verbose_works_before_and_after_the_command(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).verbose is True


def test_without_verbose_it_is_off() -> None:
    assert build_parser().parse_args(["validate", "m.csv"]).verbose is False


@pytest.mark.parametrize("verbose", [[], ["-v"]], ids=["quiet", "verbose"])
@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyError("column"), FileNotFoundError("internal.tmp")])
def test_an_internal_error_is_a_bug_with_a_traceback_and_exit_1(error: Exception, verbose: list[str], tmp_path: Path,
                                                                monkeypatch, capsys) -> None:
    from spine_dfl.data import manifest

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(manifest, "validate_manifest", broken)
    assert main([*verbose, "validate", str(tmp_path / "m.csv")]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and f"{type(error).__name__}: {error}" in err
    assert "in broken" in err  # the traceback reaches the raising function
    assert err.strip().splitlines()[-1].endswith("please report it with the traceback above")
    assert not err.startswith("error: ")


def test_a_user_error_has_its_traceback_only_with_verbose(tmp_path: Path, capsys) -> None:
    argv = ["serve", "status", "--spool", str(tmp_path / "nowhere")]
    assert main(argv) == 2
    quiet = capsys.readouterr().err
    assert main([*argv, "-v"]) == 2
    verbose = capsys.readouterr().err
    assert "Traceback" not in quiet and len(quiet.strip().splitlines()) == 1
    assert "Traceback (most recent call last)" in verbose and verbose.strip().splitlines()[-1] == quiet.strip()


def test_a_usage_error_is_one_line_and_exit_2(capsys) -> None:
    assert main(["train"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: spine-dfl train: ") and "manifest" in err[0]


def test_a_missing_user_file_is_an_input_error(tmp_path: Path, capsys) -> None:
    for argv in (["validate", str(tmp_path / "nowhere.csv")],
                 ["serve", "status", "--spool", str(tmp_path / "nowhere")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "nowhere" in err and "Traceback" not in err


def test_help_documents_the_exit_statuses(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for line in ("0  done", "1  internal error", "2  bad input or usage", "3  finished, but some inputs"):
        assert line in text


# --------------------------------------------------------------------------- one meaning per option
def _subcommands(parser=None, prefix: str = ""):
    """Every (sub)command's name ("serve start") and parser, nested ones included."""
    import argparse

    for action in (parser or build_parser())._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}".strip(), sub
                yield from _subcommands(sub, f"{prefix} {name}".strip())


def _options(sub) -> dict:
    return {action.dest: action for action in sub._actions}


def test_the_shared_options_are_where_they_belong_and_mean_one_thing() -> None:
    from spine_dfl.cli.common import device_name

    commands = dict(_subcommands())
    with_device = {name for name, sub in commands.items() if "device" in _options(sub)}
    assert with_device == set(MODEL_COMMANDS)  # a new model command is added to MODEL_COMMANDS, and tested
    assert all(_options(commands[name])["device"].type is device_name for name in with_device)
    with_workers = {name for name, sub in commands.items() if "workers" in _options(sub)}
    assert with_workers == {"score", "serve start"}
    assert all("decode" in _options(commands[name])["workers"].help for name in with_workers)
    batch = {name: _options(sub)["batch_size"].default for name, sub in commands.items() if "batch_size" in _options(sub)}
    assert batch == {"evaluate": INFERENCE_BATCH_SIZE, "score": INFERENCE_BATCH_SIZE,
                     "serve start": INFERENCE_BATCH_SIZE, "explain": EXPLAIN_BATCH_SIZE}
    with_out = {name for name, sub in commands.items() if "out" in _options(sub)}
    assert with_out == set(_folder_commands(Path("x")))  # each is tested by the output-folder rule below


def test_workers_means_decode_processes_and_serve_has_concurrent_studies() -> None:
    parser = build_parser()
    score = parser.parse_args(["score", "c.pt", "f", "--workers", "3"])
    serve = parser.parse_args([*MODEL_COMMANDS["serve start"], "--workers", "3", "--concurrent-studies", "2"])
    assert score.workers == serve.workers == 3 and serve.concurrent_studies == 2
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    start = next(a for a in sub["serve"]._actions if a.__class__.__name__ == "_SubParsersAction").choices["start"]
    for command in (sub["score"], start):
        workers = next(a for a in command._actions if "--workers" in a.option_strings)
        assert "decode" in workers.help


@pytest.mark.parametrize("command", list(MODEL_COMMANDS))
def test_every_model_command_takes_the_same_device_option(command: str, capsys) -> None:
    argv = MODEL_COMMANDS[command]
    parser = build_parser()
    for value in ("auto", "cpu", "cuda", "cuda:1"):
        assert parser.parse_args([*argv, "--device", value]).device == value
    assert main([*argv, "--device", "gpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'gpu' is not a device" in err[0]


def test_batch_sizes_have_one_default_per_kind_of_work() -> None:
    parser = build_parser()
    for command in ("evaluate", "score", "serve start"):
        assert parser.parse_args(MODEL_COMMANDS[command]).batch_size == INFERENCE_BATCH_SIZE
    assert parser.parse_args(MODEL_COMMANDS["explain"]).batch_size == EXPLAIN_BATCH_SIZE


def test_train_passes_its_device_to_the_config(small_cohort: Path, tmp_path: Path, monkeypatch) -> None:
    import spine_dfl.workflows.train as workflow

    seen = {}

    def fake(manifest, config, overrides, out_dir, resume=False, report=True, init=None):
        seen.update(config=config, overrides=overrides)
        return SimpleNamespace(is_main_process=False)

    monkeypatch.setattr(workflow, "train_and_report", fake)
    assert main(["train", str(small_cohort / "manifest.csv"), "--device", "cpu", "--out", str(tmp_path / "t")]) == 0
    assert seen["overrides"][0] == "device=cpu"


# --------------------------------------------------------------------------- one bad input, one code
def _absolute_images(small_cohort: Path) -> pd.DataFrame:
    table = pd.read_csv(small_cohort / "manifest.csv")
    table["image"] = table["image"].map(lambda p: str(small_cohort / p))
    return table


def _missing_column(table: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    return table.drop(columns=["label"]), ["header (line 1)", "column 'label'", "missing required column"]


def _missing_image(table: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    table.loc[2, "image"] = str(Path(table.loc[2, "image"]).with_name("nowhere.dcm"))
    return table, ["row 3 (line 4)", "column 'image'", "file not found", "nowhere.dcm"]


def _unknown_split(table: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    table.loc[1, "split"] = "holdout"
    return table, ["row 2 (line 3)", "column 'split'", "holdout"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from spine_dfl.config import config_to_dict, load_config
    from spine_dfl.data.transforms import Preprocessing
    from spine_dfl.engine.checkpoint import atomic_torch_save, checkpoint_payload
    from spine_dfl.model import DFLNet

    model = DFLNet("resnet18", num_classes=4, filters_per_class=2)
    checkpoint = tmp_path_factory.mktemp("checkpoint") / "model.pt"
    atomic_torch_save(checkpoint_payload(model, config_to_dict(load_config("cpu_demo")),
                                         ["normal", "mild", "moderate", "severe"], Preprocessing(input_size=64)),
                      checkpoint)
    return checkpoint


@pytest.mark.parametrize("defect", [_missing_column, _missing_image, _unknown_split], ids=lambda f: f.__name__[1:])
def test_one_bad_manifest_gives_the_same_error_from_validate_train_and_evaluate(
        defect, small_cohort: Path, tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    table, expected = defect(_absolute_images(small_cohort))
    bad = tmp_path / "bad.csv"
    table.to_csv(bad, index=False)
    commands = {
        "validate": ["validate", str(bad)],
        "train": ["train", str(bad), "--config", "cpu_demo", "--out", str(tmp_path / "t")],
        "evaluate": ["evaluate", str(tiny_checkpoint), str(bad), "--out", str(tmp_path / "e")],
    }
    printed = {}
    for name, argv in commands.items():
        assert main(argv) == 2, name
        printed[name] = capsys.readouterr().err
    for name, err in printed.items():
        lines = err.strip().splitlines()
        # One 'error:' line naming the file, then one line per problem (here one), naming the file and row.
        assert lines[0] == f"error: 1 error(s) in manifest {bad}:", (name, err)
        assert len(lines) == 2 and lines[1].strip().startswith(f"{bad}: "), (name, err)
        assert all(part in lines[1] for part in expected), (name, err)
        assert "Traceback" not in err, (name, err)
    assert printed["train"] == printed["validate"] == printed["evaluate"]
    assert not (tmp_path / "e" / "metrics.json").exists()


# --------------------------------------------------------------------------- partial failures: exit 3
def test_score_exits_3_when_some_files_failed(tmp_path: Path, monkeypatch, capsys) -> None:
    import spine_dfl.score.run as score_run

    def fake(*args, failed=1, **kwargs):
        return SimpleNamespace(found=2, scored=2 - failed, failed=failed, failed_by_reason={"not a radiograph": failed},
                               predictions_csv=tmp_path / "predictions.csv", shift_check="unavailable", shifted=0)

    monkeypatch.setattr(score_run, "score", fake)
    argv = ["score", "c.pt", "folder", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == EXIT_INPUTS_FAILED
    monkeypatch.setattr(score_run, "score", lambda *a, **k: fake(failed=0))
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0


def test_explain_exits_3_when_some_or_all_samples_failed(tmp_path: Path, monkeypatch, capsys) -> None:
    from spine_dfl.explain import inputs
    from spine_dfl.explain.run import NoSampleExplained

    manifest = tmp_path / "m.csv"
    manifest.write_text("image,label\n")
    result = SimpleNamespace(entries=[object()], failures=[{"image": "x", "reason": "unreadable"}],
                             index_html=tmp_path / "index.html")
    monkeypatch.setattr(inputs, "explain_records", lambda *a, **k: result)
    assert main(["explain", "c.pt", str(manifest), "--out", str(tmp_path / "a")]) == EXIT_INPUTS_FAILED

    def none_explained(*args, **kwargs):
        raise NoSampleExplained("0 of 3 samples explained")

    monkeypatch.setattr(inputs, "explain_records", none_explained)
    assert main(["explain", "c.pt", str(manifest), "--out", str(tmp_path / "b")]) == EXIT_INPUTS_FAILED
    assert "error: 0 of 3 samples explained" in capsys.readouterr().err


# --------------------------------------------------------------------------- one output-folder rule
def test_prepare_out_uses_new_and_empty_folders(tmp_path: Path) -> None:
    assert prepare_out(tmp_path / "new", "x") == "new"
    (tmp_path / "empty").mkdir()
    assert prepare_out(tmp_path / "empty", "x") == "new"


def test_prepare_out_replaces_or_continues_only_when_asked(tmp_path: Path) -> None:
    out = _non_empty(tmp_path / "out")
    with pytest.raises(InputError, match="--overwrite.*--resume"):
        prepare_out(out, "x", can_resume=True)
    with pytest.raises(InputError, match="--overwrite.*--resume"):
        prepare_out(out, "x")
    with pytest.raises(InputError, match="cannot --resume"):
        prepare_out(out, "x", resume=True)
    assert prepare_out(out, "x", resume=True, can_resume=True) == "resume" and (out / "earlier.txt").exists()
    assert prepare_out(out, "x", overwrite=True) == "overwrite" and not out.exists()
    _non_empty(out)
    assert prepare_out(out, "x", overwrite=True, replace=False) == "overwrite" and (out / "earlier.txt").exists()


def test_prepare_out_never_removes_the_working_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(_non_empty(tmp_path / "here"))
    with pytest.raises(InputError, match="will not remove"):
        prepare_out(Path("."), "x", overwrite=True)
    assert (tmp_path / "here" / "earlier.txt").exists()


@pytest.mark.parametrize("command", list(_folder_commands(Path("x"))))
def test_every_folder_command_refuses_a_non_empty_folder(command: str, tmp_path: Path, capsys) -> None:
    out = _non_empty(tmp_path / "out")
    argv, can_resume = _folder_commands(out)[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0] and "--overwrite" in err[0] and "--resume" in err[0], err
    assert (out / "earlier.txt").exists()
    options = vars(build_parser().parse_args(argv))
    assert "overwrite" in options and ("resume" in options) == can_resume


# --------------------------------------------------------------------------- serve status, train's configs
def test_serve_status_is_its_own_subcommand(tmp_path: Path, capsys) -> None:
    assert main(["serve", "status", "--spool", str(tmp_path)]) == 2
    assert "no node queue here" in capsys.readouterr().err
    assert main(["serve", "--status", "--spool", str(tmp_path)]) == 2  # the old mode is gone
    assert main(["serve", "start", "--spool", str(tmp_path), "--send-to", "A@h:1"]) == 2  # CHECKPOINT is required


def test_train_help_lists_every_shipped_config(capsys) -> None:
    from spine_dfl.config import shipped_config_names

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "locator_cpu" in shipped_config_names()
    for name in shipped_config_names():
        assert name in text


def test_train_without_config_uses_a_clinical_default_for_the_device(small_cohort: Path, tmp_path: Path,
                                                                      monkeypatch, capsys) -> None:
    import spine_dfl.workflows.train as workflow
    from spine_dfl.cli.train import default_config
    from spine_dfl.config import load_config

    assert default_config("cpu") == "train_cpu" and default_config("cuda:0") == "dfl_resnet50_448"
    for name in ("train_cpu", "dfl_resnet50_448"):
        config = load_config(name)
        assert config.train.time_budget_s is None and config.data.input_size >= 224
    seen = {}
    monkeypatch.setattr(workflow, "train_and_report",
                        lambda manifest, config, *a, **k: seen.update(config=config) or SimpleNamespace(is_main_process=False))
    assert main(["train", str(small_cohort / "manifest.csv"), "--device", "cpu", "--out", str(tmp_path / "t")]) == 0
    assert seen["config"] == "train_cpu" and "config: train_cpu" in capsys.readouterr().out
