"""Seeded synthetic support/sales mail: threads between customers and agents.

Used by the benchmarks and the pipeline tests where the real corpus is too small.  The same seed
always gives the same mail, byte for byte.  The mix follows what a CRM mailbox sees: most
replies carry In-Reply-To/References, some only a tracking token, some only an Outlook
Thread-Index, and some nothing but "RE: subject" and quoted text (smart matching's work).
Every mail is yielded both as a :class:`MailRecord` (for the pure engine) and, on request, as
RFC 5322 bytes (for the parser and the broker).
"""

from __future__ import annotations

import heapq
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Iterable, Iterator

from pipeline.correlation import thread_index, tokens
from pipeline.mail.content import fingerprint_body
from pipeline.mail.parse import parse_mail
from pipeline.mail.record import Direction, MailRecord
from pipeline.settings import TrackingTokenSettings

START = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)
_SYLLABLES = ("ka", "lo", "mi", "ran", "tes", "vo", "quar", "zel", "bri", "dun", "fey", "gor", "hal", "jin",
              "ost", "pel", "sut", "tri", "urn", "wex")
_FILLER = ("please", "could", "you", "check", "the", "invoice", "order", "delivery", "account", "again",
           "thanks", "for", "your", "quick", "reply", "we", "still", "see", "same", "problem", "with",
           "attached", "report", "since", "monday", "and", "need", "an", "update", "before", "friday")
_OPEN_THREADS = 4_000  # replies go to one of the most recently active threads
_SECONDS_BETWEEN_MAILS = 1.0  # default: 1M mails span ~12 days, all inside the 90-day window


@dataclass(slots=True)
class _Thread:
    subject: str
    customer: str
    agent: str
    last: MailRecord
    body_lines: list[str]
    references: tuple[str, ...]
    thread_index: bytes | None
    token: str | None


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3)))


class MailGenerator:
    """``MailGenerator(seed).mails(n)`` yields ``n`` :class:`MailRecord` in event-time order."""

    def __init__(self, seed: int = 7, *, tenant: str = "default", customers: int = 50_000, agents: int = 40,
                 token_settings: TrackingTokenSettings | None = None,
                 mix: tuple[float, float, float, float] = (0.70, 0.10, 0.10, 0.10),
                 seconds_between_mails: float = _SECONDS_BETWEEN_MAILS) -> None:
        self.rng = random.Random(seed)
        self.tenant = tenant
        self.vocabulary = sorted({_word(self.rng) for _ in range(3_000)})
        self.customers = [f"{_word(self.rng)}.{i}@{_word(self.rng)}.example" for i in range(customers)]
        self.agents = [f"agent{i}@support.threadline.test" for i in range(agents)]
        self.token_settings = token_settings or TrackingTokenSettings()
        self.token_counter = tokens.TokenCounter(self.token_settings)
        self.mix = mix  # headers, token, thread_index, content: shares of replies
        self.new_thread_share = 0.3
        self.seconds_between_mails = seconds_between_mails
        self._threads: list[_Thread] = []
        self._count = 0

    # -- building blocks -------------------------------------------------------------------
    def _sentence(self) -> str:
        rng = self.rng
        words = [rng.choice(_FILLER) for _ in range(rng.randint(5, 9))]
        words.insert(rng.randrange(len(words)), rng.choice(self.vocabulary))
        return " ".join(words).capitalize() + "."

    def _message_id(self) -> str:
        return f"<{uuid.UUID(int=self.rng.getrandbits(128))}@synth.threadline.test>"

    def _record(self, *, message_id: str, subject: str, sender: str, recipient: str, when: datetime,
                direction: Direction, body: str, in_reply_to: tuple[str, ...] = (),
                references: tuple[str, ...] = (), thread_index_bytes: bytes | None = None) -> MailRecord:
        own, quoted, attribution = fingerprint_body(body)
        return MailRecord(
            message_id=message_id, in_reply_to=in_reply_to, references=references, subject=subject,
            from_addr=sender, from_name=sender.split("@")[0].replace(".", " ").title(), to=(recipient,),
            date=when, thread_index=thread_index_bytes, body_text=body, own_shingles=own,
            quoted_shingles=quoted, attribution=attribution, direction=direction, tenant=self.tenant,
            mailbox="support" if direction == "in" else "sent", received_at=when, size=len(body) + 600,
        )

    # -- the stream ------------------------------------------------------------------------
    def mails(self, count: int) -> Iterator[MailRecord]:
        for _ in range(count):
            yield self._next()

    def _next(self) -> MailRecord:
        rng = self.rng
        self._count += 1
        when = START + timedelta(seconds=self._count * self.seconds_between_mails + rng.random() * 0.5)
        if not self._threads or rng.random() < self.new_thread_share:
            return self._new_thread(when)
        position = len(self._threads) - 1 - min(int(rng.expovariate(1 / 300)), len(self._threads) - 1)
        thread = self._threads.pop(position)
        self._threads.append(thread)  # most recently active last
        return self._reply(thread, when)

    def _new_thread(self, when: datetime) -> MailRecord:
        rng = self.rng
        customer = rng.choice(self.customers)
        agent = rng.choice(self.agents)
        subject = " ".join(rng.choice(self.vocabulary) for _ in range(rng.randint(3, 6))).capitalize()
        lines = [self._sentence() for _ in range(rng.randint(2, 4))]
        inbound = rng.random() < 0.8
        sender, recipient = (customer, agent) if inbound else (agent, customer)
        token = None
        if not inbound and rng.random() < 0.5:
            token = self.token_counter.next_token(self.agents.index(agent) % 10 ** self.token_settings.user_digits)
            subject = tokens.add_token(self.token_settings, subject, token)
        index_bytes = thread_index.encode_new(uuid.UUID(int=rng.getrandbits(128)), when) if rng.random() < 0.3 else None
        message_id = self._message_id()
        mail = self._record(message_id=message_id, subject=subject, sender=sender, recipient=recipient, when=when,
                            direction="in" if inbound else "out", body="\n".join(lines),
                            thread_index_bytes=index_bytes)
        thread = _Thread(subject, customer, agent, mail, lines, (message_id,), index_bytes, token)
        self._threads.append(thread)
        if len(self._threads) > _OPEN_THREADS:
            self._threads.pop(0)
        return mail

    def _reply(self, thread: _Thread, when: datetime) -> MailRecord:
        rng = self.rng
        parent = thread.last
        inbound = parent.direction == "out"
        sender, recipient = (thread.customer, thread.agent) if inbound else (thread.agent, thread.customer)
        headers, token_share, index_share, _content = self.mix
        roll = rng.random()
        if roll < headers:
            link = "headers"
        elif roll < headers + token_share and thread.token:
            link = "token"
        elif roll < headers + token_share + index_share and thread.thread_index:
            link = "thread_index"
        else:
            link = "content"
        own = [self._sentence() for _ in range(rng.randint(1, 3))]
        quoted = [f"> {line}" for line in thread.body_lines[-4:]]
        body = "\n".join([*own, "", f"On {format_datetime(parent.date)}, {parent.from_name} wrote:", *quoted])
        subject = f"RE: {thread.subject}"
        if link == "token" and rng.random() < 0.5:
            subject = tokens.add_token(self.token_settings, f"RE: {rng.choice(self.vocabulary)} update", thread.token)
        in_reply_to: tuple[str, ...] = ()
        references: tuple[str, ...] = ()
        if link == "headers":
            in_reply_to, references = (parent.message_id,), (*thread.references[-9:], parent.message_id)
        index_bytes = None
        if thread.thread_index is not None and link in ("headers", "thread_index"):
            index_bytes = thread_index.encode_child(thread.thread_index, when)
        message_id = self._message_id()
        mail = self._record(message_id=message_id, subject=subject, sender=sender, recipient=recipient, when=when,
                            direction="in" if inbound else "out", body=body, in_reply_to=in_reply_to,
                            references=references, thread_index_bytes=index_bytes)
        thread.last = mail
        thread.body_lines = own
        thread.references = (*thread.references[-9:], message_id)
        if index_bytes is not None:
            thread.thread_index = index_bytes
        return mail


def render_rfc5322(mail: MailRecord, *, xheader_name: str = "X-Threadline-Ref") -> bytes:
    """The mail as the bytes a mail client would send (headers CRLF-separated, UTF-8 text body)."""
    import base64

    lines = [
        f"Message-ID: {mail.message_id}",
        f"Date: {format_datetime(mail.date)}" if mail.date else "",
        f"From: {mail.from_name} <{mail.from_addr}>",
        f"To: {', '.join(mail.to)}",
        f"Subject: {mail.subject}",
        f"In-Reply-To: {' '.join(mail.in_reply_to)}" if mail.in_reply_to else "",
        f"References: {' '.join(mail.references)}" if mail.references else "",
        f"Thread-Index: {base64.b64encode(mail.thread_index).decode()}" if mail.thread_index else "",
        f"{xheader_name}: {mail.xref}" if mail.xref else "",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
    ]
    head = "\r\n".join(line for line in lines if line)
    return (head + "\r\n\r\n" + mail.body_text.replace("\n", "\r\n") + "\r\n").encode("utf-8")


# -- automatic mail mixed into a stream of people's mail ---------------------------------------

# Out-of-office subjects as mail clients write them; the ones after the first two come without
# Auto-Submitted (older clients and some servers set none), so only the subject says what they are.
_OUT_OF_OFFICE_SUBJECTS = ("Automatic reply: ", "Out of Office: ", "Abwesenheitsnotiz: ", "Réponse automatique : ",
                           "Respuesta automática: ", "Automatisch antwoord: ")


@dataclass(frozen=True)
class AutomaticMix:
    """How much automatic mail :func:`with_automatic_mail` adds (shares of the mail it follows)."""

    out_of_office: float = 0.2  # of our replies: the customer's out-of-office answers it
    acknowledgement: float = 0.8  # of customers' mails that name no earlier mail: our desk acknowledges it
    bounce: float = 0.05  # of our mails: it bounces (a DSN from our own mail server)


@dataclass(frozen=True, slots=True)
class AutomaticMail:
    """One generated automatic mail: what it was made as, its bytes and their parsed record."""

    made_as: str  # out_of_office, acknowledgement, bounce
    raw: bytes
    record: MailRecord


def with_automatic_mail(mails: Iterable[MailRecord], *, seed: int = 11,
                        mix: AutomaticMix = AutomaticMix()) -> Iterator[MailRecord | AutomaticMail]:
    """``mails`` (event-time order, ``direction`` set) with automatic mail answering some of them:
    out-of-office replies to our replies, our desk's acknowledgements of customers' mails that name
    no earlier mail and bounces of our mails (from the customer's mail server), each a little later
    than the mail it answers and in time order with the rest.  The people's mail is yielded unchanged and in its order, so dropping every
    :class:`AutomaticMail` gives back exactly ``mails``: the hand-made truth of what is automatic.
    Each automatic mail is built as bytes and parsed, so it is recognised as a live one would be."""
    rng = random.Random(seed)
    pending: list[tuple[datetime, int, AutomaticMail]] = []
    serial = 0
    for mail in mails:
        when = mail.event_time
        while pending and when is not None and pending[0][0] <= when:
            yield heapq.heappop(pending)[2]
        yield mail
        if when is None:
            continue
        if mail.direction == "in":
            # A desk acknowledges the mail it cannot link to a ticket: mail naming no earlier mail.
            answers = (("acknowledgement", 0 if mail.in_reply_to or mail.references else mix.acknowledgement, 30),)
        else:
            answers = (("out_of_office", mix.out_of_office, 120), ("bounce", mix.bounce, 300))
        for made_as, share, delay in answers:  # delay: the latest, in seconds
            if share and rng.random() < share:
                serial += 1
                at = when + timedelta(seconds=rng.uniform(1, delay))
                raw, direction = _automatic_raw(made_as, mail, at, rng, serial)
                record = parse_mail(raw, direction=direction, tenant=mail.tenant, mailbox=mail.mailbox, received_at=at)
                heapq.heappush(pending, (at, serial, AutomaticMail(made_as, raw, record)))
    while pending:
        yield heapq.heappop(pending)[2]


def _automatic_raw(made_as: str, mail: MailRecord, at: datetime, rng: random.Random,
                   serial: int) -> tuple[bytes, Direction]:
    message = EmailMessage()
    message["Message-ID"] = f"<automatic.{serial}.{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}@synth.threadline.test>"
    message["Date"] = format_datetime(at)
    customer = mail.to[0] if mail.direction == "out" and mail.to else mail.from_addr
    desk = mail.from_addr if mail.direction == "out" else (mail.to[0] if mail.to else mail.from_addr)
    if made_as == "bounce":
        bounce_domain = "mx." + customer.rpartition("@")[2]
        # Written out: the stdlib's generator cannot write a message/delivery-status part it did not parse.
        boundary = f"bounce-{serial}"
        head = "\r\n".join((
            f"Message-ID: {message['Message-ID']}", f"Date: {message['Date']}",
            f"From: Mail Delivery System <MAILER-DAEMON@{bounce_domain}>", f"To: {desk}",
            "Subject: Undelivered Mail Returned to Sender", "Auto-Submitted: auto-replied", "MIME-Version: 1.0",
            f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"'))
        parts = (
            "Content-Type: text/plain; charset=us-ascii\r\n\r\nThis is the mail system.\r\n\r\nYour message "
            f"could not be delivered to one or more recipients.\r\n\r\n<{customer}>: host said: 550 5.1.1 user unknown",
            f"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; {bounce_domain}\r\n\r\n"
            f"Final-Recipient: rfc822; {customer}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
            "Diagnostic-Code: smtp; 550 5.1.1 user unknown",
            f"Content-Type: text/rfc822-headers\r\n\r\nMessage-ID: {mail.message_id}\r\nFrom: {mail.from_addr}\r\n"
            f"To: {customer}\r\nSubject: {mail.subject}")
        body = "".join(f"--{boundary}\r\n{part}\r\n\r\n" for part in parts) + f"--{boundary}--\r\n"
        return (head + "\r\n\r\n" + body).encode("utf-8"), "in"
    message["In-Reply-To"] = mail.message_id
    message["References"] = " ".join((*mail.references[-9:], mail.message_id))
    if made_as == "acknowledgement":
        message["From"], message["To"] = desk, customer
        message["Subject"] = f"We received your request: {mail.subject}"
        message["Auto-Submitted"] = "auto-replied"
        message.set_content("Thank you for your message. Your request has been received and an agent will "
                            "answer it as soon as possible.\n")
        return message.as_bytes(), "out"
    prefix = rng.choice(_OUT_OF_OFFICE_SUBJECTS)
    message["From"], message["To"] = customer, desk
    message["Subject"] = prefix + mail.subject
    if _OUT_OF_OFFICE_SUBJECTS.index(prefix) < 2:
        message["Auto-Submitted"] = "auto-replied"
    message.set_content("I am out of the office and will read your mail when I am back. "
                        "For urgent matters please call the front desk.\n")
    return message.as_bytes(), "in"
