"""send_campaign with a fake SMTP server: content, tracking, unsubscribe headers, rate limit,
resumability after a crash, suppressions, refusals, dry run."""

from __future__ import annotations

import email
import email.policy
import json
import re
import smtplib

import pytest

from pipeline.campaigns import send as send_module
from pipeline.campaigns.recipients import DomainLookup
from pipeline.campaigns.send import (
    CampaignError, CampaignInterrupted, TokenBucket, default_state_path, send_campaign,
)
from pipeline.campaigns.suppression import JsonlSuppressionStore
from pipeline.campaigns.template import CampaignTemplate, TemplateRenderError
from pipeline.settings import CampaignSettings, NotificationSettings, Settings, TrackingSettings, WorkerSettings
from pipeline.tracking.tokens import Keyring, verify_token

TEMPLATE = CampaignTemplate(
    "Spring offers for {{ first_name }}",
    "Hello {{ first_name }},\nour offers: https://shop.example/spring?c={{ code }}\nUnsubscribe: {{ unsubscribe_url }}\n",
    '<html><body><p>Hello {{ first_name }}</p><a href="https://shop.example/spring?c={{ code }}">Offers</a>'
    '<a href="{{ unsubscribe_url }}">Unsubscribe</a></body></html>')


class FakeResolver:
    def __init__(self, answers=None):
        self.answers = answers or {}

    def lookup(self, domain, timeout):
        return self.answers.get(domain, DomainLookup("ok", (f"mx.{domain}",)))


class FakeServer:
    """Records mail; ``fail_after``: the connection drops and the server stays down after that many."""

    def __init__(self, fail_after=None, answers=None):
        self.fail_after, self.answers = fail_after, answers or {}
        self.received: list[tuple[str, list[str], bytes]] = []
        self.connections = 0
        self.down = False

    def factory(self, host, port, local_hostname=None, timeout=None):
        if self.down:
            raise ConnectionRefusedError("down")
        self.connections += 1
        return _Connection(self)


class _Connection:
    def __init__(self, server):
        self.server = server

    def ehlo_or_helo_if_needed(self):
        pass

    def sendmail(self, sender, recipients, data, mail_options=()):
        server = self.server
        if server.fail_after is not None and len(server.received) >= server.fail_after:
            server.down = True
            raise smtplib.SMTPServerDisconnected("connection lost")
        code = server.answers.get(recipients[0])
        if code:
            raise smtplib.SMTPRecipientsRefused({recipients[0]: (code, b"no such user")})
        server.received.append((sender, recipients, data))
        return {}  # like smtplib: the refused recipients

    def quit(self):
        pass

    def close(self):
        pass


# Passes pipeline/tracking/safety.py: these settings send links to a public host.
STRONG_KEY = "vD3kQ9-xLm2RtZ8wYp5Nc7Hs1Jf4Gb6A"


def settings_for(tmp_path, **campaigns) -> Settings:
    return Settings(
        worker=WorkerSettings(data_dir=tmp_path / "data"),
        tracking=TrackingSettings(base_url="https://t.example/track", keys={"k1": STRONG_KEY}, current_key_id="k1"),
        campaigns=CampaignSettings(**{"sender": "news@ours.example", "sender_name": "ACME News",
                                      "smtp": {"host": "smtp.test"}, "rate_per_s": 1000.0, **campaigns}))


def write_csv(tmp_path, n: int = 3, extra: str = "") -> str:
    path = tmp_path / "r.csv"
    path.write_text("email,first_name,code\n" + "".join(f"user{i}@customer{i % 2}.example,Name{i},C{i}\n"
                                                         for i in range(n)) + extra)
    return str(path)


def run(settings, csv, server, **kwargs):
    kwargs.setdefault("resolver", FakeResolver())
    kwargs.setdefault("sleep", lambda s: None)
    return send_campaign(settings, kwargs.pop("campaign_id", "spring-26"), kwargs.pop("template", TEMPLATE), csv,
                         tenant="acme", smtp_factory=server.factory, **kwargs)


def parsed(data: bytes):
    return email.message_from_bytes(data, policy=email.policy.default)


def test_personalised_tracked_mail_with_one_click_unsubscribe(tmp_path):
    settings = settings_for(tmp_path)
    server, produced = FakeServer(), []
    report = run(settings, write_csv(tmp_path, 2), server, producer=produced.append, now=lambda: 1_772_442_000.0)
    assert report.counts == {"sent": 2}
    assert [p.data for p in produced] == [data for _, _, data in server.received]
    keys = Keyring.from_settings(settings.tracking)

    sender, rcpts, data = server.received[1]
    assert (sender, rcpts) == ("news@ours.example", ["user1@customer1.example"])
    assert b"\r\n" in data and b"=?utf-8?" not in data.split(b"\r\n\r\n")[0]  # raw headers, CRLF
    mail = parsed(data)
    assert mail["From"] == "ACME News <news@ours.example>" and mail["To"] == "user1@customer1.example"
    assert mail["Subject"] == "Spring offers for Name1" and mail["Precedence"] == "bulk"
    assert mail["Date"] == "Mon, 02 Mar 2026 09:00:00 +0000"
    assert re.fullmatch(r"<campaign\.[0-9a-f]{32}@ours\.example>", mail["Message-ID"])
    assert produced[1].message_id == mail["Message-ID"]

    # RFC 8058: an https URI in angle brackets, and the One-Click POST header.
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe = re.fullmatch(r"<https://t\.example/track/u/([A-Za-z0-9_-]+)>", mail["List-Unsubscribe"])
    payload = verify_token(unsubscribe.group(1), keys, expect_kind="unsubscribe")
    assert (payload.tenant, payload.recipient, payload.campaign_id, payload.message_id) == (
        "acme", "user1@customer1.example", "spring-26", mail["Message-ID"])

    text = mail.get_body(("plain",)).get_content()
    html = mail.get_body(("html",)).get_content()
    assert "Hello Name1" in text and "Hello Name1" in html
    # The unsubscribe link in the body stays as it is (it points at the tracking endpoint).
    assert f"Unsubscribe: https://t.example/track/u/{unsubscribe.group(1)}" in text
    assert f'href="https://t.example/track/u/{unsubscribe.group(1)}"' in html
    pixel = re.search(r'<img src="https://t\.example/track/o/([A-Za-z0-9_-]+)\.gif"', html)
    opened = verify_token(pixel.group(1), keys, expect_kind="open")
    assert (opened.recipient, opened.campaign_id, opened.message_id) == (
        "user1@customer1.example", "spring-26", mail["Message-ID"])
    clicks = re.findall(r"https://t\.example/track/c/([A-Za-z0-9_-]+)", text + html)
    assert len(clicks) == 2 and "shop.example" not in text + html
    assert {verify_token(c, keys, expect_kind="click").link_url for c in clicks} == {"https://shop.example/spring?c=C1"}


def test_resumable_after_a_crash(tmp_path):
    settings = settings_for(tmp_path)
    csv = write_csv(tmp_path, 10)
    crashing = FakeServer(fail_after=5)
    with pytest.raises(CampaignInterrupted) as caught:
        run(settings, csv, crashing)
    assert caught.value.report.counts == {"sent": 5}
    state = default_state_path(settings.worker.data_dir, "acme", "spring-26")
    lines = [json.loads(line) for line in state.read_text().splitlines()]
    assert [line["address"] for line in lines] == [f"user{i}@customer{i % 2}.example" for i in range(5)]
    assert {line["outcome"] for line in lines} == {"sent"}

    again = FakeServer()
    report = run(settings, csv, again)
    assert report.counts == {"already_sent": 5, "sent": 5}
    assert [r[0] for _, r, _ in again.received] == [f"user{i}@customer{i % 2}.example" for i in range(5, 10)]
    assert run(settings, csv, FakeServer()).counts == {"already_sent": 10}
    # A state file of another campaign is refused rather than mixed up.
    with pytest.raises(CampaignError, match="belongs to campaign 'spring-26'"):
        run(settings, csv, FakeServer(), campaign_id="autumn", state_path=state)


def test_a_torn_state_line_is_ignored_and_resending_keeps_the_message_id(tmp_path):
    settings = settings_for(tmp_path)
    csv = write_csv(tmp_path, 2)
    first = FakeServer()
    run(settings, csv, first)
    state = default_state_path(settings.worker.data_dir, "acme", "spring-26")
    lines = state.read_text().splitlines()
    state.write_text(lines[0] + "\n" + lines[1][:20])  # the crash hit while the second line was written
    second = FakeServer()
    assert run(settings, csv, second).counts == {"already_sent": 1, "sent": 1}
    assert parsed(second.received[0][2])["Message-ID"] == parsed(first.received[1][2])["Message-ID"]
    assert [json.loads(line)["address"] for line in state.read_text().splitlines() if line.endswith("}")] == [
        "user0@customer0.example", "user1@customer1.example"]


def test_suppressed_addresses_are_skipped_per_tenant_and_during_the_send(tmp_path):
    settings = settings_for(tmp_path)
    store = JsonlSuppressionStore.from_settings(settings)
    store.add("acme", "USER1@customer1.example")
    store.add("other-tenant", "user2@customer0.example")
    server = FakeServer()

    def unsubscribe_the_next(mail):  # user3 unsubscribes while the campaign is running
        if mail.recipient == "user2@customer0.example":
            JsonlSuppressionStore(store.path).add("acme", "user3@customer1.example")

    report = run(settings, write_csv(tmp_path, 5), server, producer=unsubscribe_the_next)
    assert report.counts == {"sent": 3, "unsubscribed": 2}
    assert [r[0] for _, r, _ in server.received] == ["user0@customer0.example", "user2@customer0.example",
                                                     "user4@customer0.example"]
    assert [(row, reason) for row, _, reason in report.skipped] == [(3, "unsubscribed"), (5, "unsubscribed")]


def test_invalid_recipients_are_skipped_with_reasons_and_counted(tmp_path):
    settings = settings_for(tmp_path)
    csv = write_csv(tmp_path, 2, extra="broken,X,Y\nUSER0@customer0.example,Dup,D\nann@gone.example,Ann,A\n"
                                       "bob@slow.example,Bob,B\n")
    resolver = FakeResolver({"gone.example": DomainLookup("nxdomain"), "slow.example": DomainLookup("timeout")})
    server = FakeServer()
    report = run(settings, csv, server, resolver=resolver)
    assert report.counts == {"sent": 3, "syntax": 1, "duplicate": 1, "nxdomain": 1}
    assert report.notes == {"mx_timeout": 1}  # sent anyway (skip_on_mx_timeout is off)
    assert report.skipped == [(4, "broken", "syntax"), (5, "USER0@customer0.example", "duplicate"),
                              (6, "ann@gone.example", "nxdomain")]
    assert "3 sent, 1 duplicate, 1 nxdomain, 1 syntax; sent despite 1 mx_timeout" in report.format()


def test_refused_is_recorded_deferred_is_retried(tmp_path):
    settings = settings_for(tmp_path)
    csv = write_csv(tmp_path, 3)
    server = FakeServer(answers={"user0@customer0.example": 550, "user1@customer1.example": 451})
    assert run(settings, csv, server).counts == {"sent": 1, "refused": 1, "deferred": 1}
    retry = FakeServer()
    assert run(settings, csv, retry).counts == {"already_sent": 2, "sent": 1}
    assert [r[0] for _, r, _ in retry.received] == ["user1@customer1.example"]


def test_rate_limit_with_a_fake_clock(tmp_path):
    clock = [100.0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        clock[0] += seconds

    bucket = TokenBucket(4, burst=2, clock=lambda: clock[0], sleep=sleep)
    for _ in range(10):
        bucket.acquire()
    assert clock[0] == pytest.approx(102.0)  # 2 at once, then 8 at 4 a second
    clock[0] += 10  # idle: the bucket refills only up to the burst
    before = clock[0]
    for _ in range(3):
        bucket.acquire()
    assert clock[0] - before == pytest.approx(0.25)

    settings = settings_for(tmp_path, rate_per_s=5.0)
    start = clock[0]
    server = FakeServer()
    run(settings, write_csv(tmp_path, 6), server, clock=lambda: clock[0], sleep=sleep)
    assert len(server.received) == 6 and clock[0] - start == pytest.approx(1.0)
    start = clock[0]
    run(settings, write_csv(tmp_path, 6), FakeServer(), clock=lambda: clock[0], sleep=sleep, rate_per_s=2.0,
        campaign_id="other")
    assert clock[0] - start == pytest.approx(2.5)
    with pytest.raises(ValueError):
        TokenBucket(0)


def test_dry_run_sends_and_records_nothing(tmp_path):
    settings = settings_for(tmp_path, smtp={})  # no SMTP server needed
    report = send_campaign(settings, "spring-26", TEMPLATE, write_csv(tmp_path, 4, extra="x,Y,Z\n"), tenant="acme",
                           dry_run=True, resolver=FakeResolver(), smtp_factory=None)
    assert report.counts == {"would_send": 4, "syntax": 1}
    assert not default_state_path(settings.worker.data_dir, "acme", "spring-26").exists()
    assert "DRY RUN" in report.format()


def test_a_template_error_stops_before_anything_is_sent(tmp_path):
    settings = settings_for(tmp_path)
    template = CampaignTemplate("Hi", "{{ 100 // (code[1:] | int) }}")
    server = FakeServer()
    with pytest.raises(TemplateRenderError, match=r"row 2 \(user0@customer0\.example\), text: ZeroDivisionError"):
        run(settings, write_csv(tmp_path, 3), server, template=template)
    assert server.connections == 0 and not server.received


def test_start_errors(tmp_path):
    csv = write_csv(tmp_path, 1)
    with pytest.raises(CampaignError, match="no SMTP server"):
        send_campaign(settings_for(tmp_path, smtp={}), "c", TEMPLATE, csv, resolver=None)
    with pytest.raises(CampaignError, match="campaign id"):
        send_campaign(settings_for(tmp_path), "has space", TEMPLATE, csv, resolver=None)
    # Public links signed with the public development key: refused before any check or mail, dry run too.
    public_dev_key = settings_for(tmp_path).model_copy(
        update={"tracking": TrackingSettings(base_url="https://t.example/track")})
    with pytest.raises(CampaignError, match="threadline campaign send refuses to run: tracking key 'dev' is the "
                       "built-in development key.*secrets.token_urlsafe"):
        send_campaign(public_dev_key, "c", TEMPLATE, csv, resolver=None, dry_run=True)
    # Without campaigns.smtp.host, the notifications SMTP server is used, with the campaign's timeout.
    fallback = settings_for(tmp_path, smtp={"timeout_s": 45}).model_copy(update={"notifications": NotificationSettings(
        smtp={"host": "alerts.test", "port": 2525, "username": "alerts", "password": "pw", "timeout_s": 5})})
    server = send_module.campaign_smtp(fallback)
    assert (server.host, server.port, server.username, server.password, server.timeout_s) == (
        "alerts.test", 2525, "alerts", "pw", 45)
    assert send_module.campaign_smtp(settings_for(tmp_path)).host == "smtp.test"


def test_non_ascii_mail_is_seven_bit_clean(tmp_path):
    settings = settings_for(tmp_path, sender_name="Ünsere News")
    path = tmp_path / "r.csv"
    path.write_text("email,first_name,code\njoerg@customer0.example,Jörg,Grüße\n", encoding="utf-8")
    server = FakeServer()
    run(settings, str(path), server)
    data = server.received[0][2]
    assert data.isascii()  # no 8BITMIME needed
    mail = parsed(data)
    assert mail["Subject"] == "Spring offers for Jörg" and mail["From"].addresses[0].display_name == "Ünsere News"
    assert "Hello Jörg" in mail.get_body(("plain",)).get_content()
    assert "<p>Hello Jörg</p>" in mail.get_body(("html",)).get_content()
    assert mail.get_body(("html",))["Content-Transfer-Encoding"] == "quoted-printable"
    assert re.search(r"https://t\.example/track/o/[A-Za-z0-9_-]+\.gif", mail.get_body(("html",)).get_content())
