"""The camera registry on SQLite and PostgreSQL, and ``maskjob cameras add|list|set``."""

from __future__ import annotations

import json
from zoneinfo import ZoneInfo

import pytest

from maskjob.cli import main
from maskjob.config import load_settings
from maskjob.errors import MaskjobError
from maskjob.storage import database
from maskjob.storage.cameras import (
    add_camera,
    camera_zones,
    ensure_cameras,
    get_camera,
    list_cameras,
    set_camera,
)


@pytest.fixture
def settings(tmp_path):
    return load_settings(overrides={"data_dir": tmp_path, "site_timezone": "Pacific/Auckland",
                                    "default_expected_frames_per_hour": 60.0}, environ={})


def test_add_list_set_and_defaults(migrated_db_url, settings):
    engine = database.open_database(migrated_db_url)
    try:
        with engine.begin() as conn:
            gate = add_camera(conn, "gate", display_name="Gate 1", timezone="Asia/Kolkata", compliance_target=0.75,
                              settings=settings)
            lobby = add_camera(conn, "lobby", settings=settings)
        assert (gate.timezone, gate.compliance_target, gate.display_name, gate.auto_registered) == \
            ("Asia/Kolkata", 0.75, "Gate 1", False)
        assert (lobby.timezone, lobby.compliance_target, lobby.expected_frames_per_hour) == \
            ("Pacific/Auckland", 0.9, 60.0)
        assert lobby.created_at.tzinfo is not None and lobby.created_at == lobby.updated_at
        with engine.begin() as conn:
            changed = set_camera(conn, "lobby", site="North", expected_frames_per_hour=0, timezone="UTC")
            cleared = set_camera(conn, "gate", display_name=None)
        assert (changed.site, changed.expected_frames_per_hour, changed.timezone) == ("North", None, "UTC")
        assert changed.updated_at >= changed.created_at and cleared.display_name is None
        with engine.connect() as conn:
            assert [c.camera_id for c in list_cameras(conn)] == ["gate", "lobby"]
            assert get_camera(conn, "nope") is None
            zones = camera_zones(conn, settings)
        assert zones["gate"] == ZoneInfo("Asia/Kolkata") and zones["lobby"] == ZoneInfo("UTC")
        assert zones["never-seen"] == ZoneInfo("Pacific/Auckland")  # the site zone for unknown cameras
    finally:
        engine.dispose()


@pytest.mark.parametrize("changes, message", [
    ({"timezone": "Mars/Olympus"}, "IANA"),
    ({"timezone": ""}, "IANA"),
    ({"compliance_target": 1.5}, "compliance target"),
    ({"compliance_target": float("nan")}, "compliance target"),
    ({"expected_frames_per_hour": -1.0}, "frames per hour"),
    ({"expected_frames_per_hour": float("inf")}, "frames per hour"),
])
def test_bad_values_are_refused(migrated_db_url, settings, changes, message):
    engine = database.open_database(migrated_db_url)
    try:
        with engine.begin() as conn:
            add_camera(conn, "gate", settings=settings)
        with pytest.raises(MaskjobError, match=message), engine.begin() as conn:
            add_camera(conn, "other", settings=settings, **changes)
        with pytest.raises(MaskjobError, match=message), engine.begin() as conn:
            set_camera(conn, "gate", **changes)
        with engine.connect() as conn:
            assert [c.camera_id for c in list_cameras(conn)] == ["gate"]
            assert get_camera(conn, "gate").timezone == "Pacific/Auckland"
    finally:
        engine.dispose()


def test_duplicate_and_unknown_ids(migrated_db_url, settings):
    engine = database.open_database(migrated_db_url)
    try:
        with engine.begin() as conn:
            add_camera(conn, "gate", settings=settings)
        with pytest.raises(MaskjobError, match="already registered"), engine.begin() as conn:
            add_camera(conn, "gate", settings=settings)
        with pytest.raises(MaskjobError, match="no camera 'nope'"), engine.begin() as conn:
            set_camera(conn, "nope", site="x")
        with pytest.raises(MaskjobError, match="cannot change"), engine.begin() as conn:
            set_camera(conn, "gate", camera_id="other")
    finally:
        engine.dispose()


def test_ensure_cameras_registers_only_unknown_ones(migrated_db_url, settings):
    engine = database.open_database(migrated_db_url)
    try:
        with engine.begin() as conn:
            add_camera(conn, "gate", timezone="Asia/Kolkata", settings=settings)
            assert ensure_cameras(conn, ["lobby", "gate", "yard", "lobby"], settings) == ["lobby", "yard"]
            assert ensure_cameras(conn, ["lobby", "yard"], settings) == []
            assert ensure_cameras(conn, [], settings) == []
        with engine.connect() as conn:
            cams = {c.camera_id: c for c in list_cameras(conn)}
        assert (cams["gate"].timezone, cams["gate"].auto_registered) == ("Asia/Kolkata", False)
        assert (cams["yard"].timezone, cams["yard"].auto_registered, cams["yard"].expected_frames_per_hour) == \
            ("Pacific/Auckland", True, 60.0)
        with engine.begin() as conn:  # editing an auto-registered camera makes it a hand-set one
            assert not set_camera(conn, "yard", site="Back").auto_registered
    finally:
        engine.dispose()


@pytest.mark.timeout(60)
def test_cli_cameras_add_list_set(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MASKJOB_SITE_TIMEZONE", "America/Chicago")
    url = f"sqlite:///{tmp_path / 'cams.db'}"
    assert main(["db", "upgrade", "--database-url", url]) == 0
    capsys.readouterr()
    assert main(["cameras", "list", "--database-url", url]) == 0
    assert "no cameras registered" in capsys.readouterr().out
    assert main(["cameras", "add", "gate", "--name", "Gate 1", "--timezone", "Asia/Kolkata", "--expected-fph", "120",
                 "--target", "0.8", "--database-url", url]) == 0
    assert "zone Asia/Kolkata" in capsys.readouterr().out
    assert main(["cameras", "add", "lobby", "--database-url", url]) == 0
    assert main(["cameras", "set", "lobby", "--site", "North", "--json", "--database-url", url]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["site"] == "North"
    assert main(["cameras", "list", "--database-url", url]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["camera", "name", "site", "zone", "frames/h", "target", "auto"]
    assert table[1].split() == ["gate", "Gate", "1", "-", "Asia/Kolkata", "120", "0.8", "no"]
    assert table[2].split() == ["lobby", "-", "North", "America/Chicago", "-", "0.9", "no"]
    assert main(["cameras", "list", "--json", "--database-url", url]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [c["camera_id"] for c in listed] == ["gate", "lobby"] and listed[0]["expected_frames_per_hour"] == 120


@pytest.mark.parametrize("argv, message", [
    (["cameras", "add", "gate"], "already registered"),
    (["cameras", "add", "x", "--timezone", "Nowhere/Town"], "IANA"),
    (["cameras", "add", "x", "--target", "2"], "compliance target"),
    (["cameras", "set", "nope", "--site", "x"], "no camera 'nope'"),
    (["cameras", "set", "gate"], "nothing to change"),
])
def test_cli_cameras_errors_are_clear(tmp_path, capsys, argv, message):
    url = f"sqlite:///{tmp_path / 'cams.db'}"
    assert main(["db", "upgrade", "--database-url", url]) == 0
    assert main(["cameras", "add", "gate", "--database-url", url]) == 0
    capsys.readouterr()
    assert main([*argv, "--database-url", url]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_cameras_need_a_migrated_database(tmp_path, capsys):
    assert main(["cameras", "list", "--database-url", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "maskjob db upgrade" in capsys.readouterr().err
