"""Batched, idempotent writes: ``INSERT ... ON CONFLICT DO NOTHING`` on both databases.

One bad row never fails a batch. Every image row is first made storable on both databases
(:func:`storable_image`): text columns hold any length, but PostgreSQL refuses NUL in text and
neither database takes text that is not UTF-8 (file names with undecodable bytes), so those
characters are written as ``\\xNN``; an over-long camera id is shortened; and the row's
``reason`` says what was changed. If the database still refuses the batch because of one row
(a value out of range, a broken constraint), the batch is retried row by row in savepoints and
a row that still fails is stored as ``unreadable`` without faces, with the database's error as
its reason. Errors that are not about a row (disk full, connection lost) still fail the batch.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from datetime import datetime
from itertools import groupby
from typing import Any, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Session

from maskjob.storage.schema import Base, Face, Image, face_summary, path_key, raw_text_bytes
from maskjob.timeutil import local_facts, to_utc, zone

__all__ = [
    "MAX_INDEXED_TEXT_BYTES", "MAX_REASON_CHARS", "insert_images_and_faces", "insert_scored_images", "path_key",
    "storable_image", "storable_text", "upsert_ignore",
]

logger = logging.getLogger(__name__)

# A PostgreSQL btree entry holds at most 2704 bytes; camera_id leads ix_images_camera_id_captured_at.
# (A camera id is a folder name: at most 255 bytes on common file systems.)
MAX_INDEXED_TEXT_BYTES = 2000
# Reasons are for people and reports; a longer one (a huge exception text) is cut.
MAX_REASON_CHARS = 4000

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


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
    return _dialect_insert(table, dialect).values(list(rows)).on_conflict_do_nothing(index_elements=index_elements)


def _dialect_insert(table: sa.Table | type[Base], dialect: str | Dialect) -> Any:
    """The dialect's own ``INSERT`` (the one with ``on_conflict_do_nothing``) for SQLite or PostgreSQL."""
    target = table.__table__ if isinstance(table, type) else table
    name = dialect if isinstance(dialect, str) else dialect.name
    module = {"sqlite": sqlite, "postgresql": postgresql}.get(name)
    if module is None:
        raise ValueError(f"upsert_ignore supports sqlite and postgresql, not {name}")
    return module.insert(target)


def storable_text(text: str) -> tuple[str, str | None]:
    """``text`` as both databases store it, and what was changed (``None``: nothing).

    NUL (PostgreSQL text refuses it) and bytes that are not UTF-8 (the lone surrogates Python
    gives undecodable file-name bytes; no database driver encodes them) become ``\\xNN``:
    ``"cam<NUL>/a.jpg"`` is stored as ``"cam\\x00/a.jpg"``, noting "1 NUL byte written as \\x00".
    """
    fixed = text
    notes = []
    nuls = fixed.count("\0")
    if nuls:
        notes.append(f"{nuls} NUL byte{'s' if nuls > 1 else ''} written as \\x00")
        fixed = fixed.replace("\0", "\\x00")
    try:
        fixed.encode("utf-8")
    except UnicodeEncodeError:
        decoded = raw_text_bytes(fixed).decode("utf-8", "backslashreplace")
        notes.append("bytes that are not UTF-8 written as \\xNN")
        fixed = decoded
    return fixed, "; ".join(notes) or None


def _shorten(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes, ending in ``~`` and 16 hex digits of
    the whole value's sha256 (so distinct long values stay distinct)."""
    tag = "~" + hashlib.sha256(raw_text_bytes(text)).hexdigest()[:16]
    head = text.encode("utf-8")[: max_bytes - len(tag)].decode("utf-8", "ignore")
    return head + tag


def _cut_reason(reason: str) -> str:
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    return f"{reason[:MAX_REASON_CHARS]}... [{len(reason) - MAX_REASON_CHARS} more characters]"


def _fill_local_facts(row: dict[str, Any]) -> None:
    """``local_day``/``utc_offset_s`` from ``captured_at`` in ``timezone`` when not given
    (a row without a ``timezone`` is taken as UTC); ``captured_at`` as aware UTC."""
    captured = row.get("captured_at")
    if not isinstance(captured, datetime):
        return
    row["captured_at"] = to_utc(captured)
    row.setdefault("timezone", "UTC")
    if row.get("local_day") is None or row.get("utc_offset_s") is None:
        row["local_day"], row["utc_offset_s"] = local_facts(captured, zone(row["timezone"]))


def _fill_face_counts(row: dict[str, Any]) -> None:
    """The images columns that summarise the row's ``"faces"`` (:func:`~maskjob.storage.schema.face_summary`:
    counts per label since migration 0005, confidence extremes since 0006), where the caller gave none."""
    faces = row.get("faces") or ()
    summary = face_summary([(face.get("label"), face.get("confidence")) for face in faces])
    for column, value in summary.items():
        if row.get(column) is None:
            row[column] = value


def storable_image(image: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of an ``images`` row (``"faces"`` kept) that both databases store as it is.

    ``path_key`` is filled in from the path as given (so a file name with undecodable bytes
    keeps a key of its own); ``path``, ``camera_id`` and ``reason`` lose NUL and non-UTF-8
    bytes (:func:`storable_text`); a ``camera_id`` over :data:`MAX_INDEXED_TEXT_BYTES` is
    shortened; a ``content_sha256`` that is not a sha256 hex digest is dropped (``None``); a
    ``reason`` over :data:`MAX_REASON_CHARS` is cut. Each change is appended to ``reason``.
    Missing camera-local facts (``local_day``, ``utc_offset_s``) are computed from
    ``captured_at`` in the row's ``timezone`` (UTC when the row names none). Face counts the
    caller left out (``n_faces``, ``n_with_mask``, ``n_without_mask``, ``n_partial_mask``) are
    counted from ``"faces"``.
    """
    row = dict(image)
    notes: list[str] = []
    _fill_face_counts(row)
    if row.get("path_key") is None:
        row["path_key"] = path_key(row["path"])
    _fill_local_facts(row)
    for column in ("path", "camera_id", "reason"):
        value = row.get(column)
        if isinstance(value, str):
            row[column], note = storable_text(value)
            if note and column != "reason":
                notes.append(f"{column}: {note}")
    camera = row.get("camera_id")
    if isinstance(camera, str) and len(camera.encode("utf-8")) > MAX_INDEXED_TEXT_BYTES:
        notes.append(f"camera_id shortened from {len(camera)} characters")
        row["camera_id"] = _shorten(camera, MAX_INDEXED_TEXT_BYTES)
    digest = row.get("content_sha256")
    if digest is not None and not (isinstance(digest, str) and _SHA256_HEX.fullmatch(digest)):
        notes.append(f"content_sha256 {str(digest)[:80]!r} is not a sha256 hex digest: not stored")
        row["content_sha256"] = None
    if notes:
        row["reason"] = "; ".join(filter(None, [row.get("reason"), "stored with changes: " + "; ".join(notes)]))
    if isinstance(row.get("reason"), str):
        row["reason"] = _cut_reason(row["reason"])
    return row


# Columns with a Python-side default (filled in per row by SQLAlchemy), by table.
_DEFAULTED = {table.name: {c.name for c in table.c if c.default is not None and not c.primary_key}
              for table in (Image.__table__, Face.__table__)}


def _unnest_insert(table: sa.Table, columns: tuple[str, ...]) -> Any:
    """PostgreSQL: ``INSERT INTO table (columns) SELECT * FROM unnest(:col1, :col2, ...) WITH
    ORDINALITY ORDER BY ordinality``, one array parameter per column.

    Its text does not depend on the number of rows, so psycopg keeps it parsed and prepared
    on the server (a multi-row VALUES text of another length is parsed and planned anew), and
    the rows are inserted, and given ids, in the arrays' order.
    """
    arrays = [sa.bindparam(f"many_{c}", type_=postgresql.ARRAY(table.c[c].type)) for c in columns]
    rows = sa.func.unnest(*arrays).table_valued(*columns, with_ordinality="ordinality").render_derived(name="u")
    return postgresql.insert(table).from_select(list(columns), sa.select(*(rows.c[c] for c in columns))
                                                .order_by(rows.c.ordinality))


def _insert_many(bind: Connection, table: sa.Table, rows: list[dict[str, Any]],
                 conflict: Sequence[str] | None = None, returning: Sequence[str] = ()) -> sa.CursorResult[Any]:
    """One INSERT of ``rows`` (all with the same keys), skipping conflicts on ``conflict`` when given.

    PostgreSQL gets :func:`_unnest_insert` when the rows name every column that has a Python
    default (from_select cannot compute those); otherwise, and on SQLite, an executemany that
    SQLAlchemy's "insertmanyvalues" sends as one multi-row INSERT, compiled once and cached.
    """
    columns = tuple(rows[0])
    if bind.dialect.name == "postgresql" and _DEFAULTED[table.name] <= set(columns):
        stmt = _unnest_insert(table, columns)
        params: Any = {f"many_{c}": [row[c] for row in rows] for c in columns}
    else:
        stmt, params = _dialect_insert(table, bind.dialect), rows
    if conflict is not None:
        stmt = stmt.on_conflict_do_nothing(index_elements=conflict)
    if returning:
        stmt = stmt.returning(*(table.c[c] for c in returning))
    return bind.execute(stmt, params)


def _insert(bind: Connection, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Insert storable rows and their faces; the rows that were new, in order, with their ``id``.

    Two statements for a batch (:func:`_insert_many`): the images, returning their ids, then
    all their faces; PostgreSQL's statement-level triggers run once per batch. Consecutive rows
    with the same columns go together (a column a row leaves out gets its default), so ids
    follow the rows' order, as the latest-scoring tie-break expects.
    """
    images = Image.__table__
    ids: dict[tuple[str, int], int] = {}
    for _, run in groupby(rows, key=lambda row: row.keys()):
        columns = [{k: v for k, v in row.items() if k != "faces"} for row in run]
        result = _insert_many(bind, images, columns, ["path_key", "model_version_id"],
                              ["id", "path_key", "model_version_id"])
        ids.update(((key, version_id), image_id) for image_id, key, version_id in result)
    stored = []
    for row in rows:  # a key twice in one batch: only its first row was inserted
        image_id = ids.pop((row["path_key"], row["model_version_id"]), None)
        if image_id is not None:
            stored.append({**row, "id": image_id})
    faces = [
        {**face, "image_id": row["id"], "model_version_id": row["model_version_id"]}
        for row in stored
        for face in row.get("faces", ())
    ]
    for _, run in groupby(faces, key=lambda face: face.keys()):
        if bind.dialect.name == "sqlite":
            _sqlite_executemany(bind, Face.__table__, list(run))
        else:
            _insert_many(bind, Face.__table__, list(run))
    return stored


@functools.lru_cache(maxsize=64)
def _sqlite_insert_text(table: sa.Table, columns: frozenset[str]) -> tuple[str, tuple[str, ...]]:
    """The SQLite ``INSERT`` of ``columns`` with positional parameters, compiled once by
    SQLAlchemy, and the order its parameters take the columns in."""
    stmt = sqlite.insert(table).values({c: sa.bindparam(c, type_=table.c[c].type) for c in columns})
    compiled = stmt.compile(dialect=sqlite.dialect(paramstyle="qmark"))
    return str(compiled), tuple(compiled.positiontup or ())


def _sqlite_executemany(bind: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """SQLite: ``rows`` (the same keys, columns whose values the driver takes as they are:
    numbers and text) in one driver-level executemany of a statement compiled once, without
    SQLAlchemy's per-row parameter processing (the faces of a batch: most of its rows)."""
    text, order = _sqlite_insert_text(table, frozenset(rows[0]))
    bind.exec_driver_sql(text, [tuple(row[c] for c in order) for row in rows])


def _row_error(exc: BaseException) -> bool:
    """Whether the database refused a value of a row (not the connection, disk or schema)."""
    if isinstance(exc, (sa.exc.DataError, sa.exc.IntegrityError)):
        return True
    if isinstance(exc, sa.exc.DBAPIError):  # OperationalError (disk full, locked, gone), ...
        return False
    if isinstance(exc, sa.exc.StatementError):  # the driver could not send a value
        exc = exc.orig
    return isinstance(exc, (ValueError, TypeError, ArithmeticError))


def _error_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {lines[0] if lines else ''}"[:500]


def _unstorable(row: Mapping[str, Any], exc: BaseException) -> dict[str, Any]:
    """The row the database refused, as an ``unreadable`` row without faces saying why."""
    keep = ("path", "path_key", "camera_id", "captured_at", "model_version_id", "scoring_run_id", "scored_at",
            "timezone", "utc_offset_s", "local_day")
    reason = f"could not be stored as scored ({_error_line(exc)})"
    if row.get("reason"):
        reason = f"{reason}; {row['reason']}"
    return storable_image({**{k: row[k] for k in keep}, "content_sha256": None, "width": None, "height": None,
                           "status": "unreadable", **face_summary([]), "reason": storable_text(reason)[0],
                           "faces": []})


def insert_scored_images(conn: Connection | Session, images: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Insert scored images and their faces, each made storable; images already stored are
    left untouched.

    Args:
        conn: a connection or session inside the caller's transaction.
        images: ``images`` columns plus ``"faces"``: a list of ``faces`` column mappings
            (without ``image_id``/``model_version_id``, which are filled in). ``path_key`` may
            be left out.

    Returns:
        The rows that were new, as stored (:func:`storable_image`, or the ``unreadable`` row
        that replaced one the database refused), each with its ``id`` and ``"faces"``.

    Raises:
        sqlalchemy.exc.SQLAlchemyError, OSError: errors that are not about one row.
    """
    if not images:
        return []
    bind = conn.connection() if isinstance(conn, Session) else conn
    rows = [storable_image(img) for img in images]
    try:
        with bind.begin_nested():
            return _insert(bind, rows)
    except Exception as exc:  # sorted by _row_error; others re-raised
        if not _row_error(exc):
            raise
        logger.warning("the database refused a row of a batch of %d (%s); storing them one by one",
                       len(rows), _error_line(exc))
    stored: list[dict[str, Any]] = []
    for row in rows:
        try:
            with bind.begin_nested():
                stored += _insert(bind, [row])
        except Exception as exc:  # sorted by _row_error; others re-raised
            if not _row_error(exc):
                raise
            logger.warning("storing %s as unreadable: %s", row["path"][:300], _error_line(exc))
            with bind.begin_nested():
                stored += _insert(bind, [_unstorable(row, exc)])
    return stored


def insert_images_and_faces(conn: Connection | Session, images: Sequence[Mapping[str, Any]]) -> int:
    """:func:`insert_scored_images`, returning how many images were new.

    A rerun of the same batch returns 0 and writes nothing.
    """
    return len(insert_scored_images(conn, images))
