"""Signed tracking tokens (DESIGN.md §5): everything the endpoint needs, no database lookup.

A token is URL-safe base64 (no padding) of a compact binary record::

    version    1 byte    format version, currently 1
    key id     1 byte length + ASCII   which key of the keyring signed it (rotation)
    flags      1 byte    bit 0: click (else open); bit 1: campaign present; bit 2: link present;
                         bit 3: message id was wrapped in <...> (the brackets are not stored);
                         bit 4: unsubscribe (RFC 8058 one-click link; never with bit 0 or 2)
    issued at  4 bytes   seconds since 1970-01-01 UTC, big endian
    strings    varint length + UTF-8 each: tenant, message id, recipient, [campaign], [link]
    MAC        16 bytes  HMAC-SHA256(secret, DOMAIN || everything above), first 16 bytes

Why 16 bytes (128 bits) of MAC are enough: the attacker does not know the key, so the only
attack on a truncated HMAC is guessing; each guess costs one HTTP request and succeeds with
probability 2**-128.  Even 10**9 requests a second for a century stay below 2**-66 in total.
Collisions do not matter for a MAC under a secret key, and NIST SP 800-107 allows HMAC
truncation down to 64 bits; 128 keeps a wide margin while saving 16 bytes (22 characters) per URL.

Verification checks, in this order, and raises :class:`TokenError` with a stable ``reason``:
``malformed`` (not canonical base64url, too short, bad field), ``unsupported_version``,
``unknown_key`` (key id not in the keyring: retired or forged), ``bad_signature``,
``wrong_kind`` (a token of another kind than the path's, e.g. an open token on the click path,
when the caller says which),
``expired`` (older than ``max_age_s``, when given; with the settings: the kind's
``tracking.pixel_max_age_days``, ``click_max_age_days`` or ``unsubscribe_max_age_days``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct
import time
from dataclasses import dataclass
from typing import Literal, Mapping

from pipeline.settings import TrackingSettings

VERSION = 1
MAC_BYTES = 16
DOMAIN = b"threadline-tracking-token\x00"
MAX_STRING_BYTES = 4096  # one field; long URLs fit, absurd input does not

OPEN_PATH = "/o/"   # pixel:  {base_url}/o/{token}.gif
CLICK_PATH = "/c/"  # click:  {base_url}/c/{token}
UNSUBSCRIBE_PATH = "/u/"  # one-click unsubscribe: {base_url}/u/{token} (GET: confirmation page, POST: unsubscribe)

MALFORMED = "malformed"
UNSUPPORTED_VERSION = "unsupported_version"
UNKNOWN_KEY = "unknown_key"
BAD_SIGNATURE = "bad_signature"
WRONG_KIND = "wrong_kind"
EXPIRED = "expired"
REASONS = (MALFORMED, UNSUPPORTED_VERSION, UNKNOWN_KEY, BAD_SIGNATURE, WRONG_KIND, EXPIRED)

Kind = Literal["open", "click", "unsubscribe"]
KINDS = ("open", "click", "unsubscribe")

_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,16}")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_FLAG_CLICK, _FLAG_CAMPAIGN, _FLAG_LINK, _FLAG_BRACKETS, _FLAG_UNSUBSCRIBE = 1, 2, 4, 8, 16
_KNOWN_FLAGS = _FLAG_CLICK | _FLAG_CAMPAIGN | _FLAG_LINK | _FLAG_BRACKETS | _FLAG_UNSUBSCRIBE


class TokenError(ValueError):
    """A token was rejected; ``reason`` is one of :data:`REASONS` (stable, for metrics and dead letters)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class TokenPayload:
    """What a token carries.  ``issued_at`` is whole seconds since the Unix epoch (UTC)."""

    kind: Kind
    tenant: str
    message_id: str
    recipient: str
    campaign_id: str | None = None
    link_url: str | None = None
    issued_at: int = 0
    version: int = VERSION

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be open or click (tracking) or unsubscribe, not {self.kind!r}")
        if (self.kind == "click") != (self.link_url is not None):
            raise ValueError("a click token needs link_url; an open token has none")
        if not 0 <= self.issued_at < 2**32:
            raise ValueError(f"issued_at {self.issued_at} is outside 1970..2106")
        if self.version != VERSION:
            raise ValueError(f"only version {VERSION} can be signed")
        for name in ("tenant", "message_id", "recipient", "campaign_id", "link_url"):
            value = getattr(self, name)
            if value is None:
                continue
            if not value:
                raise ValueError(f"{name} must not be empty (use None for an absent campaign or link)")
            try:
                size = len(value.encode("utf-8"))
            except UnicodeEncodeError as exc:  # lone surrogates
                raise ValueError(f"{name} is not valid Unicode text: {exc.reason}") from exc
            if size > MAX_STRING_BYTES:
                raise ValueError(f"{name} is longer than {MAX_STRING_BYTES} bytes")


@dataclass(frozen=True)
class Keyring:
    """Secrets by key id; ``current_key_id`` signs, every listed key verifies."""

    keys: Mapping[str, bytes]
    current_key_id: str

    def __post_init__(self) -> None:
        for key_id in self.keys:
            if not _KEY_ID.fullmatch(key_id):
                raise ValueError(f"key id {key_id!r} must be 1-16 of A-Z a-z 0-9 . _ -")
        if self.current_key_id not in self.keys:
            raise ValueError(f"current key {self.current_key_id!r} is not in the keyring")

    @classmethod
    def of(cls, keys: Mapping[str, str | bytes], current_key_id: str) -> Keyring:
        return cls({k: v.encode("utf-8") if isinstance(v, str) else bytes(v) for k, v in keys.items()}, current_key_id)

    @classmethod
    def from_settings(cls, settings: TrackingSettings) -> Keyring:
        return cls.of(settings.keys, settings.current_key_id)

    def __repr__(self) -> str:  # never show secrets
        return f"Keyring(key_ids={sorted(self.keys)!r}, current_key_id={self.current_key_id!r})"


# -- encoding helpers -------------------------------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, count: int) -> bytes:
        if count < 0 or self.pos + count > len(self.data):
            raise TokenError(MALFORMED, "truncated")
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return chunk

    def varint(self) -> int:
        value = shift = 0
        for _ in range(3):  # MAX_STRING_BYTES fits two 7-bit groups; three is the hard limit
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if byte == 0 and shift:
                    raise TokenError(MALFORMED, "non-minimal length")
                return value
            shift += 7
        raise TokenError(MALFORMED, "length too long")

    def string(self) -> str:
        length = self.varint()
        if length > MAX_STRING_BYTES:
            raise TokenError(MALFORMED, "field too long")
        try:
            return self.take(length).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TokenError(MALFORMED, "field is not UTF-8") from exc


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(token: str) -> bytes:
    if not isinstance(token, str) or not _BASE64URL.fullmatch(token) or len(token) % 4 == 1:
        raise TokenError(MALFORMED, "not base64url")
    data = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    # The last character may carry unused bits: only the canonical spelling is accepted, so an
    # edited character can never decode to the same bytes.
    if _b64encode(data) != token:
        raise TokenError(MALFORMED, "not canonical base64url")
    return data


def _mac(secret: bytes, signed: bytes) -> bytes:
    return hmac.new(secret, DOMAIN + signed, hashlib.sha256).digest()[:MAC_BYTES]


# -- sign / verify ----------------------------------------------------------------------------

def sign_token(payload: TokenPayload, keyring: Keyring) -> str:
    """The URL-safe token for ``payload``, signed with the keyring's current key."""
    key_id = keyring.current_key_id
    message_id = payload.message_id
    flags = {"click": _FLAG_CLICK, "unsubscribe": _FLAG_UNSUBSCRIBE}.get(payload.kind, 0)
    if len(message_id) > 2 and message_id.startswith("<") and message_id.endswith(">"):
        flags |= _FLAG_BRACKETS
        message_id = message_id[1:-1]
    strings = [payload.tenant, message_id, payload.recipient]
    if payload.campaign_id is not None:
        flags |= _FLAG_CAMPAIGN
        strings.append(payload.campaign_id)
    if payload.link_url is not None:
        flags |= _FLAG_LINK
        strings.append(payload.link_url)
    body = bytearray([VERSION, len(key_id)])
    body += key_id.encode("ascii")
    body.append(flags)
    body += struct.pack(">I", payload.issued_at)
    for value in strings:
        encoded = value.encode("utf-8")
        body += _varint(len(encoded)) + encoded
    return _b64encode(bytes(body) + _mac(keyring.keys[key_id], bytes(body)))


def verify_token(token: str, keyring: Keyring | Mapping[str, str | bytes], *, max_age_s: float | None = None,
                 now: float | None = None, expect_kind: Kind | None = None) -> TokenPayload:
    """The payload of a genuine token, else :class:`TokenError` (see the module doc for reasons).

    ``keyring`` may be a plain ``{key id: secret}`` mapping.  ``max_age_s`` None or 0: no expiry.
    """
    keys = keyring.keys if isinstance(keyring, Keyring) else {
        k: v.encode("utf-8") if isinstance(v, str) else bytes(v) for k, v in keyring.items()}
    data = _b64decode(token)
    if len(data) < 2 + 1 + 4 + 3 + MAC_BYTES:
        raise TokenError(MALFORMED, "too short")
    if data[0] != VERSION:
        raise TokenError(UNSUPPORTED_VERSION, f"version {data[0]}")
    reader = _Reader(data[:-MAC_BYTES])
    reader.take(1)
    key_id_bytes = reader.take(reader.take(1)[0])
    try:
        key_id = key_id_bytes.decode("ascii")
    except UnicodeDecodeError as exc:
        raise TokenError(MALFORMED, "key id is not ASCII") from exc
    if not _KEY_ID.fullmatch(key_id):
        raise TokenError(MALFORMED, "bad key id")
    secret = keys.get(key_id)
    if secret is None:
        raise TokenError(UNKNOWN_KEY, f"key {key_id!r} is not in the keyring")
    if not hmac.compare_digest(_mac(secret, data[:-MAC_BYTES]), data[-MAC_BYTES:]):
        raise TokenError(BAD_SIGNATURE)
    # Authentic from here on; the checks below only guard against our own bugs and old formats.
    flags = reader.take(1)[0]
    if flags & ~_KNOWN_FLAGS or (flags & _FLAG_UNSUBSCRIBE and flags & _FLAG_CLICK):
        raise TokenError(MALFORMED, "unknown flags")
    (issued_at,) = struct.unpack(">I", reader.take(4))
    tenant, message_id, recipient = reader.string(), reader.string(), reader.string()
    campaign_id = reader.string() if flags & _FLAG_CAMPAIGN else None
    link_url = reader.string() if flags & _FLAG_LINK else None
    if reader.pos != len(reader.data):
        raise TokenError(MALFORMED, "trailing bytes")
    if flags & _FLAG_BRACKETS:
        message_id = f"<{message_id}>"
    try:
        kind: Kind = "click" if flags & _FLAG_CLICK else "unsubscribe" if flags & _FLAG_UNSUBSCRIBE else "open"
        payload = TokenPayload(kind=kind, tenant=tenant, message_id=message_id,
                               recipient=recipient, campaign_id=campaign_id, link_url=link_url, issued_at=issued_at)
    except ValueError as exc:
        raise TokenError(MALFORMED, str(exc)) from exc
    if expect_kind is not None and payload.kind != expect_kind:
        raise TokenError(WRONG_KIND, f"{payload.kind} token where {expect_kind} was expected")
    _check_age(payload, max_age_s, now)
    return payload


def _check_age(payload: TokenPayload, max_age_s: float | None, now: float | None) -> None:
    if max_age_s:
        age = (time.time() if now is None else now) - payload.issued_at
        if age > max_age_s:
            raise TokenError(EXPIRED, f"issued {age:.0f} s ago, limit {max_age_s:.0f} s")


def max_age_seconds(settings: TrackingSettings, kind: Kind) -> int:
    """Seconds a token of ``kind`` is valid under the settings; 0: forever."""
    days = {"open": settings.pixel_max_age_days, "click": settings.click_max_age_days,
            "unsubscribe": settings.unsubscribe_max_age_days}[kind]
    return days * 86400


def verify_with_settings(token: str, settings: TrackingSettings, *, now: float | None = None,
                         expect_kind: Kind | None = None) -> TokenPayload:
    """:func:`verify_token` with the keyring of the settings and the maximum age of the token's
    kind (known only once the token is read, when ``expect_kind`` is None)."""
    payload = verify_token(token, Keyring.from_settings(settings), now=now, expect_kind=expect_kind)
    _check_age(payload, max_age_seconds(settings, payload.kind), now)
    return payload


# -- URLs -------------------------------------------------------------------------------------

def open_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}{OPEN_PATH}{token}.gif"


def click_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}{CLICK_PATH}{token}"


def unsubscribe_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}{UNSUBSCRIBE_PATH}{token}"


def token_from_path(path: str) -> tuple[Kind, str] | None:
    """``("open", token)`` for ``/o/TOKEN.gif``, ``("click", token)`` for ``/c/TOKEN``,
    ``("unsubscribe", token)`` for ``/u/TOKEN``, else None.  ``path`` is relative to the base URL's path."""
    for kind, prefix, suffix in (("open", OPEN_PATH, ".gif"), ("click", CLICK_PATH, ""),
                                 ("unsubscribe", UNSUBSCRIBE_PATH, "")):
        if path.startswith(prefix) and path.endswith(suffix):
            token = path[len(prefix):len(path) - len(suffix)]
            return (kind, token) if _BASE64URL.fullmatch(token) else None
    return None
