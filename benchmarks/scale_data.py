"""A year of a 20-camera site, generated inside the database (PostgreSQL or SQLite).

Python computes only a small plan (one row per camera and local day: how many frames, when
the camera's day starts, the UTC offset) and the camera profiles; ``INSERT ... SELECT``
statements then generate every image and face row in the database. Each row's randomness is
a hash of its key (:func:`uniform`), so a size gives the same data on every run and on both
databases, and the images' label counts agree with their faces without a second pass.

The shape: frames in each camera's opening hours (fewer at weekends, busier cameras get
more), 1-3 faces per readable frame with faces (40/40/20 %), 6-14 % ``no_face`` frames by
camera, ~2 % ``unreadable`` (one camera 5 %) with four reasons, per-camera compliance from
55 % to 95 %; the nightly runs of model 1 score every frame, and a newer model 2 rescored the
last ``rescore_days`` days after the year (its labels differ on a few percent of faces), so
the views must choose each frame's latest scoring.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, time as clock, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from maskjob.storage import schema
from maskjob.timeutil import local_facts, localize, offset_text, zone

__all__ = ["ZONE", "Shape", "generate", "uniform"]

logger = logging.getLogger(__name__)

N_CAMERAS = 20
ZONE = "Europe/Berlin"
FACES_PER_OK_FRAME = 1.8  # 1, 2, 3 faces with p = 0.4, 0.4, 0.2
WEEKDAY_FACTOR = (1.0, 1.0, 1.0, 1.0, 1.0, 0.7, 0.5)
# Reasons the frame reader gives (maskjob.imageio), with their cumulative shares.
REASONS = (
    (0.55, "corrupt or truncated image (image file is truncated (33 bytes not processed))"),
    (0.80, "empty file (0 bytes)"),
    (0.95, "not a recognised image format (is it really an image?)"),
    (1.00, "corrupt image: the decoder failed (broken data stream when reading image file)"),
)
MODEL_VERSIONS = ("mobilenet_v2-2025-11", "mobilenet_v2-2026-11")
LABEL_CODES = dict(enumerate(("with_mask", "without_mask", "partial_mask")))
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Shape:
    """What to generate: about ``faces`` face rows (both scorings) over ``first_day..last_day``."""

    faces: int
    first_day: date = date(2025, 11, 25)
    last_day: date = date(2026, 11, 24)
    rescore_days: int = 30

    @property
    def rescore_from(self) -> date:
        """The first local day model 2 rescored."""
        return self.last_day - timedelta(days=self.rescore_days - 1)

    @property
    def rescored_at(self) -> datetime:
        """When model 2's backfill ran: the night after the last day."""
        return datetime.combine(self.last_day + timedelta(days=1), clock(3), tzinfo=UTC)


def uniform(key: int, salt: int) -> float:
    """A uniform number in [0, 1) from ``key`` and ``salt`` (splitmix64): SQLite's generator."""
    z = (key * 0x9E3779B97F4A7C15 + salt * 0xBF58476D1CE4E5B9 + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return ((z ^ (z >> 31)) >> 11) / 9007199254740992


def label_code(key: int, with_mask_share: float) -> int:
    """0 with_mask, 1 without_mask, 2 partial_mask: with_mask at ``with_mask_share``, the rest 70/30."""
    x = uniform(key, 5)
    return 0 if x < with_mask_share else 1 if x < with_mask_share + (1 - with_mask_share) * 0.7 else 2


def _camera_rows() -> list[dict[str, Any]]:
    """Each camera's profile: share of the traffic, opening hours, failure rates, compliance."""
    rows = []
    for c in range(N_CAMERAS):
        spread = lambda mult: ((c * mult) % N_CAMERAS) / (N_CAMERAS - 1)  # noqa: E731 (a fixed permutation)
        p1 = 0.55 + 0.40 * spread(11)
        rows.append({"camera_id": f"cam-{c + 1:02d}", "weight": 0.6 + 0.8 * spread(7),
                     "opens_s": 6 * 3600 + (c % 4) * 1800, "span_s": (14 - c % 3) * 3600,
                     "nf": 0.06 + 0.08 * spread(3), "ur": 0.05 if c == 12 else 0.015,
                     "p1": p1, "p2": max(0.0, p1 - 0.03)})
    return rows


def _plan(shape: Shape, cameras: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (local day, camera), in the order nightly scoring inserts them, with frame counts
    scaled so the database holds about ``shape.faces`` faces, and the ids of its frames."""
    rng = np.random.default_rng(0)
    tz = zone(ZONE)
    days = [shape.first_day + timedelta(days=d) for d in range((shape.last_day - shape.first_day).days + 1)]
    raw = rng.uniform(0.9, 1.1, (len(days), len(cameras)))
    for d, day in enumerate(days):
        raw[d] *= WEEKDAY_FACTOR[day.weekday()]
    weight = np.array([c["weight"] for c in cameras])
    faces_per_frame = np.array([(1 - c["nf"] - c["ur"]) * FACES_PER_OK_FRAME for c in cameras])
    scorings = np.array([2.0 if day >= shape.rescore_from else 1.0 for day in days])
    base = shape.faces / float((raw * weight * faces_per_frame * scorings[:, None]).sum())
    rows, next_id = [], 1
    for d, day in enumerate(days):
        night = localize(datetime.combine(day + timedelta(days=1), clock(0, 30)), tz)
        for c, cam in enumerate(cameras):
            n = max(1, int(round(base * raw[d, c] * weight[c])))
            opens = localize(datetime.combine(day, clock()) + timedelta(seconds=cam["opens_s"]), tz)
            offset_s = local_facts(opens, tz)[1]
            rows.append({"day_index": d, "local_day": day.isoformat(), "camera_id": cam["camera_id"], "n_frames": n,
                         "first_id": next_id, "start_epoch": opens.timestamp(), "step_s": cam["span_s"] / n,
                         "offset_s": offset_s, "offset_text": offset_text(offset_s).replace(":", ""),
                         "scored_epoch": night.timestamp() + c * 120, "run_id": d + 1})
            next_id += n
    return rows


# Per dialect: the generator's functions. PostgreSQL gets them as session-local SQL functions,
# which the planner inlines only when declared no less volatile than their bodies (convert_to,
# to_char and the date cast are STABLE: declared IMMUTABLE they run 2x slower, not inlined);
# SQLite gets Python functions on the connection.
PG_FUNCTIONS = """
CREATE FUNCTION pg_temp.u(k bigint, salt int) RETURNS float8 IMMUTABLE LANGUAGE sql AS
  $$ SELECT ((hashint8extended(k, salt) >> 11) & 9007199254740991)::float8 / 9007199254740992 $$;
CREATE FUNCTION pg_temp.label_code(k bigint, share float8) RETURNS int IMMUTABLE LANGUAGE sql AS
  $$ SELECT CASE WHEN pg_temp.u(k, 5) < share THEN 0 WHEN pg_temp.u(k, 5) < share + (1 - share) * 0.7 THEN 1
            ELSE 2 END $$;
CREATE FUNCTION pg_temp.sha_hex(t text) RETURNS text STABLE LANGUAGE sql AS
  $$ SELECT encode(sha256(convert_to(t, 'UTF8')), 'hex') $$;
CREATE FUNCTION pg_temp.utc(e float8) RETURNS timestamptz STABLE LANGUAGE sql AS $$ SELECT to_timestamp(e) $$;
CREATE FUNCTION pg_temp.wall_name(e bigint) RETURNS text STABLE LANGUAGE sql AS
  $$ SELECT to_char(to_timestamp(e) AT TIME ZONE 'UTC', 'YYYYMMDD"T"HH24MISS') $$;
CREATE FUNCTION pg_temp.day(t text) RETURNS date STABLE LANGUAGE sql AS $$ SELECT CAST(t AS date) $$;
"""


def _sqlite_utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00:00")


SQLITE_FUNCTIONS = {
    "u": (2, uniform),
    "label_code": (2, label_code),
    "sha_hex": (1, lambda text: hashlib.sha256(text.encode()).hexdigest()),
    "utc": (1, _sqlite_utc),
    "wall_name": (1, lambda epoch: datetime.fromtimestamp(epoch, UTC).strftime("%Y%m%dT%H%M%S")),
    "day": (1, lambda text: text),
}


def _install_functions(conn: Connection) -> str:
    """Create the generator's functions for this connection; returns the prefix to call them by."""
    if conn.dialect.name == "postgresql":
        # The faces statements' row estimates are far too high (a join on s.i < n_faces), which
        # would JIT-compile each of them: a second per statement, more than its run time.
        conn.exec_driver_sql("SET LOCAL jit = off")
        for statement in PG_FUNCTIONS.split(";\n"):
            if statement.strip():
                conn.exec_driver_sql(statement)
        return "pg_temp."
    raw = conn.connection.driver_connection
    for name, (n_args, fn) in SQLITE_FUNCTIONS.items():
        raw.create_function(name, n_args, fn, deterministic=True)
    return ""


def _temp_tables(conn: Connection, plan: list[dict[str, Any]], cameras: list[dict[str, Any]]) -> None:
    conn.exec_driver_sql("CREATE TEMP TABLE bench_cams (camera_id TEXT PRIMARY KEY, weight FLOAT, opens_s INTEGER, "
                         "span_s INTEGER, nf FLOAT, ur FLOAT, p1 FLOAT, p2 FLOAT)")
    conn.exec_driver_sql("CREATE TEMP TABLE bench_plan (day_index INTEGER, local_day TEXT, camera_id TEXT, "
                         "n_frames INTEGER, first_id BIGINT, start_epoch FLOAT, step_s FLOAT, offset_s INTEGER, "
                         "offset_text TEXT, scored_epoch FLOAT, run_id INTEGER)")
    conn.exec_driver_sql("CREATE TEMP TABLE bench_seq (i INTEGER PRIMARY KEY)")
    for table, rows in (("bench_cams", cameras), ("bench_plan", plan),
                        ("bench_seq", [{"i": i} for i in range(max(p["n_frames"] for p in plan))])):
        names = list(rows[0])
        conn.execute(sa.text(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(':' + n for n in names)})"),
                     rows)
    conn.exec_driver_sql("ANALYZE bench_cams, bench_plan, bench_seq" if conn.dialect.name == "postgresql"
                         else "ANALYZE bench_cams")


def _label_counts(f: str, key: str, share: str) -> str:
    """n_with_mask, n_without_mask, n_partial_mask of a frame, from the same hashes as its faces."""
    return ", ".join(
        " + ".join(f"CASE WHEN n_faces > {k} AND {f}label_code({key} * 4 + {k}, {share}) = {code} THEN 1 ELSE 0 END"
                   for k in range(3))
        for code in LABEL_CODES)


def _face_confidence(f: str, key: str) -> str:
    """The confidence of the face whose hash key is ``key``: one expression for faces and images, same float."""
    return f"1 - 0.6 * {f}u({key}, 10 + :model) * {f}u({key}, 10 + :model)"


def _confidence_extremes(f: str, share: str) -> str:
    """top_violation_confidence, min_confidence, max_confidence of a frame (migration 0006), from the same
    hashes as its faces."""
    conf = _face_confidence(f, "key * 4 + s.i")
    return (f"(SELECT MAX(CASE WHEN {f}label_code(key * 4 + s.i, {share}) <> 0 THEN {conf} END) "
            f"FROM bench_seq AS s WHERE s.i < n_faces), "
            f"(SELECT MIN({conf}) FROM bench_seq AS s WHERE s.i < n_faces), "
            f"(SELECT MAX({conf}) FROM bench_seq AS s WHERE s.i < n_faces)")


def _reason(f: str) -> str:
    cases = " ".join(f"WHEN {f}u(key, 3) < {edge} THEN '{text}'" for edge, text in REASONS)
    return f"CASE WHEN status = 'unreadable' THEN CASE {cases} END END"


def _frames_sql(f: str) -> str:
    """The planned frames of local days ``:first_day..:last_day`` (day indexes): ``key`` is the
    frame's id in model 1's scoring; status, time, path and face count follow from it."""
    return f"""
SELECT *, CASE WHEN status = 'ok' THEN 1 + CASE WHEN {f}u(key, 4) >= 0.4 THEN 1 ELSE 0 END
                                        + CASE WHEN {f}u(key, 4) >= 0.8 THEN 1 ELSE 0 END ELSE 0 END AS n_faces,
       camera_id || '/' || local_day || '/' || {f}wall_name(t + offset_s) || offset_text || '.jpg' AS path
FROM (
  SELECT *, CASE WHEN {f}u(key, 2) < ur THEN 'unreadable' WHEN {f}u(key, 2) < ur + nf THEN 'no_face'
                 ELSE 'ok' END AS status,
         CAST(start_epoch + (i + 0.25 + 0.5 * {f}u(key, 1)) * step_s AS BIGINT) AS t
  FROM (
    SELECT p.first_id + s.i AS key, s.i, p.camera_id, p.local_day, p.start_epoch, p.step_s, p.offset_s,
           p.offset_text, p.scored_epoch, p.run_id, c.ur, c.nf, c.p1, c.p2
    FROM bench_plan AS p JOIN bench_seq AS s ON s.i < p.n_frames JOIN bench_cams AS c ON c.camera_id = p.camera_id
    WHERE p.day_index BETWEEN :first_day AND :last_day
  ) AS planned
) AS timed"""


IMAGE_COLUMNS = ("id, path, path_key, content_sha256, camera_id, captured_at, width, height, status, reason, "
                 "n_faces, n_with_mask, n_without_mask, n_partial_mask, top_violation_confidence, min_confidence, "
                 "max_confidence, "
                 "model_version_id, scoring_run_id, "
                 "scored_at, timezone, utc_offset_s, local_day")


def _images_sql(f: str, share: str, run: str, scored_at: str) -> str:
    """One model's image rows for the planned frames, ids ``key + :shift``, in id order."""
    return f"""
INSERT INTO images ({IMAGE_COLUMNS})
SELECT key + :shift, path, {f}sha_hex(path), {f}sha_hex('frame ' || path), camera_id, {f}utc(t),
       CASE WHEN status = 'unreadable' THEN NULL ELSE 640 END, CASE WHEN status = 'unreadable' THEN NULL ELSE 480 END,
       status, {_reason(f)}, n_faces, {_label_counts(f, 'key', share)}, {_confidence_extremes(f, share)},
       :model, {run}, {f}utc({scored_at}), :zone, offset_s, {f}day(local_day)
FROM ({_frames_sql(f)}) AS frames
ORDER BY key"""


def _faces_sql(f: str, share: str) -> str:
    """One model's faces of the planned frames (frame ids ``key + :shift``), in id order."""
    probability = lambda code: f"CASE WHEN code = {code} THEN conf ELSE (1 - conf) / 2 END"  # noqa: E731
    labels = " ".join(f"WHEN {code} THEN '{name}'" for code, name in LABEL_CODES.items())
    return f"""
INSERT INTO faces (image_id, face_index, x1, y1, x2, y2, detector_score, label, p_with_mask, p_without_mask,
                   p_partial_mask, confidence, model_version_id)
SELECT image_id, k, x1, y1, x1 + size, y1 + size * 5 / 4, 0.9 + 0.0999 * {f}u(key, 9), CASE code {labels} END,
       {probability(0)}, {probability(1)}, {probability(2)}, conf, :model
FROM (
  SELECT image_id, k, key, {f}label_code(key, share) AS code,
         {_face_confidence(f, 'key')} AS conf,
         40 + 180 * k + CAST({f}u(key, 6) * 60 AS INTEGER) AS x1, 100 + CAST({f}u(key, 7) * 120 AS INTEGER) AS y1,
         60 + CAST({f}u(key, 8) * 80 AS INTEGER) AS size
  FROM (SELECT fr.key + :shift AS image_id, s.i AS k, fr.key * 4 + s.i AS key, fr.{share} AS share
        FROM ({_frames_sql(f)}) AS fr JOIN bench_seq AS s ON s.i < fr.n_faces) AS slots
) AS labelled
ORDER BY image_id, k"""


def _registry_rows(conn: Connection, shape: Shape, plan: list[dict[str, Any]],
                   cameras: list[dict[str, Any]]) -> list[int]:
    """Model versions, promotion decisions, scoring runs and cameras; returns the two model ids."""
    created = datetime.combine(shape.first_day - timedelta(days=7), clock(), tzinfo=UTC)
    models = []
    for n, version in enumerate(MODEL_VERSIONS):
        models.append(conn.execute(sa.insert(schema.ModelVersion).values(
            version=version, arch="mobilenet_v2", checkpoint_path=f"/models/{version}.pt",
            checkpoint_sha256=hashlib.sha256(version.encode()).hexdigest(), metrics={"macro_f1": 0.91 + 0.02 * n},
            test_macro_f1=0.91 + 0.02 * n, diverged=False, created_at=created if n == 0 else shape.rescored_at,
            status="retired" if n == 0 else "champion", promoted_at=created if n == 0 else shape.rescored_at,
        )).inserted_primary_key[0])
    for n, model in enumerate(models):
        conn.execute(sa.insert(schema.PromotionDecision).values(
            decided_at=created if n == 0 else shape.rescored_at, candidate_id=model,
            champion_before_id=None if n == 0 else models[0], promoted=True, candidate_macro_f1=0.91 + 0.02 * n,
            champion_macro_f1=None if n == 0 else 0.91, reason="first model" if n == 0 else "beats the champion"))
    nights = sorted({(p["run_id"], p["local_day"], p["scored_epoch"]) for p in plan if p["camera_id"] == "cam-01"})
    runs = [{"id": run, "interval_start": datetime.fromisoformat(day).replace(tzinfo=UTC),
             "interval_end": datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(days=1),
             "model_version_id": models[0], "started_at": datetime.fromtimestamp(epoch, UTC),
             "finished_at": datetime.fromtimestamp(epoch + 3600, UTC), "status": "succeeded"}
            for run, day, epoch in nights]
    runs.append({"id": len(runs) + 1, "interval_start": datetime.combine(shape.rescore_from, clock(), tzinfo=UTC),
                 "interval_end": datetime.combine(shape.last_day + timedelta(days=1), clock(), tzinfo=UTC),
                 "model_version_id": models[1], "started_at": shape.rescored_at,
                 "finished_at": shape.rescored_at + timedelta(hours=2), "status": "succeeded"})
    conn.execute(sa.insert(schema.ScoringRun), runs)
    conn.execute(sa.insert(schema.Camera), [
        {"camera_id": c["camera_id"], "display_name": f"Entrance {c['camera_id'][-2:]}", "site": "bench-site",
         "timezone": ZONE, "expected_frames_per_hour": None, "compliance_target": 0.9, "auto_registered": False,
         "created_at": created, "updated_at": created} for c in cameras])
    return models


def _insert_days(conn: Connection, what: str, sql: str, params: dict[str, Any], days: range) -> int:
    """Run ``sql`` for each local day of ``days`` (one sort in memory each); returns the rows inserted."""
    began, rows = time.perf_counter(), 0
    for d in days:
        rows += conn.execute(sa.text(sql), {**params, "first_day": d, "last_day": d}).rowcount
        if d % 30 == 29:
            logger.info("%s: %d rows up to day %d (%.0f s)", what, rows, d + 1, time.perf_counter() - began)
    logger.info("%s: %d rows in %.1f s", what, rows, time.perf_counter() - began)
    return rows


def generate(conn: Connection, shape: Shape) -> dict[str, int]:
    """Insert the registry rows and the year's images and faces on ``conn`` (one transaction).

    Returns:
        Row counts: ``images`` and ``faces`` (both scorings) and ``frames`` (distinct paths).
    """
    cameras = _camera_rows()
    plan = _plan(shape, cameras)
    models = _registry_rows(conn, shape, plan, cameras)
    f = _install_functions(conn)
    _temp_tables(conn, plan, cameras)
    n_days = plan[-1]["day_index"] + 1
    rescored = range(n_days - shape.rescore_days, n_days)
    first_id = min(p["first_id"] for p in plan if p["day_index"] == rescored.start)
    frames = plan[-1]["first_id"] + plan[-1]["n_frames"] - 1
    shift = frames - first_id + 1
    first = {"model": models[0], "zone": ZONE, "shift": 0}
    second = {"model": models[1], "zone": ZONE, "shift": shift, "run": plan[-1]["run_id"] + 1,
              "first_id": first_id, "rescored_epoch": shape.rescored_at.timestamp()}
    images = _insert_days(conn, "model 1 images", _images_sql(f, "p1", "run_id", "scored_epoch + i * 0.05"),
                          first, range(n_days))
    images += _insert_days(conn, "model 2 images",
                           _images_sql(f, "p2", ":run", ":rescored_epoch + (key - :first_id) * 0.01"), second, rescored)
    faces = _insert_days(conn, "model 1 faces", _faces_sql(f, "p1"), first, range(n_days))
    faces += _insert_days(conn, "model 2 faces", _faces_sql(f, "p2"), second, rescored)
    for table in ("bench_seq", "bench_plan", "bench_cams"):
        conn.exec_driver_sql(f"DROP TABLE {table}")
    return {"images": images, "faces": faces, "frames": frames}
