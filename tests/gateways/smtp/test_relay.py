"""The SMTP relay without a broker: stamping and marking (pure), the queue, upstream outcomes,
the relay's replies with a fake mail.raw producer, and who may send how much (closed by default)."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import dataclasses
import email
import email.policy
import logging
import re
import secrets
import select
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from aiosmtpd.controller import Controller

from pipeline.broker import free_port
from pipeline.correlation.methods.xheader import parse_xref
from pipeline.correlation.tokens import TokenCounter
from pipeline.gateways.smtp import policy
from pipeline.gateways.smtp.policy import RelayError
from pipeline.gateways.smtp.server import SmtpRelay
from pipeline.gateways.smtp.spool import QueuedMail, RelayQueue, load_counter, save_counter
from pipeline.gateways.smtp.stamp import hop_count, outbound_copies, to_crlf
from pipeline.mail.parse import parse_mail
from pipeline.runtime.producer import RecordWriteError
from pipeline.settings import RelaySettings, Settings, SettingsError, TrackingSettings, load_settings
from pipeline.tracking.tokens import Keyring, verify_token

NOW = 1_772_442_000
TRACKING = TrackingSettings(base_url="https://t.example/track", keys={"k1": "a-test-secret-0123456789"},
                            current_key_id="k1")
STRONG_PASSWORD = "v7-Kq2pXw9Lm4Rt8"  # 16 characters, 15 different: what the off-loopback rule asks for
PIXEL = re.compile(r'<img src="https://t\.example/track/o/([A-Za-z0-9_-]+)\.gif"')


def pixel_token(raw: bytes) -> str | None:
    """The open token of the pixel in the mail's HTML body (decoded), if any."""
    body = email.message_from_bytes(raw, policy=email.policy.default).get_body(("html",))
    found = PIXEL.search(body.get_content()) if body is not None else None
    return found.group(1) if found else None


def settings(**relay) -> Settings:
    return Settings(tracking=TRACKING, relay=RelaySettings(**relay))


def prepare_outbound(raw: bytes, settings: Settings, counter: TokenCounter | None, *, recipient: str | None = None,
                     **options) -> bytes:
    """The final bytes of an outbound mail to one recipient (default: its single To/Cc/Bcc address)."""
    return outbound_copies(raw, *sections(settings), counter,
                           recipients=(recipient,) if recipient else (), **options)[0][1]


def sections(settings: Settings) -> tuple:
    """What the stamping functions take of the settings."""
    return settings.correlation, settings.relay, settings.tracking


def mail(*, subject: str = "Quote for 12 pumps", message_id: str | None = "<q1@acme.test>", extra: str = "",
         body: str = "Hello Bob,\nthe quote is attached.\n", content_type: str = "text/plain") -> bytes:
    lines = ["From: Ann <ann@acme.test>", "To: Bob <bob@customer.test>", f"Subject: {subject}"]
    if message_id:
        lines.append(f"Message-ID: {message_id}")
    lines += [line for line in extra.splitlines() if line]
    lines += ["MIME-Version: 1.0", f"Content-Type: {content_type}; charset=utf-8", "", body.replace("\n", "\r\n")]
    return "\r\n".join(lines).encode()


def headers_of(raw: bytes) -> str:
    return raw.split(b"\r\n\r\n", 1)[0].decode()


def test_message_id_is_added_only_when_absent_and_the_rest_is_kept_byte_for_byte():
    raw = mail()
    out = prepare_outbound(raw, settings(), None, now=NOW)
    assert out.count(b"Message-ID:") == 1 and b"Message-ID: <q1@acme.test>\r\n" in out
    assert out.startswith(raw.split(b"\r\n\r\n")[0])           # the client's header fields, untouched
    assert out.endswith(b"\r\n\r\n" + raw.split(b"\r\n\r\n", 1)[1])  # the body, untouched

    stamped = prepare_outbound(mail(message_id=None), settings(), None, now=NOW)
    found = re.findall(rb"Message-ID: <([0-9a-f-]{36})@threadline>\r\n", stamped)
    assert len(found) == 1
    # A Date is added when the client sent none; a second pass changes nothing more.
    assert b"Date: " in stamped
    assert prepare_outbound(stamped, settings(), None, now=NOW) == stamped

    custom = Settings(correlation={"instance_id": "acme prod"}, relay=RelaySettings())
    assert re.search(rb"Message-ID: <[0-9a-f-]{36}@acme-prod>", prepare_outbound(mail(message_id=None), custom, None))
    # A Message-ID with nothing usable in it is replaced (it could never be referenced).
    broken = prepare_outbound(mail(message_id="no id here"), settings(), None, now=NOW)
    assert b"no id here" not in broken and re.search(rb"Message-ID: <[0-9a-f-]{36}@threadline>", broken)


def test_reference_header_names_the_mail_itself_and_the_parser_reads_it():
    for message_id in ("<q1@acme.test>", None):
        out = prepare_outbound(mail(message_id=message_id), settings(), None, now=NOW)
        parsed = parse_mail(out, direction="out")
        fields = parse_xref(parsed.xref)
        assert fields == {"instance": "threadline", "ref": parsed.message_id}
        if message_id:
            assert parsed.message_id == message_id
    # A header the client set already is kept as it is.
    own = mail(extra="X-Threadline-Ref: instance=threadline; ref=<other@acme.test>")
    out = prepare_outbound(own, settings(), None, now=NOW)
    assert headers_of(out).count("X-Threadline-Ref") == 1
    assert parse_xref(parse_mail(out).xref)["ref"] == "<other@acme.test>"


def test_regarding_header_moves_into_the_reference_header():
    raw = mail(extra="X-Threadline-Regarding:  SUPP-11102003.2512242023 ")
    out = prepare_outbound(raw, settings(), None, now=NOW)
    assert "X-Threadline-Regarding" not in headers_of(out)
    assert parse_xref(parse_mail(out).xref) == {"instance": "threadline", "ref": "<q1@acme.test>",
                                                "regarding": "SUPP-11102003.2512242023"}
    # Folded over two lines, with the field separator in it: one clean record id.
    folded = prepare_outbound(mail(extra="X-Threadline-Regarding: LEAD-7;\r\n x"), settings(), None, now=NOW)
    assert parse_xref(parse_mail(folded).xref)["regarding"] == "LEAD-7 x"
    # Not ASCII: left out, and the client's header still does not leave.
    odd = prepare_outbound(mail(extra="X-Threadline-Regarding: =?utf-8?q?F=C3=A4lle?="), settings(), None, now=NOW)
    assert "regarding" not in parse_xref(parse_mail(odd).xref) and "Regarding" not in headers_of(odd)


def test_track_in_the_subject_opts_in_to_the_pixel_and_the_tag_is_removed():
    html = "<html><body><p>See <a href=\"https://shop.example/p\">the offer</a></p></body></html>\n"
    out = prepare_outbound(mail(subject="Spring offer #track", body=html, content_type="text/html"), settings(),
                           None, recipient="bob@customer.test", now=NOW)
    parsed = parse_mail(out, direction="out")
    assert parsed.subject == "Spring offer"
    token = pixel_token(out)
    assert token, out
    payload = verify_token(token, Keyring.from_settings(TRACKING))
    assert (payload.kind, payload.message_id, payload.recipient) == ("open", "<q1@acme.test>", "bob@customer.test")
    assert parse_xref(parsed.xref)["ref"] == "<q1@acme.test>"  # stamping survives the marking
    # Without an opt-in nothing is marked.
    plain = prepare_outbound(mail(body=html, content_type="text/html"), settings(), None, now=NOW)
    assert pixel_token(plain) is None and b"https://shop.example/p" in plain


def test_tracked_mail_to_several_recipients_leaves_as_one_marked_copy_each():
    html = "<html><body><p>Hi</p></body></html>\n"
    raw = mail(subject="News #track", body=html, content_type="text/html")
    copies = outbound_copies(raw, *sections(settings()), None, sender="ann@acme.test",
                             recipients=["bob@customer.test", "eve@other.test"], now=NOW)
    assert [rcpts for rcpts, _ in copies] == [("bob@customer.test",), ("eve@other.test",)]
    keyring = Keyring.from_settings(TRACKING)
    recipients = [verify_token(pixel_token(data), keyring).recipient for _, data in copies]
    assert recipients == ["bob@customer.test", "eve@other.test"]
    ids = {parse_mail(data).message_id for _, data in copies}
    assert len(ids) == 1  # one mail, one Message-ID
    untracked = outbound_copies(mail(), *sections(settings()), None, sender="ann@acme.test",
                                recipients=["bob@customer.test", "eve@other.test"], now=NOW)
    assert [rcpts for rcpts, _ in untracked] == [("bob@customer.test", "eve@other.test")]


def test_subject_tokens_when_enabled_per_sender_number_and_kept_on_replies():
    on = settings(subject_tokens=True, sender_user_numbers={"Ann@Acme.test": 7})
    counter = TokenCounter(on.correlation.tracking_token)
    first = prepare_outbound(mail(), on, counter, sender="ann@acme.test", now=NOW)
    assert parse_mail(first).subject == "Quote for 12 pumps CRM:0007001"
    second = prepare_outbound(mail(), on, counter, sender="ANN@acme.test", now=NOW)
    assert parse_mail(second).subject.endswith("CRM:0007002")
    # Unknown envelope sender: the From address decides; neither listed: user 0.
    by_from = prepare_outbound(mail(), on, counter, sender="bounces@acme.test", now=NOW)
    assert parse_mail(by_from).subject.endswith("CRM:0007003")
    other = prepare_outbound(mail().replace(b"ann@acme.test", b"carl@acme.test"), on, counter, sender=None, now=NOW)
    assert parse_mail(other).subject.endswith("CRM:0000001")
    # A reply carries its conversation's token: no new one, no counter used.
    reply = prepare_outbound(mail(subject="RE: Quote for 12 pumps CRM:0007001"), on, counter, sender="ann@acme.test")
    assert parse_mail(reply).subject == "RE: Quote for 12 pumps CRM:0007001"
    assert counter.state() == {7: 4, 0: 2}
    # An encoded subject gets the token after its encoded words; the decoded subject reads right.
    encoded = prepare_outbound(mail(subject="=?utf-8?q?Angebot_f=C3=BCr_Sie?="), on, counter, sender="ann@acme.test")
    assert parse_mail(encoded).subject == "Angebot für Sie CRM:0007004"
    # #track and a token together: the tag goes, the token stays.
    both = prepare_outbound(mail(subject="Offer #track"), on, counter, sender="ann@acme.test",
                            recipient="bob@customer.test", now=NOW)
    assert parse_mail(both).subject == "Offer CRM:0007005"
    # Off by default.
    assert parse_mail(prepare_outbound(mail(), settings(), TokenCounter(on.correlation.tracking_token))).subject \
        == "Quote for 12 pumps"


def test_token_counters_persist(tmp_path):
    on = settings(subject_tokens=True)
    path = tmp_path / "counters.json"
    counter = load_counter(path, on.correlation.tracking_token)
    prepare_outbound(mail(), on, counter)
    prepare_outbound(mail(), on, counter)
    save_counter(path, counter)
    again = load_counter(path, on.correlation.tracking_token)
    assert parse_mail(prepare_outbound(mail(), on, again)).subject.endswith("CRM:0000003")
    path.write_text("not json")
    with pytest.raises(RelayError, match="counter"):
        load_counter(path, on.correlation.tracking_token)


def test_line_ends_and_hops():
    assert to_crlf(b"a\nb\r\nc\n") == b"a\r\nb\r\nc\r\n"
    assert hop_count(b"Received: a\r\n b\r\nReceived: c\r\nSubject: x\r\n\r\nReceived: body\r\n") == 2


def test_a_header_folded_into_many_lines_is_handled_in_linear_time_and_kept_byte_for_byte():
    # 100,000 continuation lines (7 MB, well under mail.max_message_bytes): joining them one by
    # one took 45 s here, three times per mail in the relay, which handled no other mail meanwhile.
    folded = b"X-Filler: " + b"\r\n ".join(b"%070d" % n for n in range(100_000)) + b"\r\n"
    raw = mail(extra="Date: Tue, 05 Mar 2024 10:15:00 +0100\nX-Before: 1")
    raw = raw.replace(b"X-Before: 1\r\n", b"X-Before: 1\r\n" + folded)
    started = time.monotonic()
    stamped = prepare_outbound(raw, settings(), None)
    assert hop_count(raw) == 0
    assert time.monotonic() - started < 5
    header, body = stamped.split(b"\r\n\r\n", 1)
    assert folded in header + b"\r\n" and body == raw.split(b"\r\n\r\n", 1)[1]
    assert stamped.replace(re.search(rb"X-Threadline-Ref: [^\r]*\r\n", stamped).group(0), b"") == raw


def test_relay_settings_validate_and_read_json_from_the_environment():
    loaded = load_settings(environ={"THREADLINE_RELAY_SENDER_USER_NUMBERS": '{"Ann@Acme.Test": 7}',
                                    "THREADLINE_RELAY_UPSTREAM_HOST": "smtp.acme.test"})
    assert loaded.relay.sender_user_numbers == {"ann@acme.test": 7}
    assert "secret" not in repr(RelaySettings(auth_username="u", auth_password="secret", upstream={"password": "secret"}))
    for bad in ({"THREADLINE_RELAY_TLS_CERT_FILE": "/x.pem"}, {"THREADLINE_RELAY_AUTH_USERNAME": "u"},
                {"THREADLINE_RELAY_SENDER_USER_NUMBERS": "{nope"}):
        with pytest.raises(SettingsError):
            load_settings(environ=bad)


# -- queue and upstream -----------------------------------------------------------------------
def test_queue_files_are_durable_exclusive_and_rewritable(tmp_path):
    queue = RelayQueue(tmp_path / "q")
    queue.open()
    try:
        (queue.directory / ".x.msg.tmp").write_bytes(b"half")
        name = queue.new_name()
        queue.put(QueuedMail(name, "ann@acme.test", ("bob@customer.test", "eve@other.test"), ("BODY=8BITMIME",),
                             b"data\r\n", 1.5, "<q1@acme.test>"))
        assert queue.pending() == [name]
        item = queue.load(name)
        assert (item.mail_from, item.rcpt_tos, item.data, item.message_id) == (
            "ann@acme.test", ("bob@customer.test", "eve@other.test"), b"data\r\n", "<q1@acme.test>")
        queue.keep_for(item, ["eve@other.test"])
        assert queue.load(name) == dataclasses.replace(item, rcpt_tos=("eve@other.test",))  # the envelope round-trips
        queue.fail(item, {"bob@customer.test": "550 no such user"})
        assert (queue.failed_dir / name).is_file() and queue.pending() == [name]
        queue.remove(name)
        assert queue.pending() == []
        assert queue.claim("a") and not queue.claim("a")
        queue.release("a")
        assert queue.claim("a")
        with pytest.raises(RelayError, match="another relay"):
            RelayQueue(tmp_path / "q").open()
    finally:
        queue.close()
    RelayQueue(tmp_path / "q").open()  # the lock went with the first queue


class Upstream:
    """A real SMTP server whose RCPT answers are chosen per address."""

    def __init__(self, port: int | None = None, answers: dict[str, str] | None = None) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.answers = answers or {}
        self.port = port or free_port()
        self.controller: Controller | None = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        answer = self.answers.get(address)
        if answer:
            return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"

    def start(self) -> None:  # a stopped Controller cannot start again: a new one, same port
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


@pytest.mark.integration  # opens sockets on loopback
def test_upstream_outcomes_per_recipient(tmp_path):
    item = QueuedMail("q.msg", "ann@acme.test", ("bob@x.test", "gone@x.test", "busy@x.test"), ("SIZE=20",),
                      b"S: x\r\n\r\nb\r\n", 0.0)
    with Upstream(answers={"gone@x.test": "550 5.1.1 no such user", "busy@x.test": "451 4.2.0 try later"}) as up:
        relay = SmtpRelay(relay_settings(tmp_path, up.port), "unused:9092", None)
        result = relay.deliver(item)
        assert result.sent == ("bob@x.test",)
        assert list(result.refused) == ["gone@x.test"] and result.refused["gone@x.test"].startswith("550")
        assert list(result.deferred) == ["busy@x.test"] and not result.unreachable
        assert up.messages == [("ann@acme.test", ["bob@x.test"], b"S: x\r\n\r\nb\r\n")]
    down = relay.deliver(item)
    assert down.unreachable and list(down.deferred) == list(item.rcpt_tos) and not down.sent
    assert down.deferred["bob@x.test"].startswith("upstream unreachable: ConnectionRefusedError")


# -- the relay with a fake mail.raw producer ------------------------------------------------
class FakeProducer:
    def __init__(self) -> None:
        self.records: list[dict] = []
        self.fail: RecordWriteError | None = None

    def produce_mail_acknowledged(self, mail_raw, record: dict) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self.fail:
            future.set_exception(self.fail)
        else:
            self.records.append(record)
            future.set_result((0, len(self.records)))
        return future

    def finish(self, timeout_s: float = 0) -> None:
        pass


def relay_settings(tmp_path: Path, upstream_port: int, **relay) -> Settings:
    relay.setdefault("own_domains", ["acme.test"])  # the senders of mail()
    return Settings(tracking=TRACKING, worker={"data_dir": tmp_path / "data"},
                    relay=RelaySettings(upstream={"host": "127.0.0.1", "port": upstream_port, "timeout_s": 5},
                                        retry_interval_s=0.1, retry_max_interval_s=0.2, **relay))


def send(port: int, raw: bytes, rcpts=("bob@customer.test",)) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("ann@acme.test", list(rcpts), raw)


def wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.integration  # opens sockets on loopback
def test_relay_records_then_relays_queues_while_the_upstream_is_down_and_refuses_when_not_recorded(tmp_path):
    port = free_port()
    producer = FakeProducer()
    with Upstream(port=port) as up, SmtpRelay(relay_settings(tmp_path, port), "unused:9092", None,
                                              host="127.0.0.1", port=free_port(), producer=producer) as relay:
        send(relay.port, mail(message_id=None))
        assert len(up.messages) == 1 and len(producer.records) == 1
        record = producer.records[0]
        assert (record["direction"], record["mailbox"], record["source"]) == ("out", "smtp-relay", "smtp")
        assert record["raw"] == up.messages[0][2]
        assert record["raw"].startswith(b"Received: from ") and b"X-Threadline-Ref: instance=threadline" in record["raw"]
        assert relay.queue.pending() == []

        producer.fail = RecordWriteError("mail.raw: Local: Message timed out")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            send(relay.port, mail(subject="not recorded"))
        assert refused.value.smtp_code == 451 and len(up.messages) == 1
        producer.fail = RecordWriteError("mail.raw: too large", permanent=True)
        with pytest.raises(smtplib.SMTPDataError) as too_big:
            send(relay.port, mail(subject="too big"))
        assert too_big.value.smtp_code == 552
        producer.fail = None
        up.stop()

        send(relay.port, mail(subject="while down"))
        assert len(relay.queue.pending()) == 1 and len(producer.records) == 2
        up.start()
        wait_for(lambda: len(up.messages) == 2 and not relay.queue.pending())
        assert b"Subject: while down" in up.messages[1][2] and up.messages[1][2] == producer.records[1]["raw"]


@pytest.mark.integration  # opens sockets on loopback
def test_inbound_relay_changes_nothing_but_the_trace_header(tmp_path):
    port = free_port()
    producer = FakeProducer()
    raw = mail(message_id=None, subject="#track me")
    with Upstream(port=port) as up, SmtpRelay(relay_settings(tmp_path, port, subject_tokens=True,
                                                             own_domains=["customer.test"]), "unused:9092",
                                              None, inbound=True, host="127.0.0.1", port=free_port(),
                                              producer=producer) as relay:
        send(relay.port, raw)
    relayed = up.messages[0][2]
    assert relayed.startswith(b"Received: from ") and relayed.count(b"Received:") == 1
    assert relayed.endswith(b"\r\n" + raw)  # the client's bytes, unchanged, after our trace header
    assert relayed == producer.records[0]["raw"]
    assert (producer.records[0]["direction"], producer.records[0]["mailbox"]) == ("in", "smtp-inbound")
    assert relay.queue.directory.name == "inbound"


@pytest.mark.integration  # opens sockets on loopback
def test_refused_for_good_during_the_session_goes_back_to_the_client(tmp_path):
    port = free_port()
    with Upstream(port=port, answers={"gone@customer.test": "550 5.1.1 no such user"}) as up, \
            SmtpRelay(relay_settings(tmp_path, port), "unused:9092", None, host="127.0.0.1", port=free_port(),
                      producer=FakeProducer()) as relay:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            send(relay.port, mail(), rcpts=["gone@customer.test"])
        assert refused.value.smtp_code == 550 and b"no such user" in refused.value.smtp_error
        # One of two refused: the client hears 250, the refused recipient is kept in failed/.
        send(relay.port, mail(), rcpts=["gone@customer.test", "bob@customer.test"])
        assert [m[1] for m in up.messages] == [["bob@customer.test"]]
        assert relay.queue.pending() == [] and len(list(relay.queue.failed_dir.glob("*.msg"))) == 1


def test_relay_refuses_unsafe_or_incomplete_configurations(tmp_path):
    with pytest.raises(RelayError, match=r"upstream\.host"):
        SmtpRelay(Settings(relay={"own_domains": ["acme.test"]}), "x:1", None).check()
    with pytest.raises(RelayError, match="STARTTLS"):
        SmtpRelay(relay_settings(tmp_path, 25, auth_username="u", auth_password="p"), "x:1", None).check()
    with pytest.raises(RelayError, match="loopback"):
        SmtpRelay(relay_settings(tmp_path, 25, auth_username="u", auth_password="p", auth_allow_plaintext=True),
                  "x:1", None, host="0.0.0.0").check()
    with pytest.raises(RelayError, match="user_digits"):
        SmtpRelay(relay_settings(tmp_path, 25, sender_user_numbers={"a@b.c": 1000}), "x:1", None).check()


@pytest.mark.integration  # opens sockets on loopback
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_plaintext_auth_on_loopback_and_credentials_stay_out_of_the_log(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    port = free_port()
    secret = "s3cret-Password"
    # No client network: loopback clients must log in too, as a remote one would.
    with Upstream(port=port) as up, SmtpRelay(
            relay_settings(tmp_path, port, auth_username="desk", auth_password=secret, auth_allow_plaintext=True,
                           client_networks=[]),
            "unused:9092", None, host="127.0.0.1", port=free_port(), producer=FakeProducer()) as relay:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            with pytest.raises(smtplib.SMTPSenderRefused) as refused:  # no login, no relaying
                client.sendmail("ann@acme.test", ["bob@customer.test"], mail())
            assert refused.value.smtp_code == 530
        assert up.messages == []
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login("desk", "wrong-password")
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            client.ehlo()
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.user, client.password = "desk", "wrong-password"  # LOGIN: one line per answer
                client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            client.login("desk", secret)
            client.sendmail("ann@acme.test", ["bob@customer.test"], mail())
        assert len(up.messages) == 1 and b"with ESMTPA id" in up.messages[0][2]
    for text in (secret, "wrong-password"):
        assert text not in caplog.text and base64.b64encode(text.encode()).decode()[:12] not in caplog.text


@pytest.mark.integration  # opens sockets on loopback
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_starttls_is_required_before_mail_and_auth(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    port = free_port()
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    with Upstream(port=port) as up, SmtpRelay(
            relay_settings(tmp_path, port, tls_cert_file=cert, tls_key_file=key, auth_username="desk",
                           auth_password="s3cret-Password", client_networks=[]),
            "unused:9092", None, host="127.0.0.1", port=free_port(), producer=FakeProducer()) as relay:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            client.ehlo()
            assert client.has_extn("starttls") and not client.has_extn("auth")
            with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                client.sendmail("ann@acme.test", ["bob@customer.test"], mail())
            assert refused.value.smtp_code == 530
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            client.starttls(context=context)
            client.ehlo()
            assert "PLAIN" in client.esmtp_features["auth"] and "LOGIN" in client.esmtp_features["auth"]
            with pytest.raises(smtplib.SMTPSenderRefused) as not_logged_in:  # TLS alone is no licence
                client.sendmail("ann@acme.test", ["bob@customer.test"], mail())
            assert not_logged_in.value.smtp_code == 530
            client.rset()
            client.login("desk", "s3cret-Password")
            client.sendmail("ann@acme.test", ["bob@customer.test"], mail())
        # STARTTLS set the connection up a second time: it was still counted once, and freed.
        wait_for(lambda: relay.limits.open_connections == 0)
    assert len(up.messages) == 1 and b"with ESMTPSA id" in up.messages[0][2]


# -- AUTH: no empty or weak password, limited guessing -----------------------------------------
def test_an_empty_auth_password_or_username_is_a_settings_error(tmp_path):
    empty_file = tmp_path / "empty"
    empty_file.write_text("\n")  # what `echo > secret` leaves: the newline is dropped, nothing remains
    user = {"THREADLINE_RELAY_AUTH_USERNAME": "threadline"}
    for environ in ({**user, "THREADLINE_RELAY_AUTH_PASSWORD": ""}, {**user, "THREADLINE_RELAY_AUTH_PASSWORD": "  "},
                    {**user, "THREADLINE_RELAY_AUTH_PASSWORD_FILE": str(empty_file)}):
        with pytest.raises(SettingsError, match="auth_password is empty"):
            load_settings(environ=environ)
    with pytest.raises(SettingsError, match="auth_username is empty"):
        load_settings(environ={"THREADLINE_RELAY_AUTH_USERNAME": "", "THREADLINE_RELAY_AUTH_PASSWORD": STRONG_PASSWORD})
    with pytest.raises(ValueError, match="auth_password is empty"):
        RelaySettings(auth_username="threadline", auth_password="")
    # Even settings that skipped validation never let an empty password in.
    bypassed = RelaySettings().model_copy(update={"auth_username": "threadline", "auth_password": ""})
    assert not policy.credentials_match(bypassed, b"threadline", b"")
    good = RelaySettings(auth_username="threadline", auth_password=STRONG_PASSWORD)
    assert policy.credentials_match(good, b"threadline", STRONG_PASSWORD.encode())
    for login, password in ((b"threadline", b""), (b"threadline", STRONG_PASSWORD.encode()[:-1]),
                            (b"Threadline", STRONG_PASSWORD.encode()), (b"", b"")):
        assert not policy.credentials_match(good, login, password)


def auth_plain(client: smtplib.SMTP, user: str, password: str) -> tuple[int, bytes]:
    """One AUTH PLAIN try, exactly as sent (smtplib's login() tries every mechanism in turn)."""
    return client.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode())


@pytest.mark.integration  # opens sockets on loopback
def test_auth_with_an_empty_password_never_succeeds(tmp_path):
    # The attack of the re-test: AUTH PLAIN \0threadline\0 against a relay whose password is empty
    # (here past the settings' validation, which refuses it).
    base = relay_settings(tmp_path, 25, auth_username="threadline", auth_password=STRONG_PASSWORD,
                          auth_allow_plaintext=True, client_networks=[])
    empty = base.model_copy(update={"relay": base.relay.model_copy(update={"auth_password": ""})})
    with Upstream(port=base.relay.upstream.port) as up, SmtpRelay(empty, "unused:9092", None, host="127.0.0.1",
                                                                   port=free_port(), producer=FakeProducer()) as relay:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            client.ehlo()
            assert auth_plain(client, "threadline", "")[0] == 535
            with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                client.sendmail("ann@acme.test", ["bob@customer.test"], mail())
            assert refused.value.smtp_code == 530
    assert up.messages == []


@pytest.mark.integration  # opens sockets on loopback
def test_a_weak_auth_password_is_refused_off_loopback(tmp_path):
    tls = {"tls_cert_file": tmp_path / "cert.pem", "tls_key_file": tmp_path / "key.pem", "auth_username": "threadline"}
    weak = {"1": "shorter than 16", "change-me": "example secret", "Change_Me-2025-for-real": "example secret",
            "abcdabcdabcdabcdabcd": "fewer than 8 different", "15-chars-Strong": "shorter than 16"}
    for password, why in weak.items():
        relay = SmtpRelay(relay_settings(tmp_path, 25, auth_password=password, **tls), "x:1", None,
                          host="0.0.0.0", port=free_port())
        with pytest.raises(RelayError, match="relay.auth_password") as refused:
            relay.start()
        # The reason, never the password ("1" is too short to look for: it is in "16").
        assert why in str(refused.value) and (len(password) < 4 or password not in str(refused.value)), password
        # Inbound too (a login there means nothing more, but the password is the same guessable one).
        assert any("relay.auth_password" in p for p in judged(True, host="0.0.0.0", own_domains=["acme.test"],
                                                                auth_password=password, **tls))
        # On loopback nobody else can try it.
        assert judged(own_domains=["acme.test"], auth_password=password, **tls) == []
    assert judged(host="0.0.0.0", own_domains=["acme.test"], auth_password=STRONG_PASSWORD, **tls) == []


def test_failed_logins_lock_a_client_out_for_the_window():
    now = [1000.0]
    limits = policy.ClientLimits(RelaySettings(max_auth_failures_per_client=3, auth_failure_window_s=60),
                                 clock=lambda: now[0])
    assert [limits.login_failed("a") for _ in range(3)] == [False, False, True]  # the third locks
    assert limits.login_locked("a") and not limits.login_locked("b")
    now[0] += 59.9
    assert limits.login_locked("a")  # the whole window, not one try back after window / budget
    now[0] += 0.2
    assert not limits.login_locked("a")
    assert limits.login_failed("a") is False and not limits.login_locked("a")  # one failure in the window


@contextlib.contextmanager
def auth_relay(tmp_path: Path, **relay):
    """A relay on loopback where everyone must log in (plaintext AUTH, the loopback test mode)."""
    with running(tmp_path, auth_username="desk", auth_password=STRONG_PASSWORD, auth_allow_plaintext=True,
                 client_networks=[], **relay) as started:
        yield started


@pytest.mark.integration  # opens sockets on loopback
def test_three_failed_logins_on_a_connection_then_421_and_closed(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="threadline.smtp")
    with auth_relay(tmp_path) as (up, relay, producer):
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            client.ehlo()
            assert [auth_plain(client, "desk", f"guess-{n}")[0] for n in range(2)] == [535, 535]
            with pytest.raises(smtplib.SMTPAuthenticationError) as by_login:  # AUTH LOGIN counts the same
                client.user, client.password = "desk", "guess-2"
                client.auth("LOGIN", client.auth_login, initial_response_ok=False)
            assert by_login.value.smtp_code == 535
            # The 4th try is not even checked, whatever it holds: 421, and the connection is gone.
            code, text = auth_plain(client, "desk", STRONG_PASSWORD)
            assert (code, text[:5]) == (421, b"4.7.0")
            with pytest.raises(smtplib.SMTPServerDisconnected):
                client.noop()
        wait_for(lambda: relay.limits.open_connections == 0)
        # One log line for the connection, not one per try; no password in it.
        lines = [r.getMessage() for r in caplog.records if "AUTH from" in r.getMessage()]
        assert lines == ["AUTH from 127.0.0.1: 3 failed login(s), 0 refused (locked out) on this connection"]
        assert "guess-" not in caplog.text and STRONG_PASSWORD not in caplog.text
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:  # a new connection may log in
            client.login("desk", STRONG_PASSWORD)
            client.sendmail("ann@acme.test", ["bob@customer.test"], mail())
    assert len(up.messages) == 1


@pytest.mark.integration  # opens sockets on loopback
def test_after_the_per_client_budget_even_the_right_password_is_refused_until_the_window_passes(tmp_path, caplog):
    window = 1.5
    with auth_relay(tmp_path, max_auth_failures_per_client=4, auth_failure_window_s=window) as (up, relay, producer):
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:  # before: the right password works
            client.ehlo()
            assert auth_plain(client, "desk", STRONG_PASSWORD)[0] == 235
        started = time.monotonic()
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            client.ehlo()
            assert [auth_plain(client, "desk", "wrong")[0] for _ in range(3)] == [535, 535, 535]
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            client.ehlo()
            assert auth_plain(client, "desk", "wrong")[0] == 535  # the 4th of this client: locked from now
            code, text = auth_plain(client, "desk", STRONG_PASSWORD)
            assert (code, text[:5]) == (454, b"4.7.0")
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:  # a new connection changes nothing
            client.ehlo()
            assert auth_plain(client, "desk", STRONG_PASSWORD)[0] == 454
            with pytest.raises(smtplib.SMTPSenderRefused):
                client.sendmail("ann@acme.test", ["bob@customer.test"], mail())
        assert time.monotonic() - started < window, "too slow to test the window"
        assert sum("locked out for relay.auth_failure_window_s" in r.getMessage() for r in caplog.records) == 1
        time.sleep(max(0.0, started + window + 0.1 - time.monotonic()))
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:  # the window passed
            client.login("desk", STRONG_PASSWORD)
            client.sendmail("ann@acme.test", ["bob@customer.test"], mail())
    assert len(up.messages) == 1


# -- closed by default: who may send, to whom, how much ----------------------------------------
def judged(inbound: bool = False, host: str = "127.0.0.1", **relay) -> list[str]:
    settings = Settings(relay={"upstream": {"host": "smtp.acme.test"}, **relay})
    return [str(p) for p in policy.relay_config_problems(settings, inbound=inbound, host=host)]


def test_the_configuration_is_judged_per_mode_and_listening_address():
    for inbound in (False, True):  # no own domains: neither mode starts, even on loopback
        [problem] = judged(inbound)
        assert "no own domains" in problem and "relay.own_domains" in problem
    ours = {"own_domains": ["acme.test"]}
    assert judged(**ours) == [] and judged(True, **ours) == []
    fallback = Settings(relay={"upstream": {"host": "x"}}, untracked={"own_domains": ["acme.test"]})
    assert policy.relay_config_problems(fallback, inbound=False, host="127.0.0.1") == []
    assert policy.own_domains(fallback) == {"acme.test"}
    # Off loopback an outbound relay needs AUTH over TLS ...
    for host in ("0.0.0.0", "::", "192.0.2.10", "mail.acme.test"):
        [problem] = judged(host=host, **ours)
        assert "needs AUTH over TLS" in problem and "relay.tls_cert_file" in problem and "127.0.0.1" in problem
    tls_auth = {**ours, "tls_cert_file": "/etc/relay/cert.pem", "tls_key_file": "/etc/relay/key.pem",
                "auth_username": "desk", "auth_password": STRONG_PASSWORD}
    assert judged(host="0.0.0.0", **tls_auth) == []
    # ... and a client network beyond loopback (sending without a login) is confirmed explicitly.
    lan = {**tls_auth, "client_networks": ["127.0.0.0/8", "10.1.0.0/16"]}
    [problem] = judged(host="0.0.0.0", **lan)
    assert "10.1.0.0/16" in problem and "relay.trust_client_networks" in problem
    assert judged(host="0.0.0.0", trust_client_networks=True, **lan) == []
    assert judged(**{**ours, "client_networks": ["10.1.0.0/16"]}) == []  # on loopback nobody else gets in
    # Inbound off loopback needs only the own domains: anyone may deliver to an MX.
    assert judged(True, host="0.0.0.0", **ours) == []
    # Plaintext AUTH stays a loopback test convenience.
    plain = {**ours, "auth_username": "desk", "auth_password": "pw", "auth_allow_plaintext": True}
    assert judged(**plain) == []
    assert any("loopback testing only" in p for p in judged(True, host="0.0.0.0", **plain))
    assert all(policy.is_loopback_host(h) for h in ("localhost", "::1", "127.0.0.2", "[::1]"))
    # Settings refuse what cannot be judged.
    for bad in ({"client_networks": ["10.1.0.0/33"]}, {"client_networks": ["lan"]}, {"own_domains": ["ann@acme.test"]}):
        with pytest.raises(ValueError):
            RelaySettings(**bad)
    assert RelaySettings(own_domains=["ACME.test."], client_networks=["10.1.2.3/16"]).model_dump(
        include={"own_domains", "client_networks"}) == {"own_domains": ("acme.test",), "client_networks": ("10.1.0.0/16",)}


def test_client_limits_are_token_buckets_per_client_and_connection_counts(monkeypatch):
    now = [1000.0]
    limits = policy.ClientLimits(RelaySettings(max_messages_per_client=3, max_recipients_per_client=5,
                                               rate_window_s=30, max_connections=3, max_connections_per_client=2),
                                 clock=lambda: now[0])
    assert [limits.take_message("a") for _ in range(4)] == [True, True, True, False]
    assert limits.take_message("b")  # another client has its own bucket
    now[0] += 10  # a third of the window gives one message back ...
    assert [limits.take_message("a") for _ in range(2)] == [True, False]
    now[0] += 3600  # ... and a long pause no more than the bucket holds
    assert [limits.take_message("a") for _ in range(4)] == [True, True, True, False]
    assert sum(limits.take_recipient("a") for _ in range(10)) == 5
    assert [limits.connect(k) for k in ("a", "a", "a", "b", "c")] == [
        None, None, policy.CONNECTIONS_PER_CLIENT, None, policy.CONNECTIONS_TOTAL]
    limits.disconnect("a")
    limits.disconnect("never-connected")
    assert limits.connect("c") is None and limits.open_connections == 3
    # Forgetting idle clients keeps the table bounded (an IPv6 attacker has many addresses).
    monkeypatch.setattr(policy, "_TRACKED_CLIENTS", 3)
    rate = policy.RateLimit(2, 10, lambda: now[0])
    for key in ("x", "y", "z"):
        rate.take(key)
    now[0] += 10
    rate.take("new")
    assert list(rate._buckets) == ["new"]
    # What is counted per client, and how addresses compare.
    assert policy.client_key(("127.0.0.1", 5000)) == "127.0.0.1"
    assert policy.client_key(("::ffff:192.0.2.7", 1, 0, 0)) == "192.0.2.7"
    assert policy.client_key(("2001:db8:1:2:aaaa::1", 1, 0, 0)) == policy.client_key(
        ("2001:db8:1:2:bbbb::9", 2, 0, 0)) == "2001:db8:1:2::/64"
    assert policy.in_networks(policy.client_ip(("::ffff:127.0.0.1", 1, 0, 0)), policy.parse_networks(["127.0.0.0/8"]))
    assert policy.address_domain("Ann@ACME.test.") == "acme.test" and policy.address_domain("<>") is None
    assert policy.address_domain('"a@evil.test"@acme.test') == "acme.test"
    assert policy.address_domain("ann@bücher.test") == "xn--bcher-kva.test"


@contextlib.contextmanager
def running(tmp_path: Path, *, inbound: bool = False, **relay):
    """A real upstream and the relay in this process on free loopback ports."""
    port = free_port()
    producer = FakeProducer()
    with Upstream(port=port) as up, SmtpRelay(relay_settings(tmp_path, port, **relay), "unused:9092", None,
                                              inbound=inbound, host="127.0.0.1", port=free_port(),
                                              producer=producer) as relay_server:
        yield up, relay_server, producer


@pytest.mark.integration  # opens sockets on loopback
def test_a_client_outside_client_networks_may_not_send(tmp_path):
    # Tests connect from loopback only: networks without it stand for a client from anywhere else.
    with running(tmp_path, client_networks=["192.0.2.0/24"]) as (up, relay, producer):
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                client.sendmail("ann@acme.test", ["bob@customer.test"], mail())
        assert refused.value.smtp_code == 550 and refused.value.smtp_error.startswith(b"5.7.1 Relaying denied")
    assert up.messages == [] and producer.records == []


@pytest.mark.integration  # opens sockets on loopback
def test_a_forged_sender_is_refused_from_an_allowed_client_and_nothing_leaves(tmp_path):
    with running(tmp_path) as (up, relay, producer):
        # A foreign domain, look-alikes of ours, a subdomain (not listed) and the null sender.
        for sender in ("ceo@bank.test", "ann@acme.test.evil.test", "ann@evilacme.test", "ann@mail.acme.test", ""):
            with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
                with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                    client.sendmail(sender, ["bob@customer.test"], mail())
            assert refused.value.smtp_code == 553 and refused.value.smtp_error.startswith(b"5.7.1"), sender
        assert up.messages == [] and producer.records == []
        send_as = smtplib.SMTP("127.0.0.1", relay.port, timeout=10)
        with send_as as client:  # the same client with the organisation's own sender is relayed
            client.sendmail("Ann@ACME.test", ["bob@customer.test"], mail())
    assert len(up.messages) == 1 and up.messages[0][0] == "Ann@ACME.test" and len(producer.records) == 1


@pytest.mark.integration  # opens sockets on loopback
def test_five_thousand_recipients_in_97_domains_get_the_limit_and_452_for_the_rest(tmp_path):
    rcpts = [f"user{n}@domain{n % 97}.test" for n in range(5000)]
    with running(tmp_path) as (up, relay, producer):
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as client:
            refused = client.sendmail("ann@acme.test", rcpts, mail())
    limit = RelaySettings().max_recipients_per_message
    assert limit == 100
    assert list(refused) == rcpts[limit:]
    assert {(code, text[:5]) for code, text in refused.values()} == {(452, b"4.5.3")}
    assert len(up.messages) == 1 and up.messages[0][1] == rcpts[:limit] and len(producer.records) == 1


@pytest.mark.integration  # opens sockets on loopback
def test_inbound_takes_mail_from_anyone_for_the_own_domains_only(tmp_path):
    # No client network at all: inbound, any MTA may deliver; the recipients decide.
    with running(tmp_path, inbound=True, own_domains=["customer.test"], client_networks=[]) as (up, relay, producer):
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            refused = client.sendmail("news@sender.test", ["bob@customer.test", "eve@other.test",
                                                           "bob@customer.test.other.test"], mail())
        assert set(refused) == {"eve@other.test", "bob@customer.test.other.test"}
        assert {(code, text[:5]) for code, text in refused.values()} == {(550, b"5.7.1")}
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                client.sendmail("spam@sender.test", ["victim@elsewhere.test"], mail())
            client.sendmail("", ["bob@customer.test"], mail())  # a bounce (null sender) is delivered
    assert [(m[0], m[1]) for m in up.messages] == [("news@sender.test", ["bob@customer.test"]),
                                                   ("<>", ["bob@customer.test"])]


@pytest.mark.integration  # opens sockets on loopback
def test_per_client_rates_of_messages_and_recipients(tmp_path):
    with running(tmp_path, max_messages_per_client=3, max_recipients_per_client=4) as (up, relay, producer):
        send(relay.port, mail(), rcpts=["a@customer.test", "b@customer.test"])
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            refused = client.sendmail("ann@acme.test", ["c@x.test", "d@x.test", "e@x.test"], mail())
            assert list(refused) == ["e@x.test"] and refused["e@x.test"][0] == 451
            with pytest.raises(smtplib.SMTPRecipientsRefused) as no_recipient_left:
                client.sendmail("ann@acme.test", ["f@x.test"], mail())
            assert no_recipient_left.value.recipients["f@x.test"][0] == 451
            with pytest.raises(smtplib.SMTPSenderRefused) as no_message_left:
                client.sendmail("ann@acme.test", ["g@x.test"], mail())
            assert no_message_left.value.smtp_code == 451 and no_message_left.value.smtp_error.startswith(b"4.7.1")
    assert [m[1] for m in up.messages] == [["a@customer.test", "b@customer.test"], ["c@x.test", "d@x.test"]]


@pytest.mark.integration  # opens sockets on loopback
def test_connections_per_client_are_capped(tmp_path):
    with running(tmp_path, max_connections_per_client=2) as (up, relay, producer):
        wait_for(lambda: relay.limits.open_connections == 0)  # the controller's own start-up probe
        first = smtplib.SMTP("127.0.0.1", relay.port, timeout=10)
        second = smtplib.SMTP("127.0.0.1", relay.port, timeout=10)
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP("127.0.0.1", relay.port, timeout=10)
        assert refused.value.smtp_code == 421
        first.quit()
        wait_for(lambda: relay.limits.open_connections == 1)
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as again:  # a freed place can be taken
            again.sendmail("ann@acme.test", ["bob@customer.test"], mail())
        second.quit()
    assert len(up.messages) == 1


def _reply(reader) -> bytes:
    line = reader.readline()
    while line[3:4] == b"-":
        line = reader.readline()
    return line


def _closed_within(sock: socket.socket, seconds: float, keep_busy: Callable[[], None]) -> float | None:
    """Keep the client busy until the server closes the connection; how long that took."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            keep_busy()
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable and sock.recv(4096) == b"":
                return time.monotonic() - started
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
    return None


@pytest.mark.integration  # opens sockets on loopback
def test_slow_clients_are_dropped_idle_dribbling_data_or_too_long(tmp_path):
    with running(tmp_path, command_timeout_s=0.5, session_timeout_s=1.5) as (up, relay, producer):
        # Silent after the greeting.
        with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock:
            assert _reply(sock.makefile("rb")).startswith(b"220")
            idle = _closed_within(sock, 5, lambda: None)
        assert idle is not None and idle < 1.2
        # DATA dribbled a line every 0.1 s: lines are no commands, so the timer set at DATA runs out.
        with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock:
            reader = sock.makefile("rb")
            _reply(reader)
            for command, expected in ((b"HELO slow.test", b"250"), (b"MAIL FROM:<ann@acme.test>", b"250"),
                                      (b"RCPT TO:<bob@customer.test>", b"250"), (b"DATA", b"354")):
                sock.sendall(command + b"\r\n")
                assert _reply(reader).startswith(expected)
            dribbling = _closed_within(sock, 5, lambda: sock.sendall(b"Subject: still typing\r\n"))
        assert dribbling is not None and dribbling < 1.2
        # Busy with NOOPs: each resets the idle timer, the session limit ends it with 421.
        with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock:
            reader = sock.makefile("rb")
            started = time.monotonic()
            _reply(reader)
            replies = []
            while (not replies or replies[-1].startswith(b"250")) and time.monotonic() - started < 5:
                sock.sendall(b"NOOP\r\n")
                replies.append(_reply(reader))
                time.sleep(0.2)
            lasted = time.monotonic() - started
        assert replies[-1].startswith(b"421 4.4.2") and 1.4 < lasted < 3, (replies[-1], lasted)
        assert len(replies) > 3  # the NOOPs did keep it alive past the idle timeout
        assert up.messages == [] and producer.records == []
        send(relay.port, mail())  # a prompt client is served
    assert len(up.messages) == 1


@pytest.mark.integration  # opens sockets on loopback
def test_listening_off_loopback_needs_a_safe_configuration(tmp_path):
    port = free_port()
    relay = SmtpRelay(relay_settings(tmp_path, 25), "x:1", None, host="0.0.0.0", port=port)
    with pytest.raises(RelayError, match="needs AUTH over TLS") as refused:
        relay.start()
    assert "relay.auth_username" in str(refused.value) and "listen on 127.0.0.1" in str(refused.value)
    with pytest.raises(OSError):  # nothing listens
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    # The command says so and exits 2 before it tries the broker (none listens on port 1).
    env = {"PATH": "/usr/bin:/bin", "THREADLINE_KAFKA_BOOTSTRAP": "127.0.0.1:1",
           "THREADLINE_RELAY_UPSTREAM_HOST": "127.0.0.1", "THREADLINE_RELAY_OWN_DOMAINS": '["acme.test"]',
           "THREADLINE_WORKER_DATA_DIR": str(tmp_path / "data"),
           # A strong tracking key: the development key off loopback is refused first, for its own reason.
           "THREADLINE_TRACKING_KEYS": '{"k1": "' + secrets.token_urlsafe(32) + '"}',
           "THREADLINE_TRACKING_CURRENT_KEY_ID": "k1"}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "smtp", "--host", "0.0.0.0", "--port", str(port)],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "needs AUTH over TLS" in result.stderr and "broker" not in result.stderr
    assert time.monotonic() - started < 20
