"""The analysts' views: face_predictions, image_predictions, daily_compliance.

Each view shows, per image path, only the scoring by the model version that scored it
last (latest ``scored_at``, then highest ``images.id``). ``compliant`` is the integer 1/0
on both databases (NULL for no_face/unreadable frames), so ``SUM``/``AVG`` work on both.
``day`` is the UTC calendar day: a ``date`` on PostgreSQL, ``'YYYY-MM-DD'`` text on SQLite.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from typing import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LATEST_IMAGES = """
    SELECT i.id, i.path, i.camera_id, i.captured_at, i.width, i.height, i.status, i.reason,
           i.model_version_id, i.scored_at,
           ROW_NUMBER() OVER (PARTITION BY i.path ORDER BY i.scored_at DESC, i.id DESC) AS scoring_rank
    FROM images AS i
"""

FACE_PREDICTIONS = f"""
CREATE VIEW face_predictions AS
SELECT li.id AS image_id, li.path AS image_path, li.camera_id, li.captured_at,
       f.face_index, f.x1, f.y1, f.x2, f.y2, f.detector_score, f.label,
       f.p_with_mask, f.p_without_mask, f.p_partial_mask, f.confidence,
       mv.version AS model_version, li.scored_at
FROM ({LATEST_IMAGES}) AS li
JOIN faces AS f ON f.image_id = li.id
JOIN model_versions AS mv ON mv.id = li.model_version_id
WHERE li.scoring_rank = 1
"""

IMAGE_PREDICTIONS = f"""
CREATE VIEW image_predictions AS
SELECT li.id AS image_id, li.path AS image_path, li.camera_id, li.captured_at,
       li.status, li.reason, li.width, li.height,
       COALESCE(fc.n_faces, 0) AS n_faces,
       COALESCE(fc.n_with_mask, 0) AS n_with_mask,
       COALESCE(fc.n_without_mask, 0) AS n_without_mask,
       COALESCE(fc.n_partial_mask, 0) AS n_partial_mask,
       CASE WHEN li.status <> 'ok' OR fc.n_faces IS NULL THEN NULL
            WHEN fc.n_with_mask = fc.n_faces THEN 1
            ELSE 0 END AS compliant,
       mv.version AS model_version, li.scored_at
FROM ({LATEST_IMAGES}) AS li
LEFT JOIN (
    SELECT image_id, COUNT(*) AS n_faces,
           SUM(CASE WHEN label = 'with_mask' THEN 1 ELSE 0 END) AS n_with_mask,
           SUM(CASE WHEN label = 'without_mask' THEN 1 ELSE 0 END) AS n_without_mask,
           SUM(CASE WHEN label = 'partial_mask' THEN 1 ELSE 0 END) AS n_partial_mask
    FROM faces
    GROUP BY image_id
) AS fc ON fc.image_id = li.id
JOIN model_versions AS mv ON mv.id = li.model_version_id
WHERE li.scoring_rank = 1
"""

# DOUBLE PRECISION is a real float on both (SQLite gives the name REAL affinity).
DAILY_COMPLIANCE = """
CREATE VIEW daily_compliance AS
SELECT {day} AS day, camera_id,
       COUNT(*) AS images,
       SUM(CASE WHEN status = 'no_face' THEN 1 ELSE 0 END) AS no_face,
       SUM(CASE WHEN status = 'unreadable' THEN 1 ELSE 0 END) AS unreadable,
       SUM(n_faces) AS faces,
       SUM(n_with_mask) AS with_mask,
       SUM(n_without_mask) AS without_mask,
       SUM(n_partial_mask) AS partial_mask,
       CAST(SUM(n_with_mask) AS DOUBLE PRECISION) / NULLIF(SUM(n_faces), 0) AS compliance_rate
FROM image_predictions
GROUP BY {day}, camera_id
"""

DAY_EXPRESSION = {"sqlite": "DATE(captured_at)", "postgresql": "CAST(captured_at AS DATE)"}


def upgrade() -> None:
    dialect = op.get_context().dialect.name
    op.execute(FACE_PREDICTIONS)
    op.execute(IMAGE_PREDICTIONS)
    op.execute(DAILY_COMPLIANCE.format(day=DAY_EXPRESSION[dialect]))


def downgrade() -> None:
    op.execute("DROP VIEW daily_compliance")
    op.execute("DROP VIEW image_predictions")
    op.execute("DROP VIEW face_predictions")
