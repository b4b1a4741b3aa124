"""Patient-level splitting: THE one patient splitter (manifests without a split column, synthetic cohorts).

A patient is ``patient_id`` when given, else the image (each image its own patient); no patient
is ever in two splits.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np
import pandas as pd

SPLITS: tuple[str, ...] = ("train", "val", "test")


def patient_keys(table: pd.DataFrame) -> pd.Series:
    """Patient of every row: ``patient_id`` when given, else the image path (each image its own patient)."""
    image = table["image"].astype(str)
    if "patient_id" not in table.columns:
        return "image:" + image
    pid = table["patient_id"].fillna("").astype(str)
    return pid.where(pid != "", "image:" + image)


def patient_split(
    table: pd.DataFrame,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> pd.Series:
    """Patient-level stratified train/val/test split by ``seed``; returns a Series aligned with ``table``.

    - Patients: ``patient_id`` when present and non-empty, else the image (each image its own
      patient). No patient is ever in two splits.
    - Presence first (greedy, rarest class first): for each class, patients carrying it who are
      not yet assigned are put into the splits (positive fraction only) that still lack the class,
      so every class is present in every split whenever enough unassigned patients carry it
      (a class on >= 3 patients always reaches all three splits when classes are processed
      rarest first and each patient carries one class; patients with several classes may
      already cover a split).
    - The rest: each patient is stratified by its rarest class (fewest patients overall) and
      goes to the split furthest below its target share within that stratum (ties: furthest
      below its overall target, then train, val, test).
    Shuffling uses ``numpy.random.default_rng(seed)``: same seed, same split.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or (fr < 0).any() or fr.sum() <= 0:
        raise ValueError(f"split fractions must be three non-negative numbers with a positive sum, got {fractions}")
    keys = patient_keys(table).to_numpy()
    labels = table["label"].fillna("").astype(str).to_numpy() if "label" in table.columns else np.full(len(table), "")
    patient_classes: dict[str, set[str]] = defaultdict(set)
    for key, label in zip(keys, labels):
        patient_classes[key]  # every patient appears even without labels
        if label != "":
            patient_classes[key].add(label)
    state = _SplitState(patient_classes, fr / fr.sum(), np.random.default_rng(seed))
    state.cover_every_class()
    state.fill_strata()
    return pd.Series([SPLITS[state.assigned[key]] for key in keys], index=table.index, name="split")


class _SplitState:
    """The patients (shuffled by the seed), their classes and the splits assigned so far."""

    def __init__(self, patient_classes: dict[str, set[str]], fractions: np.ndarray, rng: np.random.Generator) -> None:
        self.patient_classes, self.fr = patient_classes, fractions
        self.active = [k for k in range(3) if fractions[k] > 0]
        patients = sorted(patient_classes)
        self.patients = [patients[i] for i in rng.permutation(len(patients))]
        class_patients = Counter(c for p in self.patients for c in patient_classes[p])
        # rarest first; ties by name so the order does not depend on row order
        self.classes = sorted(class_patients, key=lambda c: (class_patients[c], c))
        self.rank = {c: i for i, c in enumerate(self.classes)}
        self.assigned: dict[str, int] = {}
        self.split_classes: list[set[str]] = [set(), set(), set()]
        self.split_count = np.zeros(3)

    def assign(self, patient: str, k: int) -> None:
        self.assigned[patient] = k
        self.split_classes[k].update(self.patient_classes[patient])
        self.split_count[k] += 1

    def cover_every_class(self) -> None:
        """Presence first: each class, rarest first, goes into every split that still lacks it."""
        for c in self.classes:
            candidates = [p for p in self.patients if c in self.patient_classes[p] and p not in self.assigned]
            # Fill the largest splits first so a class with too few patients lands in train, then val.
            for k in sorted(self.active, key=lambda k: (-self.fr[k], k)):
                if c in self.split_classes[k] or not candidates:
                    continue
                # Prefer the candidate with the fewest other classes: it covers c without skewing others.
                best_pos = min(range(len(candidates)), key=lambda j: (len(self.patient_classes[candidates[j]]), j))
                self.assign(candidates.pop(best_pos), k)

    def fill_strata(self) -> None:
        """The rest: by rarest class, each patient to the split furthest below its share in the stratum."""
        strata: dict[str, list[str]] = defaultdict(list)
        for p in self.patients:
            classes = self.patient_classes[p]
            strata[min(classes, key=lambda c: self.rank[c]) if classes else ""].append(p)
        total = len(self.patients)
        for s in sorted(strata, key=lambda s: (self.rank.get(s, len(self.rank)), s)):
            members = strata[s]
            counts = np.zeros(3)
            for p in members:
                if p in self.assigned:
                    counts[self.assigned[p]] += 1
            for p in members:
                if p in self.assigned:
                    continue
                deficit = self.fr * len(members) - counts
                overall = self.fr * total - self.split_count
                k = max(self.active, key=lambda k: (deficit[k], overall[k], -k))
                counts[k] += 1
                self.assign(p, k)
