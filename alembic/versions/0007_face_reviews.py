"""Reviews: reviewers' decisions on faces, counted in every number (issue 12).

- ``review_users``: the review page's accounts (username, password hash, role, disabled).
- ``face_reviews``: the append-only audit trail. One row per decision: the face (its image,
  path, camera, capture time, local day and box copied, so the row outlives a deleted or
  rescored face), the reviewer, the decided label (a class or ``not_a_face``), the model's
  label, confidence and version, the queue stratum it was served from, the time, a note;
  ``undone_at``/``undone_by`` mark an undo (the row stays).
- ``faces`` gains ``reviewed_label`` (the label of its latest live review; NULL: unreviewed)
  and ``review_id`` (that review). The final label is ``COALESCE(reviewed_label, label)``.
- ``images`` gains ``n_reviewed``, ``n_changed`` (reviewed label differs from the model's,
  ``not_a_face`` included) and ``n_not_face``; after a review its ``n_*`` counts, confidence
  extremes and status are those of its final faces (``not_a_face`` left out, a reviewed face
  at confidence 1.0, ``no_face`` once every face is ``not_a_face``). ``latest_scorings``
  copies the three new counts and ``hourly_counts`` sums them as ``reviewed``, ``changed``,
  ``not_face``: 0005's triggers are created again over the longer column lists.
- Views: ``face_predictions`` gains ``face_id``, ``reviewed_label``, ``final_label`` and omits
  faces whose final label is ``not_a_face`` (its ``label`` stays the model's);
  ``image_predictions`` gains ``n_reviewed``, ``n_changed``; ``daily_compliance`` gains
  ``reviewed_faces``, ``changed_faces``. Their counts are final because the derived tables are.
- Indexes for the review queue, partial on ``reviewed_label IS NULL``: unreviewed faces by
  confidence, unreviewed violations by confidence, the other unreviewed faces by sample hash.

No review exists before this revision, so the new counts start at 0 everywhere (constant
defaults: ``ALTER TABLE ADD COLUMN``, no table rebuilt). The downgrade puts the model's counts
back on the reviewed images (the triggers carry them to the derived tables), then drops the
reviews, the columns and the tables, and restores 0006's triggers and 0005's views.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of maskjob.vocab at this revision.
REVIEW_LABELS = ("with_mask", "without_mask", "partial_mask", "not_a_face")
REVIEW_ROLES = ("viewer", "reviewer", "admin")
STRATA = ("uncertain", "violation", "sample", "other")

COLUMNS_0006 = ("top_violation_confidence", "min_confidence", "max_confidence")
REVIEW_COUNTS = ("n_reviewed", "n_changed", "n_not_face")
HOURLY_REVIEW_SUMS = ("reviewed", "changed", "not_face")

# The queue's deterministic sample: a face is sampled when this hash of its id (Knuth's
# multiplicative hash mod 2**32, then mod 10000; * and % are left-associative at one precedence
# on both databases) is below rate * 10000. maskjob.storage.schema.sample_hash gives the same
# text: a planner uses an expression index only for the same expression.
SAMPLE_HASH = "(id * 2654435761 % 4294967296 % 10000)"
UNREVIEWED = "reviewed_label IS NULL"
VIOLATION = "label IN ('without_mask', 'partial_mask')"
# (name, columns, WHERE): unreviewed faces by confidence (the uncertain stratum), unreviewed
# violations by confidence, unreviewed other faces by sample hash.
INDEXES = (
    ("ix_faces_unreviewed_confidence", ("confidence", "id"), UNREVIEWED),
    ("ix_faces_unreviewed_violation", ("confidence", "id"), f"{UNREVIEWED} AND {VIOLATION}"),
    ("ix_faces_unreviewed_sample", (SAMPLE_HASH, "id"), f"{UNREVIEWED} AND NOT ({VIOLATION})"),
)

# The model's counts, extremes and status from faces, for the downgrade (0006's meaning).
MODEL_SUMMARY = (
    "UPDATE images SET status = 'ok', n_faces = fc.n_faces, n_with_mask = fc.w, n_without_mask = fc.wo, "
    "n_partial_mask = fc.p, top_violation_confidence = fc.top_violation, min_confidence = fc.lowest, "
    "max_confidence = fc.highest "
    "FROM (SELECT image_id, COUNT(*) AS n_faces, "
    "SUM(CASE WHEN label = 'with_mask' THEN 1 ELSE 0 END) AS w, "
    "SUM(CASE WHEN label = 'without_mask' THEN 1 ELSE 0 END) AS wo, "
    "SUM(CASE WHEN label = 'partial_mask' THEN 1 ELSE 0 END) AS p, "
    "MAX(CASE WHEN label IN ('without_mask', 'partial_mask') THEN confidence END) AS top_violation, "
    "MIN(confidence) AS lowest, MAX(confidence) AS highest FROM faces GROUP BY image_id) AS fc "
    "WHERE images.id = fc.image_id AND images.n_reviewed > 0")


def _migration(name: str, file: str) -> ModuleType:
    """An earlier migration's module, loaded from the file next to this one (a private copy)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(file))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _m0005() -> ModuleType:
    return _migration("maskjob_migration_0005", "0005_latest_scorings.py")


def _m0005_with_review_sums() -> ModuleType:
    """0005's trigger builders over this revision's hourly sums: a private copy of its module
    whose ``HOURLY_SUMS`` and ``_contributions`` also carry the review counts."""
    module = _m0005()
    base = module._contributions

    def contributions(p: str, sign: str = "") -> list[str]:
        return [*base(p, sign), *(f"{sign}{p}{c}" for c in REVIEW_COUNTS)]

    module.HOURLY_SUMS = (*module.HOURLY_SUMS, *HOURLY_REVIEW_SUMS)
    module._contributions = contributions
    return module


def _column_lists(m0005: ModuleType, extra: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(latest_scorings' columns, the images columns an UPDATE re-derives) at 0006 plus ``extra``."""
    return ((*m0005.LATEST_COLUMNS, *COLUMNS_0006, *extra), (*m0005.DERIVED_FROM, *COLUMNS_0006, *extra))


FACE_PREDICTIONS = """
CREATE VIEW face_predictions AS
SELECT ls.image_id, i.path AS image_path, ls.camera_id, ls.captured_at,
       f.face_index, f.x1, f.y1, f.x2, f.y2, f.detector_score, f.label,
       f.p_with_mask, f.p_without_mask, f.p_partial_mask, f.confidence,
       mv.version AS model_version, ls.scored_at,
       {captured_local} AS captured_local, ls.timezone, ls.local_day,
       f.id AS face_id, f.reviewed_label, COALESCE(f.reviewed_label, f.label) AS final_label
FROM latest_scorings AS ls
JOIN faces AS f ON f.image_id = ls.image_id
LEFT JOIN images AS i ON i.id = ls.image_id
LEFT JOIN model_versions AS mv ON mv.id = ls.model_version_id
WHERE f.reviewed_label IS NULL OR f.reviewed_label <> 'not_a_face'
"""

IMAGE_PREDICTIONS = """
CREATE VIEW image_predictions AS
SELECT ls.image_id, i.path AS image_path, ls.camera_id, ls.captured_at,
       ls.status, i.reason, i.width, i.height,
       ls.n_faces, ls.n_with_mask, ls.n_without_mask, ls.n_partial_mask,
       CASE WHEN ls.status <> 'ok' OR ls.n_faces = 0 THEN NULL
            WHEN ls.n_with_mask = ls.n_faces THEN 1
            ELSE 0 END AS compliant,
       mv.version AS model_version, ls.scored_at,
       {captured_local} AS captured_local, ls.timezone, ls.local_day,
       ls.n_reviewed, ls.n_changed
FROM latest_scorings AS ls
LEFT JOIN images AS i ON i.id = ls.image_id
LEFT JOIN model_versions AS mv ON mv.id = ls.model_version_id
"""

# A camera whose zone changed within a day keeps one row per local day: MAX names one zone.
DAILY_COMPLIANCE = """
CREATE VIEW daily_compliance AS
SELECT local_day AS day, camera_id,
       SUM(images) AS images,
       SUM(no_face) AS no_face,
       SUM(unreadable) AS unreadable,
       SUM(faces) AS faces,
       SUM(with_mask) AS with_mask,
       SUM(without_mask) AS without_mask,
       SUM(partial_mask) AS partial_mask,
       CAST(SUM(with_mask) AS DOUBLE PRECISION) / NULLIF(SUM(faces), 0) AS compliance_rate,
       MAX(CASE WHEN images > 0 THEN timezone END) AS timezone,
       SUM(compliant) AS compliant_frames,
       SUM(reviewed) AS reviewed_faces,
       SUM(changed) AS changed_faces
FROM hourly_counts
GROUP BY local_day, camera_id
HAVING SUM(images) > 0
"""


def _utc_type() -> Any:
    from maskjob.storage.schema import UtcDateTime

    return UtcDateTime()


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _create_tables() -> None:
    utc = _utc_type()
    op.create_table(
        "review_users",
        sa.Column("username", sa.Text, nullable=False),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", utc, nullable=False),
        sa.Column("password_changed_at", utc, nullable=False),
        sa.PrimaryKeyConstraint("username", name="pk_review_users"),
        sa.CheckConstraint(_in("role", REVIEW_ROLES), name="ck_review_users_role"),
    )
    op.create_table(
        "face_reviews",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("face_id", sa.Integer, nullable=True),
        sa.Column("image_id", sa.Integer, nullable=True),
        sa.Column("image_path", sa.Text, nullable=False),
        sa.Column("camera_id", sa.Text, nullable=False),
        sa.Column("captured_at", utc, nullable=False),
        sa.Column("local_day", sa.Date, nullable=False),
        *(sa.Column(c, sa.Integer, nullable=False) for c in ("x1", "y1", "x2", "y2")),
        sa.Column("reviewer", sa.Text, nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("model_label", sa.String(16), nullable=False),
        sa.Column("model_confidence", sa.Float, nullable=False),
        sa.Column("model_version_id", sa.Integer, nullable=False),
        sa.Column("stratum", sa.String(16), nullable=False),
        sa.Column("reviewed_at", utc, nullable=False),
        sa.Column("note", sa.Text, nullable=True),
        sa.Column("undone_at", utc, nullable=True),
        sa.Column("undone_by", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_face_reviews"),
        sa.ForeignKeyConstraint(["face_id"], ["faces.id"], name="fk_face_reviews_face_id_faces",
                                ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name="fk_face_reviews_image_id_images",
                                ondelete="SET NULL"),
        sa.CheckConstraint(_in("label", REVIEW_LABELS), name="ck_face_reviews_label"),
        sa.CheckConstraint(_in("stratum", STRATA), name="ck_face_reviews_stratum"),
    )
    for columns in (("face_id", "reviewed_at", "id"), ("reviewed_at",), ("camera_id", "local_day"), ("captured_at",)):
        op.create_index(f"ix_face_reviews_{'_'.join(columns)}", "face_reviews", list(columns))


def _create_indexes() -> None:
    for name, columns, where in INDEXES:
        op.execute(f"CREATE INDEX {name} ON faces ({', '.join(columns)}) WHERE {where}")


def _create_views() -> None:
    local = _m0005().CAPTURED_LOCAL[op.get_context().dialect.name]
    for sql in (FACE_PREDICTIONS, IMAGE_PREDICTIONS):
        op.execute(sql.format(captured_local=local))
    op.execute(DAILY_COMPLIANCE)


def _drop_views() -> None:
    for name in ("daily_compliance", "image_predictions", "face_predictions"):
        op.execute(f"DROP VIEW {name}")


def upgrade() -> None:
    _drop_views()
    m0005 = _m0005_with_review_sums()
    m0005._drop_triggers()
    _create_tables()
    op.add_column("faces", sa.Column("reviewed_label", sa.String(16), nullable=True))
    op.add_column("faces", sa.Column("review_id", sa.Integer, nullable=True))
    for table in ("images", "latest_scorings"):
        for column in REVIEW_COUNTS:  # a constant default: no rebuild, existing rows get 0
            op.add_column(table, sa.Column(column, sa.Integer, nullable=False, server_default=sa.text("0")))
    for column in HOURLY_REVIEW_SUMS:
        op.add_column("hourly_counts", sa.Column(column, sa.Integer, nullable=False, server_default=sa.text("0")))
    _create_indexes()
    m0005._create_triggers(*_column_lists(m0005, REVIEW_COUNTS))
    _create_views()


def downgrade() -> None:
    _drop_views()
    m0005 = _m0005()
    m0005._drop_triggers()
    m0005._create_triggers(*_column_lists(m0005, ()))
    # The reviewed images get the model's counts back; 0006's triggers carry them on.
    op.execute(MODEL_SUMMARY)
    for name, *_ in INDEXES:
        op.drop_index(name, table_name="faces")
    op.drop_table("face_reviews")
    op.drop_table("review_users")
    # ALTER TABLE .. DROP COLUMN on both (SQLite >= 3.35): no rebuild.
    for column in reversed(HOURLY_REVIEW_SUMS):
        op.execute(f"ALTER TABLE hourly_counts DROP COLUMN {column}")
    for table in ("latest_scorings", "images"):
        for column in reversed(REVIEW_COUNTS):
            op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    for column in ("review_id", "reviewed_label"):
        op.execute(f"ALTER TABLE faces DROP COLUMN {column}")
    m0005._create_views()
