"""Both reports opened from disk in headless Debian Chromium: they load cleanly, fetch nothing,
and every chart and picture actually renders."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from PIL import Image as PILImage

from tests.reporting.site_data import DAY as SITE_DAY
from tests.reporting.site_data import build_site
from tests.reporting.test_model_report import registered  # noqa: F401 (fixture)
from tests.reporting.test_report import HOSTILE, _build
from tests.reporting.test_report_reviews import build_site as build_reviewed_site
from tests.reporting.test_report_reviews import review_all

CHROMIUM = Path("/usr/bin/chromium")
# No network, no background services, no GPU: the page must stand on its own.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (scripts/setup.sh --test)")
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def _open(browser, html_path: Path, shot: Path) -> tuple[object, dict]:
    """Open ``html_path`` in a fresh context; return the page and what it logged and requested."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    seen: dict[str, list] = {"console_errors": [], "page_errors": [], "requests": [], "dialogs": []}
    page.on("console", lambda m: seen["console_errors"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen["page_errors"].append(str(e)))
    page.on("request", lambda r: seen["requests"].append(r.url))
    page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
    page.goto(html_path.as_uri(), wait_until="load")
    page.screenshot(path=str(shot), full_page=True)
    return page, seen


def _images(page) -> list[dict]:
    return page.evaluate(
        """() => Array.from(document.images).map(img => ({
            cls: img.className, kind: img.closest('figure')?.dataset.kind || null,
            complete: img.complete, w: img.naturalWidth, h: img.naturalHeight,
            scheme: img.currentSrc.split(':')[0]}))"""
    )


def _assert_clean(seen: dict) -> None:
    assert seen["console_errors"] == [] and seen["page_errors"] == [] and seen["dialogs"] == []
    offsite = [u for u in seen["requests"] if not u.startswith(("file:", "data:"))]
    assert offsite == [], f"the page fetched {offsite}"


def test_compliance_report_renders_offline(browser, settings_factory, tmp_path: Path) -> None:
    from maskjob.reporting.compliance import render_compliance_report

    fx = _build(f"sqlite:///{tmp_path / 'browser.db'}", settings_factory, tmp_path)
    path = render_compliance_report(fx.engine, fx.settings, date(2026, 11, 24), date(2026, 11, 24), out_dir=tmp_path)
    fx.engine.dispose()
    shot = tmp_path / "compliance.png"
    page, seen = _open(browser, path, shot)
    _assert_clean(seen)
    images = _images(page)
    assert all(i["complete"] and i["w"] > 0 and i["h"] > 0 and i["scheme"] == "data" for i in images)
    assert sum(i["cls"] == "chart" for i in images) == 1
    violations = [f[1] for f in fx.faces if f[2].date() == date(2026, 11, 24) and f[3] != "with_mask"]
    expected = sum(min(violations.count(cam), fx.settings.gallery_cap) for cam in set(violations))
    assert sum(i["kind"] == "gallery" for i in images) == expected > 0
    assert page.get_by_text(HOSTILE).count() > 0  # shown as text, never run
    assert page.locator("script").count() == 0
    width, height = PILImage.open(shot).size
    assert width == 1360 and height > 900


def test_site_report_shows_local_times_targets_and_delivery_sections(browser, settings_factory, tmp_path: Path) -> None:
    from maskjob.reporting.compliance import render_compliance_report

    site = build_site(f"sqlite:///{tmp_path / 'site.db'}", settings_factory, tmp_path)
    path = render_compliance_report(site.engine, site.settings, SITE_DAY, SITE_DAY, out_dir=tmp_path)
    site.engine.dispose()
    page, seen = _open(browser, path, tmp_path / "site.png")
    _assert_clean(seen)
    header = page.locator("header").inner_text()
    assert "2026-10-25 00:00 CEST to 2026-10-26 00:00 CET (Europe/Berlin;" in header
    for selector in ("#delivery", "#silent", "#under-delivering", "#cameras"):
        assert page.locator(selector).is_visible(), selector
    assert page.locator("#silent tbody tr").all_inner_texts() == ["roof\t25"]
    assert page.locator("#under-delivering tbody tr").all_inner_texts() == ["hall\t10\t25"]
    hall = page.locator('#cameras tr[data-camera="hall"] td').all_inner_texts()
    assert hall[5:] == ["50.0%", "95.0%", "-50.0 pts", "below target"]  # the evening before: 1 of 1 masked
    assert page.locator('#cameras [data-metric="camera_rate"].bad').count() == 2  # hall and walk-in


def test_reviews_section_renders(browser, settings_factory, tmp_path: Path) -> None:
    from maskjob.reporting.compliance import render_compliance_report

    site = build_reviewed_site(f"sqlite:///{tmp_path / 'reviews.db'}", settings_factory, tmp_path)
    review_all(site)
    path = render_compliance_report(site.engine, site.settings, date(2026, 11, 24), date(2026, 11, 24),
                                    out_dir=tmp_path)
    site.engine.dispose()
    page, seen = _open(browser, path, tmp_path / "reviews.png")
    _assert_clean(seen)
    assert page.locator("#reviews").is_visible() and page.locator("#agreement").is_visible()
    rows = page.locator("#agreement tbody tr").all_inner_texts()
    assert [r.split("\t")[0] for r in rows] == ["north", "south", "all cameras"]
    assert rows[1].split("\t")[-1] == "n/a (no review of sample faces)"
    assert page.locator("#gallery .tag.reviewed").count() == 2
    assert page.locator("#gallery .tag.reviewed").first.is_visible()
    assert all(i["complete"] and i["w"] > 0 for i in _images(page))


def test_model_report_renders_offline(browser, registered, tiny_demo, tmp_path: Path) -> None:  # noqa: F811
    from maskjob.reporting.model_report import render_model_report

    engine, _ = registered
    path = render_model_report(engine, tiny_demo.settings, out_dir=tmp_path)
    page, seen = _open(browser, path, tmp_path / "model.png")
    _assert_clean(seen)
    images = _images(page)
    assert all(i["complete"] and i["w"] > 0 and i["h"] > 0 and i["scheme"] == "data" for i in images)
    assert sum(i["cls"] == "chart" for i in images) == 6  # curves, reliability diagram, confusion matrix; two models
    assert sum(i["kind"] in ("correct", "wrong") for i in images) > 0
    assert PILImage.open(tmp_path / "model.png").size[1] > 900
