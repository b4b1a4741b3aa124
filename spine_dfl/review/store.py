"""The reader's review, saved at once: ``OUT/review.csv`` (every reviewed vertebra, not-assessable ones
included) and ``OUT/manifest.csv`` (the graded rows: a manifest ``spine-dfl train`` reads, ``data.manifest``).

A row is keyed by (image, review key): the study's vertebra key (``v0`` ...) or ``a<n>`` for a vertebra
the reader added. An edit carries only the fields it changes (``label``, ``vertebra``, ``points``,
``assessable``) and is merged into the row under one lock, last write per field, so two browser tabs
editing the same study lose neither edit; each row counts its writes in ``version``. Both files are
replaced atomically (``spine_dfl.atomic``) on every edit. Rows already in ``review.csv`` when the app
starts are kept as the reader left them: a rescore's new predictions never overwrite a reader's grade.

Columns: the manifest's ``image, patient_id, vertebra, label, x_min .. y_max, sa_x .. ip_y`` (ROI = the
points' bounding box), then ``sop_instance_uid, study_instance_uid, model_grade, model_vertebra,
assessable, source`` (``model``: the reader accepted the model's grade, level and points; ``reader``:
changed or added), ``reader, reviewed_at`` (UTC, ISO 8601), ``review_key, version``.
"""

from __future__ import annotations

import csv
import datetime
import io
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from spine_dfl.atomic import atomic_write_text
from spine_dfl.io.errors import InputError
from spine_dfl.io.rois import ROI_COLUMNS
from spine_dfl.io.vocabulary import LEVELS, POINT_COLUMNS, normalize_level
from spine_dfl.review.studies import Study, Vertebra

REVIEW_CSV, MANIFEST_CSV = "review.csv", "manifest.csv"
COLUMNS = ("image", "patient_id", "vertebra", "label", *ROI_COLUMNS, *POINT_COLUMNS, "sop_instance_uid",
           "study_instance_uid", "model_grade", "model_vertebra", "assessable", "source", "reader", "reviewed_at",
           "review_key", "version")
EDIT_FIELDS = ("label", "vertebra", "points", "assessable")


class EditError(InputError):
    """An edit the store refuses (unknown study or vertebra, a grade not among the classes, bad points)."""


def _points_of(row: Mapping[str, str]) -> list[list[float]]:
    values = [float(row[c]) for c in POINT_COLUMNS]
    return [[values[2 * i], values[2 * i + 1]] for i in range(6)]


def _check_points(points: Any) -> list[list[float]]:
    try:
        pairs = [[float(x), float(y)] for x, y in points]
    except (TypeError, ValueError):
        raise EditError("points must be six [x, y] pairs of numbers") from None
    if len(pairs) != 6 or not all(math.isfinite(v) for pair in pairs for v in pair):
        raise EditError("points must be six [x, y] pairs of finite numbers")
    return pairs


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


class ReviewStore:
    """The review's rows in memory and on disk; every public method holds the lock (thread-safe)."""

    def __init__(self, out_dir: str | Path, studies: Sequence[Study], class_names: Sequence[str], reader: str,
                 patient_of: Callable[[Study], str]) -> None:
        self.out_dir = Path(out_dir)
        self.studies = list(studies)
        self.class_names = list(class_names)
        self.reader = reader
        self._patient_of = patient_of
        self._lock = threading.Lock()
        self._by_image = {s.image: s for s in self.studies}
        self.rows: dict[tuple[str, str], dict[str, str]] = {}
        self._added = 0
        self._load()

    def _load(self) -> None:
        path = self.out_dir / REVIEW_CSV
        if not path.is_file():
            return
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{path}: not a review file of spine-dfl review (missing columns {', '.join(missing)})")
            for row in reader:
                self.rows[(row["image"], row["review_key"])] = {c: row[c] for c in COLUMNS}
        self._added = sum(1 for _, key in self.rows if key.startswith("a"))

    # ------------------------------------------------------------------ reading
    def study_rows(self, study: Study) -> dict[str, dict[str, Any]]:
        """The review of each vertebra of ``study`` by key, added ones included (the page's form)."""
        with self._lock:
            return {key: self._public(row) for (image, key), row in self.rows.items() if image == study.image}

    @staticmethod
    def _public(row: Mapping[str, str]) -> dict[str, Any]:
        return {"label": row["label"], "vertebra": row["vertebra"], "points": _points_of(row),
                "box": [float(row[c]) for c in ROI_COLUMNS], "assessable": row["assessable"],
                "source": row["source"], "version": int(row["version"]), "added": row["review_key"].startswith("a")}

    def progress(self) -> dict[str, Any]:
        with self._lock:
            return self._progress()

    def _progress(self) -> dict[str, Any]:
        done = sum(1 for s in self.studies if all(self._reviewed(s.image, v.key) for v in s.vertebrae))
        pairs = [(r["label"], r["model_grade"]) for r in self.rows.values() if r["label"] and r["model_grade"]]
        return {"studies_done": done, "studies": len(self.studies), "vertebrae_reviewed": len(pairs),
                "kappa": self._kappa(pairs)}

    def _reviewed(self, image: str, key: str) -> bool:
        row = self.rows.get((image, key))
        return row is not None and (row["label"] != "" or row["assessable"] == "no")

    def _kappa(self, pairs: list[tuple[str, str]]) -> float | None:
        """Quadratic-weighted Cohen's kappa of the reader's grades against the model's (None: one class so far)."""
        from sklearn.metrics import cohen_kappa_score

        if len({grade for pair in pairs for grade in pair}) < 2:
            return None
        reader, model = zip(*pairs)
        return round(float(cohen_kappa_score(reader, model, labels=self.class_names, weights="quadratic")), 4)

    # ------------------------------------------------------------------ editing
    def edit(self, study_id: int, key: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``changes`` into the row of vertebra ``key`` of study ``study_id``; save; the row and progress."""
        study = self._study(study_id)
        unknown = sorted(set(changes) - set(EDIT_FIELDS))
        if unknown or not changes:
            raise EditError(f"an edit changes some of {', '.join(EDIT_FIELDS)}, not {unknown or 'nothing'}")
        clean = self._clean(changes)
        with self._lock:
            row = self.rows.get((study.image, key))
            if row is None:
                model = next((v for v in study.vertebrae if v.key == key), None)
                if model is None:
                    raise EditError(f"study {study_id} has no vertebra {key!r}")
                row = self._new_row(study, key, model.level, model.pred, model.points)
            self._apply(row, clean, study)
            self._save()
            return {"key": key, "review": self._public(row), "progress": self._progress()}

    def add(self, study_id: int, box: Sequence[float], level: str = "") -> dict[str, Any]:
        """A vertebra the model missed, by its box; its points are the box's (``studies.box_points``)."""
        from spine_dfl.review.studies import box_points

        study = self._study(study_id)
        try:
            x0, y0, x1, y1 = (float(v) for v in box)
        except (TypeError, ValueError):
            raise EditError("a box is [x_min, y_min, x_max, y_max], four numbers") from None
        if not (all(math.isfinite(v) for v in (x0, y0, x1, y1)) and x1 > x0 and y1 > y0):
            raise EditError("a box needs finite numbers with x_max > x_min and y_max > y_min")
        with self._lock:
            self._added += 1
            key = f"a{self._added}"
            row = self._new_row(study, key, "", "", box_points([x0, y0, x1, y1]))
            self._apply(row, {"vertebra": self._level(level)} if level else {}, study)
            self._save()
            return {"key": key, "review": self._public(row), "progress": self._progress()}

    def accept_all_normal(self, study_id: int) -> dict[str, Any]:
        """Grade every not-yet-reviewed model vertebra of the study as the first class (normal)."""
        study = self._study(study_id)
        with self._lock:
            changed = []
            for vertebra in study.vertebrae:
                if self._reviewed(study.image, vertebra.key):
                    continue
                row = self.rows.get((study.image, vertebra.key)) or self._new_row(
                    study, vertebra.key, vertebra.level, vertebra.pred, vertebra.points)
                self._apply(row, {"label": self.class_names[0], "assessable": "yes"}, study)
                changed.append(vertebra.key)
            self._save()
            return {"keys": changed, "progress": self._progress()}

    def _study(self, study_id: int) -> Study:
        if not 0 <= study_id < len(self.studies):
            raise EditError(f"no study {study_id} (there are {len(self.studies)})")
        return self.studies[study_id]

    def _level(self, level: str) -> str:
        name = normalize_level(level)
        if name not in LEVELS:
            raise EditError(f"level {level!r} is not a vertebra level ({LEVELS[0]} .. {LEVELS[-1]})")
        return name

    def _clean(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        clean: dict[str, Any] = {}
        if "label" in changes:
            label = str(changes["label"])
            if label and label not in self.class_names:
                raise EditError(f"grade {label!r} is not one of the classes {', '.join(self.class_names)}")
            clean["label"] = label
        if "vertebra" in changes:
            clean["vertebra"] = self._level(str(changes["vertebra"]))
        if "points" in changes:
            clean["points"] = _check_points(changes["points"])
        if "assessable" in changes:
            if changes["assessable"] not in ("yes", "no"):
                raise EditError("assessable is 'yes' or 'no'")
            clean["assessable"] = changes["assessable"]
        return clean

    def _new_row(self, study: Study, key: str, level: str, model_grade: str,
                 points: Sequence[Sequence[float]]) -> dict[str, str]:
        row = {c: "" for c in COLUMNS}
        row.update(image=study.image, patient_id=self._patient_of(study), vertebra=level, model_vertebra=level,
                   model_grade=model_grade, sop_instance_uid=study.sop_instance_uid, review_key=key,
                   study_instance_uid=study.study_instance_uid, assessable="yes", version="0")
        self._set_points(row, points)
        self.rows[(study.image, key)] = row
        return row

    @staticmethod
    def _set_points(row: dict[str, str], points: Sequence[Sequence[float]]) -> None:
        for i, (x, y) in enumerate(points):
            row[POINT_COLUMNS[2 * i]], row[POINT_COLUMNS[2 * i + 1]] = f"{x:.2f}", f"{y:.2f}"
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        for column, value in zip(ROI_COLUMNS, (min(xs), min(ys), max(xs), max(ys))):
            row[column] = f"{value:.2f}"

    def _apply(self, row: dict[str, str], clean: Mapping[str, Any], study: Study) -> None:
        if "points" in clean:
            self._set_points(row, clean["points"])
        for name in ("label", "vertebra", "assessable"):
            if name in clean:
                row[name] = clean[name]
        if row["assessable"] == "no":
            row["label"] = ""
        model = next((v for v in study.vertebrae if v.key == row["review_key"]), None)
        row["source"] = "model" if model is not None and self._as_model(row, model) else "reader"
        row.update(reader=self.reader, reviewed_at=_now(), version=str(int(row["version"]) + 1))

    @staticmethod
    def _as_model(row: Mapping[str, str], model: Vertebra) -> bool:
        same_points = all(abs(a - b) < 0.01 for p, q in zip(_points_of(row), model.points) for a, b in zip(p, q))
        return row["label"] in ("", model.pred) and row["vertebra"] == model.level and same_points

    def _save(self) -> None:
        """Both files, atomically, rows in study order then key order."""
        order = {s.image: s.id for s in self.studies}
        rows = sorted(self.rows.values(), key=lambda r: (order.get(r["image"], len(order)), r["image"],
                                                        r["review_key"][0], int(r["review_key"][1:] or 0)))
        atomic_write_text(self.out_dir / REVIEW_CSV, _csv(COLUMNS, rows))
        atomic_write_text(self.out_dir / MANIFEST_CSV, _csv(COLUMNS, [r for r in rows if r["label"]]))


def _csv(columns: Sequence[str], rows: Sequence[Mapping[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
