"""Mark outbound mail for tracking: a pixel in HTML parts, signed click URLs for every link.

Which mail is marked (DESIGN.md §5): always campaign mail (a campaign id is given); other mail
only when it opts in by ``#track`` in the subject or a ``%track%`` placeholder in a body part.
Both markers are removed before the mail leaves.  Untracked mail comes back byte for byte.

What changes in a tracked mail (text/plain and text/html body parts; attachments and attached
mails are left alone):

* HTML: every ``http(s)`` ``href`` of ``<a>``, ``<area>`` and Outlook VML buttons
  (``<v:roundrect>``, ``<v:rect>``) becomes ``{base_url}/c/{token}``, the token carrying the
  original URL; a 1x1 pixel ``<img src="{base_url}/o/{token}.gif">`` goes before ``</body>``
  (appended when there is none; not added twice).
* text: every ``http(s)://`` URL in the text is rewritten the same way; no pixel.
* left alone: ``mailto:``, ``tel:``, ``#anchors``, relative links, and links that already
  point at the tracking base URL (marking twice changes nothing more).

A token names one recipient, so a mail to several recipients is marked once per recipient
(``recipient=``); without it, the single address of To/Cc/Bcc is used.
"""

from __future__ import annotations

import email
import email.policy
import html
import re
import time
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Iterator

from pipeline.settings import TrackingSettings
from pipeline.tracking.tokens import OPEN_PATH, Keyring, TokenPayload, click_url, open_url, sign_token

SUBJECT_TAG = re.compile(r"(?<!\S)#track(?!\S)", re.IGNORECASE)
BODY_PLACEHOLDER = re.compile(r"[ \t]*%track%", re.IGNORECASE)

_LINK_TAG = re.compile(r"""<(?:a|area|v:roundrect|v:rect)\b(?:[^>"']|"[^"]*"|'[^']*')*>""", re.IGNORECASE)
_HREF = re.compile(r"""((?<![\w:-])href\s*=\s*)(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""", re.IGNORECASE)
_HTTP = re.compile(r"https?://\S", re.IGNORECASE)
_TEXT_URL = re.compile(r"""https?://[^\s<>"'`]+""", re.IGNORECASE)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_CLOSERS = {")": "(", "]": "[", "}": "{"}


class MarkError(ValueError):
    """The mail cannot be marked as asked (e.g. several recipients and none chosen)."""


@dataclass(frozen=True)
class MarkSummary:
    tracked: bool
    reasons: tuple[str, ...] = ()      # campaign, subject_tag, body_placeholder
    message_id: str | None = None
    recipient: str | None = None
    pixels_added: int = 0
    links_rewritten: int = 0            # occurrences, over all parts
    links: tuple[str, ...] = ()         # distinct original URLs, first seen first
    parts_skipped: int = 0              # body parts that could not be decoded
    message_id_added: bool = False

    @property
    def pixel_added(self) -> bool:
        return self.pixels_added > 0

    def format(self) -> str:
        if not self.tracked:
            return "not tracked (no campaign, no #track in the subject, no %track% in the body): unchanged"
        text = (f"tracked ({', '.join(self.reasons)}) {self.message_id} for {self.recipient}: "
                f"{'pixel added' if self.pixel_added else 'no pixel (no HTML part)'}, "
                f"{self.links_rewritten} links rewritten ({len(self.links)} distinct)")
        if self.message_id_added:
            text += ", Message-ID added"
        if self.parts_skipped:
            text += f", {self.parts_skipped} undecodable parts left alone"
        return text


@dataclass(frozen=True)
class MarkResult:
    data: bytes
    summary: MarkSummary


@dataclass
class _Rewriter:
    """Signs one token per distinct URL and counts what it did."""

    settings: TrackingSettings
    keyring: Keyring
    base: TokenPayload  # the open payload; clicks copy it with a link
    tokens: dict[str, str] = field(default_factory=dict)
    rewritten: int = 0
    pixels: int = 0

    def is_ours(self, url: str) -> bool:
        base = self.settings.base_url.lower()
        lowered = url.lower()
        return lowered == base or lowered.startswith(base + "/")

    def click(self, url: str) -> str:
        token = self.tokens.get(url)
        if token is None:
            token = self.tokens[url] = sign_token(replace(self.base, kind="click", link_url=url), self.keyring)
        self.rewritten += 1
        return click_url(self.settings.base_url, token)

    def pixel_url(self) -> str:
        return open_url(self.settings.base_url, sign_token(self.base, self.keyring))

    # -- HTML --
    def html(self, text: str) -> str:
        def href(match: re.Match[str]) -> str:
            raw = next(group for group in match.group(2, 3, 4) if group is not None)
            url = html.unescape(raw).strip()
            if not _HTTP.match(url) or self.is_ours(url):
                return match.group(0)
            return f'{match.group(1)}"{html.escape(self.click(url), quote=True)}"'

        text = _LINK_TAG.sub(lambda tag: _HREF.sub(href, tag.group(0), count=1), text)
        pixel_prefix = html.escape(self.settings.base_url + OPEN_PATH, quote=True)
        if pixel_prefix.lower() in text.lower():
            return text  # marked before: one pixel is enough
        pixel = (f'<img src="{html.escape(self.pixel_url(), quote=True)}" width="1" height="1" alt="" '
                 f'style="border:0;width:1px;height:1px" />')
        self.pixels += 1
        ends = list(_BODY_END.finditer(text))
        if ends:
            at = ends[-1].start()
            return text[:at] + pixel + text[at:]
        return text + ("" if text.endswith("\n") or not text else "\n") + pixel + "\n"

    # -- text --
    def text(self, text: str) -> str:
        def url(match: re.Match[str]) -> str:
            found = match.group(0)
            tail = ""
            while found:
                last = found[-1]
                if last in ".,;:!?" or (last in _CLOSERS and found.count(_CLOSERS[last]) < found.count(last)):
                    found, tail = found[:-1], last + tail
                else:
                    break
            if not _HTTP.match(found) or self.is_ours(found):
                return match.group(0)
            return self.click(found) + tail

        return _TEXT_URL.sub(url, text)


def _body_parts(part: EmailMessage) -> Iterator[EmailMessage]:
    """text/plain and text/html parts of the mail itself: no attachments, no attached mails."""
    if part.is_multipart():
        if part.get_content_maintype() == "multipart":
            for sub in part.iter_parts():
                yield from _body_parts(sub)
        return
    if part.get_content_disposition() == "attachment":
        return
    if part.get_content_type() in ("text/plain", "text/html"):
        yield part


def _replace_text(part: EmailMessage, text: str, *, top: bool) -> None:
    """Set the decoded text of ``part``, keeping its charset (when it still fits), Content-Type
    parameters (format=flowed, ...) and other Content-* headers (disposition, id, language)."""
    charset = part.get_content_charset() or "utf-8"
    try:
        text.encode(charset)
    except (LookupError, UnicodeEncodeError):
        charset = "utf-8"
    params = {k: v for k, v in part["Content-Type"].params.items() if k.lower() != "charset"} if part["Content-Type"] else {}
    kept = [(k, v) for k, v in part.items()
            if k.lower().startswith("content-") and k.lower() not in ("content-type", "content-transfer-encoding")]
    had_version = "MIME-Version" in part
    part.set_content(text, subtype=part.get_content_subtype(), charset=charset, params=params or None)
    if not had_version and not top:
        del part["MIME-Version"]  # EmailMessage.set_content adds it; a body part does not need one
    for name, value in kept:
        del part[name]
    for name, value in kept:
        part[name] = value


def _recipients(message: EmailMessage) -> list[str]:
    seen: dict[str, str] = {}
    for name in ("To", "Cc", "Bcc"):
        for header in message.get_all(name, []):
            for address in getattr(header, "addresses", ()):
                if address.addr_spec and "@" in address.addr_spec:
                    seen.setdefault(address.addr_spec.casefold(), address.addr_spec)
    return list(seen.values())


def _sender_domain(message: EmailMessage) -> str:
    header = message.get("From")
    for address in getattr(header, "addresses", ()) if header is not None else ():
        if address.domain:
            return address.domain
    return "threadline.invalid"


def mark_message(raw: bytes, settings: TrackingSettings, *, tenant: str = "default", recipient: str | None = None,
                 campaign_id: str | None = None, now: float | None = None) -> MarkResult:
    """Mark ``raw`` (RFC 5322 bytes) for tracking when it is campaign mail or opts in; see the module doc."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    subject = str(message.get("Subject", ""))
    parts: list[tuple[EmailMessage, str]] = []
    skipped = 0
    for part in _body_parts(message):
        try:
            parts.append((part, part.get_content()))
        except (LookupError, UnicodeError, ValueError):  # unknown charset, broken encoding
            skipped += 1
    reasons = tuple(reason for reason, present in (
        ("campaign", campaign_id is not None),
        ("subject_tag", bool(SUBJECT_TAG.search(subject))),
        ("body_placeholder", any(BODY_PLACEHOLDER.search(text) for _, text in parts)),
    ) if present)
    if not reasons:
        return MarkResult(raw, MarkSummary(tracked=False))

    if recipient is None:
        found = _recipients(message)
        if len(found) != 1:
            raise MarkError(f"the mail has {len(found)} recipients: a token names one, so mark one copy per "
                            "recipient (pass the recipient)")
        recipient = found[0]
    message_id = str(message.get("Message-ID", "")).strip()
    added_id = not message_id
    if added_id:
        message_id = make_msgid(domain=_sender_domain(message))
        message["Message-ID"] = message_id
    if "subject_tag" in reasons:
        message.replace_header("Subject", " ".join(SUBJECT_TAG.sub(" ", subject).split()))

    issued_at = int(time.time() if now is None else now)
    rewriter = _Rewriter(settings, Keyring.from_settings(settings),
                         TokenPayload(kind="open", tenant=tenant, message_id=message_id, recipient=recipient,
                                      campaign_id=campaign_id, issued_at=issued_at))
    for part, text in parts:
        new = BODY_PLACEHOLDER.sub("", text)
        new = rewriter.html(new) if part.get_content_subtype() == "html" else rewriter.text(new)
        if new != text:
            _replace_text(part, new, top=part is message)

    first_line_end = raw.find(b"\n")
    linesep = "\r\n" if first_line_end > 0 and raw[first_line_end - 1:first_line_end] == b"\r" else "\n"
    policy = email.policy.default.clone(linesep=linesep)
    summary = MarkSummary(tracked=True, reasons=reasons, message_id=message_id, recipient=recipient,
                          pixels_added=rewriter.pixels, links_rewritten=rewriter.rewritten,
                          links=tuple(rewriter.tokens), parts_skipped=skipped, message_id_added=added_id)
    return MarkResult(message.as_bytes(policy=policy), summary)
