"""``explain``: per-sample PNGs, ``patches.json`` and ``index.html`` for a trained model.

For every sample, into the output folder:

``<NNNNN>_<image stem>_<vertebra>.png``
    Three panels of the region the network saw (``spine_dfl.explain.render``):
      1. the top-N distinct patches of the PREDICTED class: each of that class's k P-stream filters'
         peak, refined to a fraction of a cell and mapped back through pad / resize / crop to original
         pixels, boxed at the model's effective receptive field (``spine_dfl.model.effective_field``); filters
         peaking at the same place are one patch (``spine_dfl.heatmap.peaks``); numbered by rank;
      2. P-stream class evidence (``spine_dfl.heatmap.class_evidence``: max over the predicted
         class's k response maps), warped to original pixels through the sample's ``to_original``;
      3. MONAI Grad-CAM of the G-stream (target: last block of the G-stream head; class = predicted),
         mapped back the same way.
``patches.json``
    A JSON list, one object per sample: image, vertebra, sop_instance_uid, label, pred, correct,
    confidence, probs {class: p}, roi, region, png, patch_side (input pixels), boxes [{rank, filter,
    filter_in_class, class, class_index, score, x_min, y_min, x_max, y_max, peak_x, peak_y, peak_row,
    peak_col, in_image, same_place_filters}], gradcam_peak [x, y] (Grad-CAM's refined maximum), all
    in original pixels (x = column, y = row, continuous coordinates, max exclusive), streamed to a
    temporary file while the run goes and renamed into place at the end.
``index.html``
    The gallery (``spine_dfl.explain.gallery``), written atomically.

Memory stays flat: samples are transformed, batched through the model, rendered and written one
batch at a time; only small per-sample dicts are kept for the gallery.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from spine_dfl.atomic import atomic_output, atomic_write_text
from spine_dfl.explain.gallery import render_gallery
from spine_dfl.explain.gradcam import GradCamRunner
from spine_dfl.explain.render import render_sample_figure
from spine_dfl.explain.samples import PreparedSample, batches, label_name, png_name, prepare_samples, record_roi
from spine_dfl.io.errors import InputError, InputsFailed
from spine_dfl.model.effective_field import gradient_centres, model_patch_side
from spine_dfl.heatmap.evidence import class_evidence
from spine_dfl.heatmap.geometry import feature_map_to_original, feature_map_to_tensor_space, tensor_map_to_original
from spine_dfl.heatmap.peaks import class_patches, map_peak_to_original

if TYPE_CHECKING:
    from spine_dfl.engine.checkpoint import LoadedCheckpoint

log = logging.getLogger("spine_dfl.explain")

__all__ = ["NoSampleExplained", "explain"]


class NoSampleExplained(InputsFailed, ValueError):
    """Not a single sample of an explain run could be explained (every one failed; the message counts them)."""


@dataclass(frozen=True)
class _Context:
    """What every sample of one run shares."""

    model: nn.Module
    class_names: list[str]
    input_size: int
    gradcam: GradCamRunner
    top_n: int
    out: Path
    patch_side: float  # drawn patch side, input pixels: the P-stream's effective receptive field
    temperature: float = 1.0  # the checkpoint's fused temperature (engine.calibration): calibrated probabilities


@dataclass(frozen=True)
class _SampleOutput:
    """The model's output for one sample of a batch (CPU tensors)."""

    probs: Tensor  # (M,)
    pred: int
    peak_index: Tensor  # (M*k,)
    response_maps: Tensor  # (M*k, H, W) the P-stream filters' responses
    centres: Tensor  # (k, 2) predicted class's filters: input (x, y) their peak reads (gradient centre)
    evidence: Tensor  # (H, W) predicted class's evidence on the feature grid
    cam: Tensor  # (1, h, w) Grad-CAM on the G-stream head's grid
    feature_size: tuple[int, int]  # (H, W) of the conv4 grid the peak indices count on


def explain(
    checkpoint: str | Path | LoadedCheckpoint,
    samples: Iterable[Mapping[str, Any]],
    out_dir: str | Path,
    top_n: int = 5,
    device: str | torch.device = "auto",
    batch_size: int = 8,
    failures: list[dict[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """Write per-sample PNGs, ``patches.json`` and ``index.html`` into `out_dir`; the patches.json objects.

    checkpoint: a checkpoint path or a `LoadedCheckpoint` (model, class_names, preprocessing).
    samples: records (mappings) with ``image`` (path), ``roi`` ((x_min, y_min, x_max, y_max) original
        pixels, or None for whole-image models), ``vertebra``, ``label`` (class name, class index, or
        None / -1 when unknown; ``label_name`` wins when present) and ``sop_instance_uid``.
        Consumed lazily (a generator over thousands of records is fine).
    top_n: boxes per sample (the predicted class's strongest filters; at most k).
    failures: when given, each sample that failed is appended to it ({image, vertebra, reason}).
    Samples that fail (unreadable image; no ROI for a model trained on ROIs) are skipped, logged,
    and listed in the gallery; raises NoSampleExplained (a ValueError) when none could be explained.
    """
    from spine_dfl.engine.checkpoint import LoadedCheckpoint, load_checkpoint
    from spine_dfl.engine.device import resolve_device

    run_device = resolve_device(device) if isinstance(device, str) else device
    loaded = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load_checkpoint(checkpoint, map_location=run_device)
    model = loaded.model.to(run_device).eval()
    if getattr(model, "p_filters", None) is None:
        raise InputError("this checkpoint is a G-stream-only model (model.streams: g_only): it has no P-stream "
                         "patches to explain")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    input_size = int(loaded.preprocessing.input_size)
    patch_side = model_patch_side(model, input_size)  # the checkpoint's measurement when it has one
    context = _Context(model, list(loaded.class_names), input_size, GradCamRunner(model), int(top_n), out, patch_side,
                       loaded.temperatures.fused)
    failures = [] if failures is None else failures
    entries: list[dict[str, Any]] = []
    started = time.monotonic()
    with atomic_output(out / "patches.json", "w") as json_file:
        json_file.write("[")
        for batch in batches(prepare_samples(samples, loaded.preprocessing, failures), max(1, int(batch_size))):
            for item, output in zip(batch, _run_batch(model, context.gradcam, batch, run_device, context.temperature)):
                entry = _explain_one(context, item, output)
                json_file.write(("\n" if not entries else ",\n") + json.dumps(entry))
                entries.append(entry)
        json_file.write("\n]\n")
        if not entries:
            reasons = sorted({f["reason"] for f in failures})
            raise NoSampleExplained(f"no sample could be explained ({len(failures)} failed: "
                                    + "; ".join(reasons[:3]) + ("; ..." if len(reasons) > 3 else "") + ")")
    meta = [
        f"{len(entries)} samples, model {getattr(model, 'backbone_name', '?')} (P-stream stride {model.stride} px in a "
        f"{context.input_size} px input; patches drawn at the effective receptive field, {patch_side:.0f} px, "
        f"theoretical {model.receptive_field} px), {model.filters_per_class} filters per class, classes "
        f"{', '.join(context.class_names)}; written in {time.monotonic() - started:.0f} s",
    ]
    atomic_write_text(out / "index.html", render_gallery(entries, context.class_names, meta_lines=meta,
                                                         failures=failures))
    log.info("explain: %d samples -> %s (%d failed)", len(entries), out / "index.html", len(failures))
    return entries


def _run_batch(
    model: nn.Module, gradcam: GradCamRunner, batch: Sequence[PreparedSample], device: torch.device,
    temperature: float = 1.0,
) -> list[_SampleOutput]:
    """One forward pass (plus Grad-CAM from the caught trunk features) for a batch of samples."""
    from spine_dfl.data.transforms.geometry import roi_in_input

    images = torch.stack([item.image for item in batch]).to(device)
    size = images.shape[-1]
    rois = torch.stack([roi_in_input(record_roi(item.record), item.to_original, size) for item in batch]).to(device)
    captured: list[Tensor] = []
    # The trunk's output is caught on the way through the one forward pass (Grad-CAM starts from
    # it) instead of running the trunk a second time.
    hook = model.trunk.register_forward_hook(lambda _m, _i, output: captured.append(output))
    try:
        with torch.no_grad():
            result = model(images, return_maps=True, roi=rois)
    finally:
        hook.remove()
    probs = torch.softmax(result.fused.float() / temperature, dim=1).cpu()  # calibrated (engine.calibration)
    preds = probs.argmax(dim=1)
    cams = gradcam.maps(captured[-1], preds.to(device)).cpu()
    centres = _predicted_class_centres(model, images, preds, result.peak_index).cpu()
    searched = model.searched_locations(rois, result.response_maps.shape[-2:])
    evidence = class_evidence(result.response_maps, preds.to(device), int(model.filters_per_class), searched).cpu()
    peak_index, response_maps = result.peak_index.cpu(), result.response_maps.cpu()
    feature_size = (int(result.feature_size[0]), int(result.feature_size[1]))
    return [_SampleOutput(probs[i], int(preds[i]), peak_index[i], response_maps[i], centres[i], evidence[i], cams[i],
                          feature_size) for i in range(len(batch))]


def _predicted_class_centres(model: nn.Module, images: Tensor, preds: Tensor, peak_index: Tensor) -> Tensor:
    """(B, k, 2) input (x, y) each of the predicted class's filters reads at its peak: the centroid of
    the peak response's input gradient (``model.effective_field.gradient_centres``), one backward pass for all."""
    k = int(model.filters_per_class)
    batch = images.shape[0]
    sample = torch.arange(batch, device=images.device).repeat_interleave(k)
    channel = (preds.to(images.device)[:, None] * k + torch.arange(k, device=images.device)[None, :]).reshape(-1)
    flat_index = peak_index.to(images.device)[sample, channel]
    centres, _ = gradient_centres(model.filter_responses, images, sample, channel, flat_index)
    return centres.reshape(batch, k, 2)


def _explain_one(context: _Context, item: PreparedSample, output: _SampleOutput) -> dict[str, Any]:
    """Boxes, maps, PNG and the patches.json object of one sample. Images are dropped on return."""
    model, class_names = context.model, context.class_names
    record, region, pred = item.record, item.region, output.pred
    pred_name = class_names[pred]
    boxes = class_patches(output.response_maps, output.peak_index, pred, pred_name, int(model.filters_per_class),
                          (float(model.stride), float(model.rf_center_offset), context.patch_side),
                          item.to_original, item.image_shape, context.top_n, centres=output.centres)
    gradcam_peak = map_peak_to_original(output.cam[0], context.gradcam.stride, context.gradcam.center_offset,
                                        item.to_original)
    _, evidence = feature_map_to_original(output.evidence, context.input_size, float(model.stride),
                                          float(model.rf_center_offset), item.to_original, region, item.image_shape)
    # Grad-CAM is shown relative to its maximum on the input grid (MONAI's maps have no fixed scale).
    cam_s = feature_map_to_tensor_space(output.cam.unsqueeze(0), context.input_size, context.gradcam.stride,
                                        context.gradcam.center_offset)[0]
    cam_max = float(cam_s.max())
    cam_s = cam_s / cam_max if cam_max > 0 else cam_s
    cam_original = tensor_map_to_original(cam_s, item.to_original, region)[0]

    label = label_name(record, class_names)
    confidence = float(output.probs[pred])
    vertebra = str(record.get("vertebra", "") or "")
    png = png_name(item.seq, record)
    roi = record_roi(record)
    points = record.get("points")
    points = None if points is None else np.asarray(points, dtype=np.float64).reshape(6, 2)
    probs = output.probs.tolist()
    verdict = "" if label is None else (f"  |  truth {label}: " + ("correct" if label == pred_name else "WRONG"))
    title = (f"{Path(str(record['image'])).name}  {vertebra or 'whole image'}  |  predicted {pred_name} "
             f"(p = {confidence:.3f}){verdict}\n"
             + "   ".join(f"{name}: {float(p):.3f}" for name, p in zip(class_names, probs)))
    render_sample_figure(
        context.out / png, item.pixels, region, boxes, evidence, cam_original, title, pred_name, roi,
        evidence_label=f"filter response (max of {pred_name}'s {model.filters_per_class} filters)",
        gradcam_label="Grad-CAM, relative to this image's maximum" + ("" if cam_max > 0 else " (zero everywhere)"),
        points=points,
    )
    located = {} if record.get("locator_confidence") is None else {
        "roi_source": "locator", "locator_confidence": round(float(record["locator_confidence"]), 6)}
    return {
        "image": str(record["image"]),
        "vertebra": vertebra,
        "sop_instance_uid": item.sop_instance_uid,
        "label": label,
        "pred": pred_name,
        "correct": None if label is None else bool(label == pred_name),
        "confidence": round(confidence, 6),
        "probs": {name: round(float(p), 6) for name, p in zip(class_names, probs)},
        "roi": list(roi) if roi is not None else None,
        "region": list(region),
        "png": png,
        "patch_side": round(context.patch_side, 2),
        "boxes": boxes,
        "gradcam_peak": [round(gradcam_peak[0], 2), round(gradcam_peak[1], 2)],
        "points": None if points is None else np.round(points, 2).tolist(),
        **located,
    }
