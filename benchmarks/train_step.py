"""Benchmark: training throughput of DFLNet against the bare torchvision classifier.

Both get the same backbone, input size, batch and one-channel stem, AdamW, and on CUDA AMP
(bfloat16 autocast) and channels-last memory format. Data is a fixed random batch already on the device,
so only the training step is timed (forward, loss, backward, optimizer step). Rounds alternate between
the two models and the best round of each counts, which damps noise from other work on the machine.

Prints one JSON object; target: ratio = dfl / bare images per second >= 0.85 (ResNet-50 at 448 on a
GPU, ResNet-18 at the demo size).

    python benchmarks/train_step.py --backbone resnet18 --size 160 --batch 16 --steps 5 --device cpu
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import models

from spine_dfl.engine.device import DeviceUnavailable, resolve_device
from spine_dfl.model import BACKBONES, DFLNet, dfl_loss


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", choices=BACKBONES, default="resnet18")
    parser.add_argument("--size", type=int, default=160, help="input side S (image 1 x S x S)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before the first round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--num-classes", type=int, default=3)
    parser.add_argument("--filters-per-class", type=int, default=10)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--no-amp", action="store_true", help="disable bfloat16 autocast on CUDA")
    parser.add_argument("--no-channels-last", action="store_true", help="keep NCHW on CUDA")
    return parser.parse_args()


def bare_classifier(name: str, num_classes: int) -> nn.Module:
    """torchvision's classifier with a one-channel stem and num_classes outputs, random init."""
    network = getattr(models, name)(weights=None, num_classes=num_classes)
    if name == "vgg16_bn":
        old = network.features[0]
        network.features[0] = nn.Conv2d(1, old.out_channels, 3, padding=1)
    else:
        network.conv1 = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
    return network


def make_step(
    model: nn.Module, loss_fn: Callable[[nn.Module, Tensor, Tensor], Tensor], device: torch.device, amp: bool
) -> Callable[[Tensor, Tensor], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

    def step(images: Tensor, labels: Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model, images, labels)
        loss.backward()
        optimizer.step()

    return step


def images_per_second(step: Callable[[Tensor, Tensor], None], images: Tensor, labels: Tensor, steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step(images, labels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * len(images) / (time.perf_counter() - started)


def main() -> None:
    args = parse_args()
    try:
        device = resolve_device(args.device)
    except DeviceUnavailable as error:
        raise SystemExit(f"--device {args.device}: {error}") from None
    on_cuda = device.type == "cuda"
    amp = on_cuda and not args.no_amp
    channels_last = on_cuda and not args.no_channels_last
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if on_cuda:
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)

    images = torch.rand(args.batch, 1, args.size, args.size, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(args.num_classes, (args.batch,), device=device)

    dfl = DFLNet(args.backbone, args.num_classes, args.filters_per_class).to(device, memory_format=memory_format).train()
    bare = bare_classifier(args.backbone, args.num_classes).to(device, memory_format=memory_format).train()
    steps = {
        "bare": make_step(bare, lambda m, x, y: F.cross_entropy(m(x).float(), y), device, amp),
        "dfl": make_step(dfl, lambda m, x, y: dfl_loss(m(x), y)[0], device, amp),
    }
    for step in steps.values():
        for _ in range(args.warmup):
            step(images, labels)
    best = {name: 0.0 for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            best[name] = max(best[name], images_per_second(step, images, labels, args.steps, device))

    print(
        json.dumps(
            {
                "benchmark": "train_step",
                "backbone": args.backbone,
                "size": args.size,
                "batch": args.batch,
                "steps": args.steps,
                "rounds": args.rounds,
                "num_classes": args.num_classes,
                "filters_per_class": args.filters_per_class,
                "device": str(device),
                "device_name": torch.cuda.get_device_name(device) if on_cuda else "cpu",
                "torch_threads": torch.get_num_threads(),
                "amp": "bfloat16" if amp else None,
                "channels_last": channels_last,
                "bare_images_per_s": round(best["bare"], 2),
                "dfl_images_per_s": round(best["dfl"], 2),
                "ratio": round(best["dfl"] / best["bare"], 4),
                "target_met": best["dfl"] / best["bare"] >= 0.85,
            }
        )
    )


if __name__ == "__main__":
    main()
