"""Patient-level splitting: THE one patient splitter (manifests without a split column, synthetic cohorts).

A patient is ``io.patients.patient_key`` (``patient_id``, else the image); no patient is ever in
two splits.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np
import pandas as pd

from spine_dfl.io.patients import patient_keys
from spine_dfl.io.errors import InputError

__all__ = ["SPLITS", "patient_keys", "patient_split"]

SPLITS: tuple[str, ...] = ("train", "val", "test")


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
        raise InputError(f"split fractions must be three non-negative numbers with a positive sum, got {fractions}")
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


# Strategy for synthetic cohorts (added by the SYNTH owner; spine_dfl.synth.cohort calls it).
def deal_by_burden(
    patient_labels: Sequence[Sequence[str]],
    fractions: Sequence[float],
    rng: np.random.Generator,
    class_order: Sequence[str],
) -> list[str]:
    """Patient-level split for a cohort whose classes are ordinal grades (synthetic cohorts).

    A second strategy beside ``patient_split``, for a generator that knows every patient's
    grades before it writes any table: patients are shuffled with ``rng``, sorted by fracture
    burden (highest grade, then the count of each grade from the most severe down) and dealt
    to the split with the largest remaining deficit against its quota, so each split gets a
    share of the heavy patients.  From 3 patients on, every split with a positive fraction gets
    at least one patient.  Then, where a class is missing from val or test but some train
    patient has it, that patient is swapped with one of the split's patients as long as no
    split loses a class it had.

    Args:
        patient_labels: the labels of each patient's vertebrae, one sequence per patient.
        fractions: train/val/test fractions (non-negative, positive sum).
        rng: drawn from once (one permutation); the caller's stream continues after it.
        class_order: the classes from least to most severe (``class_order[0]`` is normal).
    Returns:
        One of "train", "val", "test" per patient, in input order.
    """
    n = len(patient_labels)
    if n == 0:
        return []
    rank = {g: i for i, g in enumerate(class_order)}
    order = list(rng.permutation(n))

    def burden(i: int) -> tuple[int, ...]:
        counts = Counter(patient_labels[i])
        return (max((rank[x] for x in patient_labels[i]), default=-1), *(counts[c] for c in reversed(class_order[1:])))

    order.sort(key=burden, reverse=True)
    split = _deal_by_quota(order, _burden_quota(fractions, n))
    _swap_for_presence(split, patient_labels, class_order)
    return split


def _burden_quota(fractions: Sequence[float], n: int) -> np.ndarray:
    """Patients per split: rounded shares, at least one per positive split from 3 patients on."""
    weights = np.asarray(fractions, dtype=np.float64) / float(sum(fractions))
    minimum = 1 if n >= 3 else 0
    quota = np.array([0, *(max(minimum, int(round(w * n))) if w > 0 else 0 for w in weights[1:])])
    quota[0] = n - quota[1:].sum()
    while quota[0] < (1 if weights[0] > 0 else 0) or quota[0] < 0:
        quota[int(np.argmax(quota[1:])) + 1] -= 1
        quota[0] += 1
    return quota


def _deal_by_quota(order: list[int], quota: np.ndarray) -> list[str]:
    """Deal patients in ``order`` to the split furthest behind its pro-rata quota."""
    n = len(order)
    assigned = np.zeros(3)
    split = [""] * n
    for position, patient in enumerate(order):
        deficit = quota * (position + 1) / n - assigned
        deficit[assigned >= quota] = -np.inf
        choice = int(np.argmax(deficit))
        split[patient] = SPLITS[choice]
        assigned[choice] += 1
    return split


def _swap_for_presence(split: list[str], patient_labels: Sequence[Sequence[str]], class_order: Sequence[str]) -> None:
    """Swap train patients into val/test (in place) where that brings a missing class in."""
    n = len(split)

    def classes(which: str, exclude: int = -1, include: int = -1) -> set[str]:
        out: set[str] = set()
        for i in range(n):
            if (split[i] == which and i != exclude) or i == include:
                out.update(patient_labels[i])
        return out

    present = {g for gs in patient_labels for g in gs}
    for target in ("val", "test"):
        for cls in class_order:
            if cls not in present or cls in classes(target) or not any(s == target for s in split):
                continue
            done = False
            for donor in (i for i in range(n) if split[i] == "train" and cls in patient_labels[i]):
                for taker in (i for i in range(n) if split[i] == target):
                    before_t, before_tr = classes(target), classes("train")
                    after_t = classes(target, exclude=taker, include=donor)
                    after_tr = classes("train", exclude=donor, include=taker)
                    if before_t - after_t or before_tr - after_tr:
                        continue
                    split[donor], split[taker] = target, "train"
                    done = True
                    break
                if done:
                    break
