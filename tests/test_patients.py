"""One patient key for every caller: ``patient_id``, else the image, else the row."""

from __future__ import annotations

import numpy as np
import pandas as pd

from spine_dfl.data.splits import patient_keys as split_keys
from spine_dfl.io.patients import patient_key, patient_keys


def test_a_blank_patient_id_falls_back_to_the_image_then_to_the_row() -> None:
    table = pd.DataFrame({
        "patient_id": ["P1", " P1 ", "", "   ", None, np.nan, pd.NA, "", 7],
        "image": ["a.dcm", "b.dcm", "c.dcm", "d.dcm", "e.dcm", "f.dcm", "g.dcm", "  ", "h.dcm"],
    })
    assert list(patient_keys(table)) == ["P1", "P1", "image:c.dcm", "image:d.dcm", "image:e.dcm", "image:f.dcm",
                                         "image:g.dcm", "row:7", "7"]
    assert list(patient_keys(table.drop(columns="patient_id")))[:2] == ["image:a.dcm", "image:b.dcm"]
    assert patient_key(None, None, 3) == "row:3"


def test_splits_the_report_and_training_selection_use_the_same_key() -> None:
    from spine_dfl.metrics.table import prepare

    table = pd.DataFrame({"image": ["x.png", "y.png", "z.png"], "patient_id": ["", "P2", " "],
                          "label": ["a", "b", "a"], "pred": ["a", "b", "b"],
                          "prob_a": [0.7, 0.2, 0.4], "prob_b": [0.3, 0.8, 0.6]})
    expected = ["image:x.png", "P2", "image:z.png"]
    assert list(split_keys(table)) == expected
    assert list(prepare(table, ["a", "b"]).patient) == expected
