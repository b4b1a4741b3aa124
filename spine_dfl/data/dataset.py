"""Datasets over manifest records, with MONAI caching (sampling: ``spine_dfl.data.samplers``).

Caching: the deterministic part of the pipeline (load + crop + normalise + resize/pad) is
cached per sample, the random augmentation runs on every access:

- ``cache="none"``: MONAI ``Dataset`` (decode every time).
- ``cache="memory"``: MONAI ``CacheDataset``: all samples are prepared once when the dataset
  is built (threads), later epochs never decode again. DataLoader worker processes inherit the
  cache (fork, copy-on-write).
- ``cache="disk"``: MONAI ``PersistentDataset`` in ``cache_dir``: one ``.pt`` file per sample,
  written on first access and reused by later epochs and later runs. The file name hashes the
  image path, ROI, preprocessing, the image file's size and modification time and a format
  version, so changing any of these never reuses a stale sample. Default folder:
  ``$XDG_CACHE_HOME/spine-dfl/samples`` (``~/.cache/spine-dfl/samples``).

Only the image-derived fields (``image``, ``to_original``, ``spacing_mm``, ``meta``) are
cached; the record's own keys (label, index, vertebra, ...) are merged in on access, so a
label fix in the manifest never needs a cache rebuild.

Augmentation randomness: the random transforms share one NumPy generator that is reseeded
for every access from ``(seed, epoch, index)`` (``dataset.set_epoch(epoch)``), so sample ``i``
of epoch ``e`` gets the same augmentation whatever the number of DataLoader workers, ranks or
the access order: a CPU run repeats exactly.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset, get_track_meta, set_track_meta
from monai.transforms import Compose, Randomizable

from spine_dfl.data.manifest import class_order, load_manifest
from spine_dfl.data.samplers import sample_seed
from spine_dfl.data.threads import single_thread
from spine_dfl.data.transforms import AugmentConfig, Preprocessing
from spine_dfl.data.transforms.acquisition_options import AcquisitionAugment
from spine_dfl.data.transforms.compose import (
    augment_transforms,
    deterministic_transforms,
    recrops_from_window,
    window_transforms,
)
from spine_dfl.data.transforms.crop import RoiRecropd, window_margin
from spine_dfl.data.transforms.geometry import roi_in_input
from spine_dfl.io import ROI_COLUMNS
from spine_dfl.io.errors import InputError

if TYPE_CHECKING:
    from spine_dfl.io.orientation import Orientation

CacheMode = Literal["none", "memory", "disk"]
# Bump when the cached sample format or the deterministic pipeline changes.
CACHE_FORMAT = "spine-dfl-sample-v1"
CACHED_KEYS = ("image", "to_original", "spacing_mm", "meta")


# --------------------------------------------------------------------------- records
def records_from_table(table: pd.DataFrame, class_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One record per manifest row, in table order.

    Keys: ``index`` (0-based position in the list), ``image`` (absolute path str), ``roi``
    ((x_min, y_min, x_max, y_max) floats in original pixels, or None), ``label`` (class index,
    -1 when the label is empty), ``label_name``, ``vertebra``, ``patient_id``, ``row`` (manifest
    row number), plus ``split`` and ``sop_instance_uid`` when the table has them.
    A non-empty label that is not in ``class_names`` raises ValueError naming the row.
    """
    names = list(class_names) if class_names is not None else class_order(table["label"])
    lookup = {name: i for i, name in enumerate(names)}
    n = len(table)

    def column(name: str, default: Any = "") -> list[Any]:
        if name not in table.columns:
            return [default] * n
        return ["" if (isinstance(v, float) and math.isnan(v)) else v for v in table[name].tolist()]

    rows = [int(r) for r in table["row"]] if "row" in table.columns else list(range(1, n + 1))
    if all(c in table.columns for c in ROI_COLUMNS):
        roi_values = table[list(ROI_COLUMNS)].to_numpy(dtype=np.float64)
    else:
        roi_values = np.full((n, 4), np.nan)
    labels = [str(v) for v in column("label")]
    unknown = [(row, label) for row, label in zip(rows, labels) if label and label not in lookup]
    if unknown:
        shown = ", ".join(f"row {r}: {lab!r}" for r, lab in unknown[:10])
        raise InputError(f"labels not among the classes {names}: {shown}")
    extras = {name: column(name) for name in ("split", "sop_instance_uid") if name in table.columns}
    images, vertebrae, patients = column("image"), column("vertebra"), column("patient_id")
    records = []
    for i in range(n):
        roi_row = roi_values[i]
        record: dict[str, Any] = {
            "index": i,
            "image": str(images[i]),
            "roi": tuple(float(v) for v in roi_row) if np.isfinite(roi_row).all() else None,
            "label": lookup.get(labels[i], -1),
            "label_name": labels[i],
            "vertebra": str(vertebrae[i]),
            "patient_id": str(patients[i]),
            "row": rows[i],
        }
        for name, values in extras.items():
            record[name] = str(values[i])
        records.append(record)
    return records


# --------------------------------------------------------------------------- dataset
def manifest_records(
    manifest_path: str | Path,
    class_names: Sequence[str],
    split: str | None = None,
    use_roi: bool = True,
    require_labels: bool = True,
) -> list[dict[str, Any]]:
    """Records of a manifest for a trained model: only ``split``'s rows when given and the manifest has
    a split column (else every row), labels checked against ``class_names`` (the checkpoint's order;
    unknown labels are row errors), and ROI columns required when the model was trained on ROIs.

    require_labels: False accepts unlabelled rows (e.g. for heatmaps of new images).
    Raises ManifestError (row-level problems) or ValueError (empty split, missing ROIs).
    """
    manifest = load_manifest(manifest_path, require_labels=require_labels, class_names=list(class_names))
    table = manifest.table
    if split is not None and manifest.has_split:
        table = table[table["split"] == split]
        if table.empty:
            raise InputError(f"{manifest_path}: no rows in split {split!r}")
    if use_roi and not manifest.has_roi:
        raise InputError(f"{manifest_path}: the model was trained on vertebra ROIs but the manifest has no ROI columns")
    return records_from_table(table, list(class_names))


class SampleCacheKey:
    """``hash_func`` for PersistentDataset: what makes a cached sample valid (picklable for workers)."""

    def __init__(self, pre: Preprocessing, window_margin: float | None = None) -> None:
        self.pre = asdict(pre)
        self.window_margin = window_margin  # cached windows (not finished crops) hash apart

    def __call__(self, item: Mapping[str, Any]) -> bytes:
        path = str(item["image"])
        try:
            stat = os.stat(path)
            file_id: list[Any] = [stat.st_size, stat.st_mtime_ns]
        except OSError:
            file_id = [None, None]
        roi = item.get("roi")
        text = json.dumps(
            {"format": CACHE_FORMAT, "image": path, "roi": list(roi) if roi is not None else None,
             **({"orientation": item["orientation"]} if item.get("orientation") else {}),
             "pre": self.pre, "file": file_id, **({"window_margin": self.window_margin} if self.window_margin else {})},
            sort_keys=True,
        )
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:40].encode("utf-8")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "spine-dfl" / "samples"


class SpineDataset(torch.utils.data.Dataset):
    """Records -> sample dicts: the record's keys plus ``image`` (1, S, S) float32 in [0, 1]-ish,
    ``to_original`` (3, 3) float64, ``spacing_mm`` (2,) float64 (NaN unknown), ``meta`` and
    ``roi_input`` (4,) float32, the ROI's box in input pixels (the whole input without a ROI).

    ``base`` yields the cached deterministic part; ``augment`` (None for evaluation) runs on
    every access, reseeded from (seed, epoch, index).  ``finish`` (deterministic) turns a cached
    window into the sample when there is no ``augment`` to cut it (``compose.window_transforms``).
    """

    def __init__(self, records: Sequence[Mapping[str, Any]], base: torch.utils.data.Dataset,
                 augment: Compose | None, seed: int = 0, cache: CacheMode = "none",
                 finish: Compose | None = None) -> None:
        self.records = [dict(r) for r in records]
        self.base, self.augment, self.seed, self.cache = base, augment, int(seed), cache
        self.finish = finish
        self.epoch = 0
        # All random transforms draw from one generator that is reseeded in place per sample:
        # building a fresh RandomState per transform and sample costs more than the augmentation.
        self._rng = np.random.RandomState(0)
        if augment is not None:
            for transform in augment.transforms:
                if isinstance(transform, Randomizable):
                    transform.set_random_state(state=self._rng)  # MONAI dict transforms pass it to their inner ones

    def without_augmentation(self) -> SpineDataset:
        """The same records over the same (cached) deterministic part, with no augmentation."""
        return SpineDataset(self.records, self.base, None, seed=self.seed, cache=self.cache, finish=self.finish)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (call before each epoch; no effect without augmentation)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index = index % len(self)
        with single_thread():
            cached = self.base[index]
            item: dict[str, Any] = dict(self.records[index])
            for key in CACHED_KEYS:
                item[key] = cached[key]
            # The cached tensor must never be modified by whoever receives this sample.
            item["image"] = torch.as_tensor(item["image"]).clone()
            item["to_original"] = torch.as_tensor(item["to_original"], dtype=torch.float64).clone()
            if self.augment is not None:
                self._rng.seed(sample_seed(self.seed, self.epoch, index))
                with _plain_tensors():
                    item = self.augment(item)
            elif self.finish is not None:
                item = self.finish(item)
            # Where the vertebra lies in the network input, after every geometric step (the
            # P-stream may search only there: model.pstream_region).
            item["roi_input"] = roi_in_input(item.get("roi"), item["to_original"], item["image"].shape[-1])
        return item


def _slim(record: Mapping[str, Any], use_roi: bool) -> dict[str, Any]:
    """The cached transforms' input of a record: image, ROI on the canonical film, orientation name."""
    from spine_dfl.io.orientation import canonical_box

    roi = tuple(record["roi"]) if (use_roi and record.get("roi") is not None) else None
    found = _orientation_of(str(record["image"]))
    if found is None or found[0].is_identity:
        return {"image": str(record["image"]), "roi": roi}
    orientation, shape = found
    return {"image": str(record["image"]), "roi": None if roi is None else canonical_box(roi, orientation, shape),
            "orientation": orientation.name}


@functools.lru_cache(maxsize=4096)
def _orientation_of(image: str) -> tuple[Orientation, tuple[int, int]] | None:
    from spine_dfl.io.orientation import stored_orientation

    try:
        return stored_orientation(image)
    except Exception:  # noqa: BLE001 - an unreadable header fails later, where the image is read, with its reason
        return None


@contextmanager
def _plain_tensors() -> Iterator[None]:
    """MONAI's random intensity transforms on plain tensors, not ``MetaTensor``: the augmentation
    ends in ``EnsureTyped(track_meta=False)`` and nothing reads MONAI's metadata (geometry travels
    in ``to_original``), while wrapping and copying it cost 0.75 against 0.45 ms a 96 px sample.
    MONAI's switch is process-wide; the previous value comes back."""
    previous = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(previous)


def build_dataset(
    records: Sequence[Mapping[str, Any]] | pd.DataFrame,
    pre: Preprocessing,
    aug: AugmentConfig | None = None,
    cache: CacheMode = "none",
    cache_dir: str | Path | None = None,
    seed: int = 0,
    num_workers: int | None = None,
    lru_size: int = 2,
    acquisition: AcquisitionAugment | None = None,
) -> SpineDataset:
    """A torch Dataset of samples for ``records`` (from :func:`records_from_table`, or a manifest table).

    aug: None for evaluation (deterministic), else the training augmentation.
    cache: "none" | "memory" (CacheDataset, prepared now with ``num_workers`` threads) |
        "disk" (PersistentDataset in ``cache_dir``, default :func:`default_cache_dir`).
    seed: augmentation seed; see :meth:`SpineDataset.set_epoch`.
    acquisition: with ``aug``, its ROI-level part (the crop reframed as another site's ROI convention;
        with ``reframe_from_radiograph`` the cache holds windows of the radiograph and every
        training crop is cut from them, ``compose.window_transforms``).
    """
    if isinstance(records, pd.DataFrame):
        records = records_from_table(records)
    records = list(records)
    # The cached part depends on the image, its orientation and (when used) the ROI only. A film stored
    # turned or mirrored (its PatientOrientation) is cropped from its canonical view: every model learns
    # from canonical crops, as it is later given them (score turns films the same way); to_original still
    # maps back to the file's pixels, where the records' ROIs stay.
    slim = [_slim(r, pre.use_roi) for r in records]
    windows = aug is not None and recrops_from_window(pre, acquisition)
    deterministic = Compose(window_transforms(pre, acquisition, lru_size=lru_size) if windows
                            else deterministic_transforms(pre, lru_size=lru_size))
    threads = num_workers if num_workers is not None else max(1, min(4, os.cpu_count() or 1))
    base: torch.utils.data.Dataset
    if cache == "none":
        base = Dataset(slim, transform=deterministic)
    elif cache == "memory":
        base = CacheDataset(slim, transform=deterministic, cache_rate=1.0, num_workers=threads, progress=False,
                            copy_cache=False)
    elif cache == "disk":
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        base = PersistentDataset(slim, transform=deterministic, cache_dir=folder, hash_func=SampleCacheKey(pre, window_margin(pre.roi_margin, acquisition) if windows else None))
    else:
        raise ValueError(f"cache must be 'none', 'memory' or 'disk', got {cache!r}")
    augment = (Compose(augment_transforms(aug, acquisition=acquisition, crop_margin=pre.roi_margin, pre=pre))
               if aug is not None else None)
    finish = Compose([RoiRecropd("image", pre)]) if windows else None
    return SpineDataset(records, base, augment, seed=seed, cache=cache, finish=finish)
