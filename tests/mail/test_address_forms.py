"""The everyday address forms read without the stdlib address parser give what parse_mail gave
before the quoted form was read too: the To/Cc/Bcc/Reply-To lists, and the From name and address
(always parseaddr's before), on every
address field of the real corpora and on generated fields mixing quotes, commas, comments,
groups, escapes and angle brackets."""

from __future__ import annotations

import re
from email import message_from_bytes
from email.policy import compat32
from email.utils import getaddresses, parseaddr
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.mail.parse import _addresses, _decode_header, _name_and_address, _simple_addresses
from pipeline.mail.sources import iter_mbox

CORPORA = Path(__file__).resolve().parents[3] / "shared" / "corpus"
CORPUS_MBOXES = sorted(CORPORA.glob("*/messages.mbox")) if CORPORA.is_dir() else []


# The forms _addresses read itself before the quoted one came (each item split at its commas).
_OLD_SIMPLE_ADDRESS = re.compile(r"^\s*(?:[^<>@\"(),]*<\s*([^<>\s@,]+@[^<>\s@,]+)\s*>|([^<>\s@,\"]+@[^<>\s@,\"]+))\s*$")


def _old_simple(decoded: list[str]) -> list[str] | None:
    found = []
    for item in ",".join(decoded).split(","):
        if item.strip():
            match = _OLD_SIMPLE_ADDRESS.match(item)
            if match is None:
                return None
            found.append(match.group(1) or match.group(2))
    return found


def reference_addresses(values: list[str]) -> tuple[str, ...]:
    """_addresses as it was: the old forms, every other list through getaddresses."""
    decoded = [_decode_header(value, []) for value in values]
    simple = _old_simple(decoded)
    seen: dict[str, None] = {}
    for _, address in [("", address) for address in simple] if simple is not None else getaddresses(decoded):
        address = address.strip().lower()
        if "@" in address and " " not in address and len(address) <= 320:
            seen.setdefault(address, None)
    return tuple(seen)


@pytest.mark.skipif(not CORPUS_MBOXES, reason=f"no corpus at {CORPORA}")
@pytest.mark.parametrize("mbox", CORPUS_MBOXES, ids=lambda path: path.parent.name)
def test_corpus_address_fields_read_as_the_stdlib_reads_them(mbox):
    lists = senders = simple = 0
    for _, raw in iter_mbox(mbox):
        message = message_from_bytes(raw, policy=compat32)
        for name in ("to", "cc", "bcc", "reply-to"):
            values = message.get_all(name)
            if values and all(isinstance(value, str) for value in values):
                lists += 1
                simple += _simple_addresses([_decode_header(value, []) for value in values]) is not None
                assert _addresses(values, []) == reference_addresses(values), values
        sender = message.get("from")
        if isinstance(sender, str):
            senders += 1
            decoded = _decode_header(sender, [])
            assert _name_and_address(decoded) == parseaddr(decoded), decoded
    assert lists and senders and simple > lists // 2  # the fast forms were met


_PIECES = ['"Smith, Ann"', '"a@b.example"', '"x\\"y"', '""', "Ann", "Ann S.", " ", ",", ", ,", "<ann@x.example>",
           "< ann@x.example >", "ann@x.example", "bob+tag@y.example", "(comment)", "group:", ";", "<a@[1.2.3.4]>",
           "<@route:a@b.example>", "a.b@c", "a..b@c.", "<>", "@", "<a@b@c>", '"unclosed', "Ünïcode Näme",
           "<ann@x.example", "ann@x.example>", "\\", ":", "[x]"]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=8))
def test_generated_address_fields_read_as_the_stdlib_reads_them(pieces):
    value = " ".join(pieces)
    assert _addresses([value], []) == reference_addresses([value])
    assert _name_and_address(value) == parseaddr(value)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from('ab "<>@,.()\\:;[]'), max_size=30))
def test_random_address_text_reads_as_the_stdlib_reads_it(value):
    assert _addresses([value], []) == reference_addresses([value])
    assert _name_and_address(value) == parseaddr(value)
