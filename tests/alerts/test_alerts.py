"""Alert messages and channels: what the compliance and failure messages say, and their
delivery through the SMTP provider to a real SMTP server (aiosmtpd) or another notifier."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from airflow.sdk import BaseNotifier

from maskjob.errors import MaskjobError
from tests.fixtures.smtp import FROM_EMAIL, SMTP_PASSWORD, SMTP_USER
from tests.reporting.site_data import DAY_END_UTC, DAY_START_UTC, build_site

pytestmark = [
    pytest.mark.timeout(120),
    # The test server takes a login without TLS on purpose (localhost only).
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS"),
]
REPORT = "/srv/maskjob/reports/compliance_20261025_20261025.html"


@pytest.fixture
def site(db_url, settings_factory, tmp_path):
    built = build_site(db_url, settings_factory, tmp_path)
    yield built
    built.engine.dispose()


def _figures(site, camera=None):
    from maskjob.reporting.figures import load_figures

    return load_figures(site.engine, site.settings, DAY_START_UTC.replace(tzinfo=None),
                        DAY_END_UTC.replace(tzinfo=None), camera=camera)


def test_compliance_alert_names_the_report_the_cameras_and_their_figures(site):
    from maskjob.alerts.messages import compliance_alert

    alert = compliance_alert(_figures(site), REPORT, "Europe/Berlin", run_id="scheduled__2026-10-25")
    assert alert.subject == "[maskjob] compliance alert 25 Oct 2026: 2 cameras below target, 1 silent"
    text = alert.text
    assert text.startswith("Mask compliance alert for 2026-10-25 00:00 CEST to 2026-10-26 00:00 CET "
                           "(Europe/Berlin, 25 h).")
    assert f"Report: {REPORT}" in text and "DAG run: scheduled__2026-10-25" in text
    assert ("  - hall: compliance 50.0% (target 95.0%), 10 faces (5 without mask, 0 partial), "
            "10 frames (expected 25), 0 unreadable") in text
    assert "  - walk-in: compliance 66.7% (target 80.0%)" in text
    assert "Silent cameras (registered, no frame):\n  - roof: compliance n/a (target 70.0%), 0 faces" in text
    assert "Under-delivering cameras (fewer frames than expected):\n  - hall:" in text
    assert "gate" not in text  # fine cameras are not listed
    assert alert.facts["report_path"] == REPORT
    assert {c["camera_id"] for c in alert.facts["cameras"]} == {"hall", "walk-in", "roof"}


def test_no_compliance_alert_when_every_camera_is_fine(site):
    from maskjob.alerts.messages import compliance_alert

    assert compliance_alert(_figures(site, camera="gate"), REPORT, "Europe/Berlin") is None


def test_a_spike_of_unreadable_frames_alerts_on_its_own():
    from maskjob.alerts.messages import compliance_alert
    from maskjob.reporting.figures import SiteFigures

    start, end = datetime(2026, 11, 24), datetime(2026, 11, 25)
    spike = SiteFigures(start=start, end=end, hours=24, cameras=[], frames=200, unreadable=22,
                        unreadable_fraction=0.11, unreadable_limit=0.05)
    alert = compliance_alert(spike, REPORT, "UTC")
    assert alert.subject == "[maskjob] compliance alert 24 Nov 2026: 11.0% unreadable frames"
    assert "Unreadable frames: 22 of 200 (11.0%; alert above 5.0%): SPIKE" in alert.text
    calm = SiteFigures(start=start, end=end, hours=24, cameras=[], frames=200, unreadable=10,
                       unreadable_fraction=0.05, unreadable_limit=0.05)
    assert compliance_alert(calm, REPORT, "UTC") is None


def test_failure_alert_names_the_run_each_failed_task_its_error_and_the_log():
    from maskjob.alerts.messages import FailedTask, failure_alert
    from maskjob.config import register_secrets

    register_secrets(["db-pa55word"])
    alert = failure_alert(
        "mask_compliance", "manual__2026-11-25T00:00:00+00:00",
        [FailedTask("score_shard[1]", "OperationalError: password db-pa55word refused\nline 2", "http://af/log/1"),
         FailedTask("score_shard[3]", None)],
        start=datetime(2026, 11, 24, tzinfo=UTC), end=datetime(2026, 11, 25, tzinfo=UTC), tz_name="Asia/Kathmandu",
        log_path="/data/logs/run_20261124.log",
    )
    assert alert.subject == ("[maskjob] mask_compliance run failed at score_shard[1], score_shard[3]: "
                             "manual__2026-11-25T00:00:00+00:00")
    text = alert.text
    assert "Interval: 2026-11-24 05:45 +0545 to 2026-11-25 05:45 +0545 (Asia/Kathmandu, 24 h)" in text
    assert ("  - score_shard[1]:\n      OperationalError: password *** refused\n      line 2\n"
            "      log: http://af/log/1") in text
    assert "  - score_shard[3]:\n      (no error message recorded; see the task log)" in text
    assert "Full log: /data/logs/run_20261124.log" in text
    assert "db-pa55word" not in text + alert.subject


def _alert():
    from maskjob.alerts.messages import Alert

    return Alert(kind="compliance", subject="[maskjob] compliance alert 24 Nov 2026: 1 silent",
                 text="Silent cameras:\n  - <cam&1>", facts={"report_path": REPORT})


def test_email_goes_through_the_smtp_connection_with_its_login(smtp_server, settings_factory, monkeypatch,  # noqa: F811
                                                               caplog, capfd):
    from maskjob.alerts.notifiers import channels, dispatch

    smtp_server.clear()
    for key, value in smtp_server.connection_env("maskjob_smtp").items():
        monkeypatch.setenv(key, value)
    settings = settings_factory(alert_conn_id="maskjob_smtp", alert_email_to="ops@site.example; safety@site.example")
    caplog.set_level(logging.DEBUG)
    assert dispatch(_alert(), {}, channels(settings)) == 1
    [message] = smtp_server.received()
    assert message["Subject"] == "[maskjob] compliance alert 24 Nov 2026: 1 silent"
    assert message["From"] == FROM_EMAIL
    assert message["To"] == "ops@site.example, safety@site.example"
    body = message.get_body(("html",)).get_content()
    assert "Silent cameras:\n  - &lt;cam&amp;1&gt;" in body  # escaped: shown, never interpreted
    assert smtp_server.logins[-1] == SMTP_USER
    captured = capfd.readouterr()
    assert SMTP_PASSWORD not in caplog.text + captured.out + captured.err


def test_without_recipients_the_alert_is_logged_not_sent(smtp_server, settings_factory, monkeypatch, caplog):  # noqa: F811
    from maskjob.alerts.notifiers import channels, dispatch

    smtp_server.clear()
    for key, value in smtp_server.connection_env().items():
        monkeypatch.setenv(key, value)
    caplog.set_level(logging.WARNING, logger="maskjob")
    assert dispatch(_alert(), {}, channels(settings_factory(alert_email_to=""))) == 1
    assert smtp_server.received() == []
    assert "alert not e-mailed (alert_email_to is empty): [maskjob] compliance alert" in caplog.text


class Recorder(BaseNotifier):
    """A site's own channel: renders its template from ``maskjob_alert`` like a Slack notifier would."""

    template_fields = ("text",)
    sent: list[str] = []

    def __init__(self, text: str = "{{ maskjob_alert.subject }} | {{ maskjob_alert.facts.report_path }}") -> None:
        super().__init__()
        self.text = text

    def notify(self, context: Any) -> None:
        Recorder.sent.append(self.text)


class Broken(BaseNotifier):
    def notify(self, context: Any) -> None:
        raise ConnectionError("webhook down")


def make_recorder() -> Recorder:
    return Recorder()


def test_other_notifiers_plug_in_by_environment_or_argument_and_a_broken_one_is_isolated(
        settings_factory, monkeypatch, caplog):
    from maskjob.alerts.notifiers import NOTIFIERS_ENV, channels, dispatch

    Recorder.sent.clear()
    monkeypatch.setenv(NOTIFIERS_ENV, f"{__name__}:make_recorder")
    settings = settings_factory(alert_email_to="")
    notifiers = channels(settings, [Broken()])
    assert [type(n).__name__ for n in notifiers] == ["EmailChannel", "Broken", "Recorder"]
    assert dispatch(_alert(), {}, notifiers) == 2
    assert dispatch(_alert(), {}, notifiers) == 2  # each alert renders afresh: a copy per send
    assert Recorder.sent == [f"[maskjob] compliance alert 24 Nov 2026: 1 silent | {REPORT}"] * 2
    assert "alert channel Broken failed: webhook down" in caplog.text
    with pytest.raises(MaskjobError, match="no alert channel could send"):
        dispatch(_alert(), {}, [Broken()])
    monkeypatch.setenv(NOTIFIERS_ENV, "no.such.module:thing")
    with pytest.raises(MaskjobError, match="cannot import 'no.such.module:thing'"):
        channels(settings)
