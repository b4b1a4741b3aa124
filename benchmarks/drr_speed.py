"""DRR time of one CT: attenuation integrals of a 512 x 512 x 400 CT onto a 43 x 35 cm detector.

    python benchmarks/drr_speed.py [--threads 2] [--shape 512 512 400] [--voxel 0.8]
                                   [--detector 860 700] [--repeats 3] [--device cpu|cuda]

Prints one JSON object: the median wall time of one DRR (``render.hu_to_mu`` then
``render.line_integrals``) per view (lateral, AP) and memory layout, and of the integrals
alone.  The acceptance bound is 2 s per DRR on 2 CPU cores.  The CT is a body-shaped ellipse
of soft tissue with a spine and air around it (most voxel planes occupied, as in a clinical
CT).  Two layouts: "C" (the lateral axis slowest in memory) and "F" (fastest, as nibabel hands
a NIfTI's array over; the renderer then copies slabs of planes, about 0.6 s more).  The
detector is a 17 x 14 inch portrait cassette at 0.5 mm, SID 1000, SOD 850, which covers the
whole CT.  On a machine shared with other jobs OpenMP threads spin-wait against them (the
renderer runs a few small parallel ops per voxel plane): there 2 threads can take 10-20x longer
than on idle cores, ``OMP_WAIT_POLICY=PASSIVE`` (set before Python starts) or ``--threads 1``
avoid that; the JSON records the policy and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence

import numpy as np
import torch

from spine_dfl.drr.geometry import DrrGeometry
from spine_dfl.drr.render import hu_to_mu, line_integrals


def phantom_hu(shape: Sequence[int], voxel_mm: float) -> torch.Tensor:
    """int16 HU (I, J, K), axes R, A, S: an elliptic trunk (fat rim, soft tissue), a vertebral column."""
    axes = [(torch.arange(n, dtype=torch.float32) - (n - 1) / 2) * voxel_mm for n in shape[:2]]
    x, y = torch.meshgrid(*axes, indexing="ij")
    half_lr, half_ap = 0.46 * shape[0] * voxel_mm, 0.32 * shape[1] * voxel_mm
    s = (x / half_lr) ** 2 + (y / half_ap) ** 2
    section = torch.full(x.shape, -1000.0)
    section[s < 1.0] = -100.0
    section[s < 0.85] = 40.0
    section[(x**2 + (y + 0.4 * half_ap) ** 2) < 20.0**2] = 300.0  # vertebral bodies
    section[(x**2 + (y + 0.4 * half_ap) ** 2) < 17.0**2] = 180.0
    hu = section[:, :, None].expand(*shape[:2], shape[2]).clone()
    z = torch.arange(shape[2])
    hu[:, :, (z % 40) > 33] = torch.where(section[:, :, None] > 100, 80.0, hu[:, :, (z % 40) > 33])  # discs
    return hu.round().to(torch.int16)


def _median_time(fn, repeats: int, device: str) -> tuple[float, float]:
    """Median wall and CPU seconds of ``fn()`` over ``repeats`` calls after one warm-up call."""
    walls, cpus = [], []
    for i in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def measure(shape: Sequence[int] = (512, 512, 400), voxel_mm: float = 0.8, detector: Sequence[int] = (860, 700),
            repeats: int = 3, device: str = "cpu", views: Sequence[str] = ("lateral", "ap"),
            layouts: Sequence[str] = ("C", "F")) -> dict:
    """The benchmark's JSON object (see the module docstring)."""
    hu = phantom_hu(shape, voxel_mm).to(device)
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = -(np.asarray(shape[:3]) - 1) / 2 * voxel_mm
    stored = {"C": hu, "F": hu.permute(2, 1, 0).contiguous().permute(2, 1, 0) if "F" in layouts else None}
    drr, integrals, cpu, means = {}, {}, {}, {}
    for view in views:
        g = DrrGeometry(rows=int(detector[0]), cols=int(detector[1]), isocentre=(0.0, 0.0, 0.0), view=view)
        for layout in layouts:
            key, ct = f"{view}_{layout}", stored[layout]
            wall, cpu_s = _median_time(lambda: line_integrals(hu_to_mu(ct), affine, g), repeats, device)
            drr[key], cpu[key] = round(wall, 4), round(cpu_s, 4)
            mu = hu_to_mu(ct)
            integrals[key] = round(_median_time(lambda: line_integrals(mu, affine, g), repeats, device)[0], 4)
            means[key] = round(float(line_integrals(mu, affine, g).double().mean()), 5)
            del mu
    return {
        "threads": torch.get_num_threads(),
        "device": str(torch.cuda.get_device_name(0)) if device == "cuda" else "cpu",
        "shape": [int(n) for n in shape],
        "voxel_mm": voxel_mm,
        "detector_rows_cols": [int(n) for n in detector],
        "repeats": repeats,
        # one DRR: hu_to_mu then line_integrals, per view and memory layout
        "median_s": drr,
        "max_median_s": max(drr.values()),
        # CPU seconds of this process per DRR: on a shared machine the wall time inflates, this does not
        "median_cpu_s": cpu,
        "line_integrals_median_s": integrals,
        "mean_line_integral": means,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 400), metavar=("I", "J", "K"))
    parser.add_argument("--voxel", type=float, default=0.8, help="isotropic voxel size, mm")
    parser.add_argument("--detector", type=int, nargs=2, default=(860, 700), metavar=("ROWS", "COLS"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    torch.set_num_threads(args.threads)
    print(json.dumps(measure(args.shape, args.voxel, args.detector, args.repeats, args.device)))


if __name__ == "__main__":
    main()
