"""Send a campaign: one personalised, tracked mail per recipient, rate limited and resumable.

``send_campaign`` (docs/campaigns.md):

1. reads the recipient CSV and checks every address (:mod:`pipeline.campaigns.recipients`);
   addresses already in the resume state (``already_sent``) or in the suppression store
   (``unsubscribed``) are skipped before any DNS lookup;
2. renders the template for every remaining recipient *before* the first mail goes out, so a
   missing merge field stops the campaign with nothing sent;
3. for each recipient, in file order: checks the suppression store again (an unsubscribe that
   arrives during the send is honoured), builds the mail (From = the configured sender, To,
   Subject, Date, a Message-ID derived from tenant, campaign and address, ``Precedence: bulk``),
   marks it for tracking (pixel, signed click links: :func:`pipeline.tracking.mark.mark_message`
   with the campaign id), makes it 7-bit clean (quoted-printable UTF-8 bodies), adds ``List-Unsubscribe: <{base_url}/u/{token}>`` and
   ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058), waits for the token bucket,
   and sends it over one SMTP connection (reconnected once when the server drops it);
4. appends the address, outcome and Message-ID to the state file and fsyncs it after every mail:
   a rerun after a crash skips what was sent.  A crash between the server's "250 OK" and the fsync
   sends that one mail again (at least once); it carries the same Message-ID, so receivers can
   tell.

Outcomes per recipient (the report counts each): ``sent`` (``would_send`` in a dry run),
``already_sent``, ``unsubscribed``, ``refused`` (the server answered 5xx: recorded, not retried),
``deferred`` (4xx: not recorded, the next run retries), and the validation reasons of
:data:`pipeline.campaigns.recipients.REASONS`.

No Kafka here: a ``producer`` callback gets every sent mail (``threadline campaign send
--to-mail-raw`` hands it to ``mail.raw``, direction out).
"""

from __future__ import annotations

import email.policy
import hashlib
import json
import re
import smtplib
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Callable, Iterable

from pipeline.campaigns.recipients import (
    DnsResolver, MailDomainResolver, Recipient, SmtpProbe, domain_of, read_recipients, validate_recipients,
)
from pipeline.campaigns.suppression import UNSUBSCRIBED, JsonlSuppressionStore, SuppressionStore
from pipeline.campaigns.template import CampaignTemplate, RenderedMail
from pipeline.durable import append_line
from pipeline.settings import Settings, SmtpSettings
from pipeline.smtp_client import SmtpClient, SmtpError, SmtpUnavailable
from pipeline.tracking.mark import mark_message
from pipeline.tracking.safety import key_refusal
from pipeline.tracking.tokens import Keyring, TokenPayload, sign_token, unsubscribe_url

SENT, WOULD_SEND, ALREADY_SENT, REFUSED, DEFERRED = "sent", "would_send", "already_sent", "refused", "deferred"
_CAMPAIGN_ID = re.compile(r"[^\s\x00-\x1f\x7f]{1,200}")
_DEFAULT = object()


class CampaignError(ValueError):
    """The campaign cannot start: bad id, no SMTP server, a state file of another campaign, ..."""


class CampaignInterrupted(RuntimeError):
    """The SMTP server went away and did not come back; ``report`` says what was done.  Run the
    same command again to send the rest."""

    def __init__(self, message: str, report: CampaignReport) -> None:
        super().__init__(message)
        self.report = report


def campaign_smtp(settings: Settings) -> SmtpSettings | None:
    """``campaigns.smtp`` when its host is set, else the whole ``notifications.smtp`` connection
    (host, port, STARTTLS, login) with the campaign's own timeout; ``None`` when neither is set."""
    campaigns, notifications = settings.campaigns.smtp, settings.notifications.smtp
    if campaigns.host:
        return campaigns
    if notifications.host:
        return notifications.model_copy(update={"timeout_s": campaigns.timeout_s})
    return None


def sender_of(settings: Settings) -> str:
    return settings.campaigns.sender or settings.notifications.sender


class TokenBucket:
    """At most ``rate_per_s`` acquisitions a second on average, ``burst`` back to back."""

    def __init__(self, rate_per_s: float, burst: int = 1, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self.rate, self.burst, self.clock, self.sleep = rate_per_s, burst, clock, sleep
        self.tokens = float(burst)
        self.updated = clock()

    def acquire(self) -> None:
        while True:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1 - 1e-9:
                self.tokens -= 1
                return
            self.sleep((1 - self.tokens) / self.rate)


def default_state_path(data_dir: Path, tenant: str, campaign_id: str) -> Path:
    safe = lambda text: re.sub(r"[^A-Za-z0-9._-]", "_", text)[:60]  # noqa: E731
    digest = hashlib.sha256(f"{tenant}\0{campaign_id}".encode()).hexdigest()[:8]
    return data_dir / "campaigns" / f"{safe(tenant)}.{safe(campaign_id)}.{digest}.state.jsonl"


class CampaignState:
    """The resume state: one JSON line per finished recipient, fsync'd after each."""

    def __init__(self, path: Path, *, tenant: str, campaign_id: str) -> None:
        self.path, self.tenant, self.campaign_id = Path(path), tenant, campaign_id
        self.done: dict[str, dict] = {}
        if self.path.is_file():
            for number, line in enumerate(self.path.read_bytes().splitlines(), start=1):
                try:
                    entry = json.loads(line)
                    address = entry["address"]
                except (ValueError, KeyError, TypeError):
                    continue  # torn last line of a crash
                if (entry.get("tenant"), entry.get("campaign_id")) != (tenant, campaign_id):
                    raise CampaignError(f"{self.path} line {number} belongs to campaign {entry.get('campaign_id')!r} "
                                        f"of tenant {entry.get('tenant')!r}, not {campaign_id!r} of {tenant!r}")
                self.done[address] = entry

    def record(self, address: str, outcome: str, message_id: str, at: float) -> None:
        entry = {"tenant": self.tenant, "campaign_id": self.campaign_id, "address": address, "outcome": outcome,
                 "message_id": message_id, "at": datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")}
        append_line(self.path, (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))
        self.done[address] = entry


@dataclass(frozen=True)
class SentMail:
    row: int
    recipient: str
    message_id: str
    data: bytes


@dataclass
class CampaignReport:
    campaign_id: str
    tenant: str
    dry_run: bool = False
    rows: int = 0
    counts: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)        # sent anyway: mx_timeout / mx_error
    skipped: list[tuple[int, str, str]] = field(default_factory=list)  # (row, address, reason); not already_sent
    state_path: Path | None = None

    def skip(self, recipient: Recipient, reason: str) -> None:
        self.counts[reason] += 1
        if reason != ALREADY_SENT:
            self.skipped.append((recipient.row, recipient.email, reason))

    def format(self) -> str:
        first = (WOULD_SEND if self.dry_run else SENT, ALREADY_SENT, UNSUBSCRIBED)
        order = [k for k in first if self.counts.get(k)] + sorted(k for k in self.counts if k not in first)
        parts = [f"{self.counts[k]} {k}" for k in order] or ["nothing to send"]
        text = (f"campaign {self.campaign_id} ({self.tenant}){' DRY RUN' if self.dry_run else ''}: "
                f"{self.rows} rows: {', '.join(parts)}")
        if self.notes:
            text += "; sent despite " + ", ".join(f"{n} {k}" for k, n in sorted(self.notes.items()))
        return text

    def as_dict(self) -> dict:
        return {"campaign_id": self.campaign_id, "tenant": self.tenant, "dry_run": self.dry_run, "rows": self.rows,
                "counts": dict(self.counts), "notes": dict(self.notes),
                "skipped": [{"row": r, "email": e, "reason": why} for r, e, why in self.skipped],
                "state_path": str(self.state_path) if self.state_path else None}


def message_id_for(tenant: str, campaign_id: str, address: str, domain: str) -> str:
    """Stable per (tenant, campaign, recipient): a resend after a crash has the same Message-ID."""
    digest = hashlib.sha256(f"{tenant}\0{campaign_id}\0{address}".encode()).hexdigest()[:32]
    return f"<campaign.{digest}@{domain}>"


def build_mail(rendered: RenderedMail, *, sender: str, sender_name: str | None, recipient: str, message_id: str,
               sent_at: float) -> bytes:
    """The unmarked mail, CRLF line endings."""
    message = EmailMessage()
    message["From"] = Address(display_name=sender_name or "", addr_spec=sender)
    message["To"] = Address(addr_spec=recipient)
    message["Subject"] = rendered.subject
    message["Date"] = format_datetime(datetime.fromtimestamp(sent_at, timezone.utc))
    message["Message-ID"] = message_id
    message["Precedence"] = "bulk"  # auto-responders stay quiet
    if rendered.text is not None:
        message.set_content(rendered.text)
        if rendered.html is not None:
            message.add_alternative(rendered.html, subtype="html")
    else:
        message.set_content(rendered.html, subtype="html")
    return message.as_bytes(policy=email.policy.SMTP)


def seven_bit(data: bytes) -> bytes:
    """Text parts sent as ``8bit`` (``mark_message`` writes them when a text is not ASCII) become
    quoted-printable UTF-8, so the mail needs no 8BITMIME support from the SMTP server."""
    if data.isascii():
        return data
    message = email.message_from_bytes(data, policy=email.policy.default)
    for part in message.walk():
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        if str(part.get("Content-Transfer-Encoding", "")).strip().lower() not in ("8bit", "binary"):
            continue
        text = part.get_content()
        params = {k: v for k, v in part["Content-Type"].params.items() if k.lower() != "charset"}
        kept = [(k, v) for k, v in part.items()
                if k.lower().startswith("content-") and k.lower() not in ("content-type", "content-transfer-encoding")]
        had_version = "MIME-Version" in part
        part.set_content(text, subtype=part.get_content_subtype(), charset="utf-8", cte="quoted-printable",
                         params=params or None)
        if not had_version:
            del part["MIME-Version"]
        for name, _ in kept:
            del part[name]
        for name, value in kept:
            part[name] = value
    return message.as_bytes(policy=email.policy.SMTP)


def add_unsubscribe_headers(data: bytes, url: str) -> bytes:
    """Prepend the RFC 8058 headers as raw lines: the email package would wrap a long URL in an
    encoded word, which mail clients do not read as a URL."""
    linesep = b"\r\n" if b"\r\n" in data[:data.find(b"\n") + 1] else b"\n"
    return (b"List-Unsubscribe: <" + url.encode("ascii") + b">" + linesep
            + b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" + linesep + data)


def send_campaign(settings: Settings, campaign_id: str, template: CampaignTemplate | str | Path,
                  recipients_csv: str | Path, *, tenant: str = "default", smtp: SmtpSettings | None = None,
                  rate_per_s: float | None = None, state_path: str | Path | None = None, dry_run: bool = False,
                  resolver: MailDomainResolver | None = _DEFAULT,  # type: ignore[assignment]
                  probe: Callable | None = _DEFAULT,  # type: ignore[assignment]
                  suppressions: SuppressionStore | None = None, producer: Callable[[SentMail], None] | None = None,
                  smtp_factory: Callable[..., smtplib.SMTP] = smtplib.SMTP, clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep, now: Callable[[], float] = time.time,
                  progress: Callable[[list], Iterable] = iter) -> CampaignReport:
    """Send (or with ``dry_run`` only check and render) a campaign; see the module doc.

    Defaults come from ``settings``: ``smtp`` from :func:`campaign_smtp`, ``rate_per_s`` and the
    checks from ``[campaigns]``, ``suppressions`` from the JSONL file in ``worker.data_dir``,
    ``state_path`` from :func:`default_state_path`.  ``resolver=None`` skips DNS; ``probe=None``
    skips the SMTP probe (default: on when ``campaigns.smtp_probe``).  ``progress`` wraps the list
    of recipients sent to (e.g. in a progress bar)."""
    if not isinstance(campaign_id, str) or not _CAMPAIGN_ID.fullmatch(campaign_id):
        raise CampaignError("the campaign id must be 1-200 characters without spaces or control characters")
    # Every mail carries signed click and unsubscribe links: with a public or weak key anyone could
    # forge them, so outside the loopback demo this refuses (a dry run too: it says the send would).
    refused = key_refusal(settings.tracking, settings.kafka.bootstrap, "threadline campaign send")
    if refused:
        raise CampaignError(refused)
    options = settings.campaigns
    sender = sender_of(settings)
    if smtp is None and not dry_run:
        smtp = campaign_smtp(settings)
        if smtp is None:
            raise CampaignError("no SMTP server: set campaigns.smtp.host (or notifications.smtp.host)")
    rate = options.rate_per_s if rate_per_s is None else rate_per_s
    if rate <= 0:
        raise CampaignError("the rate must be more than 0 mails a second")
    if not isinstance(template, CampaignTemplate):
        template = CampaignTemplate.load(template)
    if resolver is _DEFAULT:
        resolver = DnsResolver()
    if probe is _DEFAULT:
        probe = SmtpProbe(sender, timeout=options.smtp_probe_timeout_s) if options.smtp_probe else None
    suppressions = suppressions if suppressions is not None else JsonlSuppressionStore.from_settings(settings)
    state_path = Path(state_path) if state_path else default_state_path(settings.worker.data_dir, tenant, campaign_id)
    state = CampaignState(state_path, tenant=tenant, campaign_id=campaign_id)

    recipients = read_recipients(recipients_csv)
    report = CampaignReport(campaign_id, tenant, dry_run=dry_run, rows=len(recipients), state_path=state.path)

    def excluded(recipient: Recipient) -> str | None:
        if recipient.key in state.done:
            return ALREADY_SENT
        if suppressions.is_suppressed(tenant, recipient.email):
            return UNSUBSCRIBED
        return None

    validation = validate_recipients(recipients, resolver=resolver, mx_timeout_s=options.mx_timeout_s,
                                     skip_on_mx_timeout=options.skip_on_mx_timeout, probe=probe, exclude=excluded)
    for checked in validation.invalid:
        report.skip(checked.recipient, checked.reason)
    valid = validation.valid
    # Every mail renders before the first one leaves: a template error stops the campaign unsent.
    placeholder = unsubscribe_url(settings.tracking.base_url, "x")
    for checked in valid:
        template.render(checked.recipient.fields, row=checked.recipient.row, email=checked.recipient.email,
                        unsubscribe_url=placeholder)

    keyring = Keyring.from_settings(settings.tracking)
    domain = domain_of(sender) or "threadline.invalid"
    bucket = TokenBucket(rate, options.burst, clock=clock, sleep=sleep)
    connection = None if dry_run else SmtpClient(smtp, helo=domain, factory=smtp_factory)
    try:
        for checked in progress(valid):
            recipient = checked.recipient
            if suppressions.is_suppressed(tenant, recipient.email):  # unsubscribed while this campaign runs
                report.skip(recipient, UNSUBSCRIBED)
                continue
            sent_at = now()
            message_id = message_id_for(tenant, campaign_id, recipient.key, domain)
            token = sign_token(TokenPayload(kind="unsubscribe", tenant=tenant, message_id=message_id,
                                            recipient=recipient.email, campaign_id=campaign_id,
                                            issued_at=int(sent_at)), keyring)
            link = unsubscribe_url(settings.tracking.base_url, token)
            rendered = template.render(recipient.fields, row=recipient.row, email=recipient.email,
                                       unsubscribe_url=link)
            raw = build_mail(rendered, sender=sender, sender_name=options.sender_name, recipient=recipient.email,
                             message_id=message_id, sent_at=sent_at)
            marked = mark_message(raw, settings.tracking, tenant=tenant, recipient=recipient.email,
                                  campaign_id=campaign_id, now=sent_at)
            data = add_unsubscribe_headers(seven_bit(marked.data), link)
            if dry_run:
                report.counts[WOULD_SEND] += 1
                if checked.note:
                    report.notes[checked.note] += 1
                continue
            bucket.acquire()
            try:
                sent = connection.send(sender, [recipient.email], data)
            except SmtpError as exc:
                if isinstance(exc, SmtpUnavailable) and exc.login_refused:  # our configuration: no retry helps
                    raise CampaignError(f"the SMTP server {smtp.host}:{smtp.port} {exc}") from exc
                raise CampaignInterrupted(f"the SMTP server {smtp.host}:{smtp.port} is unreachable ({exc}); "
                                          "run again to send the rest", report) from exc
            if sent.sender_refused:  # the same for every recipient: stop, record nothing
                raise CampaignError(f"the SMTP server refused the sender {sender}: {sent.first_refusal}")
            outcome = SENT if sent.sent else REFUSED if sent.refused else DEFERRED
            if outcome == DEFERRED:
                report.skip(recipient, DEFERRED)
                continue
            state.record(recipient.key, outcome, message_id, sent_at)
            if outcome == REFUSED:
                report.skip(recipient, REFUSED)
                continue
            report.counts[SENT] += 1
            if checked.note:
                report.notes[checked.note] += 1
            if producer is not None:
                producer(SentMail(recipient.row, recipient.email, message_id, data))
    finally:
        if connection is not None:
            connection.close()
    return report
