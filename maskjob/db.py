"""The prediction database: typed ORM tables, engines, Alembic migrations, write helpers.

The schema is created and changed only by the migrations in ``<repo>/alembic``; the ORM
classes here mirror them (a test compares the two). Times are naive UTC.

Example:
    >>> upgrade("sqlite:///data/maskjob.db")           # doctest: +SKIP
    '0002'
    >>> engine = open_database("sqlite:///data/maskjob.db")  # doctest: +SKIP
    >>> with session(engine) as s:                      # doctest: +SKIP
    ...     s.scalars(select(ModelVersion)).all()
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy import ForeignKey, Index, MetaData, UniqueConstraint, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Dialect, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

import maskjob
from maskjob.errors import MaskjobError

__all__ = [
    "Base", "ModelVersion", "PromotionDecision", "ScoringRun", "Image", "Face",
    "MODEL_STATUSES", "RUN_STATUSES", "IMAGE_STATUSES", "VIEW_NAMES",
    "face_predictions", "image_predictions", "daily_compliance",
    "make_engine", "open_database", "session", "upgrade", "downgrade", "current",
    "head_revision", "upsert_ignore", "insert_images_and_faces", "utcnow", "to_naive_utc", "safe_url",
]

logger = logging.getLogger(__name__)

MODEL_STATUSES = ("candidate", "champion", "retired", "rejected")
RUN_STATUSES = ("running", "succeeded", "failed")
IMAGE_STATUSES = ("ok", "no_face", "unreadable")
VIEW_NAMES = ("face_predictions", "image_predictions", "daily_compliance")
SQLITE_BUSY_TIMEOUT_MS = 30_000
ALEMBIC_DIR = Path(maskjob.__file__).resolve().parents[1] / "alembic"

# Explicit constraint names keep migrations, batch mode on SQLite and downgrades stable.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Now as naive UTC, the form every time column stores."""
    return datetime.now(UTC).replace(tzinfo=None)


def to_naive_utc(value: datetime) -> datetime:
    """``value`` as naive UTC, the form every time column stores; naive input is taken as UTC."""
    if value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ModelVersion(Base):
    """A registered checkpoint and where it stands in champion/challenger promotion."""

    __tablename__ = "model_versions"
    __table_args__ = (
        sa.CheckConstraint(_in("status", MODEL_STATUSES), name="status"),
        # At most one champion, enforced by the database even under concurrent promotions.
        Index("uq_model_versions_one_champion", "status", unique=True,
              sqlite_where=sa.text("status = 'champion'"), postgresql_where=sa.text("status = 'champion'")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(sa.String(128), unique=True)
    arch: Mapped[str] = mapped_column(sa.String(64))
    checkpoint_path: Mapped[str] = mapped_column(sa.Text)
    checkpoint_sha256: Mapped[str] = mapped_column(sa.String(64), unique=True)
    dataset_fingerprint: Mapped[str | None] = mapped_column(sa.String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    test_macro_f1: Mapped[float | None] = mapped_column(sa.Float)
    diverged: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime)
    status: Mapped[str] = mapped_column(sa.String(16), default="candidate")
    decision_reason: Mapped[str | None] = mapped_column(sa.Text)
    promoted_at: Mapped[datetime | None] = mapped_column(sa.DateTime)


class PromotionDecision(Base):
    """One promotion verdict on a candidate, with the numbers it was based on."""

    __tablename__ = "promotion_decisions"

    id: Mapped[int] = mapped_column(primary_key=True)
    decided_at: Mapped[datetime] = mapped_column(sa.DateTime)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    champion_before_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    promoted: Mapped[bool] = mapped_column(sa.Boolean)
    candidate_macro_f1: Mapped[float | None] = mapped_column(sa.Float)
    champion_macro_f1: Mapped[float | None] = mapped_column(sa.Float)
    reason: Mapped[str] = mapped_column(sa.Text)

    candidate: Mapped[ModelVersion] = relationship(foreign_keys=[candidate_id])


class ScoringRun(Base):
    """One shard of one scoring interval."""

    __tablename__ = "scoring_runs"
    __table_args__ = (sa.CheckConstraint(_in("status", RUN_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    interval_start: Mapped[datetime | None] = mapped_column(sa.DateTime)
    interval_end: Mapped[datetime | None] = mapped_column(sa.DateTime)
    shard_index: Mapped[int] = mapped_column(default=0)
    shard_count: Mapped[int] = mapped_column(default=1)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    started_at: Mapped[datetime] = mapped_column(sa.DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime)
    n_frames: Mapped[int] = mapped_column(default=0)
    n_faces: Mapped[int] = mapped_column(default=0)
    n_no_face: Mapped[int] = mapped_column(default=0)
    n_unreadable: Mapped[int] = mapped_column(default=0)
    n_skipped: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(sa.String(16), default="running")
    error: Mapped[str | None] = mapped_column(sa.Text)


class Image(Base):
    """One CCTV frame as scored by one model version (``path`` is relative to the inbox)."""

    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("path", "model_version_id"),
        sa.CheckConstraint(_in("status", IMAGE_STATUSES), name="status"),
        Index("ix_images_captured_at", "captured_at"),
        Index("ix_images_camera_id_captured_at", "camera_id", "captured_at"),
        # Serves the views' "latest scoring per path" window and lookups by path.
        Index("ix_images_path_scored_at_id", "path", "scored_at", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(sa.String(1024))
    content_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    camera_id: Mapped[str] = mapped_column(sa.String(128))
    captured_at: Mapped[datetime] = mapped_column(sa.DateTime)
    width: Mapped[int | None]
    height: Mapped[int | None]
    status: Mapped[str] = mapped_column(sa.String(16))
    reason: Mapped[str | None] = mapped_column(sa.Text)
    n_faces: Mapped[int] = mapped_column(default=0)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    scoring_run_id: Mapped[int | None] = mapped_column(ForeignKey("scoring_runs.id", ondelete="SET NULL"))
    scored_at: Mapped[datetime] = mapped_column(sa.DateTime)

    faces: Mapped[list[Face]] = relationship(back_populates="image", cascade="all, delete-orphan",
                                             order_by="Face.face_index")


class Face(Base):
    """One detected face: pixel box, detector score, predicted label and class probabilities."""

    __tablename__ = "faces"
    __table_args__ = (
        # Leading image_id: this unique index is also the faces(image_id) access path.
        UniqueConstraint("image_id", "face_index"),
        sa.CheckConstraint(_in("label", maskjob.CLASSES), name="label"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    face_index: Mapped[int]
    x1: Mapped[int]
    y1: Mapped[int]
    x2: Mapped[int]
    y2: Mapped[int]
    detector_score: Mapped[float] = mapped_column(sa.Float)
    label: Mapped[str] = mapped_column(sa.String(16))
    p_with_mask: Mapped[float] = mapped_column(sa.Float)
    p_without_mask: Mapped[float] = mapped_column(sa.Float)
    p_partial_mask: Mapped[float] = mapped_column(sa.Float)
    confidence: Mapped[float] = mapped_column(sa.Float)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))

    image: Mapped[Image] = relationship(back_populates="faces")


# The analysts' views, created by migration 0002. Declared here (outside Base.metadata, so
# never created as tables) for typed Core queries: ``day`` reads as a date on both databases.
_views = MetaData()
face_predictions = sa.Table(
    "face_predictions", _views,
    sa.Column("image_id", sa.Integer), sa.Column("image_path", sa.String),
    sa.Column("camera_id", sa.String), sa.Column("captured_at", sa.DateTime),
    sa.Column("face_index", sa.Integer),
    *(sa.Column(name, sa.Integer) for name in ("x1", "y1", "x2", "y2")),
    sa.Column("detector_score", sa.Float), sa.Column("label", sa.String),
    *(sa.Column(f"p_{name}", sa.Float) for name in maskjob.CLASSES),
    sa.Column("confidence", sa.Float), sa.Column("model_version", sa.String),
    sa.Column("scored_at", sa.DateTime),
)
image_predictions = sa.Table(
    "image_predictions", _views,
    sa.Column("image_id", sa.Integer), sa.Column("image_path", sa.String),
    sa.Column("camera_id", sa.String), sa.Column("captured_at", sa.DateTime),
    sa.Column("status", sa.String), sa.Column("reason", sa.String),
    sa.Column("width", sa.Integer), sa.Column("height", sa.Integer),
    sa.Column("n_faces", sa.Integer),
    *(sa.Column(f"n_{name}", sa.Integer) for name in maskjob.CLASSES),
    sa.Column("compliant", sa.Integer), sa.Column("model_version", sa.String),
    sa.Column("scored_at", sa.DateTime),
)
daily_compliance = sa.Table(
    "daily_compliance", _views,
    sa.Column("day", sa.Date), sa.Column("camera_id", sa.String),
    *(sa.Column(name, sa.Integer) for name in ("images", "no_face", "unreadable", "faces", *maskjob.CLASSES)),
    sa.Column("compliance_rate", sa.Float),
)


def safe_url(url: str | URL) -> str:
    """The URL as text with any password masked, for messages and logs."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparseable URL>"


def _parse_url(url: str | URL) -> URL:
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise MaskjobError(
            f"bad database URL {url!r}. Use sqlite:///path/to/maskjob.db or "
            "postgresql+psycopg://user:password@host:5432/dbname (setting database_url)."
        ) from None
    backend = parsed.get_backend_name()
    if backend not in {"sqlite", "postgresql"}:
        raise MaskjobError(f"database URL {safe_url(parsed)} uses {backend}; maskjob supports sqlite and postgresql.")
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is the installed driver
    return parsed


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN (pysqlite's own handling breaks
    # transactional DDL and lock upgrades).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    # Take the write lock up front: concurrent shard writers then queue on busy_timeout
    # instead of failing with "database is locked" when a read upgrades to a write.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str | URL) -> Engine:
    """An engine for ``url``; SQLite gets foreign keys, WAL, a busy timeout and its parent dir.

    ``postgresql://`` URLs use the psycopg 3 driver.
    """
    parsed = _parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    return sa.create_engine(parsed, pool_pre_ping=True)


@contextmanager
def session(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error; objects stay usable after."""
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory() as s, s.begin():
        yield s


def _unreachable(url: str | URL, exc: Exception) -> MaskjobError:
    detail = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
    return MaskjobError(
        f"cannot open database {safe_url(url)}: {detail}. Check the server is running and "
        "database_url (MASKJOB_DATABASE_URL) is right."
    )


def _alembic_config(connection: Connection | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(ALEMBIC_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest migration this code knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None, f"no migrations under {ALEMBIC_DIR}"
    return head


def _run_migration(url: str | URL, action: str, rev: str) -> str | None:
    from alembic import command
    from alembic.util import CommandError

    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            getattr(command, action)(_alembic_config(conn), rev)
    except CommandError as exc:
        raise MaskjobError(f"cannot {action} database {safe_url(url)} to {rev!r}: {exc}. "
                           "Use a revision from `maskjob db current` / alembic/versions, or 'head'/'base'.") from None
    except sa.exc.OperationalError as exc:
        raise _unreachable(url, exc) from None
    finally:
        engine.dispose()
    return current(url)


def upgrade(url: str | URL, rev: str = "head") -> str | None:
    """Migrate the database up to ``rev`` (one transaction); returns the new revision."""
    new = _run_migration(url, "upgrade", rev)
    logger.info("database %s is at revision %s", safe_url(url), new)
    return new


def downgrade(url: str | URL, rev: str) -> str | None:
    """Migrate the database down to ``rev`` (``"base"`` drops everything); returns the new revision."""
    new = _run_migration(url, "downgrade", rev)
    logger.info("database %s is at revision %s", safe_url(url), new)
    return new


def _current(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def current(url: str | URL) -> str | None:
    """The database's migration revision, or ``None`` when it has never been migrated."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return _current(conn)
    except sa.exc.OperationalError as exc:
        raise _unreachable(url, exc) from None
    finally:
        engine.dispose()


def open_database(url: str | URL) -> Engine:
    """An engine for a reachable database whose schema is at the code's head revision.

    Raises:
        MaskjobError: unreachable server, or a schema that is missing or out of date
            (the message says to run ``maskjob db upgrade``).
    """
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rev = _current(conn)
    except sa.exc.OperationalError as exc:
        engine.dispose()
        raise _unreachable(url, exc) from None
    head = head_revision()
    if rev != head:
        engine.dispose()
        state = "has no maskjob schema" if rev is None else f"is at schema revision {rev}, this maskjob needs {head}"
        raise MaskjobError(f"database {safe_url(url)} {state}. Run `maskjob db upgrade` first.")
    return engine


def upsert_ignore(table: sa.Table | type[Base], rows: Sequence[Mapping[str, Any]],
                  dialect: str | Dialect, index_elements: Sequence[str] | None = None) -> sa.Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` of ``rows`` for SQLite or PostgreSQL.

    Args:
        table: a table or ORM class.
        rows: column-name mappings; all with the same keys.
        dialect: ``"sqlite"``/``"postgresql"`` or a SQLAlchemy dialect (``conn.dialect``).
        index_elements: the unique columns the conflict is on (default: any conflict).

    Example:
        >>> stmt = upsert_ignore(Image, rows, conn.dialect)   # doctest: +SKIP
        >>> conn.execute(stmt.returning(Image.id))             # doctest: +SKIP
    """
    target = table.__table__ if isinstance(table, type) else table
    name = dialect if isinstance(dialect, str) else dialect.name
    module = {"sqlite": sqlite, "postgresql": postgresql}.get(name)
    if module is None:
        raise ValueError(f"upsert_ignore supports sqlite and postgresql, not {name}")
    return module.insert(target).values(list(rows)).on_conflict_do_nothing(index_elements=index_elements)


def insert_images_and_faces(conn: Connection | Session, images: Sequence[Mapping[str, Any]]) -> int:
    """Insert scored images and their faces; images already stored are left untouched.

    Args:
        conn: a connection or session inside the caller's transaction.
        images: ``images`` columns plus ``"faces"``: a list of ``faces`` column mappings
            (without ``image_id``/``model_version_id``, which are filled in).

    Returns:
        How many images were new; a rerun of the same batch returns 0 and writes nothing.
    """
    if not images:
        return 0
    bind = conn.connection() if isinstance(conn, Session) else conn
    rows = [{k: v for k, v in img.items() if k != "faces"} for img in images]
    stmt = upsert_ignore(Image, rows, bind.dialect, ["path", "model_version_id"])
    inserted = bind.execute(stmt.returning(Image.id, Image.path, Image.model_version_id)).all()
    by_key = {(img["path"], img["model_version_id"]): img for img in images}
    faces = [
        {**face, "image_id": image_id, "model_version_id": version_id}
        for image_id, path, version_id in inserted
        for face in by_key[(path, version_id)].get("faces", ())
    ]
    if faces:
        bind.execute(sa.insert(Face), faces)
    return len(inserted)
