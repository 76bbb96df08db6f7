"""People's corrections: each action, the latest wins, a correction outranks every method, and the
index ends the same whether a correction comes before its mail (a replay) or after it (live)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pipeline.correlation.corrections import Action, Correction, CorrectionBook, CorrectionError
from pipeline.correlation.engine import Correlator
from pipeline.correlation.explain import describe
from pipeline.correlation.methods.base import Method
from pipeline.correlation.model import own_conversation_id
from pipeline.mail.record import MailRecord
from pipeline.settings import CorrelationSettings

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def mail(name: str, subject: str, minutes: float, *, replies_to: str | None = None,
         sender: str = "ann@customer.example") -> MailRecord:
    return MailRecord(message_id=f"<{name}@test>", subject=subject, from_addr=sender, to=("desk@ours.example",),
                      cc=("boss@customer.example",), date=T0 + timedelta(minutes=minutes), mailbox="support",
                      in_reply_to=(f"<{replies_to}@test>",) if replies_to else ())


# a <- b <- c in one conversation, x <- y in another (all linked by In-Reply-To).
MAILS = (
    mail("a", "Quarterly numbers", 0),
    mail("b", "Re: Quarterly numbers", 1, replies_to="a"),
    mail("c", "Re: Quarterly numbers", 2, replies_to="b"),
    mail("x", "Printer on fire", 3, sender="bob@other.example"),
    mail("y", "Re: Printer on fire", 4, replies_to="x", sender="bob@other.example"),
)


def correction(action: Action, name: str, other: str | None = None, minutes: float = 60, **fields) -> Correction:
    fields.setdefault("event_id", f"{action.value}-{name}-{minutes}")
    return Correction(tenant="default", action=action, message_id=f"<{name}@test>",
                      other_message_id=f"<{other}@test>" if other else None, author=fields.pop("author", "eve"),
                      reason=fields.pop("reason", "wrong thread"), created_at=T0 + timedelta(minutes=minutes), **fields)


def engine(*corrections: Correction) -> Correlator:
    return Correlator(CorrelationSettings(), clock=lambda: T0, corrections=CorrectionBook(corrections))


def state(correlator: Correlator) -> dict[str, tuple[str, str | None]]:
    return {entry.message_id: (entry.conversation_id, entry.parent_message_id) for entry in correlator.index.entries()}


def conversations(correlator: Correlator) -> set[frozenset[str]]:
    """The conversations as sets of mail names."""
    by_id: dict[str, set[str]] = {}
    for entry in correlator.index.entries():
        by_id.setdefault(entry.conversation_id, set()).add(entry.message_id.strip("<>").split("@")[0])
    return {frozenset(names) for names in by_id.values()}


def corrected_first(*corrections: Correction) -> tuple[Correlator, dict]:
    """As a replay that read the corrections before the mail: the correlator applies them as it goes."""
    correlator, decisions = engine(*corrections), {}
    for item in MAILS:
        decisions[item.message_id] = correlator.correlate(item)
        for corrected in correlator.corrections_after(item.message_id):
            decisions[corrected.message_id] = corrected
    return correlator, decisions


def corrected_after(*corrections: Correction) -> tuple[Correlator, dict]:
    """As live: the mail is correlated, then the corrections arrive one by one."""
    correlator, decisions = engine(), {}
    for item in MAILS:
        decisions[item.message_id] = correlator.correlate(item)
    for one in corrections:
        if correlator.corrections.add(one):
            for corrected in correlator.correct(one):
                decisions[corrected.message_id] = corrected
    return correlator, decisions


def test_without_corrections_the_headers_make_two_conversations():
    correlator, _ = corrected_first()
    assert conversations(correlator) == {frozenset("abc"), frozenset("xy")}


@pytest.mark.parametrize("apply", [corrected_first, corrected_after], ids=["before the mail", "after the mail"])
@pytest.mark.parametrize("action, args, expected", [
    # link x b: x's parent is b, and y (below x) follows it into b's conversation.
    (Action.LINK, ("x", "b"), {frozenset("abcxy")}),
    # unlink b: b has no parent; c, linked to b, follows b into b's own conversation.
    (Action.UNLINK, ("b",), {frozenset("a"), frozenset("bc"), frozenset("xy")}),
    # split c: c (and the mail below it, none) leaves a's conversation.
    (Action.SPLIT, ("c",), {frozenset("ab"), frozenset("c"), frozenset("xy")}),
    # merge a y: every mail of y's conversation joins a's conversation.
    (Action.MERGE, ("y", "a"), {frozenset("abcxy")}),
], ids=["link", "unlink", "split", "merge"])
def test_each_action_gives_the_same_conversations_before_or_after_the_mail(apply, action, args, expected):
    correlator, decisions = apply(correction(action, *args))
    assert conversations(correlator) == expected
    # What a consumer keeps (the newest decision per mail) is what the index holds.
    assert {d.message_id: (d.conversation_id, d.parent_message_id) for d in decisions.values()} == state(correlator)


@pytest.mark.parametrize("action, args", [(Action.LINK, ("x", "b")), (Action.UNLINK, ("b",)),
                                          (Action.SPLIT, ("b",)), (Action.MERGE, ("y", "a"))])
def test_live_and_replay_end_in_the_same_index(action, args):
    live, _ = corrected_after(correction(action, *args))
    replay, _ = corrected_first(correction(action, *args))
    assert state(live) == state(replay)


def test_a_correction_outranks_in_reply_to_and_says_who_made_it():
    _, decisions = corrected_first(correction(Action.UNLINK, "b", author="eve@ours.example", reason="new request",
                                              event_id="corr-1"))
    b = decisions["<b@test>"]
    assert (b.method, b.method_name, b.confidence, b.parent_message_id) == (Method.CORRECTION, "Correction", 1.0, None)
    assert b.conversation_id == own_conversation_id("default", "<b@test>")
    assert b.evidence["correction"]["event_id"] == "corr-1"
    text = describe(b.to_dict())
    assert "corrected by eve@ours.example" in text and "new request" in text and "corr-1" in text


def test_a_corrected_link_is_a_certain_reply_with_one_candidate():
    _, decisions = corrected_first(correction(Action.LINK, "x", "c"))
    x = decisions["<x@test>"]
    assert (x.method, x.confidence, x.parent_message_id, x.mail_type, x.candidate_count) == (
        Method.CORRECTION, 1.0, "<c@test>", "reply", 1)


def test_the_mail_that_follows_a_correction_keeps_its_method_and_says_whom_it_follows():
    _, decisions = corrected_after(correction(Action.LINK, "x", "b"))
    y = decisions["<y@test>"]
    assert (y.method, y.parent_message_id, y.evidence["follows"]) == (Method.IN_REPLY_TO, "<x@test>", "<x@test>")
    assert (y.subject, y.to, y.cc) == ("Re: Printer on fire", ("desk@ours.example",), ("boss@customer.example",))
    assert "moved with <x@test>" in describe(y.to_dict())


def test_the_latest_correction_of_a_mail_wins_in_any_order():
    link = correction(Action.LINK, "b", "y", minutes=60)
    unlink = correction(Action.UNLINK, "b", minutes=90)
    for order in ((link, unlink), (unlink, link)):
        live, _ = corrected_after(*order)
        replay, _ = corrected_first(*order)
        assert conversations(live) == conversations(replay) == {frozenset("a"), frozenset("bc"), frozenset("xy")}
    book = CorrectionBook([unlink, link])
    assert book.of("<b@test>") is unlink and len(book) == 1
    assert not book.add(link)


def test_applying_a_correction_again_changes_nothing():
    split = correction(Action.SPLIT, "b")
    correlator, _ = corrected_after(split)
    assert correlator.correct(split) == []


def test_a_link_waits_for_its_parent_and_a_link_below_itself_is_refused():
    # The parent arrives after the mail: the link applies once the parent is indexed.
    correlator = engine(correction(Action.LINK, "a", "y"))
    for item in MAILS:
        correlator.correlate(item)
        correlator.corrections_after(item.message_id)
    assert conversations(correlator) == {frozenset("abcxy")}
    # a cannot become the child of c, which descends from it.
    correlator, _ = corrected_after(correction(Action.LINK, "a", "c"))
    assert conversations(correlator) == {frozenset("abc"), frozenset("xy")}


def test_a_correction_naming_a_mail_twice_or_missing_one_is_refused():
    with pytest.raises(CorrectionError):
        correction(Action.LINK, "a")
    with pytest.raises(CorrectionError):
        correction(Action.UNLINK, "a", "b")
    with pytest.raises(CorrectionError):
        correction(Action.MERGE, "a", "a")


def test_a_correction_round_trips_through_its_record_shape():
    one = correction(Action.MERGE, "y", "a")
    record = {"event_id": one.event_id, "tenant": "default", "action": "MERGE", "message_id": "<y@test>",
              "other_message_id": "<a@test>", "author": "eve", "reason": "wrong thread",
              "created_at": one.created_at.isoformat()}
    assert Correction.from_record(record) == one
