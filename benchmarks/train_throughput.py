"""Training throughput (images/s) and peak memory (RSS) per architecture on this machine.

Each architecture runs in its own process so the peak RSS is its own. It trains on the
real dataset (augmentation, DataLoader workers and all) for ``--batches`` batches at the
architecture's default image size; transfer models run the slower last-stage phase.

    .venv/bin/python benchmarks/train_throughput.py [--data ROOT] [--archs cnn mobilenet_v2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def measure(arch: str, data: str | None, batches: int) -> dict[str, float | int | str]:
    """Train ``batches`` batches of ``arch`` and time them (after one warm-up batch)."""
    import itertools

    import torch

    from maskjob.config import load_settings
    from maskjob.ml.loaders import make_loaders
    from maskjob.ml.models import ARCHS, create_model, set_trainable
    from maskjob.ml.train import make_optimizer, phases_for, train_one_epoch

    settings = load_settings()
    spec = ARCHS[arch]
    root = data or settings.dataset_root
    model = create_model(arch, torch_home=settings.torch_home)
    phase = phases_for(arch, settings.max_epochs)[-1]
    set_trainable(model, arch, phase.stage)
    optimizer = make_optimizer(model, arch, phase)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loaders = make_loaders(root, spec.image_size, settings, spec.mean, spec.std)
    warm = list(itertools.islice(loaders.train, 1))
    train_one_epoch(model, warm, optimizer, scheduler, "warm-up")
    cpu0, t0 = time.process_time(), time.perf_counter()
    n_images = 0
    done = 0
    while done < batches:
        chunk = list(itertools.islice(loaders.train, batches - done))
        train_one_epoch(model, chunk, optimizer, scheduler, arch)
        done += len(chunk)
        n_images += sum(len(y) for _, y, _ in chunk)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    return {
        "arch": arch,
        "image_size": spec.image_size,
        "phase": phase.name,
        "batch_size": settings.batch_size,
        "num_workers": settings.num_workers,
        "torch_threads": torch.get_num_threads(),
        "images": n_images,
        "images_per_s": n_images / wall,
        "main_cpu_s_per_1000_images": cpu / n_images * 1000,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="dataset root (default: settings.dataset_root, from `maskjob demo-data`)")
    parser.add_argument("--archs", nargs="+", default=["cnn", "mobilenet_v2"], help="architectures to measure")
    parser.add_argument("--batches", type=int, default=10, help="timed training batches per architecture")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.data, args.batches)))
        return 0
    rows = []
    for arch in args.archs:
        cmd = [sys.executable, __file__, "--one", arch, "--batches", str(args.batches)]
        if args.data:
            cmd += ["--data", args.data]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"CPU: {os.cpu_count()} logical cores\n")
    print("| arch | image size | phase | batch | workers | images/s | main-process CPU s / 1000 images | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['arch']} | {r['image_size']} | {r['phase']} | {r['batch_size']} | {r['num_workers']} | "
            f"{r['images_per_s']:.0f} | {r['main_cpu_s_per_1000_images']:.1f} | {r['peak_rss_mib']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
