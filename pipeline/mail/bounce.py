"""Bounces: which mail could not be delivered, to whom, and whether for good.

:func:`parse_bounce` is a pure function of the raw bytes.  It recognises

* RFC 3464 delivery status notifications (``multipart/report; report-type=delivery-status``):
  the recipients come from ``Final-Recipient`` / ``Original-Recipient``, the outcome from
  ``Action``, ``Status`` and ``Diagnostic-Code`` of each per-recipient block;
* the common bounces without a DSN part (qmail "failure notice", Exim "Mail delivery failed",
  sendmail / Postfix text bounces, Exchange "Undeliverable:"): sent by ``MAILER-DAEMON`` /
  ``postmaster``, or with a bounce subject and an empty ``Return-Path`` / ``Auto-Submitted``;
  recipients come from ``X-Failed-Recipients`` or from the text.

The original mail's Message-ID is taken from the attached ``message/rfc822`` or
``text/rfc822-headers`` part, else from the bounce's ``In-Reply-To`` / ``References``, else from a
``Message-ID:`` line of an inline copy of the original in the text.

Classification: an RFC 3463 status ``5.x.x`` is a **hard** bounce, ``4.x.x`` a **soft** one
(``Action: delayed`` is always soft).  Without any status code the text decides (mailbox full
and "will retry" wording are soft, everything else hard).  ``reason`` is a short stable code
from the status' subject and detail (``user_unknown``, ``mailbox_full``, ``policy``, ...), see
``REASONS``.  A DSN whose recipients were all delivered / relayed / expanded is not a bounce
(``None``).

Never raises: anything that is not a recognisable bounce, including unparsable bytes, is ``None``;
a bounce whose original cannot be found has ``original_message_id = None``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses, parseaddr
from typing import Literal

from pipeline.mail.parse import MAX_MESSAGE_BYTES, _message_ids

BounceKind = Literal["hard", "soft"]

# RFC 3463 "subject.detail" -> stable reason; the subject alone is the fallback.
REASONS: dict[str, str] = {
    "1.1": "user_unknown", "1.2": "bad_domain", "1.3": "bad_address", "1.4": "ambiguous_address",
    "1.6": "mailbox_moved", "1.10": "bad_domain",  # 1.10: the domain has a null MX (RFC 7505)
    "2.1": "mailbox_disabled", "2.2": "mailbox_full", "2.3": "message_too_large", "2.4": "list_expansion",
    "3.1": "mail_system_full", "3.4": "message_too_large",
    "4.1": "no_answer", "4.2": "connection_dropped", "4.4": "routing", "4.6": "routing_loop",
    "4.7": "delivery_expired",
    "5.3": "too_many_recipients",
    "7.1": "rejected", "7.26": "authentication_failed", "7.27": "bad_domain",
}
SUBJECT_REASONS: dict[str, str] = {
    "0": "other", "1": "bad_address", "2": "mailbox", "3": "mail_system", "4": "network",
    "5": "protocol", "6": "content", "7": "policy",
}

_ADDR = r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
_ANY_ADDRESS = re.compile(_ADDR)
# Recipients as bounce texts name them: "<a@b>:" (Postfix, qmail), a line holding only the address
# (Exim, sendmail), "RCPT TO:<a@b>", "delivery to a@b failed", "Recipient: a@b".
_TEXT_RECIPIENTS = (
    re.compile(rf"^[ \t]*<({_ADDR})>:?", re.MULTILINE),
    re.compile(rf"^[ \t]*({_ADDR})[ \t]*:?[ \t]*$", re.MULTILINE),
    re.compile(rf"RCPT TO:[ \t]*<?({_ADDR})>?", re.IGNORECASE),
    re.compile(rf"\b(?:delivery to|delivered to|deliver to|delivery to the following recipients?"
               rf"(?: failed(?: permanently)?)?:?)\s+<?({_ADDR})>?", re.IGNORECASE),
    re.compile(rf"\b(?:(?:failed |original |final )?recipients?|address(?:es)?)(?: failed)?:[ \t]*<?({_ADDR})>?",
               re.IGNORECASE),
)
# Enhanced status code (RFC 3463) not inside a longer dotted number (an IP address, a version).
_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")
_SMTP_REPLY = re.compile(r"(?<![\d.])([45])[0-5]\d(?:[ -]|$)", re.MULTILINE)
# Markers after which a text bounce quotes the original mail (its headers are not the bounce's text).
_COPY_MARKER = re.compile(
    r"^[ \t]*-*[ \t]*(?:this is a copy of the message|below this line is a copy of the message"
    r"|original message|the original message|a copy of the original message|forwarded message"
    r"|message headers follow|the header of the original message|unsent message below"
    r"|undelivered message (?:attached|headers))",
    re.IGNORECASE | re.MULTILINE)
_HEADER_ID = re.compile(r"^[ \t>]*Message-ID:[ \t]*(<[^<>\s]{1,998}>)", re.IGNORECASE | re.MULTILINE)
_BOUNCE_SENDERS = {"mailer-daemon", "mailer_daemon", "mailerdaemon", "mail-daemon", "postmaster"}
_SERVICE_LOCALS = _BOUNCE_SENDERS | {"abuse", "hostmaster", "root", "noreply", "no-reply"}
_BOUNCE_SUBJECT = re.compile(
    r"undeliver(?:ed|able)|delivery (?:status notification|failure|failed|has failed|problem|notification|delayed)"
    r"|mail delivery (?:failed|failure|system|subsystem|error|problem)|returned mail|failure notice"
    r"|non[- ]?delivery|could not send|message not delivered|delivery delayed|delayed mail"
    r"|mail system error|returned to sender|rejected:|delivery report",
    re.IGNORECASE)
_BOUNCE_TEXT = re.compile(
    r"could(?: not|n't) be delivered|undeliverable|delivery (?:has |to [^\n]{1,200} )?failed|permanent(?:ly)?"
    r"|returned to (?:the )?sender|user unknown|unknown user|no such (?:user|recipient|mailbox)"
    r"|mailbox (?:unavailable|full|is full)|wasn't delivered|was not delivered|not (?:be )?delivered"
    r"|temporar(?:y|ily) (?:error|failure|unavailable)|has been delayed|will (?:retry|keep trying)"
    r"|couldn't deliver|could not deliver|unable to deliver|failed recipient",
    re.IGNORECASE)
# Wording when no status code is given.
_SOFT_TEXT = re.compile(r"will (?:retry|keep trying|be retried)|still trying|has been delayed|delivery delayed"
                        r"|temporar(?:y|ily)|deferred|try again later", re.IGNORECASE)
_TEXT_REASONS = (
    ("user_unknown", re.compile(r"user unknown|unknown user|no such (?:user|recipient|mailbox)|does not exist"
                                r"|doesn't exist|user not found|invalid recipient|recipient address rejected"
                                r"|no mailbox|mailbox unavailable|address (?:couldn't|could not) be found"
                                r"|not our customer|unknown recipient|recipient not found", re.IGNORECASE)),
    ("mailbox_full", re.compile(r"mailbox (?:is )?full|over ?quota|quota exceeded|insufficient storage"
                                r"|mailbox size limit", re.IGNORECASE)),
    ("bad_domain", re.compile(r"host (?:or domain name )?not found|domain not found|no mx|name or service not known"
                              r"|unrouteable|unroutable|domain (?:does not|doesn't) exist", re.IGNORECASE)),
    ("message_too_large", re.compile(r"too large|message size exceeds|exceeds (?:the )?(?:maximum )?size",
                                     re.IGNORECASE)),
    ("policy", re.compile(r"spam|blocked|block ?list|black ?list|policy|denied|rejected", re.IGNORECASE)),
    ("delayed", _SOFT_TEXT),
)
_MAX_PARTS = 200
_MAX_TEXT = 256 * 1024


@dataclass(frozen=True, slots=True)
class BouncedRecipient:
    address: str  # lower-cased; the Final-Recipient of a DSN
    kind: BounceKind
    reason: str  # stable code, see the module doc
    status: str | None = None  # RFC 3463 code such as "5.1.1"; None when the bounce gives none
    action: str | None = None  # DSN Action: "failed" or "delayed"; None for text bounces
    diagnostic: str = ""  # Diagnostic-Code or the text near the address, for people (<= 500 characters)
    original_recipient: str | None = None  # DSN Original-Recipient, when it differs


@dataclass(frozen=True, slots=True)
class Bounce:
    kind: BounceKind  # hard when any recipient failed hard
    reason: str  # reason of the first hard recipient, else of the first one
    status: str | None
    recipients: tuple[BouncedRecipient, ...]  # may be empty: a bounce that names nobody we can read
    original_message_id: str | None  # "<id@host>", or None when the bounce does not say
    original_id_source: str | None  # message/rfc822, text/rfc822-headers, in-reply-to, references, text
    dsn: bool  # True: an RFC 3464 delivery-status report
    message_id: str | None = None  # the bounce's own Message-ID
    reporting_mta: str | None = None


def parse_bounce(raw: bytes) -> Bounce | None:
    """The bounce ``raw`` is, or None when it is no bounce (or no mail at all). Never raises."""
    if not raw or len(raw) > MAX_MESSAGE_BYTES:
        return None
    try:
        message = message_from_bytes(raw, policy=compat32)
        return _parse(message)
    except Exception:  # noqa: BLE001 - a pure parser of hostile input: an odd mail is "no bounce", not a crash
        return None


# -- structure -----------------------------------------------------------------------------------
def _walk(message: Message):
    """Parts in order, not descending into attached messages (message/rfc822 is yielded, not entered)."""
    stack, count = [message], 0
    while stack and count < _MAX_PARTS:
        part = stack.pop()
        count += 1
        yield part
        payload = part.get_payload()
        if part.is_multipart() and part.get_content_type() != "message/rfc822" and isinstance(payload, list):
            stack.extend(reversed([p for p in payload if isinstance(p, Message)]))


def _text_of(part: Message) -> str:
    try:
        payload = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001 - broken transfer encoding: no text
        return ""
    if payload is None:
        payload = part.get_payload()
        if isinstance(payload, list):  # message/delivery-status: header blocks
            return "\n\n".join(p.as_string() for p in payload if isinstance(p, Message))
        return payload if isinstance(payload, str) else ""
    charset = part.get_content_charset() or "us-ascii"
    try:
        text = payload.decode(charset, errors="replace")
    except (LookupError, ValueError):
        text = payload.decode("latin-1")
    return text[:_MAX_TEXT]


def _header(message: Message, name: str) -> str:
    value = message.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):  # compat32 Header for 8-bit bytes
        value = str(value)
    return " ".join(value.split())


def _local_part(address: str) -> str:
    return address.partition("@")[0].lower()


def _address(value: str) -> str | None:
    """The address of a DSN field value ``rfc822; a@b`` / ``<a@b>``, lower-cased."""
    _, _, rest = value.rpartition(";")
    match = _ANY_ADDRESS.search(rest or value)
    return match.group(0).lower().rstrip(".") if match else None


# -- status and reasons --------------------------------------------------------------------------
def _status_in(text: str) -> str | None:
    match = _STATUS.search(text)
    if match:
        return ".".join(str(int(g)) for g in match.groups())
    match = _SMTP_REPLY.search(text)
    return f"{match.group(1)}.0.0" if match else None


def _reason(status: str | None, text: str) -> str:
    if status:
        klass, subject, detail = status.split(".")
        if klass in "45":
            return REASONS.get(f"{subject}.{detail}") or SUBJECT_REASONS.get(subject, "other")
    for reason, pattern in _TEXT_REASONS:
        if pattern.search(text):
            return reason
    return "unknown"


def _kind(status: str | None, action: str | None, reason: str, text: str) -> BounceKind:
    if action == "delayed":
        return "soft"
    if status and status[0] in "45":
        return "hard" if status[0] == "5" else "soft"
    return "soft" if reason in ("mailbox_full", "delayed") or _SOFT_TEXT.search(text) else "hard"


def _recipient(address: str, *, status: str | None, action: str | None, diagnostic: str,
               original: str | None = None) -> BouncedRecipient:
    reason = _reason(status, diagnostic)
    return BouncedRecipient(address=address, kind=_kind(status, action, reason, diagnostic), reason=reason,
                            status=status, action=action, diagnostic=" ".join(diagnostic.split())[:500],
                            original_recipient=original if original and original != address else None)


# -- DSN (RFC 3464) ------------------------------------------------------------------------------
def _dsn_blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and all(isinstance(p, Message) for p in payload):
        return payload
    text = _text_of(part).replace("\r\n", "\n")
    parser = BytesHeaderParser(policy=compat32)
    return [parser.parsebytes(block.strip("\n").encode("utf-8", "replace") + b"\n")
            for block in re.split(r"\n[ \t]*\n", text) if block.strip()]


def _dsn_recipients(part: Message) -> tuple[list[BouncedRecipient], str | None, int, int]:
    """(failed or delayed recipients, Reporting-MTA, recipient blocks read, blocks of delivered recipients)."""
    blocks = _dsn_blocks(part)
    reporting_mta = None
    found: list[BouncedRecipient] = []
    blocks_read = delivered = 0
    for block in blocks:
        if block.get("Reporting-MTA") and reporting_mta is None:
            value = _header(block, "Reporting-MTA")
            reporting_mta = value.partition(";")[2].strip() or value or None
        final = _header(block, "Final-Recipient")
        if not final:
            continue
        blocks_read += 1
        action = _header(block, "Action").lower().split(" ")[0] or None
        if action in ("delivered", "relayed", "expanded"):
            delivered += 1
            continue
        address = _address(final)
        if address is None:  # a failure for a recipient we cannot read: still a bounce
            continue
        diagnostic = _header(block, "Diagnostic-Code")
        status_field = _header(block, "Status")
        status = _status_in(status_field) or _status_in(diagnostic.partition(";")[2] or diagnostic)
        if action is None:
            action = "delayed" if status and status.startswith("4.") else "failed"
        original = _header(block, "Original-Recipient")
        found.append(_recipient(address, status=status, action=action,
                                diagnostic=diagnostic or status_field,
                                original=_address(original) if original else None))
    return found, reporting_mta, blocks_read, delivered


# -- text bounces --------------------------------------------------------------------------------
def _human_text(message: Message) -> str:
    texts = []
    for part in _walk(message):
        if part.get_content_type() in ("text/plain", "text/html") and part.get_content_disposition() != "attachment":
            text = _text_of(part)
            if part.get_content_type() == "text/html":
                text = re.sub(r"<[^>]{0,2000}>", " ", text)
            texts.append(text)
    text = "\n".join(texts)[:_MAX_TEXT].replace("\r\n", "\n")
    marker = _COPY_MARKER.search(text)
    return text if marker is None else text[: marker.start()]


def _near(text: str, address: str) -> str:
    """The paragraph of ``text`` that names ``address``; when it holds only the address, the
    next paragraph too (the diagnostic follows it)."""
    position = text.lower().find(address)
    if position < 0:
        return ""
    start = text.rfind("\n\n", 0, position)
    start = 0 if start < 0 else start + 2
    end = text.find("\n\n", position)
    end = len(text) if end < 0 else end
    if len(text[start:end].strip()) <= len(address) + 4:
        following = text.find("\n\n", end + 2)
        end = len(text) if following < 0 else following
    return text[start:end][:1000]


def _text_recipients(message: Message, text: str, excluded: set[str], original: Message | None) -> list[str]:
    found: dict[str, None] = {}
    for _, address in getaddresses([_header(message, "X-Failed-Recipients")]):
        if "@" in address:
            found.setdefault(address.lower(), None)
    if not found:
        for pattern in _TEXT_RECIPIENTS:
            for match in pattern.finditer(text):
                address = match.group(1).lower().rstrip(".")
                if address not in excluded and _local_part(address) not in _SERVICE_LOCALS:
                    found.setdefault(address, None)
    if not found and original is not None:
        lowered = text.lower()
        for _, address in getaddresses([_header(original, n) for n in ("To", "Cc", "Bcc")]):
            if "@" in address and address.lower() in lowered:
                found.setdefault(address.lower(), None)
    if not found:
        for match in _ANY_ADDRESS.finditer(text):
            address = match.group(0).lower().rstrip(".")
            if address not in excluded and _local_part(address) not in _SERVICE_LOCALS:
                found.setdefault(address, None)
    return list(found)[:100]


def _looks_like_bounce(message: Message, from_addr: str, text: str, has_original: bool) -> bool:
    subject = _header(message, "Subject")
    if message.get("X-Failed-Recipients"):
        return True
    if _local_part(from_addr) in _BOUNCE_SENDERS:
        return bool(_BOUNCE_SUBJECT.search(subject) or _BOUNCE_TEXT.search(text) or has_original)
    if not _BOUNCE_SUBJECT.search(subject):
        return False
    return_path = _header(message, "Return-Path")
    auto = _header(message, "Auto-Submitted").lower()
    return return_path.replace(" ", "") == "<>" or (auto not in ("", "no") and bool(_BOUNCE_TEXT.search(text)))


# -- the original mail ---------------------------------------------------------------------------
def _attached_original(message: Message) -> tuple[Message | None, str | None]:
    """The attached original (or its headers) and the kind of part it came from."""
    for part in _walk(message):
        content_type = part.get_content_type()
        if content_type == "message/rfc822" or content_type == "message/global":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0], "message/rfc822"
            text = _text_of(part)
            if text:
                return BytesHeaderParser(policy=compat32).parsebytes(text.encode("utf-8", "replace")), "message/rfc822"
        elif content_type in ("text/rfc822-headers", "message/global-headers"):
            text = _text_of(part)
            if text:
                return (BytesHeaderParser(policy=compat32).parsebytes(text.lstrip().encode("utf-8", "replace")),
                        "text/rfc822-headers")
    return None, None


def _original_id(message: Message, original: Message | None, source: str | None,
                 full_text: str) -> tuple[str | None, str | None]:
    if original is not None:
        ids = _message_ids(_header(original, "Message-ID"))
        if ids:
            return ids[0], source
    own = set(_message_ids(_header(message, "Message-ID")))
    in_reply_to = [i for i in _message_ids(_header(message, "In-Reply-To")) if i not in own]
    if in_reply_to:
        return in_reply_to[0], "in-reply-to"
    references = [i for i in _message_ids(_header(message, "References")) if i not in own]
    if references:
        return references[-1], "references"
    for match in _HEADER_ID.finditer(full_text):
        if match.group(1) not in own:
            return match.group(1), "text"
    return None, None


# -- the whole bounce ----------------------------------------------------------------------------
def _parse(message: Message) -> Bounce | None:
    if not message.keys():  # no header block at all: not a mail
        return None
    from_addr = parseaddr(_header(message, "From"))[1].lower()
    own_ids = _message_ids(_header(message, "Message-ID"))
    original, original_source = _attached_original(message)
    recipients: list[BouncedRecipient] = []
    reporting_mta = None
    dsn = False
    blocks_read = delivered = 0
    report_parts = [part for part in _walk(message)
                    if part.get_content_type() in ("message/delivery-status", "message/global-delivery-status")]
    is_report = (message.get_content_type() == "multipart/report"
                 and (message.get_param("report-type") or "").lower() in ("delivery-status", "global-delivery-status"))
    text = _human_text(message)
    if is_report or report_parts:
        for part in report_parts:
            found, mta, read, positive = _dsn_recipients(part)
            recipients.extend(found)
            reporting_mta = reporting_mta or mta
            blocks_read += read
            delivered += positive
        dsn = blocks_read > 0
        if dsn and delivered == blocks_read:
            return None  # a positive DSN: every recipient was delivered, relayed or expanded
    if not dsn:
        if not (is_report or _looks_like_bounce(message, from_addr, text, original is not None)):
            return None
        excluded = {from_addr}
        excluded.update(a.lower() for _, a in getaddresses([_header(message, "To")]) if a)
        if original is not None:
            excluded.update(a.lower() for _, a in getaddresses([_header(original, "From")]) if a)
        overall = _status_in(text)
        for address in _text_recipients(message, text, excluded, original):
            near = _near(text, address)
            status = _status_in(near) or overall
            recipients.append(_recipient(address, status=status, action=None, diagnostic=near or text[:500]))
    full_text = "\n".join(_text_of(p) for p in _walk(message) if p.get_content_maintype() == "text")[:_MAX_TEXT]
    original_id, id_source = _original_id(message, original, original_source, full_text)
    hard = [r for r in recipients if r.kind == "hard"]
    if recipients:
        lead = (hard or recipients)[0]
        kind, reason, status = ("hard" if hard else "soft"), lead.reason, lead.status
    else:  # a bounce that names no recipient we can read: classify its text
        status = _status_in(text)
        reason = _reason(status, text)
        kind = _kind(status, None, reason, text)
    return Bounce(kind=kind, reason=reason, status=status, recipients=tuple(recipients),
                  original_message_id=original_id, original_id_source=id_source, dsn=dsn,
                  message_id=own_ids[0] if own_ids else None, reporting_mta=reporting_mta)
