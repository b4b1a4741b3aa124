"""Benchmark: end-to-end training images/s over model-only images/s, with the acquisition augmentation on.

End to end is the engine's own epoch (``spine_dfl.engine.loop.train_epoch`` on the grader's task: sampler, cached
crops, per-sample augmentation with, in the augmented arm, TorchIO's bias field, anisotropy, noise
and gamma, collate, the batch part of the acquisition augmentation (window, unsharp mask,
collimation), forward, loss, backward, clipping, optimiser and schedule), capped at ``--steps`` batches by
``train.max_steps_per_epoch``.  Model-only is ``benchmarks/train_step.py``'s loop on the same
model and batch size: a fixed batch already in memory, forward, loss, backward, optimiser step.
Rounds alternate end-to-end with augmentation, end-to-end without and model-only; the best round
of each counts, which damps the noise of other work on the machine.

Prints one JSON object; target: ``ratio`` (end to end with augmentation / model-only) >= 0.8.

    python benchmarks/train_loop_speed.py /tmp/loop_speed --config cpu_demo
    python benchmarks/train_loop_speed.py /tmp/loop_speed --manifest cohort/manifest.csv --steps 6 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from spine_dfl.config import RunConfig, load_config
from spine_dfl.engine.device import resolve_device
from spine_dfl.engine.distributed import Distributed
from spine_dfl.engine.loop import RunContext, build_optimisation, seed_everything, train_epoch
from spine_dfl.engine.train import GraderTask
from spine_dfl.model import dfl_loss


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="working folder (a synth cohort unless --manifest, the crop cache)")
    parser.add_argument("--manifest", type=Path, default=None, help="train on this manifest (default: a synth cohort)")
    parser.add_argument("--patients", type=int, default=16, help="patients of the synth cohort (default 16)")
    parser.add_argument("--config", default="cpu_demo", help="training config name or YAML path (default cpu_demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override (repeatable); data.acquisition.enabled is set by the benchmark")
    parser.add_argument("--steps", type=int, default=8, help="timed batches per round (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each loop (default 3)")
    return parser.parse_args(argv)


def _end_to_end(task: GraderTask, epoch: int) -> float:
    """Images/s of one engine epoch (its own ``images_per_s``, timed around data and step alike)."""
    opt = build_optimisation(task, task.context)
    return float(train_epoch(task, task.model, opt, task.context, epoch)["images_per_s"])


def _model_only(model: torch.nn.Module, config: RunConfig, classes: int, device: torch.device, steps: int) -> float:
    """Images/s of ``benchmarks/train_step.py``'s loop: a fixed batch, forward, loss, backward, step."""
    size, batch = config.data.input_size, config.train.batch_size
    images = torch.rand(batch, 1, size, size, device=device)
    labels = torch.randint(classes, (batch,), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = dfl_loss(model(images), labels)[0]
        loss.backward()
        optimizer.step()

    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    manifest = args.manifest
    if manifest is None:
        from spine_dfl.synth import generate_cohort

        folder = args.out / "cohort"
        if not (folder / "manifest.csv").exists():
            generate_cohort(folder, patients=args.patients, seed=0, overwrite=True)
        manifest = folder / "manifest.csv"
    common = [*args.overrides, f"train.max_steps_per_epoch={args.steps}", "model.init=random"]
    configs = {arm: load_config(args.config, [*common, f"data.acquisition.enabled={arm == 'augmented'}"])
               for arm in ("augmented", "plain")}
    device = resolve_device(configs["augmented"].device)
    seed_everything(configs["augmented"].seed)
    tasks = {arm: GraderTask(RunContext(manifest, config, args.out / f"run_{arm}", Distributed(), device))
             for arm, config in configs.items()}
    model = tasks["plain"].model = tasks["augmented"].model  # one model, both arms
    classes = len(tasks["augmented"].data.class_names)
    best = {"augmented": 0.0, "plain": 0.0, "model_only": 0.0}
    _end_to_end(tasks["augmented"], epoch=0)  # warm-up
    for round_index in range(args.rounds):
        for arm in ("augmented", "plain"):
            best[arm] = max(best[arm], _end_to_end(tasks[arm], epoch=1 + round_index))
        best["model_only"] = max(best["model_only"], _model_only(model, configs["plain"], classes, device, args.steps))
    options = configs["augmented"].data.acquisition
    print(json.dumps({
        "benchmark": "train_loop_speed", "config": str(args.config), "manifest": str(manifest),
        "backbone": configs["plain"].model.backbone, "size": configs["plain"].data.input_size,
        "batch": configs["plain"].train.batch_size, "workers": configs["plain"].data.workers,
        "steps": args.steps, "rounds": args.rounds, "device": str(device), "torch_threads": torch.get_num_threads(),
        "acquisition_prob": options.prob,
        "end_to_end_augmented_images_per_s": round(best["augmented"], 2),
        "end_to_end_plain_images_per_s": round(best["plain"], 2),
        "model_only_images_per_s": round(best["model_only"], 2),
        "ratio": round(best["augmented"] / best["model_only"], 4),
        "ratio_plain": round(best["plain"] / best["model_only"], 4),
        "target_met": best["augmented"] / best["model_only"] >= 0.8,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
