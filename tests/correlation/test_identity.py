"""Duplicate or collision: a known Message-ID with the same content is the same mail again; with
other content it is another mail, tracked under a derived id (issue 12, item 7)."""

from __future__ import annotations

import base64
import re
from datetime import datetime, timedelta, timezone

import pytest

from pipeline.correlation.engine import Correlator
from pipeline.correlation.explain import describe
from pipeline.correlation.identity import COLLISION_FLAG, content_digest, derived_id
from pipeline.correlation.methods.base import Method
from pipeline.correlation.model import IndexedMail
from pipeline.mail.parse import parse_mail
from pipeline.settings import CorrelationSettings

NOW = datetime(2029, 1, 1, tzinfo=timezone.utc)
SHARED_ID = "<known-1@customer.example>"
MSG_ID_SHAPE = re.compile(r"^<[^<>\s@]+@[^<>\s@]+>$")


def raw(body: str = "Please send the signed contract by Friday.\n", *, message_id: str = SHARED_ID,
        subject: str = "Contract", sender: str = "ann@customer.example", date: str = "Mon, 02 Mar 2026 09:00:00 +0000",
        received: str = "from mx1.ours.example by relay.ours.example; Mon, 02 Mar 2026 09:00:05 +0000",
        extra: str = "", encoding: str = "7bit", newline: str = "\n") -> bytes:
    if encoding == "base64":
        payload = base64.encodebytes(body.encode()).decode()
    else:
        payload = body
    lines = [f"Received: {received}", f"From: Ann <{sender}>", "To: desk@ours.example", f"Subject: {subject}",
             f"Date: {date}", f"Message-ID: {message_id}", "MIME-Version: 1.0",
             "Content-Type: text/plain; charset=utf-8", f"Content-Transfer-Encoding: {encoding}"]
    if extra:
        lines.append(extra)
    text = "\n".join(lines) + "\n\n" + payload
    return text.replace("\n", newline).encode()


def parsed(data: bytes, **envelope):
    return parse_mail(data, **envelope)


def engine() -> Correlator:
    return Correlator(CorrelationSettings(), clock=lambda: NOW)


def test_137_different_mails_with_one_message_id_are_all_tracked():
    correlator = engine()
    results = [correlator.correlate(parsed(raw(f"Mail number {n}: a different text.\n"))) for n in range(137)]
    first, collisions = results[0], results[1:]
    assert (first.message_id, first.untracked_reason, first.flags) == (SHARED_ID, None, ())
    assert COLLISION_FLAG not in first.evidence
    ids = {c.message_id for c in collisions}
    assert len(ids) == 136 and SHARED_ID not in ids
    for result in collisions:
        assert result.untracked_reason is None and result.method is not Method.SKIPPED
        assert result.flags == (COLLISION_FLAG,)
        assert result.evidence[COLLISION_FLAG]["message_id"] == SHARED_ID
        assert MSG_ID_SHAPE.match(result.message_id), result.message_id
        assert result.message_id.startswith("<known-1+collision-") and result.message_id.endswith("@customer.example>")
        assert result.message_id in correlator.index
    assert len({c.event_id for c in results}) == 137  # none replaces another downstream
    assert correlator.index.get(SHARED_ID).content_digest == content_digest(parsed(raw("Mail number 0: a different text.\n")))


def test_the_same_bytes_twice_are_a_duplicate():
    correlator = engine()
    first = correlator.correlate(parsed(raw()))
    again = correlator.correlate(parsed(raw()))
    assert (again.message_id, again.untracked_reason, again.flags) == (SHARED_ID, "duplicate", ())
    assert again.evidence == {"duplicate_of": SHARED_ID}
    assert again.conversation_id == first.conversation_id
    assert len(correlator.index) == 1


@pytest.mark.parametrize("copy, envelope", [
    (dict(received="from mx7.elsewhere.example by imap.ours.example; Tue, 03 Mar 2026 10:00:00 +0000",
          extra="Delivered-To: sales@ours.example"), dict(mailbox="sales")),
    (dict(newline="\r\n"), {}),  # the SMTP relay's CRLF copy of an mbox mail
    (dict(encoding="base64"), dict(mailbox="archive")),  # re-encoded by another transport
    ({}, dict(direction="out", mailbox="sent")),  # our outbound copy after the inbound one
])
def test_the_same_mail_through_another_path_is_a_duplicate(copy, envelope):
    correlator = engine()
    correlator.correlate(parsed(raw(), mailbox="desk"))
    again = correlator.correlate(parsed(raw(**copy), **envelope))
    assert (again.message_id, again.untracked_reason, again.flags) == (SHARED_ID, "duplicate", ())


@pytest.mark.parametrize("change", [
    dict(body="Please send the UNSIGNED contract by Friday.\n"),
    dict(subject="Contract (updated)"),
    dict(sender="mallory@attacker.example"),
    dict(date="Mon, 02 Mar 2026 09:00:01 +0000"),
])
def test_a_change_of_body_subject_sender_or_date_is_another_mail(change):
    correlator = engine()
    correlator.correlate(parsed(raw()))
    other = correlator.correlate(parsed(raw(**change)))
    assert other.untracked_reason is None and other.flags == (COLLISION_FLAG,)
    assert other.message_id != SHARED_ID


def test_derived_ids_are_stable_across_a_replay_and_a_redelivery_is_a_duplicate():
    live_engine = engine()
    live = [live_engine.correlate(parsed(raw(f"Version {n} of the text.\n"))) for n in range(5)]
    replay_engine = engine()  # a replay: a fresh engine and index, the same input parsed again
    replayed = [replay_engine.correlate(parsed(raw(f"Version {n} of the text.\n"))) for n in range(5)]
    assert [r.message_id for r in live] == [r.message_id for r in replayed]
    assert [r.event_id for r in live] == [r.event_id for r in replayed]
    assert [r.conversation_id for r in live] == [r.conversation_id for r in replayed]
    # The third mail delivered again, to another mailbox: a duplicate of itself, not a fourth id.
    again = live_engine.correlate(parsed(raw("Version 2 of the text.\n"), mailbox="other"))
    assert (again.message_id, again.untracked_reason, again.flags) == (live[2].message_id, "duplicate", ())
    assert again.evidence == {"duplicate_of": live[2].message_id, "original_message_id": SHARED_ID}
    assert len(live_engine.index) == 5


def test_the_derived_id_depends_on_the_content_not_on_arrival_order():
    a, b = parsed(raw("Text A.\n")), parsed(raw("Text B.\n"))
    first_engine, second_engine = engine(), engine()
    first_engine.correlate(parsed(raw("The original.\n")))
    second_engine.correlate(parsed(raw("The original.\n")))
    ab = [first_engine.correlate(m).message_id for m in (a, b)]
    ba = [second_engine.correlate(m).message_id for m in (b, a)]
    assert ab == list(reversed(ba))


def test_an_id_squatted_in_advance_pushes_the_collision_to_the_full_digest():
    real = parsed(raw("The real text.\n"))
    short = derived_id(SHARED_ID, content_digest(real)[:16])
    correlator = engine()
    correlator.correlate(parsed(raw("Attacker's first mail.\n")))
    correlator.correlate(parsed(raw("Attacker's squatter.\n", message_id=short)))
    result = correlator.correlate(real)
    assert result.message_id == derived_id(SHARED_ID, content_digest(real))
    assert result.flags == (COLLISION_FLAG,) and result.untracked_reason is None


def test_replies_naming_the_shared_id_link_to_the_first_mail():
    correlator = engine()
    first = correlator.correlate(parsed(raw("The first mail.\n")))
    correlator.correlate(parsed(raw("Another mail, same id.\n")))
    reply = correlator.correlate(parsed(raw("Thanks!\n", message_id="<r1@ours.example>", subject="Re: Contract",
                                            sender="desk@ours.example", extra=f"In-Reply-To: {SHARED_ID}"),
                                        direction="out"))
    assert (reply.method, reply.parent_message_id, reply.conversation_id) == (Method.IN_REPLY_TO, SHARED_ID, first.conversation_id)


def test_our_mail_coming_back_stays_a_loop_whatever_it_carries():
    correlator = engine()
    correlator.correlate(parsed(raw(sender="desk@ours.example"), direction="out"))
    echo = correlator.correlate(parsed(raw("A list footer was added.\n", sender="desk@ours.example",
                                           subject="[list] Contract")))
    assert (echo.untracked_reason, echo.flags) == ("loop", ())


def test_an_entry_without_a_digest_loads_and_counts_as_the_same_mail():
    correlator = engine()
    correlator.correlate(parsed(raw()))
    stored = correlator.index.get(SHARED_ID).to_dict()
    old = {key: value for key, value in stored.items() if key != "content_digest"}  # written before this change
    entry = IndexedMail.from_dict(old)
    assert entry.content_digest == ""
    upgraded = engine()
    upgraded.index.add(entry)
    again = upgraded.correlate(parsed(raw("Different text.\n")))
    assert (again.untracked_reason, again.flags) == ("duplicate", ())
    assert again.evidence == {"duplicate_of": SHARED_ID, "content_unverified": True}
    assert "caution" in describe(again.to_dict())


def test_an_entry_with_a_field_this_version_dropped_still_loads():
    correlator = engine()
    correlator.correlate(parsed(raw()))
    stored = correlator.index.get(SHARED_ID)
    assert IndexedMail.from_dict({**stored.to_dict(), "xref": "instance=threadline; ref=<x@y>"}) == stored


def test_an_entry_written_before_confidence_existed_loads_as_certain():
    correlator = engine()
    correlator.correlate(parsed(raw()))
    stored = correlator.index.get(SHARED_ID).to_dict()
    old = {key: value for key, value in stored.items() if key != "confidence"}
    upgraded = engine()
    upgraded.index.add(IndexedMail.from_dict(old))
    assert upgraded.correlate(parsed(raw())).confidence == 1.0


def test_explain_says_it_was_a_collision():
    correlator = engine()
    correlator.correlate(parsed(raw()))
    other = correlator.correlate(parsed(raw("Other text.\n")))
    text = describe(other.to_dict())
    assert f"collision:    its Message-ID {SHARED_ID} belongs to another mail" in text
    assert "collision" not in describe(correlator.correlate(parsed(raw("Third.\n", message_id="<x@y>"))).to_dict())


def test_indexed_id_names_the_id_a_mail_is_or_will_be_tracked_under():
    correlator = engine()
    first, other = parsed(raw()), parsed(raw("Other text.\n"))
    assert correlator.indexed_id(first) == SHARED_ID
    correlator.correlate(first)
    assert correlator.indexed_id(first) == SHARED_ID
    expected = derived_id(SHARED_ID, content_digest(other)[:16])
    assert correlator.indexed_id(other) == expected
    assert correlator.correlate(other).message_id == expected
    assert correlator.indexed_id(parsed(raw("Other text.\n"))) == expected


def test_derived_ids_keep_the_message_id_shape():
    assert derived_id("<a.b@host.example>", "0123") == "<a.b+collision-0123@host.example>"
    assert derived_id("<odd@local@host>", "ff") == "<odd@local+collision-ff@host>"
    assert derived_id("<nodomain>", "ff") == "<nodomain+collision-ff@collision.threadline>"
    assert MSG_ID_SHAPE.match(derived_id("<nodomain>", "ff"))


def test_when_a_mail_was_received_is_not_its_content():
    undated = raw(date="").replace(b"Date: \n", b"")
    first = parsed(undated, received_at=NOW)
    later = parsed(undated, received_at=NOW + timedelta(hours=3))
    assert first.date is None
    assert content_digest(first) == content_digest(later)
    correlator = engine()
    correlator.correlate(first)
    assert correlator.correlate(later).untracked_reason == "duplicate"
