"""``explain`` time per vertebra on CPU: transforms, model + Grad-CAM, patches, figure, JSON.

    python benchmarks/explain_speed.py [--threads 2] [--patients 2] [--checkpoint best.pt]

Writes a small ``spine-dfl synth`` cohort (14 vertebrae per radiograph) into a temporary folder,
explains every vertebra with the checkpoint given, or else with a random-init ResNet-18 DFL model at
the CPU demo's setting (P-stream on layer2 searching the ROI, 96 px input, 20% margin: the same
work as a trained one, the patches' input-gradient centres included), and prints
one JSON object. The acceptance bound is 0.3 s per vertebra on 2 CPU cores. ``steady_s_per_vertebra``
leaves out the run's one-time start (model load, effective receptive field); ``figure_s`` is the
PNG drawing's share, timed by wrapping the renderer from outside.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import spine_dfl.explain.run as explain_run
from spine_dfl.data.transforms import Preprocessing
from spine_dfl.engine.checkpoint import atomic_torch_save, checkpoint_payload
from spine_dfl.explain import explain_records
from spine_dfl.model import DFLNet
from spine_dfl.synth import generate_cohort


def random_checkpoint(path: Path, backbone: str, input_size: int, margin: float) -> Path:
    """A random-init model with the CPU demo's P-stream (layer2, searching the vertebra's box)."""
    torch.manual_seed(0)
    model = DFLNet(backbone, num_classes=4, filters_per_class=6, pstream_layer="layer2", pstream_region="roi").eval()
    pre = Preprocessing(input_size=input_size, roi_margin=margin)
    atomic_torch_save(checkpoint_payload(model, {}, ["normal", "mild", "moderate", "severe"], pre), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--patients", type=int, default=2)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    figure_times: list[float] = []
    render = explain_run.render_sample_figure

    def timed_render(*a, **k):  # the benchmark's own wrapper; production code has no hook
        t0 = time.perf_counter()
        render(*a, **k)
        figure_times.append(time.perf_counter() - t0)

    explain_run.render_sample_figure = timed_render
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        generate_cohort(folder / "cohort", patients=args.patients, seed=12345, compress=False)
        checkpoint = args.checkpoint or random_checkpoint(folder / "model.pt", args.backbone, args.input_size, 0.2)
        t0, c0 = time.perf_counter(), time.process_time()
        run = explain_records(checkpoint, folder / "cohort" / "manifest.csv", folder / "out",
                              device="cpu", batch_size=args.batch_size)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        entries = json.loads((folder / "out" / "patches.json").read_text())
    count = len(entries)
    print(json.dumps({
        "threads": torch.get_num_threads(),
        "vertebrae": count,
        "s_per_vertebra": round(wall / max(count, 1), 4),
        "cpu_s_per_vertebra": round(cpu / max(count, 1), 4),
        "figure_s_median": round(statistics.median(figure_times), 4) if figure_times else None,
        "figure_s_max": round(max(figure_times), 4) if figure_times else None,
        "bound_s": 0.3,
        "failed": len(run.failures),
    }))


if __name__ == "__main__":
    main()
