"""The immutable mail record: what correlation, escalation and tracking need from one message.

Produced by :func:`pipeline.mail.parse.parse_mail` from RFC 5322 bytes; never holds the whole
raw message (the raw bytes stay on ``mail.raw``), so a record is small and cheap to index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from pipeline.errors import RejectedInput

Direction = Literal["in", "out"]


class MailParseError(RejectedInput):
    """Input that is not a usable mail. ``reason`` is a short stable code for the dead-letter topic."""


@dataclass(frozen=True, slots=True)
class MailRecord:
    # Identity. Message-IDs keep their angle brackets ("<a@b>"); a mail without one gets a
    # synthesized, content-derived id and "missing_message_id" in ``defects``.
    message_id: str
    in_reply_to: tuple[str, ...] = ()
    references: tuple[str, ...] = ()  # oldest first, as in the header

    # Decoded header text.
    subject: str = ""
    from_addr: str = ""  # lower-cased address only ("a@b.c"), "" when absent
    from_name: str = ""
    to: tuple[str, ...] = ()  # lower-cased addresses
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    reply_to: tuple[str, ...] = ()

    # Date header as aware UTC; None when absent or unparsable ("bad_date" in defects).
    date: datetime | None = None

    # Outlook / Exchange threading: the decoded Thread-Index bytes and Thread-Topic.
    thread_index: bytes | None = None
    thread_topic: str = ""

    # Our own header (CorrelationSettings.xheader_name), verbatim, when present.
    xref: str | None = None

    # Hints for loops, bounces and auto replies.
    auto_submitted: str = ""  # Auto-Submitted header, lower-cased ("" when absent)
    precedence: str = ""  # Precedence header, lower-cased
    is_bounce: bool = False  # a DSN (multipart/report; report-type=delivery-status) or mailer-daemon sender
    # The kind of automatic mail (pipeline.mail.automatic.AUTOMATIC_KINDS: bounce, notifier,
    # auto_reply, auto_generated, list), "" for a person's mail.
    automatic: str = ""

    # Plain text of the body (the first text/plain part, else text from the first text/html
    # part), decoded and truncated to ``BODY_TEXT_LIMIT`` characters.
    body_text: str = ""
    # Content fingerprints of the body (see pipeline.mail.content): 64-bit hashes of word
    # shingles of the mail's own text and of the text it quotes ("> ..."), plus the names/addresses
    # of an attribution line ("On <date>, <name> wrote:").
    own_shingles: tuple[int, ...] = ()
    quoted_shingles: tuple[int, ...] = ()
    attribution: str = ""

    # Envelope facts from the ingest side (not from the headers).
    direction: Direction = "in"
    tenant: str = "default"
    mailbox: str = ""
    received_at: datetime | None = None

    # The campaign of a campaign mail, from its signed List-Unsubscribe token (set by the stream
    # processor, which holds the tracking keys); None for other mail.
    campaign_id: str | None = None

    size: int = 0  # bytes of the raw message
    defects: tuple[str, ...] = field(default=())  # non-fatal problems noticed while parsing

    @property
    def event_time(self) -> datetime | None:
        """The time correlation reasons with: the Date header, else when it was received."""
        return self.date or self.received_at

    @property
    def participants(self) -> tuple[str, ...]:
        """Unique addresses of from, to, cc, bcc in that order."""
        seen: dict[str, None] = {}
        for address in (self.from_addr, *self.to, *self.cc, *self.bcc):
            if address:
                seen.setdefault(address, None)
        return tuple(seen)


BODY_TEXT_LIMIT = 64 * 1024
