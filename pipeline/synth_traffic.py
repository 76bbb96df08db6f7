"""Seeded synthetic campaign traffic for ``threadline generate``, the demo and the tests.

For each campaign: the campaign record, one marked outbound mail per recipient, and what follows
it with realistic delays: privacy-proxy opens on delivery (Apple Mail Privacy Protection),
security scanners that click every link within seconds, human opens hours later (some on a
second device, some forwarded), human clicks, replies that quote the mail, bounces of bad
addresses, and conversions with revenue.  Hits are raw endpoint hits (``tracking.raw`` records
with genuine signed tokens), so the tracking agent classifies them exactly as live traffic.
The same seed gives the same traffic.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Iterator

from pipeline.contracts.avro import AvroCodec
from pipeline.contracts.records import (MailRawCodec, campaign_record, conversion_record, mail_raw_record,
                                       tracking_raw_record)
from pipeline.contracts.topics import CAMPAIGNS, CONVERSIONS, MAIL_RAW, TRACKING_RAW
from pipeline.correlation.model import stable_event_id
from pipeline.settings import Settings, TrackingSettings
from pipeline.runtime.producer import IngestReport, RecordProducer
from pipeline.tracking.tokens import Keyring, TokenPayload, click_url, open_url, sign_token, unsubscribe_url

START = datetime(2026, 2, 2, 9, 0, tzinfo=timezone.utc)
LINKS = ("https://shop.example/spring-offer", "https://shop.example/catalogue")
_CLIENTS = (  # (user agent, share)
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Microsoft Outlook 16.0", 0.35),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148", 0.30),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:115.0) Gecko/20100101 Thunderbird/115.9.0", 0.15),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36", 0.20),
)
_BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"


@dataclass(frozen=True)
class TrafficRecord:
    topic: str  # mail.raw, tracking.raw, campaigns, conversions
    tenant: str
    at: datetime
    value: dict | bytes  # Avro record, or raw RFC 5322 bytes for mail.raw
    direction: str = "in"


def _hit(kind: str, token: str, at: datetime, user_agent: str | None, ip: str, method: str = "GET") -> dict:
    return tracking_raw_record(uuid.uuid5(uuid.NAMESPACE_URL, f"{token}|{at.isoformat()}|{method}").hex, kind, token,
                               at, method=method, ip=ip, user_agent=user_agent, headers={})


def _mail(message_id: str, sender: str, recipient: str, subject: str, when: datetime, body: str,
          in_reply_to: str | None = None, extra: str = "") -> bytes:
    headers = [f"Message-ID: {message_id}", f"Date: {format_datetime(when)}", f"From: {sender}", f"To: {recipient}",
               f"Subject: {subject}", "MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8"]
    if in_reply_to:
        headers += [f"In-Reply-To: {in_reply_to}", f"References: {in_reply_to}"]
    return ("\r\n".join(headers) + extra + "\r\n\r\n" + body.replace("\n", "\r\n") + "\r\n").encode()


class CampaignTraffic:
    def __init__(self, tracking: TrackingSettings, *, seed: int = 7, tenant: str = "default",
                 sender_domain: str = "support.threadline.test") -> None:
        self.rng = random.Random(seed)
        self.keyring = Keyring.from_settings(tracking)
        self.base_url = tracking.base_url
        self.tenant = tenant
        self.sender = f"news@{sender_domain}"

    def _ip(self, human: bool) -> str:
        rng = self.rng
        return f"{rng.choice((81, 89, 93, 178))}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}" \
            if human else f"17.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"

    def _client(self) -> str:
        roll, total = self.rng.random(), 0.0
        for agent, share in _CLIENTS:
            total += share
            if roll < total:
                return agent
        return _CLIENTS[-1][0]

    def campaign(self, number: int, recipients: int) -> Iterator[TrafficRecord]:
        rng, tenant = self.rng, self.tenant
        campaign_id = f"cmp-{number:03d}"
        sent_at = START + timedelta(days=7 * (number - 1))
        subject = f"Spring offer {number}: up to {rng.choice((10, 15, 20, 25))}% off"
        yield TrafficRecord(CAMPAIGNS, tenant, sent_at, campaign_record(
            stable_event_id("campaign", tenant, campaign_id), tenant, campaign_id, name=subject,
            cost=float(rng.randrange(300, 3000)), currency="EUR", started_at=sent_at, updated_at=sent_at))
        for n in range(recipients):
            recipient = f"customer{n}@client{n % 37}.example"
            message_id = f"<{campaign_id}.{n}@{self.sender.split('@')[1]}>"
            when = sent_at + timedelta(seconds=n * 0.5)
            issued = int(when.timestamp())

            def token(kind: str, link: str | None = None) -> str:
                return sign_token(TokenPayload(kind, tenant, message_id, recipient, campaign_id, link_url=link,
                                               issued_at=issued), self.keyring)

            pixel = open_url(self.base_url, token("open"))
            links = [click_url(self.base_url, token("click", link)) for link in LINKS]
            body = (f"Dear customer,\n\nour spring offer is here: {LINKS[0]}\nFull catalogue: {LINKS[1]}\n\n"
                    f"Kind regards,\nThe shop team\n\n[pixel {pixel}]\n[links {' '.join(links)}]")
            unsubscribe = f"\r\nList-Unsubscribe: <{unsubscribe_url(self.base_url, token('unsubscribe'))}>"
            yield TrafficRecord(MAIL_RAW, tenant, when, _mail(message_id, self.sender, recipient, subject, when, body,
                                                                extra=unsubscribe), direction="out")
            if rng.random() < 0.03:  # a bad address: the mailer daemon answers within a minute
                bounce_at = when + timedelta(seconds=rng.randint(5, 60))
                yield TrafficRecord(MAIL_RAW, tenant, bounce_at, _mail(
                    f"<bounce.{campaign_id}.{n}@mx.client{n % 37}.example>", f"MAILER-DAEMON@mx.client{n % 37}.example",
                    self.sender, "Undelivered Mail Returned to Sender", bounce_at,
                    f"Delivery to {recipient} failed permanently.", in_reply_to=message_id))
                continue
            open_token = pixel.rsplit("/", 1)[1][:-len(".gif")]
            if rng.random() < 0.35:  # Apple Mail Privacy Protection fetches every pixel on delivery
                yield self._tracking(open_token, "open", when + timedelta(seconds=rng.randint(2, 40)), "Mozilla/5.0",
                                     self._ip(False))
            if rng.random() < 0.06:  # a security gateway follows every link within seconds
                for link in links:
                    yield self._tracking(link.rsplit("/", 1)[1], "click", when + timedelta(seconds=rng.randint(1, 6)),
                                         None, self._ip(True), method="HEAD")
            if rng.random() < 0.45:
                client, ip = self._client(), self._ip(True)
                first = when + timedelta(minutes=rng.expovariate(1 / 180))
                yield self._tracking(open_token, "open", first, client, ip)
                if rng.random() < 0.3:  # opened again later, sometimes elsewhere (forwarded)
                    again_ip = ip if rng.random() < 0.7 else self._ip(True)
                    yield self._tracking(open_token, "open", first + timedelta(hours=rng.uniform(1, 30)), client, again_ip)
                if rng.random() < 0.35:
                    click_at = first + timedelta(seconds=rng.randint(20, 600))
                    link = rng.choice(links)
                    yield self._tracking(link.rsplit("/", 1)[1], "click", click_at, _BROWSER, ip)
                    if rng.random() < 0.25:
                        converted_at = click_at + timedelta(minutes=rng.randint(2, 90))
                        yield TrafficRecord(CONVERSIONS, tenant, converted_at, conversion_record(
                            stable_event_id("conversion", tenant, message_id), tenant, campaign_id,
                            recipient=recipient, message_id=message_id, revenue=round(rng.uniform(25, 350), 2),
                            currency="EUR", event_time=converted_at))
                if rng.random() < 0.05:
                    reply_at = first + timedelta(minutes=rng.randint(5, 240))
                    yield TrafficRecord(MAIL_RAW, tenant, reply_at, _mail(
                        f"<reply.{campaign_id}.{n}@client{n % 37}.example>", recipient, self.sender,
                        f"Re: {subject}", reply_at, "Is the offer valid for orders abroad?\n\n> Dear customer,",
                        in_reply_to=message_id))

    def _tracking(self, token: str, kind: str, at: datetime, user_agent: str | None, ip: str,
                  method: str = "GET") -> TrafficRecord:
        return TrafficRecord(TRACKING_RAW, self.tenant, at, _hit(kind, token, at, user_agent, ip, method))

    def records(self, campaigns: int, recipients: int) -> list[TrafficRecord]:
        """Every record of every campaign, in time order (as a live system would see them)."""
        items = [record for number in range(1, campaigns + 1) for record in self.campaign(number, recipients)]
        return sorted(items, key=lambda record: record.at)


def produce_traffic(records: list[TrafficRecord], settings: Settings, codec: AvroCodec, bootstrap: str) -> IngestReport:
    """Write generated traffic to its topics (mail as ``mail.raw`` records); returns the report."""
    producer = RecordProducer(settings.kafka, bootstrap)
    mail_raw = MailRawCodec(settings.mail, settings.blob_dir, codec)
    for record in records:
        if record.topic == MAIL_RAW:
            producer.produce_mail(mail_raw, mail_raw_record(
                tenant=record.tenant, mailbox="campaigns" if record.direction == "out" else "inbox",
                direction=record.direction, source="threadline-generate", raw=record.value, received_at=record.at))
        else:
            producer.produce(record.topic, record.tenant.encode(), codec.encode(record.topic, record.value))
    return producer.finish()
