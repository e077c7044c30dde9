"""A small site in Europe/Berlin on the day clocks go back (25 hours), written row by row.

Cameras (targets and expected frames per hour in the ``cameras`` table):
- ``gate``: registered, target 50 %, 1 frame/h expected, 25 frames, every face masked: fine.
- ``hall``: registered, target 95 %, 1 frame/h expected, 10 frames, half masked: below target
  and under-delivering.
- ``roof``: registered, no frame at all: silent.
- ``walk-in``: not registered (site default target 80 %), 3 faces, 2 masked: below target.
Each camera also has one frame just outside the local day (23:30 the evening before).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

SITE_ZONE = "Europe/Berlin"
DAY = date(2026, 10, 25)  # CEST -> CET at 03:00 local: a 25-hour day
TZ = ZoneInfo(SITE_ZONE)
DAY_START_UTC = datetime.combine(DAY, time(), tzinfo=TZ).astimezone(UTC)
DAY_END_UTC = datetime.combine(DAY + timedelta(days=1), time(), tzinfo=TZ).astimezone(UTC)
TARGETS = {"gate": 0.5, "hall": 0.95, "roof": 0.7}
DEFAULT_TARGET = 0.8


@dataclass(frozen=True)
class Site:
    engine: Any
    settings: Any


def _masks(camera: str, i: int) -> list[str]:
    if camera == "gate":
        return ["with_mask"]
    if camera == "hall":
        return ["with_mask" if i % 2 == 0 else "without_mask"]
    return ["with_mask" if i < 2 else "partial_mask"]


def build_site(db_url: str, settings_factory: Any, tmp_path: Any, **overrides: Any) -> Site:
    """Migrate ``db_url`` and write the site described above."""
    from maskjob.storage import database, schema
    from maskjob.storage.cameras import add_camera
    from maskjob.timeutil import local_facts

    database.upgrade(db_url)
    engine = database.make_engine(db_url)
    settings = settings_factory(inbox_dir=tmp_path / "inbox", site_timezone=SITE_ZONE,
                                default_compliance_target=DEFAULT_TARGET, **overrides)
    with engine.begin() as conn:
        for camera, target in TARGETS.items():
            add_camera(conn, camera, compliance_target=target, expected_frames_per_hour=1.0, settings=settings)
    counts = {"gate": 25, "hall": 10, "walk-in": 3}
    with database.session(engine) as s:
        model = schema.ModelVersion(version="cnn-0001", arch="cnn", checkpoint_path="/m/cnn.pt",
                                    checkpoint_sha256="c" * 64, metrics={}, test_macro_f1=0.9, diverged=False,
                                    created_at=datetime(2026, 10, 1, tzinfo=UTC), status="champion")
        s.add(model)
        s.flush()
        for camera, n in counts.items():
            # One frame per UTC hour from the local midnight on, plus one the evening before.
            moments = [DAY_START_UTC + timedelta(hours=i, minutes=30) for i in range(n)]
            moments.append(DAY_START_UTC - timedelta(minutes=30))
            for i, when in enumerate(moments):
                local_day, offset = local_facts(when, TZ)
                labels = _masks(camera, i)
                image = schema.Image(path=f"{camera}/{i:03d}.jpg", camera_id=camera, captured_at=when, width=320,
                                     height=240, status="ok", n_faces=len(labels), model_version_id=model.id,
                                     scored_at=DAY_END_UTC, timezone=SITE_ZONE, utc_offset_s=offset,
                                     local_day=local_day)
                for k, label in enumerate(labels):
                    image.faces.append(schema.Face(
                        face_index=k, x1=10, y1=10, x2=60, y2=60, detector_score=0.9, label=label,
                        p_with_mask=0.9 if label == "with_mask" else 0.05,
                        p_without_mask=0.9 if label == "without_mask" else 0.05,
                        p_partial_mask=0.9 if label == "partial_mask" else 0.05,
                        confidence=0.9, model_version_id=model.id))
                s.add(image)
    return Site(engine, settings)
