"""The compliance report after reviews: final labels in every count, the gallery and the review
queue, and the Reviews section's agreement figures, on a small fixture worked out by hand.

Two cameras, 13 detected faces on 2026-11-24 (review threshold 0.7). The faces, as
(name, model label, confidence), per frame, and the reviews (``->`` label, stratum):

    north 08:00  F1 without .50 -> with (uncertain)      F2 with .60 -> with (uncertain)
    north 08:10  F3 without .90 -> without (violation)
    north 08:20  F4 partial .85 -> not a face (violation)      (the frame has no face left)
    north 08:30  F5 with .95 -> without (sample)          F6 with .92 -> partial, undone
    north 08:40  F7 with .99 -> with (sample)  F8 with .97 -> with (sample)  F9 partial .80
    south 08:00  G1 with .55 -> with (uncertain)          G2 without .95 -> with (violation)
    south 08:10  G3 with .90 -> with (other)  G4 with .93  G5 without .65

Strata (by the model): uncertain F1 F2 G1 G5, violation F3 F4 F9 G2, sample the rest.
north: uncertain 1/2 of 2, violation 1/2 of 3, sample 2/3 of 4: estimate
(2 * 1/2 + 3 * 1/2 + 4 * 2/3) / 9 = 57.4%. south: uncertain 1/1 of 2, violation 0/1 of 1,
sample 0/0 of 2 (G3 was not a sample review): n/a. Pooled: (4 * 2/3 + 4 * 1/3 + 6 * 2/3) / 14
= 57.1%.
"""

from __future__ import annotations

import html as htmllib
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image as PILImage

from maskjob import CLASSES

DAY = date(2026, 11, 24)
FRAMES = {  # (camera, minute after 08:00) -> faces (name, label, confidence)
    ("north", 0): [("F1", "without_mask", 0.50), ("F2", "with_mask", 0.60)],
    ("north", 10): [("F3", "without_mask", 0.90)],
    ("north", 20): [("F4", "partial_mask", 0.85)],
    ("north", 30): [("F5", "with_mask", 0.95), ("F6", "with_mask", 0.92)],
    ("north", 40): [("F7", "with_mask", 0.99), ("F8", "with_mask", 0.97), ("F9", "partial_mask", 0.80)],
    ("south", 0): [("G1", "with_mask", 0.55), ("G2", "without_mask", 0.95)],
    ("south", 10): [("G3", "with_mask", 0.90), ("G4", "with_mask", 0.93), ("G5", "without_mask", 0.65)],
}
REVIEWS = (("F1", "with_mask", "uncertain"), ("F2", "with_mask", "uncertain"), ("F3", "without_mask", "violation"),
           ("F4", "not_a_face", "violation"), ("F5", "without_mask", "sample"), ("F6", "partial_mask", "sample"),
           ("F7", "with_mask", "sample"), ("F8", "with_mask", "sample"), ("G1", "with_mask", "uncertain"),
           ("G2", "with_mask", "violation"), ("G3", "with_mask", "other"))
UNDONE = "F6"


@dataclass
class Site:
    engine: Any
    settings: Any
    face_ids: dict[str, int]

    def path(self, name: str) -> str:
        return next(f"{cam}/{_when(cam, minute):%Y%m%dT%H%M}.jpg" for (cam, minute), faces in FRAMES.items()
                    if name in {f[0] for f in faces})


def _when(camera: str, minute: int) -> datetime:
    return datetime(2026, 11, 24, 8, tzinfo=UTC) + timedelta(minutes=minute, seconds=len(camera))


def _row(camera: str, minute: int, faces: list[tuple[str, str, float]], version_id: int) -> dict[str, Any]:
    rows = []
    for k, (_, label, confidence) in enumerate(faces):
        p = {f"p_{c}": confidence if c == label else (1 - confidence) / 2 for c in CLASSES}
        rows.append({"face_index": k, "x1": 10 + 50 * k, "y1": 20, "x2": 50 + 50 * k, "y2": 70, "detector_score": 0.9,
                     "label": label, "confidence": confidence, **p})
    when = _when(camera, minute)
    return {"path": f"{camera}/{when:%Y%m%dT%H%M}.jpg", "camera_id": camera, "captured_at": when, "width": 160,
            "height": 100, "status": "ok", "reason": None, "n_faces": len(rows), "model_version_id": version_id,
            "scored_at": datetime(2026, 11, 25, tzinfo=UTC), "timezone": "UTC", "faces": rows}


def build_site(db_url: str, settings_factory, tmp_path: Path) -> Site:
    """The fixture's database (not yet reviewed: :func:`review_all`) and frames under ``tmp_path``."""
    from maskjob.storage import database, schema
    from maskjob.storage.writes import insert_scored_images

    database.upgrade(db_url)
    engine = database.make_engine(db_url)
    inbox = tmp_path / "inbox"
    rng = np.random.default_rng(3)
    with database.session(engine) as s:
        version = schema.ModelVersion(version="mobilenet_v2-0001", arch="mobilenet_v2", checkpoint_path="/m/a.pt",
                                      checkpoint_sha256="c" * 64, metrics={}, test_macro_f1=0.9, diverged=False,
                                      created_at=datetime(2026, 11, 1, tzinfo=UTC), status="champion")
        s.add(version)
        s.flush()
        version_id = version.id
    rows = [_row(cam, minute, faces, version_id) for (cam, minute), faces in FRAMES.items()]
    for row in rows:
        (inbox / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(rng.integers(0, 256, (100, 160, 3), dtype=np.uint8)).save(inbox / row["path"])
    with engine.begin() as conn:
        insert_scored_images(conn, rows)
    faces_t, images_t = schema.Face.__table__, schema.Image.__table__
    with engine.connect() as conn:
        found = conn.execute(sa.select(images_t.c.path, faces_t.c.face_index, faces_t.c.id)
                             .join(images_t, images_t.c.id == faces_t.c.image_id)).all()
    by_key = {(path, k): face_id for path, k, face_id in found}
    names = {(row["path"], k): name
             for row, faces in zip(rows, FRAMES.values()) for k, (name, _, _) in enumerate(faces)}
    settings = settings_factory(inbox_dir=inbox, gallery_cap=10, review_threshold=0.7, blur_faces=True)
    return Site(engine, settings, {names[key]: by_key[key] for key in names})


@pytest.fixture
def site(db_url: str, settings_factory, tmp_path: Path):
    built = build_site(db_url, settings_factory, tmp_path)
    yield built
    built.engine.dispose()


def review_all(site: Site) -> list[int]:
    """Record :data:`REVIEWS` and undo :data:`UNDONE`'s; the live reviews' ids."""
    from maskjob.storage.reviews import record_review, undo_review

    now = datetime(2026, 11, 26, 9, tzinfo=UTC)
    ids = {}
    for i, (name, label, stratum) in enumerate(REVIEWS):
        ids[name] = record_review(site.engine, site.face_ids[name], "rita", label, stratum=stratum,
                                  now=now + timedelta(minutes=i))
    undo_review(site.engine, ids[UNDONE], "rita", now=now + timedelta(hours=1))
    return [review_id for name, review_id in ids.items() if name != UNDONE]


def _render(site: Site, out: Path) -> str:
    from maskjob.reporting.compliance import render_compliance_report

    path = render_compliance_report(site.engine, site.settings, DAY, DAY, out_dir=out)
    return path.read_text(encoding="utf-8")


def _metric(html: str, name: str) -> str:
    match = re.search(rf'data-metric="{name}"[^>]*>([^<]*)<', html)
    assert match, f"metric {name} not in page"
    return match[1].strip()


def _cards(html: str, kind: str) -> list[tuple[str, bool, str]]:
    """(file, reviewed?, label) of every face card of ``kind``, in page order."""
    cards = re.findall(rf'<figure data-kind="{kind}">(.*?)</figure>', html, flags=re.S)
    return [(re.search(r'<span class="muted">([^<(]*)', c)[1].strip(), 'data-reviewed="1"' in c,
             re.search(r'<span class="tag (\w+)">', c)[1]) for c in cards]


def _agreement_row(html: str, camera: str) -> list[str]:
    row = re.search(rf'<tr data-review-camera="{camera}"[^>]*>(.*?)</tr>', html, flags=re.S)
    assert row, f"no agreement row for {camera}"
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row[1], flags=re.S)
    return [" ".join(htmllib.unescape(re.sub(r"<[^>]+>", "", c)).split()) for c in cells]


def _without_generated(html: str) -> str:
    return re.sub(r"Generated [0-9: -]+ UTC", "", html)


def test_report_counts_final_labels_and_shows_the_reviews(site: Site, tmp_path: Path) -> None:
    before = _render(site, tmp_path / "before")
    assert _metric(before, "faces") == "14" and _metric(before, "review_total") == "4"
    assert "No face of this window has been reviewed" in before and "data-reviewed" not in before
    review_all(site)
    html = _render(site, tmp_path / "after")

    # 13 faces left (F4 was not a face, and its frame now has none): 9 with, 3 without, 1 partial.
    assert _metric(html, "faces") == "13"
    assert _metric(html, "rate") == f"{100 * 9 / 13:.1f}%"
    assert (_metric(html, "without_mask"), _metric(html, "partial_mask")) == ("3", "1")
    assert (_metric(html, "ok"), _metric(html, "no_face")) == ("6", "1")
    row = r'<tr data-camera="(\w+)"><td>\w+</td><td class="num">\d+</td><td class="num">(\d+)<'
    cameras = dict(re.findall(row, html))
    assert cameras == {"north": "8", "south": "5"}

    # Gallery: final violations, reviewed first; F1 (corrected to with_mask), F4 and G2 left it, F5 entered it.
    assert _cards(html, "gallery") == [
        (site.path("F3"), True, "without_mask"), (site.path("F5"), True, "without_mask"),
        (site.path("F9"), False, "partial_mask"), (site.path("G5"), False, "without_mask")]
    assert "model said with mask" in html  # F5's card
    # Review queue: only the unreviewed uncertain face.
    assert _metric(html, "review_total") == "1"
    assert _cards(html, "review") == [(site.path("G5"), False, "without_mask")]

    assert (_metric(html, "reviews_reviewed"), _metric(html, "reviews_changed"), _metric(html, "reviews_not_face")) == (
        "10", "4", "1")
    assert _agreement_row(html, "north") == ["north", "7", "3", "1", "50.0% 1 / 2 of 2", "50.0% 1 / 2 of 3",
                                             "66.7% 2 / 3 of 4", "none", f"{100 * (1 + 1.5 + 8 / 3) / 9:.1f}%"]
    assert _agreement_row(html, "south") == ["south", "3", "1", "0", "100.0% 1 / 1 of 2", "0.0% 0 / 1 of 1",
                                             "0 / 0 of 2", "1 / 1", "n/a (no review of sample faces)"]
    assert _agreement_row(html, "all cameras") == ["all cameras", "10", "4", "1", "66.7% 2 / 3 of 4",
                                                   "33.3% 1 / 3 of 4", "66.7% 2 / 3 of 6", "1 / 1",
                                                   f"{100 * 8 / 14:.1f}%"]


def test_one_camera_report_shows_its_reviews_only(site: Site, tmp_path: Path) -> None:
    from maskjob.reporting.compliance import render_compliance_report

    review_all(site)
    path = render_compliance_report(site.engine, site.settings, DAY, DAY, camera="south", out_dir=tmp_path)
    html = path.read_text(encoding="utf-8")
    assert re.findall(r'<tr data-review-camera="([^"]*)"', html) == ["south"]
    assert (_metric(html, "reviews_reviewed"), _metric(html, "reviews_changed")) == ("3", "1")
    assert _metric(html, "field_accuracy") == "n/a"


def test_undoing_every_review_gives_back_the_report_without_reviews(site: Site, tmp_path: Path, monkeypatch) -> None:
    import matplotlib

    from maskjob.storage.reviews import undo_review

    monkeypatch.setitem(matplotlib.rcParams, "svg.hashsalt", "maskjob")  # else the chart's SVG ids are random
    before = _render(site, tmp_path / "before")
    for review_id in review_all(site):
        undo_review(site.engine, review_id, "rita", now=datetime(2026, 11, 27, tzinfo=UTC))
    assert _without_generated(_render(site, tmp_path / "after")) == _without_generated(before)


def test_review_strata_count_the_window_faces_by_the_model(site: Site) -> None:
    from maskjob.reporting.figures import review_strata

    review_all(site)
    start = datetime(2026, 11, 24)
    with site.engine.connect() as conn:
        strata = review_strata(conn, start, start + timedelta(days=1), ["north", "south"], 0.7)
        assert review_strata(conn, start, start + timedelta(days=1), [], 0.7).empty
    assert list(strata.columns) == ["camera_id", "uncertain", "violation", "sample"]
    assert [tuple(r) for r in strata.itertuples(index=False)] == [("north", 2, 3, 4), ("south", 2, 1, 2)]


def test_alert_figures_count_final_labels(site: Site) -> None:
    from maskjob.reporting.figures import load_figures

    review_all(site)
    figures = load_figures(site.engine, site.settings, datetime(2026, 11, 24), datetime(2026, 11, 25))
    assert {c.camera_id: (c.faces, c.with_mask) for c in figures.cameras} == {"north": (8, 5), "south": (5, 4)}
