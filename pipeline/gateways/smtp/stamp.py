"""What the outbound relay adds to a mail, byte for byte and without I/O (docs/smtp.md "What
happens to one mail", step 1): a missing Message-ID and Date, our reference header (with a
client's ``X-Threadline-Regarding``, which never leaves), a subject token, and the tracking marks
of a mail that opts in, one marked copy per recipient (a token names one recipient).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from email.header import decode_header, make_header
from email.utils import formatdate, getaddresses
from typing import Callable, Sequence

from pipeline.correlation.methods.xheader import format_xref
from pipeline.correlation.tokens import TokenCounter, find_token
from pipeline.mail.parse import _message_ids
from pipeline.settings import CorrelationSettings, RelaySettings, TrackingSettings
from pipeline.tracking.mark import mark_message

log = logging.getLogger("threadline.smtp")

REGARDING_HEADER = "X-Threadline-Regarding"


class _HeaderBlock:
    """The header fields of a message as raw bytes: fields can be read, removed and added while
    every other byte (other fields, their folding, the body) stays exactly as it was."""

    def __init__(self, raw: bytes) -> None:
        first_end = raw.find(b"\n")
        self.linesep = b"\r\n" if first_end > 0 and raw[first_end - 1:first_end] == b"\r" else b"\n"
        # A field's lines are collected and joined once: appending every continuation line to
        # the field's bytes so far is quadratic, and a folded header of a few MB (the mail limit
        # allows tens) would then hold the relay for minutes.
        collected: list[tuple[str, list[bytes]]] = []
        pos, length = 0, len(raw)
        self.separator, self.body = b"", b""
        while pos < length:
            end = raw.find(b"\n", pos)
            end = length if end < 0 else end + 1
            line = raw[pos:end]
            if line in (b"\r\n", b"\n"):
                self.separator, self.body = line, raw[end:]
                break
            if line[:1] in (b" ", b"\t") and collected:
                collected[-1][1].append(line)
            else:
                name, colon, _ = line.partition(b":")
                collected.append((name.strip().decode("latin-1").lower() if colon else "", [line]))
            pos = end
        # (lower-case name or "" for junk, raw field)
        self.fields: list[tuple[str, bytes]] = [(name, b"".join(lines)) for name, lines in collected]
        if self.fields and not self.fields[-1][1].endswith(b"\n"):
            name, last = self.fields[-1]
            self.fields[-1] = (name, last + self.linesep)
        if not self.separator and self.body == b"":
            self.separator = self.linesep  # a message of headers only: end the header block

    def values(self, name: str) -> list[str]:
        """Unfolded values of every field called ``name`` (bytes read as UTF-8, else latin-1)."""
        wanted = name.lower()
        found = []
        for field_name, data in self.fields:
            if field_name == wanted:
                value = data.partition(b":")[2]
                value = re.sub(rb"\r?\n", b"", value).strip()
                try:
                    found.append(value.decode("utf-8"))
                except UnicodeDecodeError:
                    found.append(value.decode("latin-1"))
        return found

    def first(self, name: str) -> str | None:
        values = self.values(name)
        return values[0] if values else None

    def index(self, name: str) -> int | None:
        wanted = name.lower()
        return next((i for i, (field_name, _) in enumerate(self.fields) if field_name == wanted), None)

    def remove(self, name: str) -> None:
        wanted = name.lower()
        self.fields = [(n, data) for n, data in self.fields if n != wanted]

    def add(self, name: str, value: str) -> None:
        self.fields.append((name.lower(), f"{name}: {value}".encode() + self.linesep))

    def append_to(self, index: int, text: str) -> None:
        """Append ``text`` at the end of the (last line of the) field at ``index``."""
        name, data = self.fields[index]
        stripped = data.rstrip(b"\r\n")
        self.fields[index] = (name, stripped + text.encode() + data[len(stripped):])

    def to_bytes(self) -> bytes:
        return b"".join(data for _, data in self.fields) + self.separator + self.body


def _decoded(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except (LookupError, UnicodeError, ValueError):
        return value


def _id_domain(instance_id: str) -> str:
    domain = re.sub(r"[^A-Za-z0-9.-]+", "-", instance_id).strip(".-")
    return domain or "threadline"


def _clean_regarding(value: str) -> str | None:
    """A record id for ``regarding=``: ASCII, one line, no ``;`` (the field separator)."""
    text = " ".join(_decoded(value).replace(";", " ").split())
    if not text:
        return None
    if not text.isascii():
        log.warning("%s is not ASCII: the mail's reference header names no regarding record", REGARDING_HEADER)
        return None
    return text


def user_number(relay: RelaySettings, sender: str | None, from_header: str | None) -> int:
    """The sending user's number for tracking tokens: the envelope sender, else the From
    address, looked up in ``relay.sender_user_numbers``; 0 when neither is listed."""
    numbers = relay.sender_user_numbers
    candidates = [sender or ""] + [address for _, address in getaddresses([from_header or ""])]
    for address in candidates:
        number = numbers.get(address.strip().casefold())
        if number is not None:
            return number
    return 0


def stamp_outbound(raw: bytes, correlation: CorrelationSettings, relay: RelaySettings, counter: TokenCounter | None,
                   *, sender: str | None = None, now: float | None = None,
                   make_id: Callable[[], str] | None = None) -> bytes:
    """Message-ID, Date and X-Threadline-Ref where absent, the regarding header folded into our
    header, and a subject token when ``relay.subject_tokens`` is on (needs ``counter``).  Every
    other byte of ``raw`` is kept."""
    headers = _HeaderBlock(raw)
    ids = _message_ids(headers.first("Message-ID"))
    if ids:
        message_id = ids[0]
    else:  # absent, or nothing usable in it
        headers.remove("Message-ID")
        message_id = f"<{make_id() if make_id else uuid.uuid4()}@{_id_domain(correlation.instance_id)}>"
        headers.add("Message-ID", message_id)
    if headers.index("Date") is None:
        headers.add("Date", formatdate(time.time() if now is None else now, usegmt=True))

    regarding = next((cleaned for value in headers.values(REGARDING_HEADER)
                      if (cleaned := _clean_regarding(value))), None)
    headers.remove(REGARDING_HEADER)
    if not any(value.strip() for value in headers.values(correlation.xheader_name)):
        headers.remove(correlation.xheader_name)
        headers.add(correlation.xheader_name, format_xref(correlation.instance_id, message_id, regarding))

    token_settings = correlation.tracking_token
    if relay.subject_tokens and token_settings.enabled and counter is not None:
        at = headers.index("Subject")
        subject = _decoded(headers.values("Subject")[0]) if at is not None else ""
        if find_token(token_settings, subject) is None:  # a reply keeps its conversation's token
            token = counter.next_token(user_number(relay, sender, headers.first("From")))
            if at is None:
                headers.add("Subject", token)
            else:
                headers.append_to(at, (" " if subject.strip() else "") + token)
    return headers.to_bytes()


def outbound_copies(raw: bytes, correlation: CorrelationSettings, relay: RelaySettings, tracking: TrackingSettings,
                    counter: TokenCounter | None, *, sender: str | None = None, recipients: Sequence[str] = (),
                    tenant: str = "default", now: float | None = None,
                    make_id: Callable[[], str] | None = None) -> list[tuple[tuple[str, ...], bytes]]:
    """``(recipients, final bytes)`` for every copy that leaves: :func:`stamp_outbound`, then one
    copy, or, for a mail that opts in to tracking, one marked copy per recipient (no recipients:
    the single To/Cc/Bcc address)."""
    stamped = stamp_outbound(raw, correlation, relay, counter, sender=sender, now=now, make_id=make_id)
    recipients = tuple(recipients)
    copies = []
    for recipient in recipients or (None,):
        try:
            marked = mark_message(stamped, tracking, tenant=tenant, recipient=recipient, now=now)
        except Exception as exc:  # a mail that cannot be marked still goes out, unmarked
            log.warning("tracking marks could not be added (%s): sent unmarked", type(exc).__name__)
            return [(recipients, stamped)]
        if not marked.summary.tracked:
            return [(recipients, stamped)]
        copies.append(((recipient,) if recipient else recipients, marked.data))
    return copies


def to_crlf(raw: bytes) -> bytes:
    """SMTP line ends: every bare LF becomes CRLF."""
    return re.sub(rb"(?<!\r)\n", b"\r\n", raw)


def hop_count(raw: bytes) -> int:
    return sum(1 for name, _ in _HeaderBlock(raw).fields if name == "received")


def message_id_of(raw: bytes) -> str | None:
    """The mail's (first usable) Message-ID, if any."""
    return next(iter(_message_ids(_HeaderBlock(raw).first("Message-ID"))), None)
