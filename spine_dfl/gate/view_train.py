"""Training the view classifier (``gate.view.ViewNet``): ``spine-dfl view-train``.

The samples of ``gate.view_data.build_view_samples`` are split by group (patient, generated item)
into train and validation. Each epoch every training thumbnail is shown in a random one of the
eight orientations (a positive's label is the orientation that undoes it; negatives are class 8),
with random gamma, contrast, blur and noise. Adam, cosine learning rate, one seed; an optional
time budget ends training early (the cosine schedule is re-planned to the epochs that fit after the
first one). The validation figures (``view_metrics``) go to ``metrics.json`` and into the
checkpoint's training summary; the checkpoint is ``OUT/view.pt``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from spine_dfl.atomic import atomic_write_text
from spine_dfl.engine.loop import warmup_cosine
from spine_dfl.gate.view import DEFAULT_PERCENTILES, DEFAULT_SIZE, NOT_LATERAL, ViewNet, predict_thumbnails
from spine_dfl.gate.view_checkpoint import save_view
from spine_dfl.gate.view_data import ViewSamples, build_view_samples
from spine_dfl.io.errors import InputError
from spine_dfl.io.orientation import ORIENTATIONS

__all__ = ["ViewTrainResult", "one_thread", "oriented", "train_view", "train_view_samples", "view_metrics"]

log = logging.getLogger(__name__)


@dataclass
class ViewTrainResult:
    checkpoint: Path
    metrics_json: Path
    metrics: dict[str, Any]
    seconds: float


def oriented(thumbs: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
    """Each canonical (1, S, S) thumbnail as it would be stored when ``ORIENTATIONS[i]`` undoes it."""
    return torch.stack([torch.from_numpy(ORIENTATIONS[int(i)].inverse().apply(t.numpy())) for t, i in zip(thumbs, indices)])


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random gamma, contrast and offset of the content, light blur, Gaussian noise; the zero padding stays 0."""
    n = len(x)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(n, 1, 1, 1, generator=generator))

    content = x > 0
    y = x.clamp_min(0).pow(torch.exp(uniform(-0.5, 0.5)))
    y = (y - 0.5) * uniform(0.7, 1.3) + 0.5 + uniform(-0.1, 0.1)
    blur = torch.rand(n, generator=generator) < 0.3
    if blur.any():
        kernel = torch.tensor([0.25, 0.5, 0.25])
        k2 = (kernel[:, None] * kernel[None, :])[None, None]
        y[blur] = F.conv2d(y[blur], k2, padding=1)
    y = y + torch.randn(y.shape, generator=generator) * uniform(0.0, 0.05)
    return torch.where(content | (torch.rand(n, 1, 1, 1, generator=generator) < 0.3), y, x).clamp(0, 1)


def _labels(samples: ViewSamples, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs in a random orientation each and their class (orientation index, or 8 for negatives)."""
    turns = torch.randint(0, len(ORIENTATIONS), (len(samples),), generator=generator)
    x = oriented(torch.from_numpy(samples.thumbs), turns.tolist())[:, None]
    y = torch.where(torch.from_numpy(samples.lateral), turns, torch.full_like(turns, NOT_LATERAL))
    return x, y


def _auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties halved); None without both classes."""
    pos, neg = scores[positive], scores[~positive]
    if not len(pos) or not len(neg):
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def view_metrics(probs: np.ndarray, lateral: np.ndarray, turns: np.ndarray, kinds: Sequence[str]) -> dict[str, Any]:
    """Lateral-vs-not accuracy (at 0.5) overall and per kind, AUC of the lateral probability, and the
    orientation accuracy of the positives overall and per orientation (``turns``: their true index)."""
    lateral = np.asarray(lateral, dtype=bool)
    p_lateral = probs[:, :NOT_LATERAL].sum(axis=1)
    said = p_lateral >= 0.5
    correct = said == lateral
    kinds = np.asarray(list(kinds))
    best = probs[:, :NOT_LATERAL].argmax(axis=1)
    right_turn = best == np.asarray(turns)
    per_orientation = {o.name: float(right_turn[lateral & (turns == o.index)].mean())
                       for o in ORIENTATIONS if (lateral & (turns == o.index)).any()}
    return {
        "images": int(len(lateral)), "lateral_images": int(lateral.sum()), "other_images": int((~lateral).sum()),
        "lateral_accuracy": float(correct.mean()) if len(correct) else None,
        "lateral_auc": _auc(p_lateral, lateral),
        "accepted_laterals": float(said[lateral].mean()) if lateral.any() else None,
        "refused_others": float((~said[~lateral]).mean()) if (~lateral).any() else None,
        "refused_by_kind": {str(k): float((~said[kinds == k]).mean()) for k in sorted(set(kinds[~lateral].tolist()))},
        "orientation_accuracy": float(right_turn[lateral].mean()) if lateral.any() else None,
        "orientation_accuracy_by_orientation": per_orientation,
    }


def evaluate_samples(model: ViewNet, samples: ViewSamples, seed: int = 0) -> dict[str, Any]:
    """``view_metrics`` of every positive in all eight orientations and every negative in a random one."""
    rng = np.random.default_rng(seed)
    pos = np.flatnonzero(samples.lateral)
    neg = np.flatnonzero(~samples.lateral)
    turns = np.concatenate([np.repeat(np.arange(len(ORIENTATIONS)), len(pos)), rng.integers(0, 8, len(neg))])
    index = np.concatenate([np.tile(pos, len(ORIENTATIONS)), neg])
    x = oriented(torch.from_numpy(samples.thumbs[index]), turns.tolist())
    probs = predict_thumbnails(model, x)
    return view_metrics(probs, samples.lateral[index], turns, [samples.kinds[i] for i in index])


def split_by_group(samples: ViewSamples, val_fraction: float, seed: int) -> tuple[ViewSamples, ViewSamples]:
    """Train and validation sets, whole groups (patients, generated items) on one side."""
    groups = sorted(set(samples.groups))
    rng = np.random.default_rng([int(seed), 0x5A1])
    held = set(rng.permutation(groups)[: max(1, round(len(groups) * val_fraction))].tolist())
    in_val = np.array([g in held for g in samples.groups])
    return samples.subset(~in_val), samples.subset(in_val)


# linear warm-up over the first steps, then the engine's cosine to 0 at the planned step
_WARMUP_STEPS = 20


def fit(model: ViewNet, train: ViewSamples, *, epochs: int, seed: int, batch_size: int = 32, lr: float = 3e-3,
        time_budget_s: float | None = None, say: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Train in place; returns what was done (epochs, steps, seconds)."""
    generator = torch.Generator().manual_seed(int(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    planned, step, started, done = epochs * steps_per_epoch, 0, time.monotonic(), 0
    # lateral films and the rest weigh alike, however many of each there are
    positives = max(1, int(train.lateral.sum()))
    weight = torch.ones(NOT_LATERAL + 1)
    weight[NOT_LATERAL] = positives / max(1, len(train) - positives)
    model.train()
    for epoch in range(epochs):
        x, y = _labels(train, generator)
        order = torch.randperm(len(train), generator=generator)
        total = 0.0
        for i in range(0, len(train), batch_size):
            batch = order[i: i + batch_size]
            for group in optimizer.param_groups:
                group["lr"] = lr * warmup_cosine(step, _WARMUP_STEPS, planned)
            loss = F.cross_entropy(model(_augment(x[batch], generator)), y[batch], weight=weight, label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            total += float(loss.detach()) * len(batch)
        done = epoch + 1
        elapsed = time.monotonic() - started
        say(f"view epoch {done}/{epochs}: loss {total / len(train):.3f} ({elapsed:.0f} s)")
        if time_budget_s is not None:
            fit_epochs = max(done, int(time_budget_s / (elapsed / done)))
            if fit_epochs < epochs:  # re-plan the cosine to the epochs that fit the budget
                epochs = fit_epochs
                planned = epochs * steps_per_epoch
        if done >= epochs:
            break
    model.eval()
    return {"epochs": done, "steps": step, "train_seconds": round(time.monotonic() - started, 1)}


def train_view_samples(samples: ViewSamples, out: str | Path, *, epochs: int = 12, seed: int = 0,
                       time_budget_s: float | None = None, val_fraction: float = 0.2, size: int = DEFAULT_SIZE,
                       percentiles: Sequence[float] = DEFAULT_PERCENTILES, extra: dict[str, Any] | None = None,
                       say: Callable[[str], None] = log.info) -> ViewTrainResult:
    """Split, train, validate; write ``OUT/view.pt`` and ``OUT/metrics.json``."""
    started = time.monotonic()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(seed))
    train, val = split_by_group(samples, val_fraction, seed)
    if not train.lateral.any() or train.lateral.all():
        raise InputError("the view classifier needs lateral films and other images in its training split")
    model = ViewNet(size=size)
    say(f"view classifier: {len(train)} training thumbnails ({int(train.lateral.sum())} lateral), "
        f"{len(val)} validation ({int(val.lateral.sum())} lateral)")
    done = fit(model, train, epochs=epochs, seed=seed, time_budget_s=time_budget_s, say=say)
    metrics = {"validation": evaluate_samples(model, val, seed) if len(val) else None,
               "train_images": len(train), "validation_images": len(val), "seed": int(seed), **done, **(extra or {})}
    metrics["seconds"] = round(time.monotonic() - started, 1)
    checkpoint = save_view(out / "view.pt", model, (float(percentiles[0]), float(percentiles[1])), metrics)
    metrics_json = out / "metrics.json"
    atomic_write_text(metrics_json, json.dumps(metrics, indent=2) + "\n")
    return ViewTrainResult(checkpoint, metrics_json, metrics, metrics["seconds"])


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread for the block: the network is small, and on a shared machine two spinning
    OpenMP threads made building the samples ten times slower (108 s instead of ~10 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_view(manifests: Sequence[str | Path], out: str | Path, *, epochs: int = 12, seed: int = 0,
               time_budget_s: float | None = None, say: Callable[[str], None] = log.info,
               **sample_options: Any) -> ViewTrainResult:
    """Build the samples of ``manifests`` (``build_view_samples``) and train on them, on one thread."""
    with one_thread():
        return _train_view(manifests, out, epochs=epochs, seed=seed, time_budget_s=time_budget_s, say=say,
                           **sample_options)


def _train_view(manifests: Sequence[str | Path], out: str | Path, *, epochs: int, seed: int,
                time_budget_s: float | None, say: Callable[[str], None], **sample_options: Any) -> ViewTrainResult:
    started = time.monotonic()
    samples = build_view_samples(manifests, seed, **sample_options)
    seconds = time.monotonic() - started
    say(f"view samples: {len(samples)} thumbnails in {seconds:.0f} s")
    budget = None if time_budget_s is None else max(1.0, time_budget_s - seconds)
    extra = {"manifests": [str(m) for m in manifests], "sample_seconds": round(seconds, 1),
             "kinds": {k: samples.kinds.count(k) for k in sorted(set(samples.kinds))}}
    return train_view_samples(samples, out, epochs=epochs, seed=seed, time_budget_s=budget, extra=extra, say=say)
