"""Benchmark: what score refuses. Every pydicom-data / pydicom test file, and a DRR cohort's AP films.

Part 1 (``--pydicom``): ``score`` with the grader and locator over every file of pydicom-data
(module ``data_store``) and pydicom's ``data/test_files`` (test material, never training data):
per file its outcome, the reason of each refusal and the vertebrae graded. None of them is a
lateral spine radiograph, so every graded vertebra is a failure of the gates.

Part 2 (``--frontal COHORT``): the AP films of a DRR-phantom cohort (``films.csv`` view ``ap``),
scored twice: as written (ViewPosition AP, PatientOrientation with L/R) and with ViewPosition,
ViewCodeSequence and PatientOrientation removed (the image alone must tell). Figure: the share
refused.

    python benchmarks/refusals.py OUT --grader G/best.pt --locator L/best.pt --pydicom --frontal DRR
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pandas as pd


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--grader", type=Path, required=True)
    parser.add_argument("--locator", type=Path, required=True)
    parser.add_argument("--pydicom", action="store_true", help="score every pydicom-data / pydicom test file")
    parser.add_argument("--frontal", type=Path, default=None, help="a DRR cohort folder: score its AP films")
    parser.add_argument("--workers", type=int, default=2)
    return parser.parse_args(argv)


def test_material() -> list[Path]:
    import pydicom

    folders = [Path(pydicom.__file__).parent / "data" / "test_files"]
    try:
        import data_store

        folders.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    return [f for f in folders if f.is_dir()]


def outcomes(out: Path) -> dict[str, Any]:
    table = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    per_file = {}
    for image, rows in table.groupby("image", sort=True):
        ok = rows[rows["status"] == "ok"]
        per_file[image] = {"graded": int(len(ok)), "reason": "" if len(ok) else str(rows["error"].iloc[0])}
    summary = json.loads((out / "summary.json").read_text())
    graded_files = {k: v["graded"] for k, v in per_file.items() if v["graded"]}
    return {"files": len(per_file), "files_graded": len(graded_files), "vertebrae_graded": sum(graded_files.values()),
            "graded": graded_files, "failed_by_reason": summary["failed_by_reason"], "per_file": per_file}


def strip_view_tags(folder: Path, out: Path) -> Path:
    import pydicom

    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        for keyword in ("ViewPosition", "ViewCodeSequence", "PatientOrientation"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(out / path.name)
    return out


def frontal_films(cohort: Path, out: Path) -> Path:
    films = pd.read_csv(cohort / "films.csv", dtype=str)
    view_column = "view" if "view" in films.columns else next(c for c in films.columns if "view" in c)
    image_column = "image" if "image" in films.columns else next(c for c in films.columns if "image" in c or "file" in c)
    out.mkdir(parents=True, exist_ok=True)
    for image in films.loc[films[view_column].str.lower() == "ap", image_column]:
        shutil.copy(cohort / image, out / Path(image).name)
    return out


def main(argv: list[str] | None = None) -> int:
    from spine_dfl.score import score

    args = parse_args(argv)
    result: dict[str, Any] = {}
    run = lambda inputs, folder: score(args.grader, inputs, folder, locator=args.locator, workers=args.workers,  # noqa: E731
                                       progress=False)
    if args.pydicom:
        run(test_material(), args.out / "pydicom")
        result["pydicom"] = outcomes(args.out / "pydicom")
    if args.frontal is not None:
        films = frontal_films(args.frontal, args.out / "ap_films")
        stripped = strip_view_tags(films, args.out / "ap_films_no_view_tags")
        for name, folder in (("with_view_tags", films), ("without_view_tags", stripped)):
            run([folder], args.out / f"ap_{name}")
            got = outcomes(args.out / f"ap_{name}")
            result[f"frontal_{name}"] = {"films": got["files"], "refused": got["files"] - got["files_graded"],
                                         "refused_fraction": round((got["files"] - got["files_graded"]) / max(got["files"], 1), 4),
                                         "failed_by_reason": got["failed_by_reason"]}
    short = {k: ({kk: vv for kk, vv in v.items() if kk != "per_file"} if isinstance(v, dict) else v) for k, v in result.items()}
    (args.out / "refusals.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(short, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
