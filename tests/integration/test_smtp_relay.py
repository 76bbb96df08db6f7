"""`threadline smtp` as a real process between a real SMTP client, a real upstream SMTP server
(aiosmtpd) and the real broker: recorded in mail.raw before it leaves, queued while the upstream
is down, retried after a restart, 451 while the broker is down."""

from __future__ import annotations

import concurrent.futures
import email
import email.policy
import hashlib
import os
import re
import signal
import smtplib
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

import pytest

from pipeline.broker import free_port
from pipeline.runtime.kafka import topic_name
from pipeline.contracts.records import MailRawCodec
from pipeline.correlation.methods.xheader import parse_xref
from pipeline.mail.hostile import big_mail
from pipeline.mail.parse import parse_mail
from pipeline.streams.reader import read_topic
from pipeline.streams.runner import count_outputs, wait_for_outputs

from smtp_upstream import Upstream  # tests/smtp_upstream.py

pytestmark = pytest.mark.integration


@pytest.fixture
def upstream():
    server = Upstream()
    server.start()
    yield server
    server.stop()


def start_relay(sandbox, data_dir: Path, bootstrap: str, upstream_port: int, extra: str = "", *,
                name: str = "relay.toml", env: dict[str, str] | None = None,
                inbound: bool = False, subject_tokens: bool = True) -> tuple[subprocess.Popen, int]:
    port = free_port()
    settings_file = sandbox.settings_file(name, extra=f"""
[relay]
upstream = {{ host = "127.0.0.1", port = {upstream_port}, timeout_s = 5 }}
retry_interval_s = 0.2
retry_max_interval_s = 1
subject_tokens = {str(subject_tokens).lower()}
sender_user_numbers = {{ "ann@acme.test" = 7 }}
own_domains = ["acme.test", "customer.test", "beta.test"]
{extra}
""")
    env = {**os.environ, "THREADLINE_SETTINGS": str(settings_file), "THREADLINE_KAFKA_BOOTSTRAP": bootstrap,
           "THREADLINE_WORKER_DATA_DIR": str(data_dir), **(env or {})}
    log = open(data_dir.parent / f"relay-{port}.log", "wb")
    command = [sys.executable, "-m", "pipeline.cli", "smtp", "--port", str(port), *(["--inbound"] if inbound else [])]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)
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


# -- issue 12 through the relay: poison, big mail, a killed worker -----------------------------
class CheckingUpstream(Upstream):
    """An upstream that, the moment a mail reaches it (so before the relay can answer its client
    250), looks whether ``mail.raw`` and the blob store already hold exactly these bytes."""

    def __init__(self, recorded: Callable[[bytes], bool]) -> None:
        super().__init__()
        self.recorded = recorded
        self.recorded_first: list[bool] = []

    async def handle_DATA(self, server, session, envelope):
        self.recorded_first.append(self.recorded(envelope.original_content))
        return await super().handle_DATA(server, session, envelope)


def smtp_poison(seed: int) -> bytes:
    """The issue's poison mail, ~1 MB with a 270 KB folded header (a dead letter:
    header_too_large), padded with short lines: SMTP allows 1,000 bytes per line."""
    folded = b"X-Filler: " + b"\r\n ".join([b"%070d" % (seed + n) for n in range(3800)]) + b"\r\n"
    raw = big_mail(720_000, seed)
    cut = raw.index(b"\r\n") + 2
    raw = raw[:cut] + folded + raw[cut:]
    return raw + (b" " * 78 + b"\r\n") * ((999_800 - len(raw)) // 80)


def sized_mail(size: int, seed: int) -> bytes:
    """A well-formed mail of exactly ``size`` bytes (padded with short lines after the last part)."""
    raw = big_mail(size - 10_000, seed)
    pad = size - len(raw)
    filler = (b" " * 78 + b"\r\n") * (pad // 80)
    raw += filler + b" " * (pad - len(filler) - 2) + b"\r\n"
    assert len(raw) == size
    return raw


def good_mail(tenant: str, n: int, *, inbound: bool) -> bytes:
    sender, recipient = ("Bob <bob@customer.test>", f"Support <support@{tenant}.test>") if inbound else \
        (f"Ann <ann@{tenant}.test>", "Bob <bob@customer.test>")
    return (f"Message-ID: <good-{n}-{uuid.uuid4().hex}@{tenant}.test>\r\nFrom: {sender}\r\nTo: {recipient}\r\n"
            f"Subject: order {n} of {tenant}\r\nDate: Tue, 05 Mar 2024 10:{n:02d}:00 +0100\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\nHello,\r\nmail {n} of {tenant}.\r\n").encode()


def as_relayed(final: bytes, *, outbound: bool) -> bytes:
    """``final`` without what the relay adds: its Received field (first) and, outbound, our
    reference header; every other byte must be the client's."""
    assert final.startswith(b"Received: from ")
    end = final.index(b"\r\n") + 2
    while final[end:end + 1] in (b" ", b"\t"):
        end = final.index(b"\r\n", end) + 2
    rest = final[end:]
    if outbound:
        header_end = rest.index(b"\r\n\r\n")
        at = rest.index(b"\r\nX-Threadline-Ref: ", 0, header_end) + 2
        rest = rest[:at] + rest[rest.index(b"\r\n", at) + 2:]
    return rest


def test_relay_poison_big_and_oversize_mail_of_two_tenants_survive_a_killed_worker(sandbox, tmp_path):
    """Issue 12 through `threadline smtp`: for two tenants (an outbound and an inbound relay), a
    good mail, the poison, 3 good mails, 2.5 MB and 12 MB mails and mail over the limits, while
    the worker is SIGKILLed right after its first dead letter and restarted.  Every mail that
    got 250 was in mail.raw (and the blob store) before the upstream saw it, reached the
    upstream byte for byte, and has an output; every other mail got an honest 552."""
    settings = sandbox.settings()
    mail_raw = MailRawCodec(settings.mail, settings.blob_dir, sandbox.codec)

    def digest_of(record: dict) -> str:
        return record["raw_blob"]["sha256"] if record["raw_blob"] else hashlib.sha256(record["raw"]).hexdigest()

    def recorded(data: bytes) -> bool:
        digest = hashlib.sha256(data).hexdigest()
        for record in raw_records(sandbox, settings):
            if digest_of(record) == digest:
                return mail_raw.raw_of(record) == data  # a blob is read back and its digest checked
        return False

    upstream = CheckingUpstream(recorded)
    upstream.start()
    # The upstream's look into mail.raw takes a moment: no relay may give up on it and retry.
    patient = {"THREADLINE_RELAY_UPSTREAM_TIMEOUT_S": "60"}
    data_dir = tmp_path / "worker-data"
    workers = [sandbox.start_worker(data_dir=data_dir, name="first")]
    relays: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        # acme: outbound, limit mail.max_message_bytes (20 MiB here); beta: inbound, its own SIZE of 16 MiB.
        relays["acme"] = start_relay(sandbox, tmp_path / "relay-acme", sandbox.bootstrap, upstream.port,
                                     'tenant = "acme"', name="relay-acme.toml", subject_tokens=False,
                                     env={**patient, "THREADLINE_MAIL_MAX_MESSAGE_BYTES": str(20 * 2**20)})
        relays["beta"] = start_relay(sandbox, tmp_path / "relay-beta", sandbox.bootstrap, upstream.port,
                                     f'tenant = "beta"\nmax_message_size = {16 * 2**20}', name="relay-beta.toml",
                                     inbound=True, env=patient)
        inbound = {"acme": False, "beta": True}
        accepted: list[tuple[str, str, bytes]] = []   # (tenant, kind, bytes sent), answered 250
        refused: dict[str, tuple[int, bytes]] = {}      # what -> (reply code, text)

        def send_one(tenant: str, kind: str, raw: bytes) -> None:
            send(relays[tenant][1], raw, rcpts=("bob@customer.test",))
            accepted.append((tenant, kind, raw))

        for tenant in relays:  # the worker is up and consuming before the poison comes
            send_one(tenant, "good", good_mail(tenant, 0, inbound=inbound[tenant]))
        wait_for_outputs(settings.kafka, sandbox.bootstrap, sandbox.codec, 0, 2, workers=workers, timeout_s=60)

        def the_rest() -> None:
            for seed, tenant in enumerate(relays):
                send_one(tenant, "poison", smtp_poison(seed))
            for n in (1, 2, 3):
                for tenant in relays:
                    send_one(tenant, "good", good_mail(tenant, n, inbound=inbound[tenant]))
            for seed, tenant in enumerate(relays):
                send_one(tenant, "big", big_mail(2_500_000, seed))
                send_one(tenant, "big", big_mail(12 * 2**20, seed, kind="html"))
            # Over the limit, declared with SIZE: refused at MAIL FROM, before any data.
            with pytest.raises(smtplib.SMTPSenderRefused) as at_mail:
                send(relays["acme"][1], sized_mail(20 * 2**20 + 1, 7))
            refused["acme SIZE"] = (at_mail.value.smtp_code, at_mail.value.smtp_error)
            # Over the limit, not declared: refused after the data.
            with smtplib.SMTP("127.0.0.1", relays["beta"][1], timeout=60) as client:
                client.ehlo()
                client.mail("bob@customer.test")
                client.rcpt("support@beta.test")
                refused["beta DATA"] = client.data(sized_mail(16 * 2**20 + 1, 8))  # (code, text): no raise
            # Exactly at mail.max_message_bytes: SIZE lets it in, the relay's own Received field
            # takes it over the limit: not recorded, so not relayed, and the client hears 552.
            with pytest.raises(smtplib.SMTPDataError) as recorded_too_big:
                send(relays["acme"][1], sized_mail(20 * 2**20, 9))
            refused["acme recorded"] = (recorded_too_big.value.smtp_code, recorded_too_big.value.smtp_error)
            for tenant in relays:
                send_one(tenant, "good", good_mail(tenant, 4, inbound=inbound[tenant]))

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            sending = pool.submit(the_rest)
            deadline = time.monotonic() + 60
            while not count_outputs(settings.kafka, sandbox.bootstrap, sandbox.codec, 0)["deadletter"]:
                assert workers[0].alive, workers[0].log_tail()
                assert time.monotonic() < deadline, "the poison was never dead-lettered"
                time.sleep(0.05)
            workers[0].kill()  # SIGKILL right after the first dead letter: no commit, no flush
            killed_while_sending = not sending.done()
            workers.append(sandbox.start_worker(data_dir=data_dir, name="second"))
            sending.result(timeout=120)
        assert killed_while_sending, "the worker must die in the middle of the mail, not after it"
        # Each accepted mail was in mail.raw (and the blob store) when the upstream saw it, so
        # before its client heard 250.
        assert upstream.recorded_first == [True] * len(accepted)

        records = [(p, o, v) for p, o, _, v in read_topic(settings.kafka, sandbox.bootstrap, "mail.raw",
                                                            sandbox.codec)]
        assert len(records) == len(accepted) == 2 * 8
        wait_for_outputs(settings.kafka, sandbox.bootstrap, sandbox.codec, 0, len(records), workers=workers[1:],
                         timeout_s=90)
        assert workers[1].alive, workers[1].log_tail()
    finally:
        for process, _ in relays.values():
            stop(process)
        upstream.stop()

    # Honest answers for what was not taken: 552, and nothing recorded or relayed of it.
    assert {what: code for what, (code, _) in refused.items()} == {"acme SIZE": 552, "beta DATA": 552,
                                                                    "acme recorded": 552}
    assert b"too big to be recorded" in refused["acme recorded"][1]

    # The upstream got every accepted mail once, byte for byte as mail.raw holds it and as the
    # client sent it (plus the relay's trace and, outbound, reference header).
    relayed = {hashlib.sha256(data).hexdigest(): data for _, _, data in upstream.messages}
    assert len(relayed) == len(upstream.messages) == len(accepted)
    by_digest = {digest_of(v): (p, o, v) for p, o, v in records}
    assert set(by_digest) == set(relayed)
    sent = {(tenant, raw if raw.endswith(b"\r\n") else raw + b"\r\n"): kind for tenant, kind, raw in accepted}
    arrived = {(by_digest[digest][2]["tenant"], as_relayed(data, outbound=by_digest[digest][2]["direction"] == "out"))
               for digest, data in relayed.items()}
    assert arrived == set(sent)
    assert sum(v["raw_blob"] is not None for _, _, v in records) == 6  # poison and big mail by digest

    # Every recorded mail has its output: a correlation, or a dead letter with a reason.
    correlated = {(v["source_partition"], v["source_offset"]): v
                  for _, _, _, v in read_topic(settings.kafka, sandbox.bootstrap, "mail.correlated", sandbox.codec)
                  if v["generation"] == 0}
    letters = {(v["source_partition"], v["source_offset"]): v for _, _, _, v in
               read_topic(settings.kafka, sandbox.bootstrap, "deadletter", sandbox.codec)}
    kind_of = {}
    for digest, data in relayed.items():
        p, o, v = by_digest[digest]
        kind_of[(p, o)] = sent[(v["tenant"], as_relayed(data, outbound=v["direction"] == "out"))]
    assert {at for at, kind in kind_of.items() if kind == "poison"} == set(letters)
    assert {at for at, kind in kind_of.items() if kind != "poison"} == set(correlated)
    assert {v["reason"] for v in letters.values()} == {"header_too_large"}
    assert all(v["error"] and v["source_topic"] == topic_name(settings.kafka, "mail.raw") for v in letters.values())
    record_at = {(p, o): v for p, o, v in records}
    for at, letter in letters.items():  # the whole (small) record naming the blob, not the mail
        assert sandbox.codec.decode("mail.raw", letter["value"])["raw_blob"] == record_at[at]["raw_blob"]
    assert all(value["tenant"] == record_at[at]["tenant"] for at, value in correlated.items())
    assert {v["tenant"] for v in correlated.values()} == {"acme", "beta"}

    # Nothing is left behind: both queues are empty, and the blob store holds exactly the blobs
    # mail.raw names (the mail refused for its size left none).
    assert [p.name for p in tmp_path.glob("relay-*/relay-queue/*/**/*.msg")] == []
    blobs = {p.name for p in (tmp_path / "blobs" / "sha256").glob("*/*")}
    assert blobs == {v["raw_blob"]["sha256"] for _, _, v in records if v["raw_blob"]}
