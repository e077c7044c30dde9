"""The camera registry: each camera's zone, site and targets (table ``cameras``).

Unknown cameras seen in the inbox are registered with the site defaults
(:func:`ensure_cameras`, ``auto_registered``); ``maskjob cameras add|list|set`` edits the rest.

Example:
    >>> with engine.begin() as conn:                                        # doctest: +SKIP
    ...     add_camera(conn, "gate-1", timezone="Asia/Kolkata", settings=settings)
    ...     zones = camera_zones(conn, settings)
    ...     zones["gate-1"], zones["never-seen"]   # the site zone for unknown cameras
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from maskjob.config import Settings, bounds_text, within_bounds
from maskjob.errors import MaskjobError
from maskjob.storage.schema import Camera as CameraRow
from maskjob.timeutil import utcnow, zone

__all__ = [
    "Camera", "CameraZones", "EDITABLE", "add_camera", "camera_zones", "ensure_cameras", "get_camera",
    "list_cameras", "set_camera", "site_defaults",
]

# What `maskjob cameras add|set` may change (camera_id, auto_registered and the times are not).
EDITABLE = ("display_name", "site", "timezone", "expected_frames_per_hour", "compliance_target")


@dataclass(frozen=True)
class Camera:
    """One row of ``cameras``; ``expected_frames_per_hour`` ``None`` means no expectation."""

    camera_id: str
    display_name: str | None
    site: str | None
    timezone: str
    expected_frames_per_hour: float | None
    compliance_target: float
    auto_registered: bool
    created_at: datetime
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (times as ISO 8601 UTC)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["created_at"], out["updated_at"] = self.created_at.isoformat(), self.updated_at.isoformat()
        return out


class CameraZones(dict[str, ZoneInfo]):
    """Camera id -> zone; a camera not in the registry gets the site zone (``default``)."""

    def __init__(self, zones: Mapping[str, ZoneInfo], default: ZoneInfo) -> None:
        super().__init__(zones)
        self.default = default

    def __missing__(self, camera_id: str) -> ZoneInfo:
        return self.default


def _camera(row: Any) -> Camera:
    return Camera(**{f.name: getattr(row, f.name) for f in fields(Camera)})


def _checked(changes: Mapping[str, Any]) -> dict[str, Any]:
    """``changes`` validated; ``MaskjobError`` saying what to pass instead."""
    unknown = sorted(set(changes) - set(EDITABLE))
    if unknown:
        raise MaskjobError(f"cannot change {', '.join(unknown)} of a camera; changeable: {', '.join(EDITABLE)}")
    out = dict(changes)
    if "timezone" in out:
        try:
            zone(out["timezone"])
        except ValueError as exc:
            raise MaskjobError(f"bad camera time zone: {exc}; use a name from the IANA database") from None
    target = out.get("compliance_target")
    if "compliance_target" in out and not (isinstance(target, (int, float)) and not isinstance(target, bool)
                                           and within_bounds("default_compliance_target", target)):
        raise MaskjobError(f"bad compliance target {target!r}: expected a fraction "
                           f"{bounds_text('default_compliance_target')}, e.g. 0.9")
    rate = out.get("expected_frames_per_hour")
    if rate is not None and not (isinstance(rate, (int, float)) and not isinstance(rate, bool)
                                 and math.isfinite(rate) and within_bounds("default_expected_frames_per_hour", rate)):
        raise MaskjobError(f"bad expected frames per hour {rate!r}: expected a number "
                           f"{bounds_text('default_expected_frames_per_hour')} (0 or none: no expectation)")
    if rate == 0:
        out["expected_frames_per_hour"] = None
    for name in ("display_name", "site"):
        if out.get(name) is not None and not isinstance(out[name], str):
            raise MaskjobError(f"bad camera {name} {out[name]!r}: expected text")
    return out


def list_cameras(conn: Connection) -> list[Camera]:
    """Every registered camera, by id."""
    return [_camera(r) for r in conn.execute(sa.select(CameraRow.__table__).order_by(CameraRow.camera_id))]


def get_camera(conn: Connection, camera_id: str) -> Camera | None:
    """The camera ``camera_id``, or ``None``."""
    row = conn.execute(sa.select(CameraRow.__table__).where(CameraRow.camera_id == camera_id)).first()
    return None if row is None else _camera(row)


def site_defaults(settings: Settings) -> dict[str, Any]:
    """The fields a camera registered without them gets (and an unregistered camera is judged by);
    ``default_expected_frames_per_hour`` 0 means no expectation (``None``)."""
    return {"display_name": None, "site": None, "timezone": settings.site_timezone,
            "expected_frames_per_hour": settings.default_expected_frames_per_hour or None,
            "compliance_target": settings.default_compliance_target}


def add_camera(conn: Connection, camera_id: str, *, display_name: str | None = None, site: str | None = None,
               timezone: str | None = None, expected_frames_per_hour: float | None = None,
               compliance_target: float | None = None, settings: Settings) -> Camera:
    """Register ``camera_id``; unset fields take the site defaults from ``settings``.

    Raises:
        MaskjobError: the id is taken or empty, or a value is out of range.
    """
    if not isinstance(camera_id, str) or not camera_id.strip() or "/" in camera_id:
        raise MaskjobError(f"bad camera id {camera_id!r}: use the camera's inbox folder name")
    if get_camera(conn, camera_id) is not None:
        raise MaskjobError(f"camera {camera_id!r} is already registered; change it with `maskjob cameras set`")
    given = {"display_name": display_name, "site": site, "timezone": timezone,
             "expected_frames_per_hour": expected_frames_per_hour, "compliance_target": compliance_target}
    values = {**site_defaults(settings), **_checked({k: v for k, v in given.items() if v is not None})}
    now = utcnow()
    conn.execute(sa.insert(CameraRow).values(camera_id=camera_id, auto_registered=False, created_at=now,
                                             updated_at=now, **values))
    camera = get_camera(conn, camera_id)
    assert camera is not None
    return camera


def set_camera(conn: Connection, camera_id: str, /, **changes: Any) -> Camera:
    """Change fields of a registered camera (``None`` clears ``display_name``, ``site`` and
    ``expected_frames_per_hour``). A camera set by hand is no longer ``auto_registered``.

    Frames already stored keep the zone they were written with.

    Raises:
        MaskjobError: unknown camera, or a bad value.
    """
    if get_camera(conn, camera_id) is None:
        raise MaskjobError(f"no camera {camera_id!r} in the registry; see `maskjob cameras list`, "
                           "or add it with `maskjob cameras add`")
    values = _checked(changes)
    for required in ("timezone", "compliance_target"):
        if required in values and values[required] is None:
            raise MaskjobError(f"a camera's {required} cannot be cleared")
    conn.execute(sa.update(CameraRow).where(CameraRow.camera_id == camera_id)
                 .values(auto_registered=False, updated_at=utcnow(), **values))
    camera = get_camera(conn, camera_id)
    assert camera is not None
    return camera


def ensure_cameras(conn: Connection, camera_ids: Iterable[str], settings: Settings) -> list[str]:
    """Register the cameras of ``camera_ids`` not yet known, with the site defaults
    (``auto_registered``); the ids that were new, sorted. Safe against a concurrent run
    registering the same camera (``ON CONFLICT DO NOTHING``)."""
    from maskjob.storage.writes import upsert_ignore

    wanted = sorted(set(camera_ids))
    if not wanted:
        return []
    known = set(conn.execute(sa.select(CameraRow.camera_id).where(CameraRow.camera_id.in_(wanted))).scalars())
    now = utcnow()
    rows = [{"camera_id": c, **site_defaults(settings), "auto_registered": True, "created_at": now, "updated_at": now}
            for c in wanted if c not in known]
    if not rows:
        return []
    added = conn.execute(upsert_ignore(CameraRow, rows, conn.dialect).returning(CameraRow.camera_id)).scalars()
    return sorted(added)


def camera_zones(conn: Connection, settings: Settings) -> CameraZones:
    """Camera id -> ``ZoneInfo`` for every registered camera; unknown ids get the site zone."""
    rows = conn.execute(sa.select(CameraRow.camera_id, CameraRow.timezone)).all()
    return CameraZones({camera_id: zone(name) for camera_id, name in rows}, zone(settings.site_timezone))
