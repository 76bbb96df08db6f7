"""The relay server (pipeline/gateways/smtp/server.py) on loopback sockets with a fake mail.raw
producer and a real upstream: replies, queueing, upstream outcomes, AUTH and STARTTLS, who may send
how much (closed by default), slow clients."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import logging
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

from pipeline.broker import free_port
from pipeline.gateways.smtp.policy import RelayError
from pipeline.gateways.smtp.server import SmtpRelay
from pipeline.gateways.smtp.spool import QueuedMail
from pipeline.runtime.producer import RecordWriteError
from pipeline.settings import RelaySettings, Settings

from relay_helpers import STRONG_PASSWORD, TRACKING, judged, mail  # tests/gateways/smtp/relay_helpers.py
from smtp_upstream import Upstream  # tests/smtp_upstream.py


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
