"""Benchmark: spine_dfl's torch k-means against scikit-learn's KMeans on the same features.

Prints one JSON object: seconds of each (median over --repeats, after one untimed warm-up run of ours),
their ratio, and the inertia of each (target: ours within 2% of scikit-learn's inertia, and faster on CPU).

Features (--source):
  trunk  conv4 feature vectors of a random-init ResNet-18 trunk (256 channels) at every location of
         textured random images (the kind of vectors init_filter_bank clusters; a random network because
         no pretrained weights are downloaded), --num-features of them.
  blobs  a Gaussian mixture (scikit-learn make_blobs) of --num-features x --channels.

Both implementations get the same k, n_init, maximum iterations and tolerance.

    python benchmarks/filter_init.py --device cpu
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from spine_dfl.engine.device import DeviceUnavailable, resolve_device
from spine_dfl.model import DFLNet
from spine_dfl.model.kmeans import kmeans


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--source", choices=("trunk", "blobs"), default="trunk")
    parser.add_argument("--num-features", type=int, default=20000)
    parser.add_argument("--channels", type=int, default=256, help="feature size for --source blobs")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--n-init", type=int, default=3)
    parser.add_argument("--max-iter", type=int, default=300, help="scikit-learn's default")
    parser.add_argument("--tol", type=float, default=1e-4, help="scikit-learn's default")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


@torch.no_grad()
def trunk_features(count: int, seed: int) -> torch.Tensor:
    """(count, 256) ResNet-18 conv4 vectors of smoothed-noise images (160 px, 10 x 10 locations each)."""
    torch.manual_seed(seed)
    model = DFLNet("resnet18", num_classes=2).eval()
    vectors = []
    total = 0
    while total < count:
        noise = torch.rand(16, 1, 40, 40)
        images = torch.nn.functional.interpolate(noise, size=(160, 160), mode="bilinear", align_corners=False)
        features = model.trunk_features(images)  # (16, 256, 10, 10)
        flat = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
        vectors.append(flat)
        total += len(flat)
    return torch.cat(vectors)[:count].contiguous()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    args = parse_args()
    try:
        device = resolve_device(args.device)
    except DeviceUnavailable as error:
        raise SystemExit(f"--device {args.device}: {error}") from None
    if args.source == "trunk":
        features = trunk_features(args.num_features, args.seed)
    else:
        points, _ = make_blobs(
            n_samples=args.num_features, centers=args.k, n_features=args.channels, cluster_std=4.0, random_state=args.seed
        )
        features = torch.from_numpy(points).float()
    features_np = features.numpy()  # float32 for both: the same data and precision
    features_device = features.to(device)

    def run_ours(seed: int) -> float:
        result = kmeans(features_device, args.k, iters=args.max_iter, n_init=args.n_init, seed=seed, tol=args.tol)
        synchronize(device)
        return result.inertia

    run_ours(args.seed)  # warm-up (kernel selection, allocator)
    ours_seconds, ours_inertia, sk_seconds, sk_inertia = [], [], [], []
    for repeat in range(args.repeats):
        started = time.perf_counter()
        ours_inertia.append(run_ours(args.seed + repeat))
        ours_seconds.append(time.perf_counter() - started)

        started = time.perf_counter()
        fitted = KMeans(n_clusters=args.k, n_init=args.n_init, max_iter=args.max_iter, tol=args.tol, random_state=args.seed + repeat).fit(
            features_np
        )
        sk_seconds.append(time.perf_counter() - started)
        sk_inertia.append(float(fitted.inertia_))

    torch_s, sklearn_s = statistics.median(ours_seconds), statistics.median(sk_seconds)
    torch_inertia, sklearn_inertia = float(np.mean(ours_inertia)), float(np.mean(sk_inertia))
    print(
        json.dumps(
            {
                "benchmark": "filter_init_kmeans",
                "device": str(device),
                "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "torch_threads": torch.get_num_threads(),
                "source": args.source,
                "num_features": int(features.shape[0]),
                "channels": int(features.shape[1]),
                "k": args.k,
                "n_init": args.n_init,
                "max_iter": args.max_iter,
                "repeats": args.repeats,
                "torch_seconds": round(torch_s, 4),
                "sklearn_seconds": round(sklearn_s, 4),
                "time_ratio": round(torch_s / sklearn_s, 4),  # < 1: ours is faster
                "speedup": round(sklearn_s / torch_s, 3),
                "torch_inertia": torch_inertia,
                "sklearn_inertia": sklearn_inertia,
                "inertia_ratio": round(torch_inertia / sklearn_inertia, 5),  # target <= 1.02
                "inertia_within_2_percent": torch_inertia <= 1.02 * sklearn_inertia,
                "faster_than_sklearn": torch_s < sklearn_s,
            }
        )
    )


if __name__ == "__main__":
    main()
