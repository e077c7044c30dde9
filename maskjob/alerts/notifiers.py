"""Sending alerts through Airflow's notifier mechanism (``airflow.sdk.BaseNotifier``).

A maskjob :class:`~maskjob.alerts.messages.Alert` goes to every *channel*, each a
``BaseNotifier`` called with the Airflow context plus ``maskjob_alert`` (the alert as a dict:
``kind``, ``subject``, ``text``, ``facts``):

* :class:`EmailChannel` (the default): the SMTP provider's ``SmtpHook`` with the Airflow
  connection ``alert_conn_id``, to ``alert_email_to``; with ``alert_email_to`` empty the
  alert is logged (WARNING) and not sent.
* any other notifier, e.g. the Slack provider's
  ``SlackNotifier(text="{{ maskjob_alert.subject }}\\n{{ maskjob_alert.text }}")``: passed to
  :func:`maskjob.dag.build_dag` (``alert_notifiers=[...]``) or named in
  ``$MASKJOB_ALERT_NOTIFIERS`` as ``module:attribute`` (a notifier, or a callable returning one).

Each channel gets its own shallow copy of the notifier: ``BaseNotifier`` renders its
template fields in place, which would freeze the first alert's text into a reused instance.
"""

from __future__ import annotations

import copy
import importlib
import logging
import os
import socket
from typing import Any, Iterable, Mapping, Sequence

from airflow.sdk import BaseNotifier

from maskjob.alerts.messages import Alert
from maskjob.config import Settings, redact
from maskjob.errors import MaskjobError

__all__ = ["NOTIFIERS_ENV", "EmailChannel", "channels", "dispatch"]

logger = logging.getLogger(__name__)

NOTIFIERS_ENV = "MASKJOB_ALERT_NOTIFIERS"


class EmailChannel(BaseNotifier):
    """E-mail an alert with the SMTP provider's hook (connection ``conn_id``) to ``to``.

    Not the provider's ``SmtpNotifier``: that one renders subject and body as Jinja
    templates, and an alert's text (camera ids, error messages) must reach the reader
    verbatim, never be evaluated. The hook is the same code path, the connection the same.
    """

    template_fields = ()

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """Nothing to render: the alert's text is final."""

    def __init__(self, conn_id: str, to: Sequence[str]) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.to = list(to)

    def notify(self, context: Mapping[str, Any]) -> None:
        from airflow.providers.smtp.hooks.smtp import SmtpHook

        alert = context["maskjob_alert"]
        if not self.to:
            logger.warning("alert not e-mailed (alert_email_to is empty): %s\n%s", alert["subject"], alert["text"])
            return
        with SmtpHook(smtp_conn_id=self.conn_id) as hook:
            sender = hook.from_email or f"maskjob@{socket.getfqdn() or 'localhost'}"
            hook.send_email_smtp(to=self.to, from_email=sender, subject=alert["subject"],
                                 html_content=Alert(**alert).html)
        logger.info("alert e-mailed to %s via connection %s: %s", ", ".join(self.to), self.conn_id, alert["subject"])


def _recipients(text: str) -> list[str]:
    return [part.strip() for part in text.replace(";", ",").split(",") if part.strip()]


def _from_env(spec: str) -> list[BaseNotifier]:
    found = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        module_name, _, attribute = item.partition(":")
        try:
            value = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError, ValueError) as exc:
            raise MaskjobError(f"${NOTIFIERS_ENV}: cannot import {item!r} ({exc}); "
                               "give module:attribute, e.g. mysite.alerts:slack") from None
        notifier = value if isinstance(value, BaseNotifier) else value()
        if not isinstance(notifier, BaseNotifier):
            raise MaskjobError(f"${NOTIFIERS_ENV}: {item!r} is not an airflow.sdk.BaseNotifier (or a factory of one)")
        found.append(notifier)
    return found


def channels(settings: Settings, extra: Iterable[BaseNotifier] = ()) -> list[BaseNotifier]:
    """E-mail, then ``extra``, then the notifiers named in ``$MASKJOB_ALERT_NOTIFIERS``."""
    email = EmailChannel(settings.alert_conn_id, _recipients(settings.alert_email_to))
    return [email, *extra, *_from_env(os.environ.get(NOTIFIERS_ENV, ""))]


def dispatch(alert: Alert, context: Mapping[str, Any], notifiers: Sequence[BaseNotifier]) -> int:
    """Send ``alert`` through every notifier; return how many succeeded.

    A channel that fails is logged and the others still get the alert. Only when every
    channel failed does this raise: a task retry then cannot send a second copy through a
    channel that already delivered one.
    """
    payload = {**context, "maskjob_alert": alert.to_dict()}
    if "dag" in payload and not hasattr(payload["dag"], "get_template_env"):
        # dag.test() gives DAG callbacks the serialized DAG, which has no template environment:
        # without a DAG, notifiers render their templates in Airflow's sandboxed default one.
        del payload["dag"]
    delivered, errors = 0, []
    for notifier in notifiers:
        try:
            copy.copy(notifier)(payload)
            delivered += 1
        except Exception as exc:  # noqa: BLE001 - one broken channel must not silence the others
            errors.append(f"{type(notifier).__name__}: {redact(str(exc))}")
            logger.error("alert channel %s failed: %s", type(notifier).__name__, redact(str(exc)))
    if notifiers and not delivered:
        raise MaskjobError(f"no alert channel could send {alert.subject!r}: {'; '.join(errors)}. "
                           "Check the SMTP connection (alert_conn_id) or the notifiers.")
    return delivered
