"""Signed tracking tokens: layout, round trip, tamper evidence, rotation, stable rejection reasons."""

from __future__ import annotations

import base64
import dataclasses
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.settings import TrackingSettings
from pipeline.tracking import tokens
from pipeline.tracking.tokens import (
    MAC_BYTES, REASONS, Keyring, TokenError, TokenPayload, click_url, open_url, sign_token, token_from_path,
    verify_token, verify_with_settings,
)

FAST = settings(max_examples=100, deadline=None)
T = 1_772_442_000  # 2026-03-02 09:00 UTC
KEYS = Keyring.of({"k1": "first-secret-0123456789"}, "k1")
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

OPEN = TokenPayload(kind="open", tenant="default", message_id="<20260302.abc@mail.ours.example>",
                    recipient="ann@customer.example", issued_at=T)
CLICK = TokenPayload(kind="click", tenant="acme", message_id="<x@y>", recipient="bob@customer.example",
                     campaign_id="spring-26", link_url="https://www.example.com/offers?id=42&utm=mail", issued_at=T)


def raw_bytes(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def reason_of(token: str, keyring=KEYS, **kwargs) -> str:
    with pytest.raises(TokenError) as caught:
        verify_token(token, keyring, **kwargs)
    assert caught.value.reason in REASONS
    return caught.value.reason


# --- strategies ------------------------------------------------------------------------------

TEXT = st.text(min_size=1, max_size=60)
URLS = st.builds(lambda host, path: f"https://{host}/{path}",
                 st.from_regex(r"[a-z0-9.-]{1,30}", fullmatch=True), st.text(max_size=80))


@st.composite
def payloads(draw) -> TokenPayload:
    kind = draw(st.sampled_from(["open", "click"]))
    message_id = draw(st.one_of(TEXT, TEXT.map(lambda s: f"<{s}>"), st.just("<>"), st.just("<x")))
    return TokenPayload(kind=kind, tenant=draw(TEXT), message_id=message_id, recipient=draw(TEXT),
                        campaign_id=draw(st.none() | TEXT), link_url=draw(URLS) if kind == "click" else None,
                        issued_at=draw(st.integers(0, 2**32 - 1)))


# --- layout ----------------------------------------------------------------------------------

def test_token_is_short_url_safe_and_unpadded():
    token = sign_token(OPEN, KEYS)
    assert set(token) <= set(ALPHABET)
    assert "=" not in token
    assert len(token) < 130, len(token)  # an open token for a typical message id stays short
    data = raw_bytes(token)
    assert data[0] == 1                                # version
    assert data[1:4] == b"\x02k1"                      # key id in clear, for rotation
    assert data[4] == 0b1000                           # open, no campaign, no link, <...> stripped
    assert struct.unpack(">I", data[5:9]) == (T,)
    assert b"<" not in data[:-MAC_BYTES]               # brackets of the message id are not stored
    assert len(data) == 9 + (1 + 7) + (1 + 30) + (1 + 20) + MAC_BYTES


def test_click_token_carries_campaign_and_link():
    data = raw_bytes(sign_token(CLICK, KEYS))
    assert data[4] == 0b1111  # click, campaign, link, message id in <...>
    assert verify_token(sign_token(CLICK, KEYS), KEYS) == CLICK


def test_signing_is_deterministic_and_depends_on_every_field():
    token = sign_token(OPEN, KEYS)
    assert sign_token(OPEN, KEYS) == token
    variants = [OPEN.__class__(**{**OPEN.__dict__, field: value}) for field, value in (
        ("tenant", "other"), ("message_id", "<20260302.abd@mail.ours.example>"), ("recipient", "ann@customer.exampl"),
        ("campaign_id", "c"), ("issued_at", T + 1))]
    assert len({token, *(sign_token(v, KEYS) for v in variants)}) == 1 + len(variants)


@FAST
@given(payloads())
def test_round_trip(payload):
    assert verify_token(sign_token(payload, KEYS), KEYS) == payload


# --- tamper evidence -------------------------------------------------------------------------

@FAST
@given(payloads(), st.data())
def test_any_single_character_edit_is_rejected(payload, data):
    token = sign_token(payload, KEYS)
    position = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.sampled_from(ALPHABET).filter(lambda ch: ch != token[position]))
    edited = token[:position] + replacement + token[position + 1:]
    reason_of(edited)


@FAST
@given(payloads(), st.data())
def test_truncation_insertion_and_deletion_are_rejected(payload, data):
    token = sign_token(payload, KEYS)
    cut = data.draw(st.integers(0, len(token) - 1))
    reason_of(token[:cut])
    reason_of(token[:cut] + token[cut + 1:])
    reason_of(token[:cut] + data.draw(st.sampled_from(ALPHABET)) + token[cut:])


def test_every_edit_of_one_token_is_rejected_exhaustively():
    for token in (sign_token(OPEN, KEYS), sign_token(CLICK, KEYS)):
        for position in range(len(token)):
            for replacement in ALPHABET:
                if replacement != token[position]:
                    reason_of(token[:position] + replacement + token[position + 1:])
        for cut in range(len(token)):
            reason_of(token[:cut])


def test_unused_bits_of_the_last_character_cannot_be_flipped():
    # Pick a token whose length leaves spare bits in the last character; the canonical check
    # is what rejects the edit (base64 decoding alone would give the same bytes).
    for n in range(40):
        token = sign_token(TokenPayload(kind="open", tenant="t" * (n + 1), message_id="m", recipient="r",
                                        issued_at=T), KEYS)
        if len(token) % 4 in (2, 3):
            break
    else:
        pytest.fail("no token length with spare bits")
    sibling = token[:-1] + ALPHABET[ALPHABET.index(token[-1]) ^ 1]  # the lowest bit is always spare here
    assert raw_bytes(sibling) == raw_bytes(token)
    assert reason_of(sibling) == "malformed"


# --- reasons ---------------------------------------------------------------------------------

@pytest.mark.parametrize("token", ["", "!", "abc", "a" * 10, "AQ==", "not a token", "AQNkZXY.", "a" * 5 + "\n"])
def test_garbage_is_malformed(token):
    assert reason_of(token) == "malformed"


def test_non_string_is_malformed():
    assert reason_of(None) == "malformed"  # type: ignore[arg-type]


def test_unknown_version():
    data = bytearray(raw_bytes(sign_token(OPEN, KEYS)))
    data[0] = 2
    assert reason_of(tokens._b64encode(bytes(data))) == "unsupported_version"


def test_unknown_key_and_bad_signature():
    token = sign_token(OPEN, KEYS)
    assert reason_of(token, Keyring.of({"k2": "first-secret-0123456789"}, "k2")) == "unknown_key"
    assert reason_of(token, Keyring.of({"k1": "another-secret-0123456789"}, "k1")) == "bad_signature"
    forged = sign_token(OPEN, Keyring.of({"k1": "attacker-guess-0123456789"}, "k1"))
    assert reason_of(forged) == "bad_signature"


def test_plain_mapping_works_as_keyring():
    assert verify_token(sign_token(OPEN, KEYS), {"k1": "first-secret-0123456789"}) == OPEN
    assert verify_token(sign_token(OPEN, KEYS), {"k1": b"first-secret-0123456789"}) == OPEN


def test_authentic_but_broken_body_is_malformed():
    secret = KEYS.keys["k1"]
    for body in (b"\x01\x02k1\x00" + struct.pack(">I", T) + b"\x01a\x01b\x01cEXTRA",     # trailing bytes
                 b"\x01\x02k1\x80" + struct.pack(">I", T) + b"\x01a\x01b\x01c",          # unknown flag
                 b"\x01\x02k1\x01" + struct.pack(">I", T) + b"\x01a\x01b\x01c",          # click without link
                 b"\x01\x02k1\x00" + struct.pack(">I", T) + b"\x01a\x00\x01c",           # empty message id
                 b"\x01\x02k1\x00" + struct.pack(">I", T) + b"\x01a\x02\xff\xfe\x01c",   # not UTF-8
                 b"\x01\x02k1\x00" + struct.pack(">I", T) + b"\x01a\x80\x00b\x01c"):     # non-minimal length
        token = tokens._b64encode(body + tokens._mac(secret, body))
        assert reason_of(token) == "malformed", body


def test_expiry_is_optional_and_exact():
    token = sign_token(OPEN, KEYS)
    day = 86400.0
    assert verify_token(token, KEYS, max_age_s=day, now=T + day) == OPEN
    assert reason_of(token, max_age_s=day, now=T + day + 1) == "expired"
    assert verify_token(token, KEYS, max_age_s=0, now=T + 100 * 365 * day) == OPEN
    assert verify_token(token, KEYS, now=T + 100 * 365 * day) == OPEN


def test_settings_supply_keys_and_the_max_age_of_each_kind():
    settings_ = TrackingSettings(keys={"k1": "first-secret-0123456789"}, current_key_id="k1", pixel_max_age_days=30,
                                 click_max_age_days=60, unsubscribe_max_age_days=0)
    keys = Keyring.from_settings(settings_)
    day = 86400
    unsubscribe = TokenPayload("unsubscribe", "acme", "<x@y>", "bob@customer.example", "c1", issued_at=T)
    for payload, limit in ((OPEN, 30), (CLICK, 60)):
        token = sign_token(payload, keys)
        for expect_kind in (payload.kind, None):  # without expect_kind the token's own kind decides
            assert verify_with_settings(token, settings_, now=T + limit * day, expect_kind=expect_kind) == payload
            with pytest.raises(TokenError, match="expired"):
                verify_with_settings(token, settings_, now=T + limit * day + 1, expect_kind=expect_kind)
    token = sign_token(unsubscribe, keys)  # 0: never
    assert verify_with_settings(token, settings_, now=T + 100 * 365 * day) == unsubscribe
    defaults = TrackingSettings(keys={"k1": "first-secret-0123456789"}, current_key_id="k1")
    for kind, days in (("open", 180), ("click", 365), ("unsubscribe", 730)):
        assert tokens.max_age_seconds(defaults, kind) == days * day
    with pytest.raises(TokenError, match="expired"):  # a token dated 1970 no longer works by default
        verify_with_settings(sign_token(dataclasses.replace(CLICK, issued_at=0), keys), defaults)


def test_wrong_kind_when_the_path_says_otherwise():
    open_token, click_token = sign_token(OPEN, KEYS), sign_token(CLICK, KEYS)
    assert verify_token(open_token, KEYS, expect_kind="open") == OPEN
    assert reason_of(open_token, expect_kind="click") == "wrong_kind"
    assert reason_of(click_token, expect_kind="open") == "wrong_kind"


def test_signature_is_checked_before_the_kind_and_age():
    forged = sign_token(OPEN, Keyring.of({"k1": "attacker-guess-0123456789"}, "k1"))
    assert reason_of(forged, expect_kind="click", max_age_s=1, now=T + 10) == "bad_signature"


# --- rotation --------------------------------------------------------------------------------

def test_rotation_old_key_verifies_while_listed_then_fails():
    old = Keyring.of({"2025": "old-secret-0123456789"}, "2025")
    token = sign_token(OPEN, old)
    rotated = Keyring.of({"2025": "old-secret-0123456789", "2026": "new-secret-0123456789"}, "2026")
    assert verify_token(token, rotated) == OPEN
    new_token = sign_token(OPEN, rotated)
    assert raw_bytes(new_token)[2:6] == b"2026"
    assert verify_token(new_token, rotated) == OPEN
    retired = Keyring.of({"2026": "new-secret-0123456789"}, "2026")
    assert verify_token(new_token, retired) == OPEN
    assert reason_of(token, retired) == "unknown_key"


@FAST
@given(payloads(), st.from_regex(r"[A-Za-z0-9._-]{1,16}", fullmatch=True),
       st.from_regex(r"[A-Za-z0-9._-]{1,16}", fullmatch=True))
def test_rotation_property(payload, old_id, new_id):
    if old_id == new_id:
        new_id = new_id[:-1] + ("a" if new_id[-1] != "a" else "b")
    old = Keyring.of({old_id: "secret-number-one!"}, old_id)
    both = Keyring.of({old_id: "secret-number-one!", new_id: "secret-number-two!"}, new_id)
    only_new = Keyring.of({new_id: "secret-number-two!"}, new_id)
    token = sign_token(payload, old)
    assert verify_token(token, both) == payload
    assert reason_of(token, only_new) == "unknown_key"
    assert verify_token(sign_token(payload, both), only_new) == payload


# --- payload and keyring validation ----------------------------------------------------------

@pytest.mark.parametrize("fields, message", [
    ({"kind": "click"}, "needs link_url"),
    ({"link_url": "https://x.example/"}, "needs link_url"),
    ({"kind": "bounce"}, "open or click"),
    ({"tenant": ""}, "tenant must not be empty"),
    ({"campaign_id": ""}, "campaign_id must not be empty"),
    ({"issued_at": -1}, "outside"),
    ({"issued_at": 2**32}, "outside"),
    ({"recipient": "x" * 5000}, "longer than"),
    ({"recipient": "\udc80"}, "not valid Unicode"),
])
def test_payload_rejects_what_cannot_be_signed(fields, message):
    with pytest.raises(ValueError, match=message):
        TokenPayload(**{**OPEN.__dict__, **fields})


def test_keyring_checks_and_hides_secrets():
    with pytest.raises(ValueError, match="not in the keyring"):
        Keyring.of({"a": "s" * 20}, "b")
    with pytest.raises(ValueError, match="key id"):
        Keyring.of({"has space": "s" * 20}, "has space")
    assert "first-secret" not in repr(KEYS) and "k1" in repr(KEYS)


def test_error_reason_is_stable_and_rejects_unknown_codes():
    error = TokenError("expired", "details")
    assert error.reason == "expired" and str(error) == "expired: details"
    with pytest.raises(AssertionError):
        TokenError("nope")


# --- URLs ------------------------------------------------------------------------------------

def test_urls_and_paths_round_trip():
    token = sign_token(CLICK, KEYS)
    assert click_url("https://t.example/track/", token) == f"https://t.example/track/c/{token}"
    assert open_url("https://t.example", "TOKEN") == "https://t.example/o/TOKEN.gif"
    assert token_from_path(f"/c/{token}") == ("click", token)
    assert token_from_path("/o/abc_-9.gif") == ("open", "abc_-9")
    for path in ("/o/abc", "/c/", "/x/abc", "/c/a b", "/o/.gif", "/c/abc?x=1"):
        assert token_from_path(path) is None, path
