"""Fixtures shared by the storage tests."""

from __future__ import annotations

from typing import Iterator

import pytest
import sqlalchemy as sa

from maskjob.storage import database


@pytest.fixture
def engine(migrated_db_url: str) -> Iterator[sa.Engine]:
    """An engine on a database migrated to head (SQLite or PostgreSQL, as ``migrated_db_url``);
    modules that need rows in it first define their own."""
    engine = database.open_database(migrated_db_url)
    try:
        yield engine
    finally:
        engine.dispose()
