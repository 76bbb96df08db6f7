"""parse_mail (fast path for the common shapes, pipeline.mail.fastmime) against parse_mail_stdlib
(every mail through email.message_from_bytes): the identical MailRecord, every field and the
defects in order, or the identical MailParseError reason.

On every mail of the four real corpora, on the hostile generator's mail (every category), on big
mail (12 MB and 40 MB attachments, a 12 MB HTML body), on synthetic mail of two tenants with
automatic mail among it, and on generated MIME built from the pieces the fast path decides on
(line ends, delimiter lines and near misses, parts without fields, transfer encodings, charsets,
dispositions, nesting it hands over)."""

from __future__ import annotations

import base64
import collections
import dataclasses
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.mail.hostile import CATEGORIES, big_mail, hostile_mails
from pipeline.mail.parse import mail_path, parse_mail, parse_mail_stdlib
from pipeline.mail.record import MailParseError
from pipeline.mail.sources import iter_mbox
from pipeline.synth import AutomaticMail, MailGenerator, render_rfc5322, with_automatic_mail

CORPORA = Path(__file__).resolve().parents[3] / "shared" / "corpus"
CORPUS_MBOXES = sorted(CORPORA.glob("*/messages.mbox")) if CORPORA.is_dir() else []


def outcome(parse, raw: bytes, **options):
    try:
        return parse(raw, **options)
    except MailParseError as error:
        return ("rejected", error.reason)


def difference(raw: bytes, **options) -> str | None:
    """None when both paths agree, else the first field that differs."""
    fast, reference = outcome(parse_mail, raw, **options), outcome(parse_mail_stdlib, raw, **options)
    if fast == reference:
        return None
    if isinstance(fast, tuple) or isinstance(reference, tuple):
        return f"{fast!r:.80} != {reference!r:.80}"
    field = next(f.name for f in dataclasses.fields(fast) if getattr(fast, f.name) != getattr(reference, f.name))
    return f"{field}: {getattr(fast, field)!r:.120} != {getattr(reference, field)!r:.120}"


@pytest.mark.skipif(not CORPUS_MBOXES, reason=f"no corpus at {CORPORA}")
@pytest.mark.parametrize("mbox", CORPUS_MBOXES, ids=lambda path: path.parent.name)
def test_every_corpus_mail_parses_as_the_stdlib_parses_it(mbox):
    paths = collections.Counter()
    for index, (_, raw) in enumerate(iter_mbox(mbox)):
        paths[mail_path(raw)] += 1
        assert difference(raw, tenant="acme", mailbox="support") is None, f"mail #{index}"
    assert paths["fast"] > 0.9 * sum(paths.values()), paths  # the fast path is the common one


def test_hostile_mail_parses_as_the_stdlib_parses_it():
    paths = collections.Counter()
    for category, raw in hostile_mails(25 * len(CATEGORIES), seed=18):
        paths[mail_path(raw)] += 1
        assert difference(raw) is None, category
    assert paths["fast"] and paths["stdlib"] and paths["rejected"], paths


@pytest.mark.parametrize(("size_mb", "kind"), [(12, "attachment"), (40, "attachment"), (12, "html")])
def test_big_mail_parses_as_the_stdlib_parses_it(size_mb, kind):
    raw = big_mail(size_mb * 2**20, seed=5, kind=kind)
    assert mail_path(raw) == "fast"
    assert difference(raw) is None


def test_synthetic_mail_of_two_tenants_parses_as_the_stdlib_parses_it():
    count = 0
    for tenant, seed in (("acme", 3), ("globex", 4)):
        people = MailGenerator(seed, tenant=tenant, customers=500).mails(150)
        for item in with_automatic_mail(people, seed=seed):
            raw = item.raw if isinstance(item, AutomaticMail) else render_rfc5322(item)
            assert difference(raw, tenant=tenant) is None
            count += 1
    assert count > 300


# -- generated MIME ------------------------------------------------------------------------------

_TEXT = "Hello Ann,\nthe café opens at nine; see you there.\n> quoted line of the parent\n"
_LEAF_FIELDS = [
    [], ["Content-Type: text/plain; charset=utf-8"], ["Content-Type: text/plain; charset=\"iso-8859-1\""],
    ["Content-Type: text/html; charset=utf-8"], ["Content-Type: text/plain; charset*=utf-8''caf%C3%A9"],
    ["Content-Type: text/plain", "Content-Transfer-Encoding: quoted-printable"],
    ["Content-Type: text/plain", "Content-Transfer-Encoding: base64"],
    ["Content-Type: text/plain", "Content-Transfer-Encoding: BASE64 "],
    ["Content-Type: text/plain", "Content-Disposition: attachment; filename=a.txt"],
    ["Content-Type: application/octet-stream"], ["Content-Type: text/plain;\n\tcharset=us-ascii"],
    ["Content-Type: TEXT/PLAIN"],
]
_ODD_LEAF_FIELDS = [["X-Odd line without colon"], [" continuation first"], ["From nobody"],
                    ["Content-Type: message/rfc822"], ["Content-Type: multipart/mixed; boundary=inner"]]
_BODIES = [_TEXT, "", "=E9t=E9 =\nsoft break\n", base64.encodebytes(_TEXT.encode()).decode(), "QUJD\n=\n",
           "<p>Hello <b>there</b></p>\n", "caf\u00e9 in latin-1 bytes\n", "--inner\n\nnested\n--inner--\n"]
_DELIMITER_TAILS = ["", "  ", "\t", "--", "-- ", "x", " x"]
_TOP_TYPES = ["multipart/alternative; boundary=\"b1\"", "multipart/mixed; boundary=b1", "multipart/signed; boundary=b1",
              "multipart/alternative; boundary=b1", "multipart/mixed; boundary=\"b1\"", "multipart/digest; boundary=b1", "multipart/mixed", "multipart/mixed; boundary=\"b1 \"",
              "text/plain; charset=utf-8", "text/html", "message/rfc822", "multipart/report; report-type=delivery-status; "
              "boundary=b1"]


@st.composite
def generated_mail(draw) -> bytes:
    top = draw(st.sampled_from(_TOP_TYPES))
    fields = ["Message-ID: <gen@example.org>", "From: \"Smith, Ann\" <ann@example.org>", "To: bob@example.org",
              "Subject: =?utf-8?q?caf=C3=A9?= plan", "Date: Tue, 05 Mar 2024 10:15:00 +0100", f"Content-Type: {top}"]
    fields += draw(st.lists(st.sampled_from(["MIME-Version: 1.0", "MIME-Version: 1.0", "Content-Transfer-Encoding: 7bit",
                                             "Subject: second", "List-Id: <list.example.org>",
                                             "Content-Transfer-Encoding: base64", "Content-Type: text/plain"]), max_size=2))
    if top.startswith("multipart"):
        lines = [draw(st.sampled_from(["", "preamble text", "--b1x not a delimiter"]))]
        for _ in range(draw(st.integers(0, 4))):
            lines.append("--b1" + draw(st.sampled_from(_DELIMITER_TAILS[:3] + _DELIMITER_TAILS[5:])))
            odd = draw(st.integers(0, 9)) == 0
            lines += draw(st.sampled_from(_ODD_LEAF_FIELDS if odd else _LEAF_FIELDS))
            if draw(st.integers(0, 9)):
                lines.append("")  # else no blank line: a part of fields only, or of body only
            lines.append(draw(st.sampled_from(_BODIES)))
        if draw(st.integers(0, 4)):
            lines.append("--b1" + draw(st.sampled_from(_DELIMITER_TAILS[3:5])))
            lines.append(draw(st.sampled_from(["", "epilogue", "--b1"])))
        body = "\n".join(lines)
    else:
        body = draw(st.sampled_from(_BODIES))
    text = "\n".join(fields) + "\n\n" + body
    if draw(st.booleans()):
        text = text.replace("\n", "\r\n")
        if draw(st.integers(0, 9)) == 0:
            text = text.replace("\r\n", "\n", 1)  # mixed line ends
    raw = text.encode("utf-8")
    if "latin-1" in text:
        raw = raw.replace("caf\u00e9 in latin-1".encode(), b"caf\xe9 in latin-1")
    return raw


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated_mail())
def test_generated_mime_parses_as_the_stdlib_parses_it(raw):
    assert difference(raw) is None


def test_generated_mime_takes_both_paths():
    fast = b"Message-ID: <a@b>\nContent-Type: multipart/alternative; boundary=b1\n\n--b1\n\nhi\n--b1--\n"
    nested = fast.replace(b"--b1\n\nhi", b"--b1\nContent-Type: multipart/mixed; boundary=b2\n\n--b2\n\nhi\n--b2--")
    assert mail_path(fast) == "fast" and mail_path(nested) == "stdlib"
    assert parse_mail(fast).body_text == "hi" and parse_mail(nested).body_text == "hi"
