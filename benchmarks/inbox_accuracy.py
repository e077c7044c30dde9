"""End-to-end labelling on the demo inbox: the faces a run stored against ``ground_truth.csv``.

Each true face is matched one to one with a stored face of its frame (greedy, IoU >= 0.4, as
:func:`maskjob.scoring.matching.match_boxes`); prints recall, the share of matched faces whose
stored label is the true one, and the confusions.

Usage:
    python benchmarks/inbox_accuracy.py --data-dir data     # after `make demo`
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter, defaultdict

import sqlalchemy as sa

from maskjob.config import load_settings
from maskjob.scoring.matching import match_boxes
from maskjob.storage import schema
from maskjob.storage.database import database


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data", help="the run's data_dir (its inbox and database; default data)")
    p.add_argument("--min-iou", type=float, default=0.4, help="IoU that makes a match (default 0.4)")
    args = p.parse_args()
    settings = load_settings(overrides={"data_dir": args.data_dir})
    truth: dict[str, list] = defaultdict(list)
    with open(settings.inbox_dir / "ground_truth.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            truth[row["image"]].append(((int(row["x1"]), int(row["y1"]), int(row["x2"]), int(row["y2"])), row["label"]))
    found: dict[str, list] = defaultdict(list)
    v = schema.face_predictions.c
    with database(settings.database_url) as engine, engine.connect() as conn:
        for path, x1, y1, x2, y2, label in conn.execute(sa.select(v.image_path, v.x1, v.y1, v.x2, v.y2, v.final_label)):
            found[path].append(((x1, y1, x2, y2), label))
    n_truth = sum(len(faces) for faces in truth.values())
    confusion: Counter[tuple[str, str]] = Counter()
    for path, faces in truth.items():
        stored = found.get(path, [])
        for ti, fi in match_boxes([t[0] for t in faces], [s[0] for s in stored], args.min_iou):
            confusion[(faces[ti][1], stored[fi][1])] += 1
    matched = sum(confusion.values())
    right = sum(n for (t, p), n in confusion.items() if t == p)
    print(f"true faces {n_truth}, found {matched} (recall {matched / max(n_truth, 1):.3f}), "
          f"labelled right {right} ({right / max(matched, 1):.3f})")
    for (t, p), n in sorted(confusion.items()):
        if t != p:
            print(f"  {t} called {p}: {n}")


if __name__ == "__main__":
    main()
