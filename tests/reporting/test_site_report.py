"""The site's report: local labels on a 25-hour day, per-camera targets, silent and
under-delivering cameras, and the per-camera figures the alerts share."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.reporting.site_data import DAY, DAY_END_UTC, DAY_START_UTC, DEFAULT_TARGET, TARGETS, build_site

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def site(db_url, settings_factory, tmp_path):
    built = build_site(db_url, settings_factory, tmp_path)
    yield built
    built.engine.dispose()


def _naive(moment):
    return moment.replace(tzinfo=None)


def test_figures_use_each_cameras_target_and_flag_silent_and_short_cameras(site):
    from maskjob.reporting.figures import load_figures

    figures = load_figures(site.engine, site.settings, _naive(DAY_START_UTC), _naive(DAY_END_UTC))
    assert figures.hours == 25
    by_id = {c.camera_id: c for c in figures.cameras}
    assert set(by_id) == {"gate", "hall", "roof", "walk-in"}
    gate, hall, roof, walk_in = (by_id[c] for c in ("gate", "hall", "roof", "walk-in"))
    # The frame at 23:30 the evening before is not in the local day.
    assert (gate.frames, gate.faces, gate.compliance, gate.target, gate.expected_frames) == (25, 25, 1.0, 0.5, 25.0)
    assert gate.problems == () and gate.status == "ok"
    assert (hall.frames, hall.with_mask, hall.without_mask, hall.target) == (10, 5, 5, TARGETS["hall"])
    assert hall.problems == ("below_target", "under_delivering")
    assert (roof.frames, roof.registered, roof.status, roof.compliance) == (0, True, "silent", None)
    assert (walk_in.registered, walk_in.target, walk_in.expected_frames) == (False, DEFAULT_TARGET, None)
    assert walk_in.partial_mask == 1 and walk_in.status == "below_target"
    assert [c.camera_id for c in figures.cameras] == ["roof", "hall", "walk-in", "gate"]  # worst first
    assert figures.unreadable == 0 and not figures.unreadable_spike


def test_one_camera_report_keeps_only_that_cameras_figures(site):
    from maskjob.reporting.figures import load_figures

    figures = load_figures(site.engine, site.settings, _naive(DAY_START_UTC), _naive(DAY_END_UTC), camera="roof")
    assert [(c.camera_id, c.status) for c in figures.cameras] == [("roof", "silent")]


def _metric_cells(html: str, camera: str, metric: str) -> str:
    row = re.search(rf'<tr data-camera="{re.escape(camera)}">(.*?)</tr>', html, re.S)
    assert row, f"no row for {camera}"
    return re.search(rf'data-metric="{metric}"[^>]*>([^<]*)<', row[1])[1].strip()


def test_report_labels_local_times_targets_and_delivery(site, tmp_path: Path):
    from maskjob.reporting.compliance import render_compliance_report

    path = render_compliance_report(site.engine, site.settings, DAY, DAY, out_dir=tmp_path / "out")
    assert path.name == "compliance_20261025_20261025.html"
    html = path.read_text(encoding="utf-8")
    assert "Mask compliance: 25 Oct 2026" in html
    # Local midnight to local midnight, with the zone, and the UTC instants beside them.
    assert "Window 2026-10-25 00:00 CEST to 2026-10-26 00:00 CET (Europe/Berlin;" in html
    assert "2026-10-24 22:00 UTC to 2026-10-25 23:00 UTC" in html
    # Per-camera targets, no 90 % anywhere unless a camera has it.
    assert _metric_cells(html, "gate", "camera_target") == "50.0%"
    assert _metric_cells(html, "hall", "camera_target") == "95.0%"
    assert _metric_cells(html, "walk-in", "camera_target") == "80.0%"
    assert _metric_cells(html, "hall", "camera_status") == "below target"
    assert _metric_cells(html, "gate", "camera_status") == "ok"
    assert 'class="num bad" data-metric="camera_rate">50.0%' in html  # hall: below its 95 %
    assert 'class="num " data-metric="camera_rate">100.0%' in html  # gate: above its 50 %
    assert "90.0%" not in html
    # Headline against the site target (default_compliance_target): 32 of 38 faces masked.
    assert re.search(r'class="value good" data-metric="rate">84\.2%', html)
    assert re.search(r'data-metric="site_target">80\.0%', html)
    # Silent and under-delivering cameras, with what was expected over the 25 hours.
    silent = re.findall(r'<tr data-silent="([^"]+)"><td class="bad">[^<]+</td><td class="num">([^<]+)</td>', html)
    assert silent == [("roof", "25")]
    under = re.findall(r'<tr data-under="([^"]+)">.*?<td class="num">(\d+)</td><td class="num">(\d+)</td>', html)
    assert under == [("hall", "10", "25")]
    assert "× 25 hours" in html


def test_report_on_a_day_with_only_silent_cameras_still_lists_them(site, tmp_path: Path):
    from datetime import timedelta

    from maskjob.reporting.compliance import render_compliance_report

    path = render_compliance_report(site.engine, site.settings, DAY + timedelta(days=3), DAY + timedelta(days=3),
                                    out_dir=tmp_path / "out")
    html = path.read_text(encoding="utf-8")
    assert "No frames were scored in this window." in html
    assert sorted(re.findall(r'data-silent="([^"]+)"', html)) == ["gate", "hall", "roof"]
    assert "2026-10-28 00:00 CET" in html
