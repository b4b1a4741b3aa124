"""The patient a manifest or predictions row belongs to: one rule for every caller (splits, metrics, training's selection)."""

from __future__ import annotations

import pandas as pd


def patient_key(patient_id: object, image: object, row: int) -> str:
    """``patient_id`` stripped; when it is blank (missing, NaN, whitespace), ``image:<image>`` (each
    image its own patient, its levels together); when the image is blank too, ``row:<row>``."""
    for value, prefix in ((patient_id, ""), (image, "image:")):
        text = "" if value is None or (not isinstance(value, str) and bool(pd.isna(value))) else str(value).strip()
        if text:
            return prefix + text
    return f"row:{row}"


def patient_keys(table: pd.DataFrame) -> pd.Series:
    """:func:`patient_key` of every row of ``table`` (columns ``patient_id`` and ``image`` optional)."""
    n = len(table)
    ids = table["patient_id"] if "patient_id" in table.columns else [None] * n
    images = table["image"] if "image" in table.columns else [None] * n
    keys = [patient_key(p, i, row) for row, (p, i) in enumerate(zip(ids, images))]
    return pd.Series(keys, index=table.index, dtype=object)
