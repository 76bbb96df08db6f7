"""The one SMTP client with a fake smtplib: outcomes per recipient, what closes or reopens the
session, what raises (the relay, campaign and notifier tests use it against real servers)."""

from __future__ import annotations

import smtplib

import pytest

from pipeline.settings import SmtpSettings
from pipeline.smtp_client import SmtpClient, SmtpConnectionLost, SmtpUnavailable

SERVER = SmtpSettings(host="smtp.test", port=587, starttls=True, username="u", password="pw", timeout_s=7)


class FakeSmtp:
    """One session; ``script`` says what each sendmail does (a dict of refusals or an exception)."""

    def __init__(self, server: "FakeServer") -> None:
        self.server, self.quit_called = server, False

    def ehlo_or_helo_if_needed(self):
        pass

    def starttls(self, context):
        self.server.calls.append(("starttls", context.verify_mode.name))

    def login(self, user, password):
        self.server.calls.append(("login", user, password))
        if self.server.login_error:
            raise self.server.login_error

    def sendmail(self, sender, recipients, data, mail_options=()):
        answer = self.server.script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        self.server.calls.append(("sendmail", sender, tuple(recipients), tuple(mail_options)))
        return answer

    def quit(self):
        self.quit_called = True

    def close(self):
        pass


class FakeServer:
    def __init__(self, *script, login_error=None, down=False):
        self.script, self.login_error, self.down = list(script), login_error, down
        self.calls: list[tuple] = []
        self.sessions: list[FakeSmtp] = []

    def factory(self, host, port, local_hostname=None, timeout=None):
        self.calls.append(("connect", host, port, local_hostname, timeout))
        if self.down:
            raise ConnectionRefusedError("down")
        self.sessions.append(FakeSmtp(self))
        return self.sessions[-1]


def test_one_kept_session_says_per_recipient_what_the_server_answered():
    server = FakeServer({"gone@x.test": (550, b"5.1.1 no\r\n such user"), "busy@x.test": (451, b"later")}, {})
    with SmtpClient(SERVER, helo="ours.test", factory=server.factory) as client:
        first = client.send("a@ours.test", ["bob@x.test", "gone@x.test", "busy@x.test"], b"x", ["SMTPUTF8"])
        second = client.send("a@ours.test", ["carl@x.test"], b"y")
    assert first.sent == ("bob@x.test",) and first.refused == {"gone@x.test": "550 5.1.1 no such user"}
    assert first.deferred == {"busy@x.test": "451 later"} and first.first_refusal.startswith("550")
    assert second.sent == ("carl@x.test",)
    assert server.calls[:3] == [("connect", "smtp.test", 587, "ours.test", 7), ("starttls", "CERT_REQUIRED"),
                                ("login", "u", "pw")]
    assert [c[0] for c in server.calls].count("connect") == 1 and server.sessions[0].quit_called
    assert server.calls[3] == ("sendmail", "a@ours.test", ("bob@x.test", "gone@x.test", "busy@x.test"), ("SMTPUTF8",))


def test_refusals_of_the_whole_message():
    server = FakeServer(smtplib.SMTPSenderRefused(553, b"not yours", "a@ours.test"),
                        smtplib.SMTPSenderRefused(451, b"later", "a@ours.test"),
                        smtplib.SMTPDataError(421, b"closing"), {})
    client = SmtpClient(SERVER, factory=server.factory)
    sender = client.send("a@ours.test", ["b@x.test", "c@x.test"], b"x")
    assert sender.sender_refused and sender.refused == {"b@x.test": "553 not yours", "c@x.test": "553 not yours"}
    assert not (later := client.send("a@ours.test", ["b@x.test"], b"x")).sender_refused and later.deferred
    closing = client.send("a@ours.test", ["b@x.test"], b"x")
    assert closing.deferred == {"b@x.test": "421 closing"} and not closing.sender_refused
    assert client.send("a@ours.test", ["b@x.test"], b"x").sent  # 421 closed the session: a new one
    assert len(server.sessions) == 2


def test_a_kept_session_the_server_dropped_is_reopened_once_a_new_one_is_not():
    server = FakeServer({}, smtplib.SMTPServerDisconnected("gone"), {}, smtplib.SMTPServerDisconnected("gone"))
    client = SmtpClient(SERVER, factory=server.factory)
    client.send("a@ours.test", ["b@x.test"], b"x")
    assert client.send("a@ours.test", ["b@x.test"], b"x").sent and len(server.sessions) == 2
    client.close()
    server.script = [smtplib.SMTPServerDisconnected("gone")]
    with pytest.raises(SmtpConnectionLost, match="SMTPServerDisconnected"):
        client.send("a@ours.test", ["b@x.test"], b"x")
    assert len(server.sessions) == 3


def test_no_session_raises_and_says_whether_it_is_the_login():
    with pytest.raises(SmtpUnavailable, match="unreachable: ConnectionRefusedError") as down:
        SmtpClient(SERVER, factory=FakeServer(down=True).factory).send("a@ours.test", ["b@x.test"], b"x")
    assert not down.value.login_refused
    refused = FakeServer(login_error=smtplib.SMTPAuthenticationError(535, b"5.7.8 bad credentials"))
    with pytest.raises(SmtpUnavailable, match="refused the login or STARTTLS: 535 5.7.8 bad credentials") as login:
        SmtpClient(SERVER, factory=refused.factory).send("a@ours.test", ["b@x.test"], b"x")
    assert login.value.login_refused and "pw" not in str(login.value)
    no_auth = FakeServer(login_error=smtplib.SMTPNotSupportedError("SMTP AUTH extension not supported by server."))
    with pytest.raises(SmtpUnavailable) as unsupported:
        SmtpClient(SERVER, factory=no_auth.factory).send("a@ours.test", ["b@x.test"], b"x")
    assert unsupported.value.login_refused
