"""``spine-dfl review`` without a browser: the studies read from a real ``score`` run, the store's saves
(manifest schema, per-field merge, versions, threads), a rescore that keeps the reader's grades, progress
and kappa, and the one-line errors of bad input."""

from __future__ import annotations

import csv
import threading
from pathlib import Path

import pytest
import torch
from sklearn.metrics import cohen_kappa_score

from spine_dfl.cli import main
from spine_dfl.data.manifest import load_manifest
from spine_dfl.io.vocabulary import POINT_COLUMNS
from spine_dfl.predictions import read_predictions
from spine_dfl.review import EditError, ReviewInputError, ReviewStore, load_studies
from spine_dfl.review.run import patient_of

CLASSES = ["normal", "mild", "moderate", "severe"]


def scored_results(folder: Path, patients: int = 2, rows: int = 512, seed: int = 1, cohort: Path | None = None) -> Path:
    """A synthetic cohort (made in ``folder``, or the given ``cohort``) scored by the real ``score`` with a
    random-init ROI grader and the cohort's ROI file; returns the score output folder (its predictions.csv)."""
    from spine_dfl.data.transforms import Preprocessing
    from spine_dfl.engine.checkpoint import atomic_torch_save, checkpoint_payload
    from spine_dfl.model import DFLNet
    from spine_dfl.score import score
    from spine_dfl.synth import generate_cohort

    if cohort is None:
        cohort = folder / "cohort"
        generate_cohort(cohort, patients=patients, seed=seed, rows=rows)
    torch.manual_seed(seed)
    model = DFLNet("resnet18", num_classes=len(CLASSES), filters_per_class=2)
    atomic_torch_save(checkpoint_payload(model, {"test": "review"}, CLASSES, Preprocessing(input_size=32, use_roi=True), {}),
                      folder / "grader.pt")
    summary = score(folder / "grader.pt", [cohort / "images"], folder / "results", rois_csv=cohort / "rois.csv",
                    workers=0, progress=False)
    assert (summary.scored, summary.failed) == (patients, 0)
    return folder / "results"


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return scored_results(tmp_path_factory.mktemp("review"))


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _store(results: Path, out: Path, reader: str = "dr a") -> ReviewStore:
    studies, classes = load_studies(results / "predictions.csv")
    return ReviewStore(out, studies, classes, reader, patient_of)


def test_studies_are_the_scored_images_with_their_vertebrae(results):
    table, classes = read_predictions(results / "predictions.csv")
    studies, names = load_studies(results / "predictions.csv")
    assert names == classes == CLASSES
    assert [s.image for s in studies] == list(dict.fromkeys(table["image"]))
    for study in studies:
        rows = table[table["image"] == study.image]
        assert [v.level for v in study.vertebrae] == list(rows["vertebra"])
        assert [v.pred for v in study.vertebrae] == list(rows["pred"])
        first = study.vertebrae[0]
        assert first.box == list(rows.iloc[0][["x_min", "y_min", "x_max", "y_max"]])
        assert first.points_source == "box" and first.points[0] == first.box[:2] and first.points[5] == first.box[2:]
        assert "image" not in study.public() and "patient_id" not in study.public()


def test_edits_merge_per_field_and_save_a_manifest_train_can_read(results, tmp_path):
    store = _store(results, tmp_path)
    study = store.studies[0]
    v0, v1 = study.vertebrae[0], study.vertebrae[1]
    store.edit(0, v0.key, {"label": "severe"})
    moved = [[x + 3, y - 2] for x, y in v0.points]
    result = store.edit(0, v0.key, {"points": moved})  # another tab: points only, the grade stays
    assert result["review"]["label"] == "severe" and result["review"]["version"] == 2
    store.edit(0, v1.key, {"assessable": "no"})
    store.edit(0, v1.key, {"vertebra": "t12"})
    rows = {r["review_key"]: r for r in _rows(tmp_path / "review.csv")}
    assert rows[v1.key]["assessable"] == "no" and rows[v1.key]["label"] == "" and rows[v1.key]["vertebra"] == "T12"
    manifest = load_manifest(tmp_path / "manifest.csv")
    assert len(manifest.table) == 1  # the not-assessable vertebra is in review.csv only
    row = manifest.table.iloc[0]
    assert row["label"] == "severe" and row["vertebra"] == v0.level and row["patient_id"] == "P0000"
    saved = _rows(tmp_path / "manifest.csv")[0]
    assert [float(saved[c]) for c in POINT_COLUMNS] == [c for p in moved for c in p]
    xs, ys = [p[0] for p in moved], [p[1] for p in moved]
    assert [row["x_min"], row["y_min"], row["x_max"], row["y_max"]] == [min(xs), min(ys), max(xs), max(ys)]
    assert (saved["source"], saved["reader"], saved["model_grade"]) == ("reader", "dr a", v0.pred)
    assert saved["reviewed_at"].endswith("+00:00")


def test_accepting_the_model_is_source_model_and_accept_all_normal_finishes_a_study(results, tmp_path):
    store = _store(results, tmp_path)
    study = store.studies[0]
    store.edit(0, study.vertebrae[0].key, {"label": study.vertebrae[0].pred})
    result = store.accept_all_normal(0)
    assert result["keys"] == [v.key for v in study.vertebrae[1:]]
    assert result["progress"]["studies_done"] == 1 and result["progress"]["studies"] == len(store.studies)
    rows = _rows(tmp_path / "manifest.csv")
    assert rows[0]["source"] == "model"
    assert {r["label"] for r in rows[1:]} == {"normal"}
    assert all(r["source"] == ("model" if r["model_grade"] == "normal" else "reader") for r in rows[1:])
    expected = cohen_kappa_score([r["label"] for r in rows], [r["model_grade"] for r in rows], labels=CLASSES,
                                 weights="quadratic")
    kappa = result["progress"]["kappa"]
    assert kappa == pytest.approx(expected, abs=1e-4) if len({r["label"] for r in rows} | {r["model_grade"] for r in rows}) > 1 else kappa is None


def test_an_added_vertebra_and_bad_edits(results, tmp_path):
    store = _store(results, tmp_path)
    added = store.add(1, [10, 20, 50, 44], "L1")
    assert added["key"] == "a1" and added["review"]["added"] and added["review"]["box"] == [10, 20, 50, 44]
    store.edit(1, "a1", {"label": "mild"})
    assert _rows(tmp_path / "manifest.csv")[-1]["source"] == "reader"
    for key, changes, words in [("v0", {"label": "broken"}, "not one of the classes"),
                                ("v0", {"points": [[1, 2]]}, r"six \[x, y\] pairs"),
                                ("v0", {"vertebra": "Q9"}, "not a vertebra level"),
                                ("v99", {"label": "mild"}, "no vertebra 'v99'"),
                                ("v0", {"colour": "red"}, "an edit changes some of")]:
        with pytest.raises(EditError, match=words):
            store.edit(0, key, changes)
    with pytest.raises(EditError, match="x_max > x_min"):
        store.add(0, [50, 20, 10, 44])


def test_a_restart_on_a_rescore_keeps_the_readers_grades(results, tmp_path):
    store = _store(results, tmp_path)
    key = store.studies[0].vertebrae[2].key
    store.edit(0, key, {"label": "moderate"})
    rescored = scored_results(tmp_path / "again", seed=2, cohort=results.parent / "cohort")  # the films, another model
    assert read_predictions(rescored / "predictions.csv")[0]["prob_mild"].tolist() != \
        read_predictions(results / "predictions.csv")[0]["prob_mild"].tolist()
    again = ReviewStore(tmp_path, *load_studies(rescored / "predictions.csv"), "dr b", patient_of)
    assert again.study_rows(again.studies[0])[key]["label"] == "moderate"
    again.edit(0, again.studies[0].vertebrae[0].key, {"label": "mild"})
    rows = {r["review_key"]: r for r in _rows(tmp_path / "manifest.csv") if "P0000" in r["image"]}
    assert (rows[key]["label"], rows[key]["reader"]) == ("moderate", "dr a")


def test_concurrent_edits_from_threads_are_all_saved(results, tmp_path):
    store = _store(results, tmp_path)
    vertebrae = store.studies[0].vertebrae

    def grade(k: int) -> None:
        store.edit(0, vertebrae[k].key, {"label": CLASSES[k % 4]})

    def move(k: int) -> None:
        store.edit(0, vertebrae[k].key, {"points": [[x + 1, y] for x, y in vertebrae[k].points]})

    threads = [threading.Thread(target=f, args=(k,)) for k in range(len(vertebrae)) for f in (grade, move)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rows = {r["review_key"]: r for r in _rows(tmp_path / "review.csv")}
    for k, vertebra in enumerate(vertebrae):
        assert rows[vertebra.key]["label"] == CLASSES[k % 4] and rows[vertebra.key]["version"] == "2"
        assert float(rows[vertebra.key]["sa_x"]) == vertebra.points[0][0] + 1


def test_bad_input_is_one_line_and_exit_2(results, tmp_path, capsys):
    assert main(["review", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "films").mkdir()
    assert main(["review", str(tmp_path / "films"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "--checkpoint" in err and "\n" not in err
    (tmp_path / "bad.csv").write_text("image,vertebra\nx.dcm,L1\n", encoding="utf-8")
    assert main(["review", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "out")]) == 2
    assert "no prob_<class> columns" in capsys.readouterr().err


def test_top_patches_of_an_explain_run_are_attached_by_image_and_level(results, tmp_path):
    from spine_dfl.explain.inputs import explain_inputs
    from spine_dfl.review.studies import attach_patches

    studies, _ = load_studies(results / "predictions.csv")
    film = studies[0].image
    explain_inputs(results.parent / "grader.pt", [film], results.parent / "cohort" / "rois.csv", tmp_path / "explain",
                   top_n=2, device="cpu")
    assert attach_patches(studies, tmp_path / "explain") == len(studies[0].vertebrae)
    patches = studies[0].vertebrae[0].patches
    assert 1 <= len(patches) <= 2 and [p["rank"] for p in patches] == list(range(1, len(patches) + 1))
    assert all(p["x_max"] > p["x_min"] and p["y_max"] > p["y_min"] for p in patches)
    assert all(not v.patches for v in studies[1].vertebrae)  # that film was not explained
    (tmp_path / "bad.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ReviewInputError, match="not a patches.json"):
        attach_patches(studies, tmp_path / "bad.json")


def test_a_folder_of_films_is_scored_first_and_the_locators_flags_reach_the_page(located_grader_checkpoints, results,
                                                                                tmp_path):
    from spine_dfl.review import start_review

    films = tmp_path / "films"
    films.mkdir()
    for path in sorted((results.parent / "cohort" / "images").iterdir()):
        (films / path.name).write_bytes(path.read_bytes())
    session = start_review(films, tmp_path / "reviewed", checkpoint=located_grader_checkpoints["embedded"], port=0)
    try:
        assert (tmp_path / "reviewed" / "scored" / "predictions.csv").is_file()
        table, _ = read_predictions(tmp_path / "reviewed" / "scored" / "predictions.csv")
        study = session.app.study(0)
        rows = table[table["image"] == session.app.studies[0].image]
        assert [v["level"] for v in study["vertebrae"]] == list(rows["vertebra"])
        assert [v["flags"]["level_anchored"] for v in study["vertebrae"]] == list(rows["level_anchored"])
        assert [v["flags"]["morph_grade"] for v in study["vertebrae"]] == list(rows["morph_grade"])
        assert session.app.studies[0].patient_id == "P0000"  # kept for the manifest, never sent to the page
        assert "patient_id" not in study and "image" not in study
    finally:
        session.server.server_close()
