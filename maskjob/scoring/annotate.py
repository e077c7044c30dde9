"""Drawing predictions on frames (``maskjob predict --annotate``).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from maskjob.vocab import CLASS_COLOURS

__all__ = ["draw_faces"]




def draw_faces(rgb: np.ndarray, faces: Sequence[tuple[tuple[int, int, int, int], str, float]]) -> np.ndarray:
    """A copy of ``rgb`` with each ``(box, label, confidence)`` drawn in its class colour."""
    out = np.ascontiguousarray(rgb).copy()
    thickness = max(1, round(max(out.shape[:2]) / 320))
    scale = max(0.4, max(out.shape[:2]) / 1200)
    for (x1, y1, x2, y2), label, confidence in faces:
        colour = CLASS_COLOURS[label]
        cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), colour, thickness)
        text = f"{label} {confidence:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = y1 - base - 2 if y1 - th - base - 2 >= 0 else min(out.shape[0] - 1, y2 + th + 2)
        cv2.rectangle(out, (x1, ty - th - 2), (x1 + tw + 2, ty + base), colour, -1)
        cv2.putText(out, text, (x1 + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out
