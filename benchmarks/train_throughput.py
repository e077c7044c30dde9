"""Training throughput (images/s) and peak memory (RSS) per architecture on this machine;
with ``--compare``, whole ``maskjob train`` runs one after the other against side by side.

Each architecture runs in its own process so the peak RSS is its own. It trains on the
real dataset (augmentation, DataLoader workers and all) for ``--batches`` batches at the
architecture's default image size; transfer models run the slower last-stage phase.

``--compare`` trains every ``--archs`` model for ``--epochs`` epochs with ``maskjob train``
in sequence (each with every core), side by side with every core each (no budget: what two
trainings did before ``train_threads``), side by side within the budget
(``MASKJOB_TRAIN_THREADS`` = cores / trainings), and in sequence with that budget. It prints wall time, CPU seconds,
the largest peak RSS, each model's test macro-F1 and the load average. ``--build-scale``
first builds a demo dataset of that ``demo_scale`` in a temporary folder (about 5,000 train
images at 3.4: the reference size).

    .venv/bin/python benchmarks/train_throughput.py [--data ROOT] [--archs cnn mobilenet_v2]
    flock /tmp/train.lock .venv/bin/python benchmarks/train_throughput.py --compare --build-scale 0.2 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


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


def _train_cmd(arch: str, data: str, out: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "maskjob", "train", "--arch", arch, "--data", data, "--out", str(out / arch),
            "--epochs", str(epochs)]


def _run_trainings(archs: list[str], data: str, epochs: int, parallel: bool, threads: int | None) -> dict[str, Any]:
    """``maskjob train`` of each arch, all at once or one by one; wall, CPU-s and peak RSS of the lot."""
    env = dict(os.environ)
    if threads is not None:
        env["MASKJOB_TRAIN_THREADS"] = str(threads)
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    cpu_s, peak_mib, f1 = 0.0, 0.0, {}
    with tempfile.TemporaryDirectory() as out:
        batches = [archs] if parallel else [[arch] for arch in archs]
        for batch in batches:
            procs = {arch: subprocess.Popen(_train_cmd(arch, data, Path(out), epochs), env=env, text=True,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE) for arch in batch}
            for arch, proc in procs.items():
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                stdout, stderr = proc.stdout.read(), proc.stderr.read()
                if proc.returncode != 0:
                    raise SystemExit(f"maskjob train --arch {arch} failed:\n{stderr[-2000:]}")
                cpu_s += usage.ru_utime + usage.ru_stime
                peak_mib = max(peak_mib, usage.ru_maxrss / 1024)
                match = re.search(r"test macro-F1 ([0-9.]+)", stdout)
                f1[arch] = float(match.group(1)) if match else float("nan")
    return {"wall_s": time.perf_counter() - began, "cpu_s": cpu_s, "peak_rss_mib": peak_mib, "test_macro_f1": f1,
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def compare(archs: list[str], data: str, epochs: int) -> int:
    """Print sequential against parallel training, without and with the thread budget."""
    cores = len(os.sched_getaffinity(0))
    share = max(1, cores // len(archs))
    modes = [
        ("sequential, every core each", False, cores),
        ("parallel, every core each (no budget)", True, cores),
        (f"parallel, budget {share} thread(s) each", True, share),
        (f"sequential, {share} thread(s) each", False, share),
    ]
    print(f"CPU: {cores} cores; {', '.join(archs)}, {epochs} epoch(s) each, data {data}\n")
    print("| mode | wall s | CPU s | peak RSS MiB (largest process) | test macro-F1 | load avg before -> after |")
    print("|---|---|---|---|---|---|")
    for name, parallel, threads in modes:
        r = _run_trainings(archs, data, epochs, parallel, threads)
        f1 = ", ".join(f"{a} {v:.3f}" for a, v in r["test_macro_f1"].items())
        print(f"| {name} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {r['peak_rss_mib']:.0f} | {f1} | "
              f"{r['load_before']:.2f} -> {r['load_after']:.2f} |", flush=True)
    return 0


def _build_demo(scale: float, where: Path) -> str:
    from maskjob.config import load_settings
    from maskjob.demo.builder import build_demo

    settings = load_settings(overrides={"data_dir": where, "demo_scale": scale,
                                        "assets_dir": load_settings().assets_dir})
    summary = build_demo(settings)
    print(f"demo dataset at scale {scale}: {summary.root} ({summary.seconds:.0f} s)", flush=True)
    return str(summary.root)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="dataset root (default: settings.dataset_root, from `maskjob demo-data`)")
    parser.add_argument("--archs", nargs="+", default=["cnn", "mobilenet_v2"], help="architectures to measure")
    parser.add_argument("--batches", type=int, default=10, help="timed training batches per architecture")
    parser.add_argument("--compare", action="store_true",
                        help="whole trainings in sequence against side by side, without and with the thread budget")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per training with --compare")
    parser.add_argument("--build-scale", type=float,
                        help="with --compare: first build a demo dataset of this demo_scale in a temporary folder")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compare:
        if args.build_scale is None:
            from maskjob.config import load_settings

            return compare(args.archs, args.data or str(load_settings().dataset_root), args.epochs)
        with tempfile.TemporaryDirectory() as where:
            return compare(args.archs, _build_demo(args.build_scale, Path(where) / "data"), args.epochs)
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
