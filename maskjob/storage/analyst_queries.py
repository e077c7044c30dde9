"""The analysts' example queries, exactly as the README prints them.

One copy for the README test (every query appears there verbatim), the view tests (each runs
unchanged on SQLite and PostgreSQL) and the scale benchmarks (each is timed for one week).
They are plain SQL on the views, with literal dates: what an analyst types. Totals over days
come from ``daily_compliance`` (kept per hour by the database, so a week is a few thousand
rows); ``image_predictions`` and ``face_predictions`` serve questions about single frames and
faces, read through covering indexes on the window's scorings (migration 0006).
"""

from __future__ import annotations

__all__ = ["QUERIES", "WEEK_START", "WEEK_END"]

# The week every example covers: the README's dates, which the benchmarks' data ends on.
WEEK_START = "2026-11-18"
WEEK_END = "2026-11-25"

QUERIES: dict[str, str] = {
    "The ten worst cameras over a week": """\
SELECT camera_id, SUM(faces) AS faces, SUM(with_mask) AS with_mask,
       CAST(SUM(with_mask) AS DOUBLE PRECISION) / NULLIF(SUM(faces), 0) AS compliance_rate
FROM daily_compliance
WHERE day >= '2026-11-18' AND day < '2026-11-25'
GROUP BY camera_id HAVING SUM(faces) > 0
ORDER BY compliance_rate, camera_id
LIMIT 10;""",
    "Violations over a week, by camera and kind": """\
SELECT camera_id, SUM(without_mask) AS without_mask, SUM(partial_mask) AS partial_mask
FROM daily_compliance
WHERE day >= '2026-11-18' AND day < '2026-11-25'
GROUP BY camera_id HAVING SUM(without_mask) + SUM(partial_mask) > 0
ORDER BY SUM(without_mask) + SUM(partial_mask) DESC, camera_id;""",
    "One camera's least confident violations over a week, to look at first": """\
SELECT image_path, captured_at, face_index, label, confidence
FROM face_predictions
WHERE camera_id = 'cam-07' AND captured_at >= '2026-11-18' AND captured_at < '2026-11-25'
  AND label <> 'with_mask'
ORDER BY confidence, image_path, face_index
LIMIT 20;""",
    "Share of fully compliant frames per camera over a week (of the frames with faces)": """\
SELECT camera_id, SUM(images) AS frames, SUM(images - no_face - unreadable) AS frames_with_faces,
       SUM(compliant_frames) AS compliant_frames,
       CAST(SUM(compliant_frames) AS DOUBLE PRECISION) / NULLIF(SUM(images - no_face - unreadable), 0) AS compliant_share
FROM daily_compliance
WHERE day >= '2026-11-18' AND day < '2026-11-25'
GROUP BY camera_id ORDER BY camera_id;""",
    "Why frames could not be read over a week": """\
SELECT reason, COUNT(*) AS frames FROM image_predictions
WHERE status = 'unreadable' AND captured_at >= '2026-11-18' AND captured_at < '2026-11-25'
GROUP BY reason ORDER BY frames DESC, reason;""",
    "Promotion history": """\
SELECT d.decided_at, c.version AS candidate, d.promoted, d.candidate_macro_f1, d.champion_macro_f1, d.reason
FROM promotion_decisions d JOIN model_versions c ON c.id = d.candidate_id
ORDER BY d.decided_at DESC, d.id DESC;""",
}
