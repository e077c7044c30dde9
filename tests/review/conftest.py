"""Shared fixtures of the review tests: a small scored site built with the ORM (textured frames,
known boxes, a hostile camera name), users of every role, a TestClient login, and a real
``maskjob review serve`` process on a free port."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage

from tests.fixtures.net import free_port

HOSTILE = "<script>alert('x\"1')</script>"
PASSWORD = "correct horse battery staple"
USERS = {"rev": "reviewer", "view": "viewer", "adm": "admin"}
DAY = datetime(2026, 11, 24)
# One line per frame: camera and the (label, confidence) of its faces.
FRAMES = (
    ("cam-a", (("with_mask", 0.52), ("without_mask", 0.95))),
    ("cam-a", (("partial_mask", 0.61),)),
    ("cam-b", (("with_mask", 0.99), ("without_mask", 0.70))),
    ("cam-b", (("with_mask", 0.58), ("partial_mask", 0.91))),
    (HOSTILE, (("without_mask", 0.40),)),
)


@dataclass
class ReviewSite:
    url: str
    engine: object
    settings: object
    inbox: Path
    face_ids: list[int] = field(default_factory=list)
    hostile_face: int = 0


def _frame(rng: np.random.Generator) -> np.ndarray:
    """A textured 240x320 frame: noise gives the blur check high frequencies to remove."""
    return rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)


def build_review_site(db_url: str, settings_factory, tmp_path: Path, **settings_changes: object) -> ReviewSite:
    """A migrated database with a champion, ``FRAMES`` scored into it (frames on disk), and ``USERS``."""
    from maskjob.review.auth import add_user
    from maskjob.storage import database, schema

    database.upgrade(db_url)
    engine = database.make_engine(db_url)
    inbox = tmp_path / "inbox"
    settings = settings_factory(inbox_dir=inbox, database_url=db_url, review_secure_cookies=True,
                                review_secret="k" * 40, **settings_changes)
    rng = np.random.default_rng(12)
    site = ReviewSite(db_url, engine, settings, inbox)
    with database.session(engine) as s:
        model = schema.ModelVersion(version="cnn-0001", arch="cnn", checkpoint_path="/models/cnn.pt",
                                    checkpoint_sha256="a" * 64, metrics={}, test_macro_f1=0.9, diverged=False,
                                    created_at=datetime(2026, 11, 1), status="champion")
        s.add(model)
        s.flush()
        images = []
        for n, (camera, faces) in enumerate(FRAMES):
            when = DAY + timedelta(hours=8 + n)
            rel = f"{'hostile' if camera == HOSTILE else camera}/{when:%Y%m%dT%H%M%S}.jpg"
            path = inbox / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            PILImage.fromarray(_frame(rng)).save(path, quality=95)
            image = schema.Image(path=rel, camera_id=camera, captured_at=when, width=320, height=240, status="ok",
                                 n_faces=len(faces), timezone="UTC", utc_offset_s=0, local_day=when.date(),
                                 model_version_id=model.id, scored_at=DAY + timedelta(days=1))
            for k, (label, conf) in enumerate(faces):
                rest = (1 - conf) / 2
                image.faces.append(schema.Face(
                    face_index=k, x1=40 + 120 * k, y1=60, x2=120 + 120 * k, y2=160, detector_score=0.9, label=label,
                    p_with_mask=conf if label == "with_mask" else rest,
                    p_without_mask=conf if label == "without_mask" else rest,
                    p_partial_mask=conf if label == "partial_mask" else rest,
                    confidence=conf, model_version_id=model.id))
            s.add(image)
            images.append((camera, image))
        s.flush()
        for camera, image in images:
            site.face_ids += [f.id for f in image.faces]
            if camera == HOSTILE:
                site.hostile_face = image.faces[0].id
    for name, role in USERS.items():
        add_user(engine, name, role, PASSWORD)
    return site


@pytest.fixture
def review_site(migrated_db_url, settings_factory, tmp_path) -> Iterator[ReviewSite]:
    """:func:`build_review_site` on SQLite and PostgreSQL."""
    site = build_review_site(migrated_db_url, settings_factory, tmp_path)
    yield site
    site.engine.dispose()


def login_token(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field in the page"
    return match[1]


def page_csrf(html: str) -> str:
    match = re.search(r'data-csrf="([^"]+)"', html)
    assert match, "no CSRF token in the queue page"
    return match[1]


def log_in(client, username: str, password: str = PASSWORD) -> httpx.Response:
    """GET the login form and POST it (no redirect followed)."""
    token = login_token(client.get("/login").text)
    return client.post("/login", data={"username": username, "password": password, "csrf": token},
                       follow_redirects=False)


@pytest.fixture
def client_for(review_site):
    """Factory: ``client_for("rev")`` -> a logged-in Starlette TestClient (https, so Secure cookies
    travel) and the page's CSRF token; ``client_for(None)``: anonymous."""
    from starlette.testclient import TestClient

    from maskjob.review.app import create_app

    app = create_app(review_site.settings, review_site.engine)
    clients = []

    def make(username: str | None):
        client = TestClient(app, base_url="https://testserver", raise_server_exceptions=False)
        clients.append(client)
        if username is None:
            return client, ""
        assert log_in(client, username).status_code == 303
        return client, page_csrf(client.get("/").text)

    yield make
    for client in clients:
        client.close()


@dataclass(frozen=True)
class Server:
    base_url: str
    process: subprocess.Popen


def write_config(path: Path, settings, **extra: object) -> Path:
    """A TOML file with the settings a ``maskjob review serve`` process needs."""
    values = {"data_dir": str(settings.data_dir), "inbox_dir": str(settings.inbox_dir),
              "database_url": settings.database_url, "blur_faces": settings.blur_faces,
              "review_secure_cookies": settings.review_secure_cookies, **extra}

    def toml(value: object) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return repr(value)
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

    path.write_text("".join(f"{k} = {toml(v)}\n" for k, v in values.items()), encoding="utf-8")
    return path


def start_server(config: Path, log: Path, timeout_s: float = 60.0) -> Server:
    """``maskjob review serve`` on a free loopback port, once ``/healthz`` answers."""
    port = free_port()
    env = {**os.environ, "MASKJOB_CONFIG": str(config)}
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "maskjob", "review", "serve", "--host", "127.0.0.1",
                                    "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the review server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1.0).status_code == 200:
                return Server(base, process)
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError(f"the review server did not answer in {timeout_s} s:\n{log.read_text()[-3000:]}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()

