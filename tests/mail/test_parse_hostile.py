"""parse_mail on hostile and huge mail: it returns a record or rejects the mail with a stable
reason, never anything else, and its work per mail is bounded (speed itself: pipeline/bench/parse.py).

"unparsable" is a legal reason, but here it counts as a failure: parse_mail only gives it when its
last guard caught an exception nobody foresaw, and every one found so far has been fixed at its
cause, so that such a mail keeps its record instead of going to the dead-letter topic.
"""

from __future__ import annotations

import base64
import quopri

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.mail import parse as parse_module
from pipeline.mail.content import MAX_SHINGLES, MAX_TEXT_CHARS, fingerprint_body
from pipeline.mail.hostile import CATEGORIES, big_mail, hostile_mails
from pipeline.mail.parse import HTML_PART_BYTES, TEXT_PART_BYTES, html_to_text, parse_mail
from pipeline.mail.record import BODY_TEXT_LIMIT, MailParseError, MailRecord

_REJECTIONS = {"empty", "too_large", "header_too_large", "not_a_mail"}
_FUZZ = settings(max_examples=120, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def record_or_rejection(raw: bytes, **options) -> MailRecord | None:
    try:
        record = parse_mail(raw, **options)
    except MailParseError as exc:
        assert exc.reason in _REJECTIONS, f"escaped to the last guard: {exc}"
        return None
    assert isinstance(record, MailRecord)
    assert record.size == len(raw)
    assert record.message_id.startswith("<") and record.message_id.endswith(">")
    assert len(record.body_text) <= BODY_TEXT_LIMIT
    assert len(record.defects) == len(set(record.defects))
    return record


def plain(*fields: bytes, body: bytes = b"Hello.\r\n") -> bytes:
    base = [b"Message-ID: <h1@example.org>", b"From: Ann <ann@example.org>", b"Date: Tue, 05 Mar 2024 10:15:00 +0100"]
    return b"\r\n".join(base + list(fields)) + b"\r\n\r\n" + body


# --------------------------------------------------------------------------- known escapes


def test_idna_subject_parses_with_a_defect():
    record = parse_mail(plain(b"Subject: =?idna?Q?xn--?="))
    assert record.subject == "xn--"
    assert "bad_encoding" in record.defects


@pytest.mark.parametrize("charset", ["idna", "punycode", "undefined", "unicode-escape", "raw-unicode-escape",
                                     "hex", "zlib", "x-no-such-charset"])
def test_codecs_that_are_no_mail_charset_read_as_latin1(charset):
    word = "=?" + charset + "?Q?caf=E9_\\8?="
    record = parse_mail(plain(f"Subject: {word}".encode(), f"Content-Type: text/plain; charset={charset}".encode(),
                              body=b"caf\xe9 \\8 \\N{x} xn--\r\n"))
    assert record.subject == "café \\8"
    assert record.body_text == "café \\8 \\N{x} xn--\r\n"
    assert "bad_encoding" in record.defects


def test_utf7_is_a_charset():
    record = parse_mail(plain(b"Subject: =?utf-7?Q?Hi_+AOk-?=", b"Content-Type: text/plain; charset=utf-7",
                              body=b"caf+AOk-\r\n"))
    assert record.subject == "Hi é"
    assert record.body_text == "café\r\n"
    assert "bad_encoding" not in record.defects


def test_encoded_word_with_a_language():
    record = parse_mail(plain(b"Subject: =?utf-8*en?Q?caf=C3=A9?= =?US-ASCII*EN?Q?ok?="))
    assert record.subject == "caféok" and "bad_encoding" not in record.defects


@pytest.mark.parametrize("param", [b"charset*=a%00b''x", b"charset*=unicode-escape''%5C8", b"charset*=utf-8''%FF"])
def test_rfc2231_charset_parameters(param):
    record = parse_mail(plain(b"Content-Type: text/plain; " + param, body=b"body text\r\n"))
    assert record.body_text == "body text\r\n"


def test_last_guard_turns_an_unforeseen_exception_into_unparsable(monkeypatch):
    def broken(*_args):
        raise KeyError("surprise")

    monkeypatch.setattr(parse_module, "_body_text", broken)
    with pytest.raises(MailParseError) as caught:
        parse_mail(plain())
    assert caught.value.reason == "unparsable"
    assert "KeyError" in caught.value.message


# --------------------------------------------------------------------------- fuzzing


@_FUZZ
@given(st.binary(max_size=3000))
def test_arbitrary_bytes(raw):
    record_or_rejection(raw)


@_FUZZ
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_behind_a_plausible_header(raw):
    record_or_rejection(plain(b"Subject: fuzz", body=raw))
    record_or_rejection(b"From: a@b\r\n" + raw)


_ODD_CHARSETS = ["idna", "utf-7", "utf-16", "utf-32", "punycode", "rot13", "base64", "hex", "zlib", "uu",
                 "unicode-escape", "raw-unicode-escape", "undefined", "utf-8", "iso-8859-1", "iso-2022-jp",
                 "gb18030", "mbcs", "utf-8*en", "", "x-unknown", "utf-8\x00", "\udcff", "a" * 300]
_CHARSET = st.one_of(st.sampled_from(_ODD_CHARSETS), st.text(max_size=12))
_ENCODED_WORD = st.builds(
    lambda charset, encoding, payload: f"=?{charset}?{encoding}?{payload}?=".encode("utf-8", "surrogateescape"),
    _CHARSET, st.sampled_from(["Q", "B", "q", "b", "X", ""]),
    st.text(alphabet="ABCDEFabcdef0123456789+/=_-.xn?\\ ", max_size=24))
_PIECE = st.one_of(
    _ENCODED_WORD,
    st.binary(max_size=24),
    st.sampled_from([b"\r\n ", b"\r\n\t", b"\r", b"\n", b"\x00", b"\xff", b";", b'"', b"<", b">", b",", b"(", b")",
                     b"<a@b>", b"a@b", b"<<>>", b"\\", b"=?", b"?=", b"Bcc: v@x", b"\r\nBcc: v@x", b"%00", b"''"]),
)
_VALUE = st.lists(_PIECE, max_size=7).map(b" ".join)
_FIELD = st.sampled_from([b"From", b"To", b"Cc", b"Bcc", b"Reply-To", b"Subject", b"Date", b"Message-ID",
                          b"In-Reply-To", b"References", b"Thread-Index", b"Thread-Topic", b"Content-Type",
                          b"Content-Transfer-Encoding", b"Content-Disposition", b"MIME-Version", b"Auto-Submitted",
                          b"Precedence", b"X-Threadline-Ref", b"X-\x00", b"Received"])
_CONTENT_TYPE = st.builds(
    lambda kind, params: kind + b"".join(b"; " + param for param in params),
    st.sampled_from([b"text/plain", b"text/html", b"multipart/mixed", b"multipart/alternative", b"multipart/report",
                     b"message/rfc822", b"application/octet-stream", b"multipart/", b"/", b""]),
    st.lists(st.one_of(
        st.builds(lambda c: b"charset=" + c.encode("utf-8", "surrogateescape"), _CHARSET),
        st.builds(lambda c: b"charset*=" + c.encode("utf-8", "surrogateescape") + b"''x", _CHARSET),
        st.sampled_from([b"boundary=B", b'boundary="B"', b"boundary=", b'boundary=""', b"report-type=delivery-status",
                         b"report-type*=utf-8''delivery-status", b"boundary*=utf-8''B", b"name*0*=x", b"="]),
    ), max_size=4),
)


@_FUZZ
@given(st.lists(st.tuples(_FIELD, _VALUE), min_size=1, max_size=10), st.binary(max_size=400))
def test_headers_with_encoded_words_and_odd_bytes(fields, body):
    header = b"".join(name + b": " + value + b"\r\n" for name, value in fields)
    record_or_rejection(header + b"\r\n" + body)
    record_or_rejection(plain(*(name + b": " + value for name, value in fields), body=body))


_HTML_PIECE = st.one_of(st.sampled_from([b"<p>", b"</p>", b"<x", b"</", b"<!--", b"-->", b"<script>", b"</script>",
                                         b"<style", b"<br/>", b"&amp;", b"&#xD800;", b"&#99999999;", b"<a href=\"",
                                         b"'>", b"<?", b"<!", b">", b"<head>", b"</head>", b"\xff\xfe"]),
                        st.text(max_size=20).map(str.encode))
_PART = st.builds(
    lambda content_type, encoding, payload: (b"Content-Type: " + content_type + b"\r\nContent-Transfer-Encoding: "
                                             + encoding + b"\r\n\r\n" + payload),
    _CONTENT_TYPE,
    st.sampled_from([b"base64", b"quoted-printable", b"x-uuencode", b"7bit", b"8bit", b"binary", b"x-what"]),
    st.one_of(st.lists(_HTML_PIECE, max_size=20).map(b"".join), st.binary(max_size=200),
              st.binary(max_size=200).map(base64.encodebytes)),
)


@_FUZZ
@given(_CONTENT_TYPE, st.lists(st.tuples(st.sampled_from([b"--B", b"--B--", b"--", b"--b", b""]), _PART), max_size=6))
def test_mime_bodies_with_odd_parts(top_type, parts):
    body = b"".join(delimiter + b"\r\n" + part + b"\r\n" for delimiter, part in parts)
    record_or_rejection(plain(b"Content-Type: " + top_type, body=body))


@_FUZZ
@given(st.lists(_HTML_PIECE, max_size=60).map(b"".join))
def test_html_bodies(markup):
    record = record_or_rejection(plain(b"Content-Type: text/html; charset=utf-8", body=markup))
    assert record is not None
    assert record.body_text == html_to_text(markup.decode("utf-8", "replace"))


# --------------------------------------------------------------------------- hostile categories

_PER_CATEGORY = 6
_MAILS = list(hostile_mails(_PER_CATEGORY * len(CATEGORIES), seed=12))


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_hostile_category_parses_or_is_rejected(category):
    mails = [raw for name, raw in _MAILS if name == category]
    assert len(mails) == _PER_CATEGORY
    for raw in mails:
        record_or_rejection(raw)
        # Past the header limit, where the 1 MB lines and 100k references are parsed too.
        record_or_rejection(raw, max_header_bytes=len(raw) + 1)


def _records(category: str, **options) -> list[MailRecord | None]:
    return [record_or_rejection(raw, **options) for name, raw in _MAILS if name == category]


def test_hostile_expectations_per_category():
    assert all(record is None for record in _records("empty"))
    assert all(record is not None for record in _records("odd_charsets"))
    idna = [parse_mail(raw) for name, raw in _MAILS if name == "odd_charsets" and b"Subject: =?idna?Q?xn--?=\r" in raw]
    assert idna and all(record.subject == "xn--" and "bad_encoding" in record.defects for record in idna)
    deep = _records("deep_nesting")
    assert all(record is not None and "mime_too_deep" in record.defects for record in deep)
    assert all(record.message_id.startswith("<deep-") for record in deep)
    assert all(record is None for record in _records("many_references"))  # over the header limit
    references = _records("many_references", max_header_bytes=50 * 2**20)
    assert all(record is not None and len(record.references) == 100_000 for record in references)
    assert all(record is not None for record in _records("message_id_trouble"))


def test_hostile_mails_are_deterministic_and_cover_every_category():
    first = list(hostile_mails(len(CATEGORIES), seed=5))
    assert [category for category, _ in first] == list(CATEGORIES)
    assert first == list(hostile_mails(len(CATEGORIES), seed=5))
    assert first != list(hostile_mails(len(CATEGORIES), seed=6))


# --------------------------------------------------------------------------- nesting


def _nested(depth: int, leaf: bytes = b"deep text\r\n") -> bytes:
    opening = b"".join(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1) for i in range(depth))
    closing = b"".join(b"--b%d--\r\n" % i for i in range(depth, -1, -1))
    return plain(b"Content-Type: multipart/mixed; boundary=b0",
                 body=opening + b"--b%d\r\nContent-Type: text/plain\r\n\r\n" % depth + leaf + closing)


def test_moderate_nesting_reaches_the_text():
    record = parse_mail(_nested(30))
    assert record.body_text.strip() == "deep text"
    assert record.defects == ()


@pytest.mark.parametrize("depth", [65, 1_000, 5_000])
def test_deep_nesting_keeps_the_header(depth):
    record = parse_mail(_nested(depth))
    assert record.message_id == "<h1@example.org>" and record.from_addr == "ann@example.org"
    assert record.body_text == ""
    assert record.defects == ("mime_too_deep",)


def test_many_sibling_multiparts_are_not_deep():
    siblings = b"".join(b"--T\r\nContent-Type: multipart/alternative; boundary=S%d\r\n\r\n"
                        b"--S%d\r\nContent-Type: text/plain\r\n\r\npart %d\r\n--S%d--\r\n" % (i, i, i, i)
                        for i in range(150))
    record = parse_mail(plain(b"Content-Type: multipart/mixed; boundary=T", body=siblings + b"--T--\r\n"))
    assert "mime_too_deep" not in record.defects
    assert record.body_text.strip() == "part 0"


def test_a_big_part_under_moderate_nesting_is_too_costly():
    # 40 open boundaries compared with each of ~200k lines: over the budget, though shallow enough
    record = parse_mail(_nested(40, leaf=b"line\r\n" * 200_000))
    assert "mime_too_deep" in record.defects


def test_forwarded_mail_chain_past_the_recursion_limit():
    chain = b"Content-Type: message/rfc822\r\n\r\n" * 2_000
    record = parse_mail(plain(b"Content-Type: message/rfc822", body=chain + b"From: c@d\r\n\r\ninner\r\n"))
    assert record.message_id == "<h1@example.org>" and "mime_too_deep" in record.defects


# --------------------------------------------------------------------------- size bounds


def test_html_converter_is_fed_at_most_the_cap(monkeypatch):
    seen: list[int] = []

    def spy(markup: str, max_chars: int | None = None) -> str:
        seen.append(len(markup))
        return html_to_text(markup, max_chars)

    monkeypatch.setattr(parse_module, "html_to_text", spy)
    raw = big_mail(10 * 2**20, seed=1, kind="html")
    assert len(raw) >= 10 * 2**20
    record = parse_mail(raw)
    assert seen and seen[0] <= HTML_PART_BYTES
    assert len(record.body_text) == BODY_TEXT_LIMIT
    assert "body_truncated" in record.defects


def test_html_stops_once_the_body_is_full():
    markup = "<p>" + "word " * 100 + "</p>"
    text = html_to_text(markup * 10_000, max_chars=1_000)
    assert len(text) == 1_000 and text == html_to_text(markup * 10_000)[:1_000]


def test_attachment_mail_of_40_mb_is_not_decoded(monkeypatch):
    decoded: list[str] = []
    real = parse_module._decoded_payload

    def spy(part, limit):
        decoded.append(part.get_content_type())
        return real(part, limit)

    monkeypatch.setattr(parse_module, "_decoded_payload", spy)
    raw = big_mail(40 * 2**20, seed=2, kind="attachment")
    record = parse_mail(raw)
    assert decoded == ["text/plain"]
    assert record.body_text.strip() and "body_truncated" not in record.defects
    assert record.defects == ()


@pytest.mark.parametrize("encoding", ["base64", "quoted-printable", "8bit"])
def test_huge_text_part_is_cut_before_decoding(monkeypatch, encoding):
    text = ("Zürich invoice line %06d is still open, please check.\n" * 200_000) % tuple(range(200_000))
    data = text.encode("utf-8")
    if encoding == "base64":
        payload = base64.encodebytes(data)
    elif encoding == "quoted-printable":
        payload = quopri.encodestring(data)
    else:
        payload = data
    decoded_sizes: list[int] = []
    real = parse_module._decode

    def spy(data, charset, errors, defects):
        decoded_sizes.append(len(data))
        return real(data, charset, errors, defects)

    monkeypatch.setattr(parse_module, "_decode", spy)
    record = parse_mail(plain(b"Content-Type: text/plain; charset=utf-8", b"Content-Transfer-Encoding: " + encoding.encode(),
                              body=payload))
    assert decoded_sizes[-1] <= TEXT_PART_BYTES
    assert record.body_text == text[:BODY_TEXT_LIMIT]
    assert "body_truncated" in record.defects and "broken_mime" not in record.defects


def test_cut_never_leaves_half_a_character():
    text = "a" + "\U0001F600" * (TEXT_PART_BYTES // 4)  # 4 bytes each, one byte off: the cut splits one
    record = parse_mail(plain(b"Content-Type: text/plain; charset=utf-8", body=text.encode()))
    assert "\ufffd" not in record.body_text and "body_truncated" in record.defects


# --------------------------------------------------------------------------- html_to_text


@pytest.mark.parametrize("markup, expected", [
    ("<p>kept</p><x<x<x<x", "\nkept\n"),  # an unfinished tag swallows the rest, as in a browser
    ("<p>kept</p><!-- never closed <p>lost</p>", "\nkept\n"),
    ("a < b and c > d", "a < b and c > d"),
    ('<a title="x > y">link</a> after', "link after"),
    ("<p>x</p><script>if (a<b) {document.write('</p>')}</script>y", "\nx\ny"),
    ("<br/>one<BR>two</>three</ 3>four", "\n\none\ntwothreefour"),
    ("<head><title>t</title></head>&amp;&lt;&#233;", "&<é"),
    ("<a href='", ""),
])
def test_html_to_text_edges(markup, expected):
    assert html_to_text(markup) == expected


def test_big_mail_sizes_and_ids():
    for kind in ("html", "attachment"):
        raw = big_mail(2**20, seed=3, kind=kind)
        assert 0.97 * 2**20 <= len(raw) <= 1.03 * 2**20
        assert raw == big_mail(2**20, seed=3, kind=kind)
        ids = {parse_mail(big_mail(2**20, seed=seed, kind=kind)).message_id for seed in (3, 4)}
        assert len(ids) == 2 and "missing_message_id" not in parse_mail(raw).defects
    with pytest.raises(ValueError):
        big_mail(1000, seed=1, kind="pdf")


# --------------------------------------------------------------------------- fingerprints


@pytest.mark.parametrize("line, who", [
    ("On Tue, Jan 5, 2021 at 10:00 AM Ann Smith <ann@x.org> wrote:", "2021 at 10 00 am ann smith ann@x.org"),
    ('Le mar. 5 janv. 2021, "Smith, Ann" <ann@x.org> a écrit :', "smith ann ann@x.org"),
    ("on  , , <ann@x.org>wrote:", "ann@x.org"),
    ("Ann, Bob wrote:", None),
])
def test_attribution_lines(line, who):
    _, _, attribution = fingerprint_body(f"{line}\n> a quoted line that is long enough to count\n")
    assert attribution == (who or "")


@pytest.mark.parametrize("line", ["Am" + " " * 500, "am " + " " * 120 + "x " * 80 + "wrote:", "on " + ", " * 300 + "wrote:",
                                  "From:" + " " * 5000 + "x" * 200])
def test_attribution_search_survives_lines_that_backtracked(line):
    body = "-----Original Message-----\n" + (line + "\n") * (BODY_TEXT_LIMIT // (len(line) + 1))
    own, quoted, attribution = fingerprint_body(body)
    # One line repeated: its shingles repeat too, and each is kept once, within the bound.
    assert attribution == "" and len(quoted) == len(set(quoted)) <= MAX_SHINGLES
    record = parse_mail(plain(body=body.encode()))
    assert record.attribution == ""


def test_fingerprint_reads_only_the_first_64k():
    late = "this substantial line comes after the cut and is not hashed"
    body = "ok\n" * (MAX_TEXT_CHARS // 3) + late + "\n"
    own, _, _ = fingerprint_body(body)
    late_shingles = set(fingerprint_body(late + "\n")[0])
    assert late_shingles and not late_shingles & set(own)
