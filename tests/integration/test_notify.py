"""Alerts delivered to a real local SMTP server (aiosmtpd) and a real webhook receiver, with retries."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller

from pipeline.broker import free_port
from pipeline.runtime.kafka import new_producer, topic_name
from pipeline.gateways.notify import DeliveryError, Notifier
from pipeline.streams.reader import read_topic

pytestmark = pytest.mark.integration


class Inbox:
    def __init__(self) -> None:
        self.messages = []

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd handler hook
        self.messages.append((envelope.rcpt_tos, envelope.content.decode()))
        return "250 OK"


class Webhook(BaseHTTPRequestHandler):
    failures_left = 0
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if Webhook.failures_left > 0:
            Webhook.failures_left -= 1
            self.send_response(503)
        else:
            Webhook.received.append((self.headers["Idempotency-Key"], json.loads(body)))
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def _alert(n: int, user: str) -> dict:
    return {"event_id": f"alert-{n}", "tenant": "acme", "event_type": "escalation_warned", "user": user,
            "event_time": datetime(2026, 3, 2, 9, n, tzinfo=timezone.utc), "source_record_id": f"esc-{n}",
            "assigned_on": None, "record_owner": user, "message": f"Mail {n} is unanswered for 4 h"}


def _notifier(settings, sandbox) -> Notifier:
    return Notifier(settings.notifications, settings.kafka, sandbox.bootstrap, sandbox.codec, app_id=sandbox.app_id)


def test_alerts_reach_smtp_and_webhooks_and_failures_are_retried_not_dropped(sandbox):
    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    webhook = ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=webhook.serve_forever, daemon=True).start()
    Webhook.received, Webhook.failures_left = [], 2
    try:
        settings_file = sandbox.settings_file(extra=f"""
[notifications]
smtp = {{ host = "127.0.0.1", port = {smtp.port} }}
sender = "alerts@acme.test"
webhook_urls = ["http://127.0.0.1:{webhook.server_port}/hook"]
backoff_s = 0.01
max_attempts = 3
""")
        settings = sandbox.settings(settings_file)
        producer = new_producer(settings.kafka, sandbox.bootstrap)
        users = ["anna@acme.test", "ben@acme.test", "owner-without-address"]
        for n, user in enumerate(users):
            producer.produce(topic_name(settings.kafka, "alerts"), sandbox.codec.encode("alerts", _alert(n, user)), b"acme")
        producer.produce(topic_name(settings.kafka, "alerts"), b"not avro", b"acme")
        assert producer.flush(10) == 0

        notifier = _notifier(settings, sandbox)
        deadline = time.monotonic() + 60
        while len(Webhook.received) < 3 and time.monotonic() < deadline:
            notifier.poll_once()
        notifier.close()
        # Two 503s were retried: every alert reached the webhook exactly once, in order.
        assert [key for key, _ in Webhook.received] == ["alert-0", "alert-1", "alert-2"]
        assert Webhook.received[0][1]["message"] == "Mail 0 is unanswered for 4 h"
        # Mail only to users that are addresses.
        assert sorted(rcpt for rcpt, _ in inbox.messages) == [["anna@acme.test"], ["ben@acme.test"]]
        assert "Message-ID: <alert-alert-0@threadline>" in inbox.messages[0][1]
        dead = [v for _, _, _, v in read_topic(settings.kafka, sandbox.bootstrap, "deadletter", sandbox.codec)]
        assert [(d["agent"], d["reason"], d["value"]) for d in dead] == [("notifier", "not_confluent_wire_format",
                                                                          b"not avro")]

        # A webhook that keeps failing stops the notifier without committing: after a restart
        # the same alert is delivered.
        Webhook.failures_left = 10
        producer.produce(topic_name(settings.kafka, "alerts"), sandbox.codec.encode("alerts", _alert(9, "x")), b"acme")
        producer.flush(10)
        failing = _notifier(settings, sandbox)
        with pytest.raises(DeliveryError):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                failing.poll_once()
        failing.close()
        Webhook.failures_left = 0
        again = _notifier(settings, sandbox)
        deadline = time.monotonic() + 60
        while len(Webhook.received) < 4 and time.monotonic() < deadline:
            again.poll_once()
        again.close()
        assert [key for key, _ in Webhook.received] == ["alert-0", "alert-1", "alert-2", "alert-9"]
    finally:
        smtp.stop()
        webhook.shutdown()
