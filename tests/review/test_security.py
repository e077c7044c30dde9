"""The review page's defences, through Starlette's TestClient on SQLite and PostgreSQL: no
anonymous or cross-site writes, CSRF tokens, escaping, login rate limit, viewers read-only
with blurred faces, clear 4xx answers for bad input, and the session cookie's flags."""

from __future__ import annotations

import io
import re
import time

import numpy as np
import sqlalchemy as sa
from PIL import Image as PILImage

from tests.review.conftest import HOSTILE, PASSWORD, log_in


def _reviews(site) -> int:
    with site.engine.connect() as conn:
        return conn.execute(sa.text("SELECT COUNT(*) FROM face_reviews")).scalar_one()


def _decide(client, csrf: str, face_id: int, label: str = "without_mask", **headers: str):
    return client.post("/review", data={"face_id": str(face_id), "label": label, "stratum": "uncertain"},
                       headers={"x-csrf-token": csrf, **headers})


def test_anonymous_cannot_write_or_see(review_site, client_for) -> None:
    client, _ = client_for(None)
    face = review_site.face_ids[0]
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    for path in ("/review", "/undo"):
        answer = client.post(path, data={"face_id": str(face), "label": "with_mask"})
        assert answer.status_code == 401 and "log in first" in answer.json()["error"]
    assert client.get(f"/face/{face}/crop.jpg").status_code == 401
    assert client.get("/next").status_code == 401
    assert _reviews(review_site) == 0
    assert client.get("/healthz").text == "ok"


def test_forged_cross_site_posts_are_refused(review_site, client_for) -> None:
    client, csrf = client_for("rev")
    face = review_site.face_ids[0]
    assert client.post("/review", data={"face_id": str(face), "label": "with_mask"}).status_code == 403  # no token
    assert _decide(client, "x" * len(csrf), face).status_code == 403  # a wrong one
    assert _decide(client, csrf, face, origin="https://evil.example").status_code == 403
    assert _decide(client, csrf, face, **{"sec-fetch-site": "cross-site"}).status_code == 403
    assert _decide(client, csrf, face, origin="null").status_code == 403
    other, other_csrf = client_for("adm")
    assert _decide(client, other_csrf, face).status_code == 403  # another session's token
    assert client.post("/logout", data={}).status_code == 403
    assert _reviews(review_site) == 0
    answer = _decide(client, csrf, face, origin="https://testserver", **{"sec-fetch-site": "same-origin"})
    assert answer.status_code == 200 and answer.json()["review_id"] > 0
    assert _reviews(review_site) == 1
    login_form = client_for(None)[0]
    login_form.get("/login")
    forged = login_form.post("/login", data={"username": "rev", "password": PASSWORD, "csrf": "forged"},
                             follow_redirects=False)
    assert forged.status_code == 403


def test_hostile_camera_name_is_text(review_site, client_for) -> None:
    client, _ = client_for("rev")
    answer = client.get("/", params={"camera": HOSTILE})
    assert answer.status_code == 200
    html = answer.text
    assert HOSTILE not in html and "<script>alert" not in html
    assert "&lt;script&gt;alert(&#39;x&#34;1&#39;)&lt;/script&gt;" in html  # the header and the facts, as text
    assert "\\u003cscript\\u003e" in html  # the JSON data block
    policy = answer.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'nonce-" in policy and "unsafe-inline" not in policy
    nonce = policy.split("'nonce-")[1].split("'")[0]
    tags = re.findall(r"<(?:script|style)\b[^>]*>", html)
    assert len(tags) == 3 and all(f'nonce="{nonce}"' in tag for tag in tags)
    assert answer.headers["x-frame-options"] == "DENY" and answer.headers["referrer-policy"] == "same-origin"
    item = client.get("/next", params={"camera": HOSTILE}).json()["item"]
    assert item["camera"] == HOSTILE and item["face_id"] == review_site.hostile_face


def test_wrong_passwords_are_rate_limited(review_site, client_for) -> None:
    client, _ = client_for(None)
    attempts = review_site.settings.review_login_attempts
    for _ in range(attempts):
        answer = log_in(client, "rev", "not the password")
        assert answer.status_code == 401 and "Wrong user name or password." in answer.text
    refused = log_in(client, "rev", PASSWORD)  # even the right password, until the window passes
    assert refused.status_code == 429 and "Too many failed logins" in refused.text
    assert int(refused.headers["retry-after"]) > 0
    assert log_in(client, "adm").status_code == 303  # another user from the same address


def test_viewer_cannot_write_and_sees_blurred_faces(review_site, client_for) -> None:
    viewer, viewer_csrf = client_for("view")
    reviewer, _ = client_for("rev")
    face = review_site.face_ids[0]  # box (40, 60)-(120, 160) in a 320x240 noise frame
    answer = _decide(viewer, viewer_csrf, face)
    assert answer.status_code == 403 and "viewers cannot record reviews" in answer.json()["error"]
    assert viewer.post("/undo", headers={"x-csrf-token": viewer_csrf}).status_code == 403
    assert _reviews(review_site) == 0
    assert "You are a viewer" in viewer.get("/").text

    def pixels(client, kind: str) -> np.ndarray:
        got = client.get(f"/face/{face}/{kind}.jpg")
        assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
        assert got.headers["cache-control"] == "no-store"
        return np.asarray(PILImage.open(io.BytesIO(got.content)).convert("RGB")).astype(float)

    blurred, clear = pixels(viewer, "crop"), pixels(reviewer, "crop")
    assert blurred.shape == clear.shape
    # The crop starts at (0, 0) of the frame: the face is at (40..120, 60..160) in it too.
    inside = np.abs(blurred[80:140, 60:100] - clear[80:140, 60:100]).mean()
    outside = np.abs(blurred[0:40, 0:30] - clear[0:40, 0:30]).mean()
    assert inside > 40 and outside < 3
    assert clear[80:140, 60:100].std() > 3 * blurred[80:140, 60:100].std()  # noise smoothed away
    assert np.abs(pixels(viewer, "context") - pixels(reviewer, "context")).mean() > 5
    first = viewer.get("/next").json()["item"]["face_id"]
    assert viewer.get("/next", params={"skip": first}).json()["item"]["face_id"] != first  # viewers browse
    assert viewer.get("/next").json()["item"]["face_id"] != first  # and the skip is kept


def test_bad_input_gets_a_clear_4xx(review_site, client_for) -> None:
    client, csrf = client_for("rev")
    face = review_site.face_ids[0]
    cases = [
        ({"face_id": "abc", "label": "with_mask"}, 400, "face_id must be a whole number"),
        ({"face_id": "999999", "label": "with_mask"}, 404, "no face with id 999999"),
        ({"face_id": str(face), "label": "cat"}, 400, "unknown label 'cat'"),
        ({"face_id": str(face), "label": "with_mask", "stratum": "vip"}, 400, "unknown stratum 'vip'"),
        ({"face_id": str(face), "label": "with_mask", "holding": "1,x"}, 400, "holding must be face ids"),
        ({"face_id": str(face), "label": "with_mask", "note": "n" * 501}, 400, "at most 500"),
    ]
    for fields, status, message in cases:
        answer = client.post("/review", data=fields, headers={"x-csrf-token": csrf})
        assert answer.status_code == status and message in answer.json()["error"], (fields, answer.text)
        assert "Traceback" not in answer.text
    assert client.get("/face/999999/crop.jpg").status_code == 404
    assert client.get(f"/face/{face}/other.jpg").status_code == 404
    assert client.post("/undo", headers={"x-csrf-token": csrf}).json()["error"].startswith("nothing to undo")
    assert _reviews(review_site) == 0


def test_review_skip_undo_round_trip(review_site, client_for) -> None:
    client, csrf = client_for("rev")
    first = client.get("/next").json()
    item, counts = first["item"], first["counts"]
    assert item["stratum"] == "uncertain" and item["confidence"] == 0.4  # least confident first
    assert set(counts) == {"uncertain", "violation", "sample"} and counts["uncertain"] == 5
    skipped = client.post("/review", data={"face_id": item["face_id"], "label": "skip", "stratum": item["stratum"]},
                          headers={"x-csrf-token": csrf}).json()
    assert skipped["review_id"] is None and skipped["item"]["face_id"] != item["face_id"]
    nxt = skipped["item"]
    saved = client.post("/review", data={"face_id": nxt["face_id"], "label": "not_a_face", "stratum": nxt["stratum"],
                                         "holding": str(nxt["face_id"]), "note": " a poster "},
                        headers={"x-csrf-token": csrf}).json()
    assert saved["review_id"] > 0 and saved["item"]["face_id"] not in (item["face_id"], nxt["face_id"])
    assert saved["counts"]["uncertain"] == 4
    with review_site.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT reviewed_label FROM faces WHERE id = :i"),
                            {"i": nxt["face_id"]}).scalar_one() == "not_a_face"
        assert tuple(conn.execute(sa.text("SELECT reviewer, stratum, note FROM face_reviews")).one()) == (
            "rev", nxt["stratum"], "a poster")
    undone = client.post("/undo", headers={"x-csrf-token": csrf}).json()
    assert undone["undone"] == saved["review_id"] and undone["item"]["face_id"] == nxt["face_id"]
    assert undone["counts"]["uncertain"] == 5
    with review_site.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT reviewed_label FROM faces WHERE id = :i"),
                            {"i": nxt["face_id"]}).scalar_one() is None


def test_two_reviewers_get_different_faces(review_site, client_for) -> None:
    first, _ = client_for("rev")
    second, _ = client_for("adm")
    a, b = first.get("/next").json()["item"], second.get("/next").json()["item"]
    assert a["face_id"] != b["face_id"] and a["confidence"] < b["confidence"]  # the head went to the first
    viewer, _ = client_for("view")
    assert viewer.get("/next").json()["item"]["face_id"] == a["face_id"]  # viewers claim nothing


def test_session_cookie_flags_and_ended_sessions(review_site, client_for) -> None:
    from maskjob.review.auth import disable_user

    client, _ = client_for(None)
    answer = log_in(client, "rev")
    cookie = answer.headers["set-cookie"].lower()
    hours = review_site.settings.review_session_hours
    for flag in ("httponly", "samesite=strict", "secure", f"max-age={int(hours * 3600)}"):
        assert flag in cookie, cookie
    assert client.get("/", follow_redirects=False).status_code == 200
    disable_user(review_site.engine, "rev")
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"  # the session ended
    assert log_in(client, "rev").status_code == 401


def test_session_expires_after_review_session_hours(migrated_db_url, settings_factory, tmp_path) -> None:
    from starlette.testclient import TestClient

    from maskjob.review.app import create_app
    from tests.review.conftest import build_review_site

    site = build_review_site(migrated_db_url, settings_factory, tmp_path, review_session_hours=0.0005)  # 1.8 s
    try:
        with TestClient(create_app(site.settings, site.engine), base_url="https://testserver") as client:
            assert log_in(client, "rev").status_code == 303
            assert client.get("/", follow_redirects=False).status_code == 200
            time.sleep(2.0)
            assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    finally:
        site.engine.dispose()
