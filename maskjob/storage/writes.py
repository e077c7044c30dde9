"""Batched, idempotent writes: ``INSERT ... ON CONFLICT DO NOTHING`` on both databases.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Session

from maskjob.storage.schema import Base, Face, Image

__all__ = ["upsert_ignore", "insert_images_and_faces"]


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
