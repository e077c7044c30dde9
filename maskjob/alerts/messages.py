"""The alert messages: a failed run and a compliance problem, as subject + plain text + HTML.

Pure functions of their figures (no Airflow, no database), so the text a site receives is
tested without sending anything. Every line is plain text; the HTML part is the same lines
escaped, so a hostile camera id or error message is shown, never interpreted.

Example:
    >>> alert = compliance_alert(site, "/data/reports/compliance_20261124.html", "Europe/Berlin")  # doctest: +SKIP
    >>> alert.subject
    '[maskjob] compliance alert 24 Nov 2026: 1 camera below target, 1 silent'
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Sequence

from maskjob.config import redact
from maskjob.timeutil import zone

if TYPE_CHECKING:  # the DAG imports this module at parse time: no pandas there
    from maskjob.reporting.figures import CameraFigures, SiteFigures

__all__ = ["Alert", "FailedTask", "compliance_alert", "failure_alert", "window_text"]

SUBJECT_PREFIX = "[maskjob]"
# An error's first lines are enough to act on; the rest is in the task log.
MAX_ERROR_LINES = 12


@dataclass(frozen=True)
class Alert:
    """One message: ``subject``, ``text`` (plain), ``kind`` (``failure`` | ``compliance``) and ``facts``
    (JSON-able figures for notifiers that format their own message)."""

    kind: str
    subject: str
    text: str
    facts: dict[str, Any]

    @property
    def html(self) -> str:
        """The text as an escaped HTML body (e-mail clients show it in a fixed-width block)."""
        return f'<pre style="font-family: monospace">{html.escape(self.text)}</pre>'

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "subject": self.subject, "text": self.text, "facts": self.facts}


@dataclass(frozen=True)
class FailedTask:
    """A task that failed after its retries: its label (``score_shard[1]``), error and log address."""

    label: str
    error: str | None
    log_url: str | None = None


def _local(moment: datetime, tz_name: str) -> datetime:
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(zone(tz_name))


def window_text(start: datetime, end: datetime, tz_name: str) -> str:
    """``2026-11-24 00:00 CET to 2026-11-25 00:00 CET (Europe/Berlin, 24 h)``."""
    hours = (end - start).total_seconds() / 3600.0
    return (f"{_local(start, tz_name):%Y-%m-%d %H:%M %Z} to {_local(end, tz_name):%Y-%m-%d %H:%M %Z} "
            f"({tz_name}, {hours:g} h)")


def _one_line(text: str) -> str:
    """A header-safe subject: no line breaks (a run id or error could hold one)."""
    return " ".join(text.split())


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _error_lines(error: str | None) -> list[str]:
    if not error:
        return ["      (no error message recorded; see the task log)"]
    lines = redact(error).strip().splitlines() or ["(empty message)"]
    if len(lines) > MAX_ERROR_LINES:
        lines = [*lines[:MAX_ERROR_LINES], f"... ({len(lines) - MAX_ERROR_LINES} more lines in the task log)"]
    return [f"      {line}" for line in lines]


def failure_alert(dag_id: str, run_id: str, failed: Sequence[FailedTask], *, start: datetime | None,
                  end: datetime | None, tz_name: str, log_path: str | None = None) -> Alert:
    """The one message for a failed DAG run, naming the run, each failed task, its error and logs."""
    names = ", ".join(t.label for t in failed) or "an unknown task"
    lines = [f"The {dag_id} run {run_id} failed at {names} (after retries)."]
    if start is not None and end is not None:
        lines.append(f"Interval: {window_text(start, end, tz_name)}")
    lines += ["", "Failed tasks:"]
    for task in failed:
        lines.append(f"  - {task.label}:")
        lines += _error_lines(task.error)
        if task.log_url:
            lines.append(f"      log: {task.log_url}")
    lines.append("")
    if log_path:
        lines.append(f"Full log: {log_path}")
    lines.append(f"Airflow: the task logs of DAG {dag_id}, run {run_id}. "
                 "No compliance report was published for this run.")
    lines.append("Fix the cause, then clear the failed tasks or trigger the run again; re-runs are idempotent.")
    facts = {"dag_id": dag_id, "run_id": run_id, "failed_tasks": [t.label for t in failed],
             "interval_start": start.isoformat() if start else None, "interval_end": end.isoformat() if end else None}
    subject = f"{SUBJECT_PREFIX} {dag_id} run failed at {names}: {run_id}"
    return Alert(kind="failure", subject=_one_line(redact(subject)), text=redact("\n".join(lines)), facts=facts)


def _camera_line(c: CameraFigures) -> str:
    expected = "no expectation" if c.expected_frames is None else f"expected {c.expected_frames:,.0f}"
    return (f"  - {c.camera_id}: compliance {_pct(c.compliance)} (target {_pct(c.target)}), {c.faces:,} faces "
            f"({c.without_mask:,} without mask, {c.partial_mask:,} partial), {c.frames:,} frames ({expected}), "
            f"{c.unreadable:,} unreadable")


def _summary(site: SiteFigures) -> list[str]:
    parts = []
    below, silent = site.by_status("below_target"), site.by_status("silent")
    if below:
        parts.append(f"{len(below)} camera{'s' if len(below) > 1 else ''} below target")
    if silent:
        parts.append(f"{len(silent)} silent")
    if site.unreadable_spike:
        parts.append(f"{_pct(site.unreadable_fraction)} unreadable frames")
    return parts


def compliance_alert(site: SiteFigures, report_path: str, tz_name: str, run_id: str | None = None) -> Alert | None:
    """The compliance message for a window, or ``None`` when every camera is fine.

    It alerts on cameras below their target, registered cameras that sent no frame (silent),
    and unreadable frames above ``alert_unreadable_fraction``; under-delivering cameras are
    listed in it but alone do not send one (the report shows them).
    """
    summary = _summary(site)
    if not summary:
        return None
    day = _local(site.start, tz_name)
    one_day = (site.end - site.start).total_seconds() <= 25 * 3600  # a local day, DST days included
    title = f"{day:%d %b %Y}" if one_day else window_text(site.start, site.end, tz_name)
    lines = [f"Mask compliance alert for {window_text(site.start, site.end, tz_name)}."]
    if run_id:
        lines.append(f"DAG run: {run_id}")
    lines += [f"Report: {report_path}", ""]
    sections = (("Cameras below their compliance target", "below_target"),
                ("Silent cameras (registered, no frame)", "silent"),
                ("Under-delivering cameras (fewer frames than expected)", "under_delivering"))
    for heading, status in sections:
        cameras = site.by_status(status)
        if cameras:
            lines.append(f"{heading}:")
            lines += [_camera_line(c) for c in cameras]
            lines.append("")
    lines.append(f"Unreadable frames: {site.unreadable:,} of {site.frames:,} ({_pct(site.unreadable_fraction)}; "
                 f"alert above {_pct(site.unreadable_limit)})" + (": SPIKE" if site.unreadable_spike else ""))
    facts = {"report_path": report_path, "run_id": run_id, "interval_start": site.start.isoformat(),
             "interval_end": site.end.isoformat(), "cameras": [c.to_dict() for c in site.problems],
             "frames": site.frames, "unreadable": site.unreadable, "unreadable_fraction": site.unreadable_fraction}
    subject = f"{SUBJECT_PREFIX} compliance alert {title}: {', '.join(summary)}"
    return Alert(kind="compliance", subject=_one_line(subject), text="\n".join(lines), facts=facts)
