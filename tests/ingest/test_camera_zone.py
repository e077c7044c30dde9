"""The zone ``maskjob ingest`` names frames in: ``--timezone``, else the camera registry, else ``site_timezone``."""

from __future__ import annotations

import sqlite3

import pytest

from maskjob.cli import main
from maskjob.config import load_settings
from tests.fixtures.streams import VTEST
from tests.ingest.helpers import names

pytestmark = pytest.mark.timeout(120)

ARGS = ("--every", "40", "--start", "2026-11-24T06:00:00Z")


def test_registered_zone_then_override_then_site_zone(tmp_path, capsys, monkeypatch, migrated_db_url):
    from maskjob.storage.cameras import add_camera
    from maskjob.storage.database import engine_for

    monkeypatch.setenv("MASKJOB_DATABASE_URL", migrated_db_url)
    monkeypatch.setenv("MASKJOB_SITE_TIMEZONE", "America/Sao_Paulo")
    settings = load_settings(config_path=None, overrides={"data_dir": tmp_path / "data"})
    with engine_for(migrated_db_url) as engine, engine.begin() as conn:
        add_camera(conn, "gate-1", timezone="Asia/Kolkata", settings=settings)
    data = str(tmp_path / "data")
    assert main(["--data-dir", data, "ingest", str(VTEST), "--camera", "gate-1", *ARGS]) == 0
    assert main(["--data-dir", data, "ingest", str(VTEST), "--camera", "gate-2", *ARGS]) == 0
    assert main(["--data-dir", data, "ingest", str(VTEST), "--camera", "gate-3", *ARGS,
                 "--timezone", "Pacific/Chatham"]) == 0
    out = capsys.readouterr().out
    assert "(Asia/Kolkata)" in out and "(America/Sao_Paulo)" in out and "(Pacific/Chatham)" in out
    assert names(tmp_path / "data" / "inbox") == {
        "gate-1/2026-11-24/20261124T113000+0530.jpg", "gate-1/2026-11-24/20261124T113040+0530.jpg",
        "gate-2/2026-11-24/20261124T030000-0300.jpg", "gate-2/2026-11-24/20261124T030040-0300.jpg",
        "gate-3/2026-11-24/20261124T194500+1345.jpg", "gate-3/2026-11-24/20261124T194540+1345.jpg",
    }


def test_an_unmigrated_database_falls_back_to_site_timezone(tmp_path, capsys, monkeypatch):
    db = tmp_path / "empty.db"
    db.touch()
    monkeypatch.setenv("MASKJOB_DATABASE_URL", f"sqlite:///{db}")
    assert main(["-v", "--data-dir", str(tmp_path / "data"), "ingest", str(VTEST), "--camera", "c", *ARGS]) == 0
    captured = capsys.readouterr()
    assert "(UTC)" in captured.out and "using site_timezone" in captured.err
    # Looked up only: no schema was created.
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
