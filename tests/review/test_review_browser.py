"""End to end in headless Chromium against a real ``maskjob review serve`` process: the demo
inbox scored into SQLite, a reviewer logs in and reviews 20 faces by keyboard alone, correcting
exactly 5; the audit trail, the analyst views, the daily table and a re-rendered compliance
report show exactly those corrections, and the export turns the 20 decisions into training crops
with their provenance."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from PIL import Image as PILImage

from maskjob import CLASSES
from maskjob.review.export import PROVENANCE_FILE, export_corrections
from maskjob.vocab import SITE_TEST_SPLIT
from tests.fixtures.demo import tiny_settings
from tests.reporting.test_browser import CHROMIUM, CHROMIUM_ARGS
from tests.review.conftest import HOSTILE, PASSWORD, build_review_site, start_server, stop_server, write_config
from tests.scoring.test_score import score_settings, use_champion

DEMO_SCALE = 0.2  # 24 frames, 51 faces: more than the 20 the test reviews
KEY_OF = {"with_mask": "1", "without_mask": "2", "partial_mask": "3"}
CORRECTED = (1, 5, 9, 13, 17)  # which of the 20 decisions disagree with the model


@dataclass(frozen=True)
class ScoredDemo:
    settings: object
    url: str


@pytest.fixture(scope="module")
def scored_demo(tmp_path_factory: pytest.TempPathFactory) -> ScoredDemo:
    """The demo inbox (scale 0.2) scored by a one-epoch cnn into a fresh SQLite database."""
    from maskjob.demo.builder import build_demo
    from maskjob.ml.train import train_model
    from maskjob.scoring.score import score
    from maskjob.storage import database

    data_dir = tmp_path_factory.mktemp("review-demo") / "data"
    url = f"sqlite:///{data_dir / 'maskjob.db'}"
    settings = score_settings(tiny_settings(data_dir, dataset_root=data_dir / "dataset", inbox_dir=data_dir / "inbox",
                                            database_url=url, demo_scale=DEMO_SCALE))
    build_demo(settings)
    checkpoint = train_model("cnn", settings.dataset_root, data_dir / "models", settings, max_epochs=1,
                             image_size=32).checkpoint_path
    use_champion(url, checkpoint)
    engine = database.make_engine(url)
    try:
        score(engine, settings, settings.inbox_dir, progress=False)
    finally:
        engine.dispose()
    return ScoredDemo(settings, url)


def _daily(conn: sa.Connection) -> dict[tuple[str, str], tuple[int, ...]]:
    rows = conn.execute(sa.text("SELECT day, camera_id, faces, with_mask, without_mask, partial_mask, reviewed_faces, "
                                "changed_faces FROM daily_compliance")).all()
    return {(str(r[0]), r[1]): tuple(int(v or 0) for v in r[2:]) for r in rows}


def _report_metrics(engine: sa.Engine, settings, out: Path) -> dict[str, str]:
    """The compliance report of the demo day, rendered afresh: its headline and review figures."""
    from maskjob.demo.builder import DEMO_DAY
    from maskjob.reporting.compliance import render_compliance_report

    html = render_compliance_report(engine, settings, DEMO_DAY, DEMO_DAY, out_dir=out).read_text(encoding="utf-8")
    return {name: value.strip() for name, value in re.findall(r'data-metric="(\w+)"[^>]*>([^<]*)<', html)}


def _check_export(exported, root: Path, decided: dict, review_ids: dict, where: dict) -> None:
    """Every reviewed face became a crop under its decided label, with its provenance."""
    assert exported.written == 20 and exported.total == 20 and exported.bad == []
    lines = [json.loads(line) for line in (root / PROVENANCE_FILE).read_text(encoding="utf-8").splitlines()]
    by_review = {row["review_id"]: row for row in lines}
    for face_id, (model, chosen) in decided.items():
        row = by_review[review_ids[face_id]]
        assert (row["label"], row["model_label"], row["reviewer"]) == (chosen, model, "ana")
        assert (str(row["local_day"]), row["camera_id"]) == where[face_id]
        assert row["split"] in ("train", SITE_TEST_SPLIT) and row["file"].startswith(f"{row['split']}/{chosen}/site-")
        with PILImage.open(root / row["file"]) as crop:
            assert min(crop.size) > 8


def _screenshot_blurred(browser, page, base_url: str, shot: Path) -> None:
    """Check a viewer's page (read-only, blurred pictures), then screenshot the reviewer's page
    with the viewer's pictures of the same face swapped in (docs/review-page.png shows no identity)."""
    face = page.locator("#review").get_attribute("data-face")
    viewer = browser.new_context(viewport={"width": 1360, "height": 900}).new_page()
    viewer.goto(f"{base_url}/login")
    viewer.fill("#username", "vic")
    viewer.fill("#password", PASSWORD)
    viewer.keyboard.press("Enter")
    viewer.locator("#review[data-state=ready]").wait_for()
    assert "You are a viewer" in viewer.locator(".readonly").inner_text()
    assert viewer.locator('button[data-label="with_mask"]').is_disabled()
    blurred, clear = [], []
    for kind in ("crop", "context"):
        blurred.append(viewer.request.get(f"{base_url}/face/{face}/{kind}.jpg").body())
        clear.append(page.request.get(f"{base_url}/face/{face}/{kind}.jpg").body())
    assert blurred[0] != clear[0] and blurred[1] != clear[1]
    page.evaluate("""pictures => Promise.all(['crop', 'context'].map((id, i) => new Promise(done => {
        const img = document.getElementById(id);
        img.onload = done;
        img.src = URL.createObjectURL(new Blob([new Uint8Array(pictures[i])], {type: 'image/jpeg'}));
    })))""", [list(b) for b in blurred])
    page.screenshot(path=str(shot))


def test_review_twenty_faces_by_keyboard(scored_demo: ScoredDemo, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    from maskjob.review.auth import add_user
    from maskjob.storage import database

    engine = database.make_engine(scored_demo.url)
    add_user(engine, "ana", "reviewer", PASSWORD)
    add_user(engine, "vic", "viewer", PASSWORD)
    with engine.connect() as conn:
        before = _daily(conn)
        where = {r.id: (str(r.local_day), r.camera_id) for r in conn.execute(sa.text(
            "SELECT f.id, i.camera_id, i.local_day FROM faces f JOIN images i ON i.id = f.image_id"))}
    assert len(where) >= 30
    report_before = _report_metrics(engine, scored_demo.settings, tmp_path / "report-before")
    assert "reviews_none" in report_before and "reviews_reviewed" not in report_before
    server = start_server(write_config(tmp_path / "maskjob.toml", scored_demo.settings), tmp_path / "server.log")
    decided: dict[int, tuple[str, str]] = {}
    seen: dict[str, list] = {"console_errors": [], "page_errors": [], "offsite": [], "dialogs": []}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_context(viewport={"width": 1360, "height": 900}).new_page()
            page.on("console", lambda m: seen["console_errors"].append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: seen["page_errors"].append(str(e)))
            page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
            page.on("request", lambda r: None if r.url.startswith((server.base_url, "blob:"))
                    else seen["offsite"].append(r.url))
            page.goto(f"{server.base_url}/login")
            page.locator("#username").focus()
            page.keyboard.type("ana")
            page.keyboard.press("Tab")
            page.keyboard.type(PASSWORD)
            page.keyboard.press("Enter")
            main = page.locator("#review[data-state=ready]")
            main.wait_for()
            for i in range(20):
                face_id, label = int(main.get_attribute("data-face")), main.get_attribute("data-label")
                chosen = CLASSES[(CLASSES.index(label) + 1) % 3] if i in CORRECTED else label
                assert page.locator("#f-label").inner_text() == label
                if i == CORRECTED[0]:  # a note: into the field, Esc out of it, then the decision key
                    page.locator("#note").focus()
                    page.keyboard.type("1 2 3 typed here are text")
                    page.keyboard.press("Escape")
                page.keyboard.press(KEY_OF[chosen])
                page.wait_for_function(
                    "id => { const m = document.getElementById('review');"
                    " return m.dataset.state === 'ready' && m.dataset.face !== String(id); }", arg=face_id)
                assert page.locator("#status").inner_text().startswith(f"Saved: face {face_id} is {chosen}")
                decided[face_id] = (label, chosen)
                if i == CORRECTED[0]:
                    first_corrected = face_id
            sizes = page.evaluate("() => ['crop', 'context'].map(id => document.getElementById(id).naturalWidth)")
            assert all(w > 0 for w in sizes)
            _screenshot_blurred(browser, page, server.base_url, tmp_path / "review-page.png")
            browser.close()
    finally:
        stop_server(server)
    assert seen == {"console_errors": [], "page_errors": [], "offsite": [], "dialogs": []}
    assert len(decided) == 20
    changes = {f: pair for f, pair in decided.items() if pair[0] != pair[1]}
    assert len(changes) == 5

    with engine.connect() as conn:
        reviews = conn.execute(sa.text("SELECT face_id, reviewer, label, model_label, note FROM face_reviews")).all()
        assert {r.face_id: r.note for r in reviews if r.note} == {first_corrected: "1 2 3 typed here are text"}
        assert sorted((r.face_id, r.reviewer, r.label, r.model_label) for r in reviews) == sorted(
            (f, "ana", chosen, model) for f, (model, chosen) in decided.items())
        views = conn.execute(sa.text("SELECT face_id, label, reviewed_label, final_label FROM face_predictions")).all()
        assert {r.face_id: r.final_label for r in views if r.final_label != r.label} == {
            f: chosen for f, (_, chosen) in changes.items()}
        assert {r.face_id for r in views if r.reviewed_label is not None} == set(decided)
        after = _daily(conn)
        review_ids = {r.face_id: r.id for r in conn.execute(sa.text("SELECT id, face_id FROM face_reviews"))}
    report_after = _report_metrics(engine, scored_demo.settings, tmp_path / "report-after")
    exported = export_corrections(engine, scored_demo.settings)
    engine.dispose()
    _check_export(exported, scored_demo.settings.dataset_root, decided, review_ids, where)
    expected = {key: list(values) for key, values in before.items()}
    for face_id, (model, chosen) in decided.items():
        counts = expected[where[face_id]]
        counts[4] += 1
        if model != chosen:
            counts[1 + CLASSES.index(model)] -= 1
            counts[1 + CLASSES.index(chosen)] += 1
            counts[5] += 1
    assert after == {key: tuple(values) for key, values in expected.items()}
    assert sum(v[4] for v in after.values()) == 20 and sum(v[5] for v in after.values()) == 5
    assert Counter(v[0] for v in after.values()) == Counter(v[0] for v in before.values())  # no face dropped

    # The re-rendered report counts the final labels: exactly the daily table's sums after the reviews.
    assert (report_after["reviews_reviewed"], report_after["reviews_changed"], report_after["reviews_not_face"]) == (
        "20", "5", "0")
    for metric, column in (("faces", 0), ("without_mask", 2), ("partial_mask", 3)):
        assert report_after[metric] == f"{sum(v[column] for v in after.values()):,}", metric
        assert report_before[metric] == f"{sum(v[column] for v in before.values()):,}", metric
    assert report_after["rate"] == f"{100 * sum(v[1] for v in after.values()) / sum(v[0] for v in after.values()):.1f}%"


def test_hostile_camera_shows_as_text(settings_factory, tmp_path: Path) -> None:
    """A camera called ``<script>alert('x"1')</script>`` is text in the page Chromium renders,
    from the server's HTML and after the script rewrites the facts."""
    from playwright.sync_api import sync_playwright

    site = build_review_site(f"sqlite:///{tmp_path / 'hostile.db'}", settings_factory, tmp_path)
    site.engine.dispose()
    server = start_server(write_config(tmp_path / "maskjob.toml", site.settings), tmp_path / "server.log")
    dialogs: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(f"{server.base_url}/login")
            page.fill("#username", "rev")
            page.fill("#password", PASSWORD)
            page.keyboard.press("Enter")
            page.locator("#review[data-state=ready]").wait_for()
            page.goto(f"{server.base_url}/?camera={HOSTILE}")
            page.locator("#review[data-state=ready]").wait_for()
            assert page.locator("#f-camera").inner_text() == HOSTILE
            assert page.locator("#camera-filter").inner_text() == HOSTILE
            assert page.locator("script").count() == 2  # the page's own two, nothing injected
            browser.close()
    finally:
        stop_server(server)
    assert dialogs == []
