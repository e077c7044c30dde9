"""Matching found boxes to ground-truth boxes (detector recall in tests and benchmarks).
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["iou", "match_boxes"]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_boxes(
    truth: Sequence[Sequence[float]], found: Sequence[Sequence[float]], min_iou: float = 0.4
) -> list[tuple[int, int]]:
    """Greedy one-to-one matching of found boxes to true boxes, best IoU first.

    Returns:
        ``(truth_index, found_index)`` pairs whose IoU is at least ``min_iou``.
    """
    pairs = sorted(
        ((iou(t, f), ti, fi) for ti, t in enumerate(truth) for fi, f in enumerate(found)), reverse=True
    )
    used_t: set[int] = set()
    used_f: set[int] = set()
    matches = []
    for overlap, ti, fi in pairs:
        if overlap < min_iou:
            break
        if ti not in used_t and fi not in used_f:
            used_t.add(ti)
            used_f.add(fi)
            matches.append((ti, fi))
    return matches
