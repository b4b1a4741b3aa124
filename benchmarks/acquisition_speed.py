"""Benchmark: cost of the acquisition augmentation, per sample in TorchIO and per batch in torch.

The two paths do different parts (``spine_dfl.data.transforms.acquisition``): TorchIO does the bias
field, anisotropy, noise and gamma one sample at a time (``TorchioAcquisitiond``, as the training
dataset runs it: every part on, ``prob`` as given), and ``RandomBatchAcquisition`` does window and
level, unsharp mask and collimation on a whole ``(B, 1, S, S)`` batch on the chosen device.  Prints
one JSON object: milliseconds per image of each path, of each TorchIO part alone (``prob`` 1), and
of the same TorchIO transforms the plain way (``tio.Compose`` with TorchIO's defaults), and, given
the model-only training speed (``--model-images-per-s``, from ``benchmarks/train_step.py``), the
fraction of model-only speed left once both paths are added to every step when run serially
(``workers: 0``, as the CPU demo): ``1 / (1 + model_images_per_s * augment_s_per_image)``.

    python benchmarks/acquisition_speed.py --size 96 --batch 32 --threads 2 --model-images-per-s 33
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable

import torch

from spine_dfl.config import load_config
from spine_dfl.data.transforms.acquisition import AcquisitionAugment, RandomBatchAcquisition, TorchioAcquisitiond
from spine_dfl.engine.device import resolve_device

TORCHIO_PARTS = ("bias_field", "pitch", "noise", "gamma")


def _best_seconds(step: Callable[[], object], rounds: int, repeats: int) -> float:
    step()  # warm-up
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeats):
            step()
        best = min(best, (time.perf_counter() - started) / repeats)
    return best


def _torchio_ms_per_image(options: AcquisitionAugment, images: torch.Tensor, rounds: int) -> float:
    transform = TorchioAcquisitiond("image", options)
    transform.set_random_state(0)
    seconds = _best_seconds(lambda: [transform({"image": image}) for image in images], rounds, 1)
    return round(seconds / images.shape[0] * 1e3, 3)


def _compose_torchio_ms_per_image(options: AcquisitionAugment, images: torch.Tensor, rounds: int) -> float:
    """The same four random transforms the plain TorchIO way: a ``tio.Compose`` per sample with
    TorchIO's defaults (a deep copy per transform, SimpleITK's default thread count), seeded with
    ``torch.manual_seed``."""
    import torchio as tio

    common = {"p": options.prob}
    transform = tio.Compose([
        tio.RandomBiasField(coefficients=options.bias_coefficient, order=options.bias_order, **common),
        tio.RandomAnisotropy(axes=(0, 1), downsampling=options.pitch_factor, **common),
        tio.RandomNoise(std=options.noise_std, **common),
        tio.RandomGamma(log_gamma=options.log_gamma, **common),
    ])
    seeds = iter(range(10**9))

    def run() -> None:
        for image in images:
            torch.manual_seed(next(seeds))
            transform(tio.ScalarImage(tensor=image.transpose(-1, -2).unsqueeze(-1)))

    return round(_best_seconds(run, rounds, 1) / images.shape[0] * 1e3, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prob", type=float, default=None,
                        help="probability of each part (default: the cpu_demo config's data.acquisition.prob)")
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
    if args.prob is None:
        args.prob = load_config("cpu_demo").data.acquisition.prob
    options = AcquisitionAugment(enabled=True, prob=args.prob)
    images = torch.rand(args.batch, 1, args.size, args.size, device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    augment = RandomBatchAcquisition(options)

    def batch_step() -> None:
        augment(images, generator)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    batch_ms = _best_seconds(batch_step, args.rounds, args.repeats) / args.batch * 1e3
    cpu_images = images.cpu()
    torchio_ms = _torchio_ms_per_image(options, cpu_images, args.rounds)
    always = dataclasses.replace(options, prob=1.0)
    per_part = {part: _torchio_ms_per_image(dataclasses.replace(always, **{p: p == part for p in TORCHIO_PARTS}),
                                            cpu_images, args.rounds) for part in TORCHIO_PARTS}
    result = {
        "device": str(device), "threads": torch.get_num_threads(), "batch": args.batch, "size": args.size,
        "prob": args.prob,
        "batch_path_ms_per_image": round(batch_ms, 3),
        "torchio_ms_per_image": torchio_ms,
        "torchio_compose_ms_per_image": _compose_torchio_ms_per_image(options, cpu_images, args.rounds),
        "torchio_part_ms_per_image_prob_1": per_part,
    }
    if args.model_images_per_s:
        per_image_s = (batch_ms + torchio_ms) / 1e3
        result["fraction_of_model_speed"] = round(1.0 / (1.0 + args.model_images_per_s * per_image_s), 4)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
