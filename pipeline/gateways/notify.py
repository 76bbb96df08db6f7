"""``threadline notify``: deliver ``alerts`` by e-mail and to webhooks, at least once.

A consumer group over ``alerts``.  For each alert: a mail to the user when the user is an
address and an SMTP server is configured, and a JSON POST to every webhook URL.  A failed
delivery is retried with exponential back-off; after ``max_attempts`` the notifier stops with an
error without committing, so the alert is delivered after the next start — never dropped.
Receivers may see an alert twice after a crash: the mail's Message-ID and the webhook's
``Idempotency-Key`` header carry the alert's stable event id so they can tell.
"""

from __future__ import annotations

import json
import logging
import smtplib
import time
import urllib.request
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Callable

from pipeline.contracts.topics import ALERTS, DEADLETTER
from pipeline.runtime.kafka import new_group_consumer, new_producer, topic_name
from pipeline.contracts.avro import AvroCodec, AvroDecodeError
from pipeline.contracts.records import SourcePosition, deadletter_record
from pipeline.redact import redact_url
from pipeline.settings import NotificationSettings, Settings

log = logging.getLogger("threadline.notify")


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
    lines = [alert["message"], "", f"record: {alert['source_record_id']}"]
    if alert.get("record_owner"):
        lines.append(f"owner: {alert['record_owner']}")
    message.set_content("\n".join(lines) + "\n")
    return message


def _json_default(value):
    return value.isoformat() if isinstance(value, datetime) else str(value)


class Notifier:
    def __init__(self, settings: Settings, bootstrap: str, codec: AvroCodec, *, group_id: str | None = None) -> None:
        self.kafka = settings.kafka
        self._deadletters = new_producer(settings.kafka, bootstrap)
        self.settings: NotificationSettings = settings.notifications
        self.codec = codec
        self.consumer = new_group_consumer(settings.kafka, bootstrap, group_id or f"{settings.worker.app_id}-notifier")
        self.consumer.subscribe([topic_name(settings.kafka, ALERTS)])
        self.mails_sent = 0
        self.webhooks_sent = 0

    def _retry(self, what: str, action: Callable[[], None]) -> None:
        for attempt in range(1, self.settings.max_attempts + 1):
            try:
                action()
                return
            except Exception as exc:  # SMTP, socket and HTTP errors all mean: not delivered
                if attempt == self.settings.max_attempts:
                    raise DeliveryError(f"{what} failed {attempt} times: {exc}") from exc
                delay = self.settings.backoff_s * 2 ** (attempt - 1)
                log.warning("%s failed (%s); retry %d in %.1f s", what, exc, attempt, delay)
                time.sleep(delay)

    def _send_mail(self, alert: dict) -> None:
        settings = self.settings
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.timeout_s) as smtp:
            if settings.smtp_starttls:
                smtp.starttls()
            if settings.smtp_username:
                smtp.login(settings.smtp_username, settings.smtp_password or "")
            smtp.send_message(alert_mail(alert, settings.sender))

    def _post(self, url: str, alert: dict) -> None:
        body = json.dumps(alert, default=_json_default).encode()
        request = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json", "Idempotency-Key": alert["event_id"]})
        with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as response:
            if not 200 <= response.status < 300:
                raise DeliveryError(f"{redact_url(url)} answered {response.status}")

    def deliver(self, alert: dict) -> None:
        if self.settings.smtp_host and "@" in alert["user"]:
            self._retry(f"mail to {alert['user']}", lambda: self._send_mail(alert))
            self.mails_sent += 1
        for url in self.settings.webhook_urls:
            # logged on every failed attempt: a password in the URL stays out of the log
            self._retry(f"webhook {redact_url(url)}", lambda url=url: self._post(url, alert))
            self.webhooks_sent += 1

    def poll_once(self, timeout_s: float = 1.0) -> int:
        """Deliver one batch of alerts and commit it; returns how many alerts it held."""
        messages = [m for m in self.consumer.consume(500, timeout_s) if m.error() is None]
        for message in messages:
            try:
                alert = self.codec.decode(ALERTS, message.value())
            except AvroDecodeError as exc:
                position = SourcePosition(message.topic(), message.partition(), message.offset())
                record = deadletter_record(position, message.key(), message.value() or b"", reason=exc.reason,
                                           error=str(exc), agent="notifier")
                self._deadletters.produce(topic_name(self.kafka, DEADLETTER),
                                          self.codec.encode(DEADLETTER, record), message.key())
                continue
            self.deliver(alert)
        if self._deadletters.flush(30):
            raise DeliveryError("dead letters of the notifier could not be delivered")
        if messages:
            self.consumer.commit(asynchronous=False)
        return len(messages)

    def close(self) -> None:
        self.consumer.close()
