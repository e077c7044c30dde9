"""The compliance report against a small database built row by row with the ORM.

Every expected number is recomputed here from the rows the test wrote, not from SQL.
"""

from __future__ import annotations

import base64
import html as htmllib
import io
import re
import shutil
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from maskjob import CLASSES
from maskjob.errors import MaskjobError

DAY = date(2026, 11, 24)
HOSTILE = "<script>alert(1)</script>"
CAMERAS = ("cam-a", "cam-b", HOSTILE)
# Label probabilities per camera on DAY; the day before has 15 points more with_mask.
LABEL_P = {"cam-a": (0.5, 0.3, 0.2), "cam-b": (0.6, 0.25, 0.15), HOSTILE: (0.3, 0.5, 0.2)}


@dataclass
class Fixture:
    engine: object
    settings: object
    inbox: Path
    # (path, camera, captured_at, labels, confidences) as the views must show them
    faces: list[tuple[str, str, datetime, str, float]] = field(default_factory=list)
    frames: list[tuple[str, str, datetime, str]] = field(default_factory=list)


def _frame(rng: np.random.Generator) -> np.ndarray:
    """A textured 240x320 frame: noise gives the blur test high frequencies to remove."""
    return rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)


def _build(db_url: str, settings_factory, tmp_path: Path) -> Fixture:
    from maskjob.storage import database, schema

    database.upgrade(db_url)
    engine = database.make_engine(db_url)
    inbox = tmp_path / "inbox"
    settings = settings_factory(inbox_dir=inbox, gallery_cap=2, review_threshold=0.7, blur_faces=True)
    rng = np.random.default_rng(7)
    fx = Fixture(engine=engine, settings=settings, inbox=inbox)
    with database.session(engine) as s:
        old = schema.ModelVersion(version="cnn-0001", arch="cnn", checkpoint_path="/models/cnn.pt",
                              checkpoint_sha256="a" * 64, metrics={}, test_macro_f1=0.8, diverged=False,
                              created_at=datetime(2026, 11, 1), status="retired")
        new = schema.ModelVersion(version="mobilenet_v2-0002", arch="mobilenet_v2", checkpoint_path="/models/m.pt",
                              checkpoint_sha256="b" * 64, metrics={}, test_macro_f1=0.9, diverged=False,
                              created_at=datetime(2026, 11, 20), status="champion")
        s.add_all([old, new])
        s.flush()
        n = 0
        for day_offset, hours in ((-1, range(9, 12)), (0, range(8, 17))):
            for hour in hours:
                for cam in CAMERAS:
                    n += 1
                    when = datetime.combine(DAY, datetime.min.time()) + timedelta(days=day_offset, hours=hour, minutes=n % 60)
                    rel = f"{cam}/{when:%Y%m%dT%H%M%S}.jpg"
                    kind = n % 7
                    if kind == 5:
                        status, reason, labels = "unreadable", f"{inbox / rel}: empty file (0 bytes)", []
                    elif kind == 6:
                        status, reason, labels = "no_face", None, []
                    else:
                        status, reason = "ok", None
                        p = np.array(LABEL_P[cam]) + (0.15 * np.array([1, -1, 0]) if day_offset else 0)
                        labels = [CLASSES[rng.choice(3, p=p)] for _ in range(1 + n % 3)]
                    if status != "unreadable":
                        path = inbox / rel
                        path.parent.mkdir(parents=True, exist_ok=True)
                        PILImage.fromarray(_frame(rng)).save(path, quality=95)
                    # Every frame was first scored by the old model with all faces "with_mask";
                    # the view must show only the newer scoring.
                    for version, labs in ((old, ["with_mask"] * len(labels)), (new, labels)):
                        image = schema.Image(path=rel, camera_id=cam, captured_at=when, width=320, height=240,
                                         status=status, reason=reason, n_faces=len(labs),
                                         timezone="UTC", utc_offset_s=0, local_day=when.date(),
                                         model_version_id=version.id,
                                         scored_at=datetime(2026, 11, 25) + timedelta(hours=version.id))
                        for k, lab in enumerate(labs):
                            conf = 0.55 + 0.4 * ((n * 3 + k) % 10) / 10
                            image.faces.append(schema.Face(
                                face_index=k, x1=40 + 60 * k, y1=60, x2=100 + 60 * k, y2=140, detector_score=0.9,
                                label=lab, p_with_mask=conf if lab == "with_mask" else (1 - conf) / 2,
                                p_without_mask=conf if lab == "without_mask" else (1 - conf) / 2,
                                p_partial_mask=conf if lab == "partial_mask" else (1 - conf) / 2,
                                confidence=conf, model_version_id=version.id))
                        s.add(image)
                    fx.frames.append((rel, cam, when, status))
                    for k, lab in enumerate(labels):
                        fx.faces.append((rel, cam, when, lab, 0.55 + 0.4 * ((n * 3 + k) % 10) / 10))
    return fx


@pytest.fixture
def fixture_db(db_url, settings_factory, tmp_path) -> Fixture:
    fx = _build(db_url, settings_factory, tmp_path)
    yield fx
    fx.engine.dispose()


def _in_window(rows, start: datetime, end: datetime):
    return [r for r in rows if start <= r[2] < end]


def _metric(html: str, name: str) -> str:
    match = re.search(rf'data-metric="{name}"[^>]*>([^<]*)<', html)
    assert match, f"metric {name} not in page"
    return match[1].strip()


def _render(fx: Fixture, tmp_path: Path, **kwargs) -> str:
    from maskjob.reporting.compliance import render_compliance_report

    path = render_compliance_report(fx.engine, fx.settings, DAY, DAY, out_dir=tmp_path / "out", **kwargs)
    assert path.parent == tmp_path / "out" and path.suffix == ".html"
    return path.read_text(encoding="utf-8")


def test_headline_numbers_match_the_rows(fixture_db: Fixture, tmp_path: Path) -> None:
    start = datetime(2026, 11, 24)
    faces = _in_window(fixture_db.faces, start, start + timedelta(days=1))
    frames = _in_window(fixture_db.frames, start, start + timedelta(days=1))
    html = _render(fixture_db, tmp_path)

    labels = [f[3] for f in faces]
    rate = labels.count("with_mask") / len(labels)
    assert _metric(html, "rate") == f"{100 * rate:.1f}%"
    assert _metric(html, "without_mask") == str(labels.count("without_mask"))
    assert _metric(html, "partial_mask") == str(labels.count("partial_mask"))
    assert _metric(html, "faces") == str(len(labels))
    statuses = [f[3] for f in frames]
    assert _metric(html, "frames") == str(len(frames))
    assert _metric(html, "no_face") == str(statuses.count("no_face"))
    assert _metric(html, "unreadable") == str(statuses.count("unreadable"))
    # reasons are grouped by cause, without the file path they started with
    assert re.search(rf"empty file \(0 bytes\)</td><td class=\"num\">{statuses.count('unreadable')}<", html)
    assert "mobilenet_v2-0002" in html and "cnn-0001" not in html
    # No review yet: the Reviews section says so, and no face is marked reviewed.
    assert 'data-metric="reviews_none"' in html and "data-reviewed" not in html


def test_previous_window_comparison(fixture_db: Fixture, tmp_path: Path) -> None:
    start = datetime(2026, 11, 24)
    now = [f[3] for f in _in_window(fixture_db.faces, start, start + timedelta(days=1))]
    before = [f[3] for f in _in_window(fixture_db.faces, start - timedelta(days=1), start)]
    html = _render(fixture_db, tmp_path)
    change = now.count("with_mask") / len(now) - before.count("with_mask") / len(before)
    assert _metric(html, "rate_change") == f"{100 * change:+.1f} pts vs previous"
    diff = now.count("without_mask") - before.count("without_mask")
    assert _metric(html, "without_mask_change") == f"{diff:+d} vs previous"


def test_camera_table_is_worst_first_with_right_rates(fixture_db: Fixture, tmp_path: Path) -> None:
    start = datetime(2026, 11, 24)
    faces = _in_window(fixture_db.faces, start, start + timedelta(days=1))
    rates = {}
    for cam in CAMERAS:
        labels = [f[3] for f in faces if f[1] == cam]
        rates[cam] = labels.count("with_mask") / len(labels)
    html = _render(fixture_db, tmp_path)
    rows = re.findall(r'<tr data-camera="([^"]*)">.*?data-metric="camera_rate">([^<]*)<', html, flags=re.S)
    shown = [(htmllib.unescape(cam), value) for cam, value in rows]
    expected = sorted(CAMERAS, key=lambda c: rates[c])
    assert [cam for cam, _ in shown] == expected
    assert [value for _, value in shown] == [f"{100 * rates[c]:.1f}%" for c in expected]


def test_hostile_names_are_escaped_and_no_absolute_paths(fixture_db: Fixture, tmp_path: Path) -> None:
    html = _render(fixture_db, tmp_path)
    assert HOSTILE not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.lower()
    assert str(tmp_path) not in html
    assert str(fixture_db.inbox) not in html
    assert not re.search(r"(?<![\w<])/(?:tmp|home|root|work|data|models)/", html)


def test_gallery_is_capped_and_missing_frames_show_a_placeholder(fixture_db: Fixture, tmp_path: Path) -> None:
    start = datetime(2026, 11, 24)
    faces = _in_window(fixture_db.faces, start, start + timedelta(days=1))
    shutil.rmtree(fixture_db.inbox / "cam-b")  # frames deleted since scoring
    html = _render(fixture_db, tmp_path)
    for cam in ("cam-a", "cam-b"):
        violations = [f for f in faces if f[1] == cam and f[3] != "with_mask"]
        more = len(violations) - fixture_db.settings.gallery_cap
        assert more > 0
        assert f'data-camera-more="{cam}">and {more} more' in html
    def gallery_of(cam: str) -> str:
        start = html.index(f"<h3>{cam} ")
        return html[start : html.index("</div>", start)]

    assert gallery_of("cam-b").count("(frame file missing)") == fixture_db.settings.gallery_cap
    assert "(frame file missing)" not in gallery_of("cam-a")
    review = [f for f in faces if f[4] < fixture_db.settings.review_threshold]
    assert _metric(html, "review_total") == str(len(review))


def test_a_hostile_camera_in_the_reviews_section_is_text(fixture_db: Fixture, tmp_path: Path) -> None:
    import sqlalchemy as sa

    from maskjob.storage.reviews import record_review
    from maskjob.storage.schema import Face, LatestScoring

    with fixture_db.engine.connect() as conn:
        face_id = conn.execute(
            sa.select(Face.id).join(LatestScoring, LatestScoring.image_id == Face.image_id)
            .where(LatestScoring.camera_id == HOSTILE, LatestScoring.captured_at >= datetime(2026, 11, 24))
            .order_by(Face.id).limit(1)).scalar_one()
    record_review(fixture_db.engine, face_id, HOSTILE, "not_a_face", note=HOSTILE, stratum="sample")
    html = _render(fixture_db, tmp_path)
    assert HOSTILE not in html and "<script" not in html.lower()
    assert 'data-review-camera="&lt;script&gt;alert(1)&lt;/script&gt;"' in html
    assert _metric(html, "reviews_not_face") == "1"


def _gallery_images(html: str) -> list[np.ndarray]:
    uris = re.findall(r'<figure data-kind="gallery">\s*<img src="data:image/jpeg;base64,([^"]+)"', html)
    return [np.asarray(PILImage.open(io.BytesIO(base64.b64decode(u))).convert("L"), dtype=float) for u in uris]


def _high_frequency_energy(grey: np.ndarray) -> float:
    """Mean absolute neighbour difference in the crop's centre, where the face box sits."""
    h, w = grey.shape
    grey = grey[int(0.35 * h) : int(0.65 * h), int(0.35 * w) : int(0.65 * w)]
    return float(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())


def test_blur_removes_detail_from_faces(fixture_db: Fixture, tmp_path: Path) -> None:
    blurred = _gallery_images(_render(fixture_db, tmp_path / "b", blur=True))
    sharp = _gallery_images(_render(fixture_db, tmp_path / "s", blur=False))
    assert len(blurred) == len(sharp) > 0
    pairs = [(b, s) for b, s in zip(blurred, sharp) if b.shape == s.shape and not np.array_equal(b, s)]
    assert len(pairs) >= len(blurred) // 2  # placeholders are identical either way
    assert all(_high_frequency_energy(b) < 0.3 * _high_frequency_energy(s) for b, s in pairs)


def test_empty_window_says_so(fixture_db: Fixture, tmp_path: Path) -> None:
    from maskjob.reporting.compliance import render_compliance_report

    path = render_compliance_report(fixture_db.engine, fixture_db.settings, date(2025, 1, 1), date(2025, 1, 31),
                                    out_dir=tmp_path)
    html = path.read_text(encoding="utf-8")
    assert "No frames were scored in this window" in html
    assert path.name == "compliance_20250101_20250131.html"


def test_camera_filter_and_bad_window(fixture_db: Fixture, tmp_path: Path) -> None:
    from maskjob.reporting.compliance import render_compliance_report

    start = datetime(2026, 11, 24)
    faces = [f for f in _in_window(fixture_db.faces, start, start + timedelta(days=1)) if f[1] == "cam-b"]
    html = _render(fixture_db, tmp_path, camera="cam-b")
    assert _metric(html, "faces") == str(len(faces))
    assert "cam-a" not in html
    with pytest.raises(MaskjobError, match="not after start"):
        render_compliance_report(fixture_db.engine, fixture_db.settings, DAY, DAY - timedelta(days=2))


def test_clean_reason_strips_paths() -> None:
    from maskjob.reporting.compliance_data import clean_reason

    assert clean_reason("/srv/inbox/cam1/a b.jpg: empty file (0 bytes)") == "empty file (0 bytes)"
    assert clean_reason("cam1/x.jpg: corrupt or truncated image (broken data)") == "corrupt or truncated image (broken data)"
    assert "/srv" not in clean_reason("decoder failed reading /srv/inbox/x.jpg")
    assert clean_reason(None) == "no reason recorded"


def test_unmigrated_database_gives_an_actionable_error(tmp_path: Path, settings_factory) -> None:
    from maskjob.reporting.compliance import render_compliance_report
    from maskjob.storage import database

    engine = database.make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(MaskjobError, match="maskjob db upgrade"):
        render_compliance_report(engine, settings_factory(), DAY, DAY, out_dir=tmp_path)
    engine.dispose()


def test_cli_writes_the_report_and_prints_its_path(fixture_db: Fixture, tmp_path: Path, monkeypatch, capsys) -> None:
    from maskjob.cli import main

    url = fixture_db.engine.url.render_as_string(hide_password=False)
    monkeypatch.setenv("MASKJOB_DATABASE_URL", url)
    monkeypatch.setenv("MASKJOB_INBOX_DIR", str(fixture_db.inbox))
    out = tmp_path / "cli"
    assert main(["--data-dir", str(tmp_path / "d"), "report", "--from", "2026-11-24", "--camera", "cam-a",
                 "--out", str(out), "--no-blur"]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed == out / "compliance_20261124_20261124_cam-a.html"
    assert "Faces are NOT blurred" in printed.read_text(encoding="utf-8")
    assert main(["--data-dir", str(tmp_path / "d"), "report", "--out", str(out)]) == 2
    assert "needs --from" in capsys.readouterr().err
    assert main(["--data-dir", str(tmp_path / "d"), "report", "model", "--from", "2026-11-24"]) == 2
    assert "--from applies to the compliance report" in capsys.readouterr().err
