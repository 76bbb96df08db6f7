"""`threadline smtp` as a real process between a real SMTP client, a real upstream SMTP server
(aiosmtpd) and the real broker: recorded in mail.raw before it leaves, queued while the upstream
is down, retried after a restart, 451 while the broker is down."""

from __future__ import annotations

import email
import email.policy
import os
import re
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from pipeline.broker import free_port
from pipeline.correlation.engine import parse_xref
from pipeline.mail.parse import parse_mail
from pipeline.streams.reader import read_topic

pytestmark = pytest.mark.integration


class Upstream:
    """The smarthost: a real SMTP server that keeps what it accepts; stops and starts on one port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.controller: Controller | None = None

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"

    def start(self) -> None:
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture
def upstream():
    server = Upstream()
    server.start()
    yield server
    server.stop()


def start_relay(sandbox, data_dir: Path, bootstrap: str, upstream_port: int, extra: str = "") -> tuple[subprocess.Popen, int]:
    port = free_port()
    settings_file = sandbox.settings_file("relay.toml", extra=f"""
[relay]
upstream_host = "127.0.0.1"
upstream_port = {upstream_port}
upstream_timeout_s = 5
retry_interval_s = 0.2
retry_max_interval_s = 1
subject_tokens = true
sender_user_numbers = {{ "ann@acme.test" = 7 }}
{extra}
""")
    env = {**os.environ, "THREADLINE_SETTINGS": str(settings_file), "THREADLINE_KAFKA_BOOTSTRAP": bootstrap,
           "THREADLINE_WORKER_DATA_DIR": str(data_dir)}
    log = open(data_dir.parent / f"relay-{port}.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "smtp", "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, (data_dir.parent / f"relay-{port}.log").read_text()
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
                client.noop()
            return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("the relay did not come up")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0


def send(port: int, raw: bytes, rcpts=("bob@customer.test",)) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("ann@acme.test", list(rcpts), raw)


def outbound_mail(subject: str, *, html: bool = False, extra: str = "") -> bytes:
    body = ("<html><body><p>Offer: <a href=\"https://shop.example/p\">see it</a></p></body></html>" if html
            else "Hello Bob,\r\nthe quote is attached.")
    lines = ["From: Ann <ann@acme.test>", "To: Bob <bob@customer.test>", f"Subject: {subject}", *extra.splitlines(),
             "MIME-Version: 1.0", f"Content-Type: text/{'html' if html else 'plain'}; charset=utf-8", "", body, ""]
    return "\r\n".join(lines).encode()


def raw_records(sandbox, settings) -> list[dict]:
    return [value for _, _, _, value in read_topic(settings.kafka, sandbox.bootstrap, "mail.raw", sandbox.codec)]


def wait_for(predicate, timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def queued(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "relay-queue" / "outbound").glob("*.msg"))


def test_relay_records_stamps_marks_relays_and_queues_while_the_upstream_is_down(sandbox, upstream, tmp_path):
    settings = sandbox.settings()
    data_dir = tmp_path / "data"
    relay, port = start_relay(sandbox, data_dir, sandbox.bootstrap, upstream.port)
    try:
        # 1. A tracked mail linked to a case: stamped, marked, recorded, relayed -- the same bytes.
        send(port, outbound_mail("Spring offer #track", html=True, extra="X-Threadline-Regarding: SUPP-4711"))
        assert len(upstream.messages) == 1  # relayed before the client heard 250
        final = upstream.messages[0][2]
        parsed = parse_mail(final, direction="out")
        assert re.fullmatch(r"<[0-9a-f-]{36}@threadline>", parsed.message_id)
        assert parse_xref(parsed.xref) == {"instance": "threadline", "ref": parsed.message_id, "regarding": "SUPP-4711"}
        assert parsed.subject == "Spring offer CRM:0007001"
        assert b"X-Threadline-Regarding" not in final
        html = email.message_from_bytes(final, policy=email.policy.default).get_body(("html",)).get_content()
        assert re.search(r'<img src="http://127\.0\.0\.1:8080/o/[A-Za-z0-9_-]+\.gif"', html)
        assert "http://127.0.0.1:8080/c/" in html and 'href="https://shop.example/p"' not in html
        records = raw_records(sandbox, settings)
        assert len(records) == 1
        assert records[0]["raw"] == final
        assert (records[0]["direction"], records[0]["mailbox"], records[0]["source"], records[0]["tenant"]) == (
            "out", "smtp-relay", "smtp", "default")
        assert queued(data_dir) == []

        # 2. The upstream is down: recorded, 250, kept in the queue ...
        upstream.stop()
        send(port, outbound_mail("Quote for 12 pumps"))
        files = queued(data_dir)
        assert len(files) == 1 and b"Subject: Quote for 12 pumps CRM:0007002" in files[0].read_bytes()
        assert len(raw_records(sandbox, settings)) == 2
        # ... and delivered once it is back; then the file is gone.
        upstream.start()
        wait_for(lambda: len(upstream.messages) == 2 and not queued(data_dir), what="the queued mail")
        assert upstream.messages[1][2] == raw_records(sandbox, settings)[1]["raw"]

        # 3. Queued when the relay stops: a restarted relay delivers it; token counters continue.
        upstream.stop()
        send(port, outbound_mail("Delivery dates"))
        assert len(queued(data_dir)) == 1
    finally:
        stop(relay)
    upstream.start()
    assert len(queued(data_dir)) == 1 and len(upstream.messages) == 2
    relay, port = start_relay(sandbox, data_dir, sandbox.bootstrap, upstream.port)
    try:
        wait_for(lambda: len(upstream.messages) == 3 and not queued(data_dir), what="the queue after a restart")
        assert parse_mail(upstream.messages[2][2]).subject == "Delivery dates CRM:0007003"
        send(port, outbound_mail("Invoice"))
        assert parse_mail(upstream.messages[3][2]).subject == "Invoice CRM:0007004"
    finally:
        stop(relay)
    records = raw_records(sandbox, settings)
    assert [r["raw"] for r in records] == [m[2] for m in upstream.messages]  # every mail once, as it left


def test_broker_down_answers_451_and_relays_nothing(sandbox, upstream, tmp_path):
    data_dir = tmp_path / "data"
    dead_broker = f"127.0.0.1:{free_port()}"  # nothing listens there
    relay, port = start_relay(sandbox, data_dir, dead_broker, upstream.port, extra="kafka_timeout_s = 2")
    try:
        started = time.monotonic()
        with pytest.raises(smtplib.SMTPDataError) as refused:
            send(port, outbound_mail("Not recorded, not sent"))
        assert refused.value.smtp_code == 451
        assert time.monotonic() - started < 20
    finally:
        stop(relay)
    assert upstream.messages == [] and queued(data_dir) == []
