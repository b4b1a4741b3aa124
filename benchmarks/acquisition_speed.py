"""Benchmark: cost of the acquisition augmentation, whole batches in torch against TorchIO per sample.

Times ``RandomAcquisition`` (every part on, ``prob`` 1: the worst case) on a random ``(B, 1, S, S)``
batch on the chosen device, and the per-sample TorchIO path (``TorchioAcquisitiond``) on the same
images one by one.  Prints one JSON object with images/s of each and, given the model-only
training speed (``--model-images-per-s``, from ``benchmarks/train_step.py``), the fraction of
model-only speed left once the batch augmentation is added to every step:
``1 / (1 + model_images_per_s / augment_images_per_s)``.

    python benchmarks/acquisition_speed.py --size 96 --batch 32 --threads 2 --model-images-per-s 33
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from spine_dfl.data.transforms.acquisition import AcquisitionAugment, RandomAcquisition, TorchioAcquisitiond
from spine_dfl.engine.device import resolve_device


def _best_seconds(step, rounds: int, repeats: int) -> float:
    step()  # warm-up
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeats):
            step()
        best = min(best, (time.perf_counter() - started) / repeats)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    parser.add_argument("--model-images-per-s", type=float, default=None,
                        help="model-only training images/s at the same batch and size (benchmarks/train_step.py)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    options = AcquisitionAugment(enabled=True, prob=1.0)
    images = torch.rand(args.batch, 1, args.size, args.size, device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    augment = RandomAcquisition(options)

    def batch_step() -> None:
        augment(images, generator)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    batch_s = _best_seconds(batch_step, args.rounds, args.repeats)
    per_sample = TorchioAcquisitiond("image", dataclasses.replace(options))
    per_sample.set_random_state(0)
    cpu_images = images.cpu()
    torchio_s = _best_seconds(lambda: [per_sample({"image": image}) for image in cpu_images], 1, 1)
    result = {
        "device": str(device), "threads": torch.get_num_threads(), "batch": args.batch, "size": args.size,
        "batch_ms": round(batch_s * 1e3, 2), "batch_images_per_s": round(args.batch / batch_s, 1),
        "torchio_per_sample_images_per_s": round(args.batch / torchio_s, 1),
    }
    if args.model_images_per_s:
        result["fraction_of_model_speed"] = round(1.0 / (1.0 + args.model_images_per_s * batch_s / args.batch), 4)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
