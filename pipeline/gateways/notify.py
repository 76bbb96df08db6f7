"""``threadline notify``: deliver ``alerts`` by e-mail and to webhooks, at least once.

The runtime's consumer loop over ``alerts``.  For each alert: a mail to the user when the user is
an address and an SMTP server is configured, and a JSON POST to every webhook URL.  A failed
delivery is retried with exponential back-off; after ``max_attempts`` the notifier stops with an
error without committing, so the alert is delivered after the next start — never dropped.
Receivers may see an alert twice after a crash: the mail's Message-ID and the webhook's
``Idempotency-Key`` header carry the alert's stable event id so they can tell.
"""

from __future__ import annotations

import email.policy
import json
import logging
import urllib.request
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime

from pipeline.contracts.avro import AvroCodec
from pipeline.contracts.topics import ALERTS
from pipeline.mail.automatic import NOTIFIER_HEADER
from pipeline.redact import redact_url
from pipeline.runtime.consumer_loop import Batch, ConsumerLoop
from pipeline.settings import KafkaSettings, NotificationSettings
from pipeline.smtp_client import SmtpClient


class DeliveryError(RuntimeError):
    pass


def alert_mail(alert: dict, sender: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = alert["user"]
    message["Subject"] = f"[Threadline] {alert['event_type'].replace('_', ' ')}"
    message["Date"] = format_datetime(alert["event_time"])
    message["Message-ID"] = f"<alert-{alert['event_id']}@threadline>"
    message["Auto-Submitted"] = "auto-generated"  # our own loop detection and other bots skip it
    # Ours: should it reach a mailbox we read (or come back quoted in a reply), it is labelled
    # "notifier" mail (pipeline.mail.automatic), never a person's.
    message[NOTIFIER_HEADER] = "alert"
    lines = [alert["message"], "", f"record: {alert['source_record_id']}"]
    if alert.get("record_owner"):
        lines.append(f"owner: {alert['record_owner']}")
    message.set_content("\n".join(lines) + "\n")
    return message


def _json_default(value):
    return value.isoformat() if isinstance(value, datetime) else str(value)


class Notifier(ConsumerLoop):
    topics, agent, error, log = (ALERTS,), "notifier", DeliveryError, logging.getLogger("threadline.notify")
    max_records = 500

    def __init__(self, notifications: NotificationSettings, kafka: KafkaSettings, bootstrap: str, codec: AvroCodec, *,
                 app_id: str) -> None:
        super().__init__(kafka, bootstrap, app_id, codec)
        self.max_attempts, self.backoff_s = notifications.max_attempts, notifications.backoff_s
        self.settings = notifications

    def _send_mail(self, alert: dict) -> None:
        # A non-ASCII address needs SMTPUTF8, as smtplib's send_message asked (a server without it refuses).
        utf8 = not (self.settings.sender + alert["user"]).isascii()
        mail = alert_mail(alert, self.settings.sender).as_bytes(policy=email.policy.SMTPUTF8 if utf8 else email.policy.SMTP)
        with SmtpClient(self.settings.smtp) as smtp:
            outcome = smtp.send(self.settings.sender, [alert["user"]], mail, ("SMTPUTF8", "BODY=8BITMIME") if utf8 else ())
        if not outcome.sent:
            raise DeliveryError(next(iter({**outcome.refused, **outcome.deferred}.values())))

    def _post(self, url: str, alert: dict) -> None:
        body = json.dumps(alert, default=_json_default).encode()
        request = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json", "Idempotency-Key": alert["event_id"]})
        with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as response:
            if not 200 <= response.status < 300:
                raise DeliveryError(f"{redact_url(url)} answered {response.status}")

    def deliver(self, alert: dict) -> None:
        if self.settings.smtp.host and "@" in alert["user"]:
            self.retry(f"mail to {alert['user']}", lambda: self._send_mail(alert))
        for url in self.settings.webhook_urls:
            # logged on every failed attempt: a password in the URL stays out of the log
            self.retry(f"webhook {redact_url(url)}", lambda url=url: self._post(url, alert))

    def handle(self, batch: Batch) -> None:
        for _, _, alert in batch.get(ALERTS, []):
            self.deliver(alert)
