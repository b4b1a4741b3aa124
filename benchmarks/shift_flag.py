"""Benchmark: does the shift flag tell another generator's films from the grader's own?

The grader (``--grader``, trained on one generator, its checkpoint carrying the training-distribution
statistics) scores the test-split films of its own cohort (``--own``) and of another generator's
cohort (``--other``) on their manifest ROIs (each cohort's ``rois.csv``: the flag alone is measured,
not the locator). Figure per cohort: the share of images flagged ``in_distribution = no``.

    python benchmarks/shift_flag.py OUT --grader G/best.pt --own SYNTH --other DRR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--grader", type=Path, required=True)
    parser.add_argument("--own", type=Path, required=True, help="the grader's own cohort folder")
    parser.add_argument("--other", type=Path, required=True, help="another generator's cohort folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--workers", type=int, default=2)
    return parser.parse_args(argv)


def flagged(grader: Path, cohort: Path, split: str, out: Path, workers: int) -> dict[str, float | int]:
    from spine_dfl.score import score

    manifest = pd.read_csv(cohort / "manifest.csv", dtype=str)
    files = sorted({str((cohort / image).resolve()) for image in manifest.loc[manifest["split"] == split, "image"]})
    score(grader, files, out, rois_csv=cohort / "rois.csv", workers=workers, progress=False)
    table = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    verdict = table[table["status"] == "ok"].groupby("image")["in_distribution"].first()
    return {"images": int(len(verdict)), "flagged": int((verdict == "no").sum()),
            "flagged_fraction": round(float((verdict == "no").mean()), 4) if len(verdict) else None}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = {"grader": str(args.grader),
              "own": flagged(args.grader, args.own, args.split, args.out / "own", args.workers),
              "other": flagged(args.grader, args.other, args.split, args.out / "other", args.workers)}
    (args.out / "shift_flag.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
