"""Marking outbound mail: which mail, pixel, link rewriting, what is left alone (the `mark` command:
tests/cli/test_campaigns.py)."""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage

import pytest

from pipeline.settings import TrackingSettings
from pipeline.tracking.mark import MarkError, mark_message
from pipeline.tracking.tokens import Keyring, verify_token

NOW = 1_772_442_000
SETTINGS = TrackingSettings(base_url="https://t.example/track", keys={"k1": "a-test-secret-0123456789-abcdefghij"},
                            current_key_id="k1")
KEYS = Keyring.from_settings(SETTINGS)
CLICK = re.compile(r"https://t\.example/track/c/([A-Za-z0-9_-]+)")
PIXEL = re.compile(r'<img src="https://t\.example/track/o/([A-Za-z0-9_-]+)\.gif"[^>]*>')

HTML = """<html><head><link rel="stylesheet" href="https://cdn.example/s.css"></head><body>
<p>Hello <a href="https://www.example.com/offers?id=42&amp;utm=mail">our offers</a>,
<a href='mailto:desk@ours.example'>write</a>, <a href="#top">top</a>, <a href="/relative">rel</a>,
<a href="tel:+4930123">call</a>, <a data-href="https://x.example/" title="a > b" class=btn href=HTTP://plain.example/p>p</a>,
<a href="https://t.example/track/c/ALREADY">ours</a> <img src="https://cdn.example/logo.png"></p>
</body></html>
"""
TEXT = """Hello,

our offers: https://www.example.com/offers?id=42&utm=mail.
Docs (https://en.wikipedia.org/wiki/Mail_(disambiguation)) and <https://b.example/x>, write desk@ours.example
"""


def build(*, subject="Spring offers", to="Ann <ann@customer.example>", html_body: str | None = HTML,
          text_body: str | None = TEXT, message_id="<m1@ours.example>", **headers) -> bytes:
    message = EmailMessage()
    message["From"] = "Desk <desk@ours.example>"
    message["To"] = to
    message["Subject"] = subject
    if message_id:
        message["Message-ID"] = message_id
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    if text_body is not None:
        message.set_content(text_body)
        if html_body is not None:
            message.add_alternative(html_body, subtype="html")
    else:
        message.set_content(html_body, subtype="html")
    return message.as_bytes(policy=email.policy.SMTP)


def parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def bodies(data: bytes) -> dict[str, str]:
    found = {}
    for part in parse(data).walk():
        if part.get_content_type() in ("text/plain", "text/html"):
            found[part.get_content_subtype()] = part.get_content().replace("\r\n", "\n")
    return found


def mark(raw: bytes, **kwargs):
    kwargs.setdefault("now", NOW)
    return mark_message(raw, SETTINGS, **kwargs)


def click_targets(text: str) -> list[str]:
    return [verify_token(token, KEYS, expect_kind="click").link_url for token in CLICK.findall(text)
            if token != "ALREADY"]  # the fixture's link that already points at the tracking service


# --- which mail ------------------------------------------------------------------------------

def test_ordinary_mail_is_returned_byte_for_byte():
    raw = build(subject="#tracking number 5 (not the tag)")
    result = mark(raw)
    assert result.data == raw
    assert not result.summary.tracked and result.summary.links_rewritten == 0
    assert "not tracked" in result.summary.format()


def test_campaign_mail_is_always_tracked():
    result = mark(build(), campaign_id="spring-26", tenant="acme")
    assert result.summary.tracked and result.summary.reasons == ("campaign",)
    [pixel] = PIXEL.findall(bodies(result.data)["html"])
    payload = verify_token(pixel, KEYS, expect_kind="open")
    assert (payload.tenant, payload.message_id, payload.recipient, payload.campaign_id, payload.issued_at) == \
        ("acme", "<m1@ours.example>", "ann@customer.example", "spring-26", NOW)


@pytest.mark.parametrize("subject, cleaned", [
    ("#track Spring offers", "Spring offers"),
    ("Spring offers #track", "Spring offers"),
    ("Spring #TRACK offers", "Spring offers"),
])
def test_subject_tag_opts_in_and_is_removed(subject, cleaned):
    result = mark(build(subject=subject))
    assert result.summary.reasons == ("subject_tag",)
    assert str(parse(result.data)["Subject"]) == cleaned
    assert b"#track" not in result.data.lower()


def test_body_placeholder_opts_in_and_is_removed_from_every_part():
    raw = build(text_body=TEXT + "%track%\n", html_body=HTML.replace("<body>", "<body>%TRACK%"))
    result = mark(raw)
    assert result.summary.reasons == ("body_placeholder",)
    found = bodies(result.data)
    assert "%track%" not in found["plain"].lower() and "%track%" not in found["html"].lower()
    assert str(parse(result.data)["Subject"]) == "Spring offers"


def test_all_reasons_are_reported():
    result = mark(build(subject="x #track", text_body="%track% hi\n", html_body=None), campaign_id="c")
    assert result.summary.reasons == ("campaign", "subject_tag", "body_placeholder")


# --- HTML ------------------------------------------------------------------------------------

def test_html_links_are_rewritten_to_signed_click_urls():
    result = mark(build(), campaign_id="c")
    body = bodies(result.data)["html"]
    assert click_targets(body) == ["https://www.example.com/offers?id=42&utm=mail",  # &amp; unescaped
                                   "HTTP://plain.example/p"]
    for kept in ("https://cdn.example/s.css", "mailto:desk@ours.example", 'href="#top"', 'href="/relative"',
                 "tel:+4930123", 'data-href="https://x.example/"', "https://t.example/track/c/ALREADY",
                 "https://cdn.example/logo.png", 'title="a > b"'):
        assert kept in body, kept


def test_pixel_goes_before_the_end_of_body_once():
    body = bodies(mark(build(), campaign_id="c").data)["html"]
    assert len(PIXEL.findall(body)) == 1
    assert re.search(r'width="1" height="1"[^>]*/>\s*</body>', body)


def test_pixel_is_appended_without_a_body_tag():
    body = bodies(mark(build(html_body="<p>Hi <a href='https://a.example/'>a</a></p>", text_body=None),
                       campaign_id="c").data)["html"]
    assert body.rstrip().endswith("/>") and len(PIXEL.findall(body)) == 1
    assert click_targets(body) == ["https://a.example/"]


def test_marking_twice_changes_nothing_more():
    once = mark(build(), campaign_id="c")
    twice = mark(once.data, campaign_id="c")
    assert (twice.summary.links_rewritten, twice.summary.pixels_added) == (0, 0)
    assert bodies(twice.data) == bodies(once.data)


def test_vml_buttons_for_outlook_are_rewritten():
    vml = '<!--[if mso]><v:roundrect href="https://a.example/buy" arcsize="10%"></v:roundrect><![endif]--></body>'
    body = bodies(mark(build(html_body="<body>" + vml, text_body=None), campaign_id="c").data)["html"]
    assert click_targets(body) == ["https://a.example/buy"]


# --- text ------------------------------------------------------------------------------------

def test_text_urls_are_rewritten_without_a_pixel():
    result = mark(build(html_body=None), campaign_id="c")
    text = bodies(result.data)["plain"]
    assert click_targets(text) == ["https://www.example.com/offers?id=42&utm=mail",
                                   "https://en.wikipedia.org/wiki/Mail_(disambiguation)",
                                   "https://b.example/x"]
    assert ".\nDocs (https://t.example" in text and ") and <https://t.example" in text and ">, write" in text
    assert "/o/" not in text and not result.summary.pixel_added
    assert "no pixel" in result.summary.format()


def test_summary_counts_occurrences_and_distinct_links():
    summary = mark(build(), campaign_id="c").summary
    assert summary.pixels_added == 1
    assert summary.links == ("https://www.example.com/offers?id=42&utm=mail",  # text part first, then HTML
                             "https://en.wikipedia.org/wiki/Mail_(disambiguation)", "https://b.example/x",
                             "HTTP://plain.example/p")
    assert summary.links_rewritten == 5  # the offers link is in both parts
    assert "pixel added, 5 links rewritten (4 distinct)" in summary.format()


# --- what is left alone ----------------------------------------------------------------------

def test_attachments_and_attached_mail_are_not_touched():
    message = parse(build(html_body=None))
    message.add_attachment("see https://inside-attachment.example/\n", filename="notes.txt")
    inner = parse(build(subject="inner", html_body='<a href="https://inner.example/">x</a>', text_body=None))
    message.add_attachment(inner)
    result = mark(message.as_bytes(policy=email.policy.SMTP), campaign_id="c")
    assert b"https://inside-attachment.example/" in result.data
    assert b"https://inner.example/" in result.data
    assert result.summary.links_rewritten == 3 and result.summary.pixels_added == 0
    assert [p.get_filename() for p in parse(result.data).iter_attachments()][0] == "notes.txt"


def test_charset_and_crlf_are_kept():
    raw = ("From: desk@ours.example\r\nTo: ann@customer.example\r\nSubject: =?iso-8859-1?q?Gr=FC=DFe?= #track\r\n"
           "Message-ID: <l1@ours.example>\r\nMIME-Version: 1.0\r\n"
           "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
           "Gr\xfc\xdfe, https://a.example/\xe4\r\n").encode("latin-1")
    result = mark(raw)
    assert b"\r\n" in result.data and b"\n" not in result.data.replace(b"\r\n", b"")
    message = parse(result.data)
    assert message.get_content_charset() == "iso-8859-1"
    assert str(message["Subject"]) == "Gr\xfc\xdfe"
    assert message.get_content().startswith("Gr\xfc\xdfe, https://t.example/track/c/")
    assert click_targets(message.get_content()) == ["https://a.example/\xe4"]


def test_undecodable_part_is_left_alone_and_counted():
    raw = (b"From: desk@ours.example\nTo: ann@customer.example\nSubject: x\nMessage-ID: <u@ours.example>\n"
           b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
           b"Content-Type: text/plain; charset=no-such-charset\n\nhttps://a.example/\n--b\n"
           b"Content-Type: text/html\n\n<a href=\"https://b.example/\">b</a></body>\n--b--\n")
    result = mark(raw, campaign_id="c")
    assert result.summary.parts_skipped == 1 and result.summary.links == ("https://b.example/",)
    assert b"https://a.example/" in result.data
    assert "1 undecodable parts left alone" in result.summary.format()


# --- recipient and message id ----------------------------------------------------------------

def test_several_recipients_need_one_copy_each():
    raw = build(to="ann@customer.example, bob@customer.example")
    with pytest.raises(MarkError, match="2 recipients"):
        mark(raw, campaign_id="c")
    result = mark(raw, campaign_id="c", recipient="bob@customer.example")
    [pixel] = PIXEL.findall(bodies(result.data)["html"])
    assert verify_token(pixel, KEYS).recipient == "bob@customer.example"


def test_the_only_recipient_may_be_in_cc_and_duplicates_count_once():
    raw = build(to="undisclosed-recipients:;", Cc="Ann <Ann@Customer.example>, ann@customer.example")
    assert mark(raw, campaign_id="c").summary.recipient == "Ann@Customer.example"


def test_missing_message_id_is_added():
    result = mark(build(message_id=None), campaign_id="c")
    message_id = str(parse(result.data)["Message-ID"])
    assert message_id.endswith("@ours.example>") and result.summary.message_id == message_id
    assert result.summary.message_id_added and "Message-ID added" in result.summary.format()
    [pixel] = PIXEL.findall(bodies(result.data)["html"])
    assert verify_token(pixel, KEYS).message_id == message_id
