"""Review-page accounts: Argon2id hashes, users on both databases, the login limiter, the
session key file, and the ``maskjob review user`` commands."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import pytest

from maskjob.errors import MaskjobError
from maskjob.review import auth

PW = "a long enough password"


def test_hash_is_argon2id_phc_with_parameters_and_random_salt() -> None:
    first, second = auth.hash_password(PW), auth.hash_password(PW)
    assert first.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert first != second  # a fresh salt each time
    assert PW not in first
    assert auth.verify_password(PW, first) and auth.verify_password(PW, second)
    assert not auth.verify_password(PW + "x", first)
    assert not auth.verify_password(PW, "$argon2id$v=19$m=65536,t=3,p=4$bad$bad")
    assert not auth.verify_password(PW, "plain text in the column")


def test_users_add_list_disable_authenticate(migrated_db_url: str) -> None:
    from maskjob.storage import database

    engine = database.make_engine(migrated_db_url)
    try:
        ana = auth.add_user(engine, "ana", "reviewer", PW)
        auth.add_user(engine, "bo", "viewer", PW)
        assert (ana.username, ana.role, ana.disabled, ana.can_write) == ("ana", "reviewer", False, True)
        assert [(u.username, u.role) for u in auth.list_users(engine)] == [("ana", "reviewer"), ("bo", "viewer")]
        assert auth.authenticate(engine, "ana", PW).role == "reviewer"
        assert auth.authenticate(engine, "ana", "wrong password!") is None
        assert auth.authenticate(engine, "nobody", PW) is None
        assert not auth.authenticate(engine, "bo", PW).can_write
        with pytest.raises(MaskjobError, match="already exists"):
            auth.add_user(engine, "ana", "admin", PW)
        assert auth.add_user(engine, "ana", "admin", PW + "2", replace=True).role == "admin"
        assert auth.authenticate(engine, "ana", PW) is None and auth.authenticate(engine, "ana", PW + "2")
        assert auth.disable_user(engine, "bo").disabled
        assert auth.authenticate(engine, "bo", PW) is None
        with pytest.raises(MaskjobError, match="no user 'zed'"):
            auth.disable_user(engine, "zed")
        with pytest.raises(MaskjobError, match="unknown role"):
            auth.add_user(engine, "cy", "root", PW)
        with pytest.raises(MaskjobError, match="8 to 1024 characters"):
            auth.add_user(engine, "cy", "viewer", "short")
        with pytest.raises(MaskjobError, match="not allowed"):
            auth.add_user(engine, "<b>x</b>", "viewer", PW)
    finally:
        engine.dispose()


def test_limiter_counts_failures_per_user_and_address_in_a_window() -> None:
    now = [1000.0]
    limiter = auth.LoginLimiter(attempts=3, window_s=60, clock=lambda: now[0])
    for _ in range(3):
        assert limiter.retry_after_s("Ana", "10.0.0.1") == 0
        limiter.failed("Ana", "10.0.0.1")
    assert limiter.retry_after_s("ana", "10.0.0.1") == pytest.approx(60)  # names compare case-insensitively
    assert limiter.retry_after_s("ana", "10.0.0.2") == 0  # another address
    assert limiter.retry_after_s("bo", "10.0.0.1") == 0  # another user
    now[0] += 30
    assert limiter.retry_after_s("ana", "10.0.0.1") == pytest.approx(30)
    now[0] += 30.5
    assert limiter.retry_after_s("ana", "10.0.0.1") == 0  # the window slid past the failures
    limiter.failed("ana", "10.0.0.1")
    limiter.succeeded("ana", "10.0.0.1")
    limiter.failed("ana", "10.0.0.1")
    limiter.failed("ana", "10.0.0.1")
    assert limiter.retry_after_s("ana", "10.0.0.1") == 0  # a success forgot the earlier one


def test_session_key_file_is_created_once_private(settings_factory, tmp_path: Path) -> None:
    settings = settings_factory()
    key = auth.session_secret(settings)
    path = Path(settings.data_dir) / "review_secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key) >= 32 and auth.session_secret(settings) == key
    path.chmod(0o644)
    with pytest.raises(MaskjobError, match="chmod 600") as info:
        auth.session_secret(settings)
    assert key not in str(info.value)
    assert auth.session_secret(settings_factory(review_secret="s" * 40)) == "s" * 40


def test_user_commands(migrated_db_url: str, monkeypatch, capsys, caplog) -> None:
    from maskjob.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO(PW + "\n"))
    assert main(["-v", "review", "user", "add", "ana", "--role", "viewer", "--password-stdin",
                 "--database-url", migrated_db_url]) == 0
    assert main(["review", "user", "list", "--database-url", migrated_db_url]) == 0
    assert main(["review", "user", "disable", "ana", "--database-url", migrated_db_url]) == 0
    assert main(["review", "user", "disable", "zed", "--database-url", migrated_db_url]) == 2
    out, err = capsys.readouterr()
    assert "added user ana (viewer)" in out and "ana  viewer    enabled" in out and "disabled user ana" in out
    assert "maskjob: error: no user 'zed'" in err and "Traceback" not in err
    assert PW not in out + err + caplog.text
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["review", "user", "add", "bo", "--password-stdin", "--database-url", migrated_db_url]) == 2
    assert "no password on stdin" in capsys.readouterr().err


def test_serve_refuses_a_database_without_the_schema(tmp_path: Path, capsys) -> None:
    from maskjob.cli import main

    url = f"sqlite:///{tmp_path / 'empty.db'}"
    assert main(["--data-dir", str(tmp_path), "review", "serve", "--port", "0", "--database-url", url]) == 2
    out, err = capsys.readouterr()
    assert "has no maskjob schema. Run `maskjob db upgrade` first." in err and "Traceback" not in err
    assert "review page on" not in out
