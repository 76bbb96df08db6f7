"""SmartMatching's evidence strategy: evidence weighted by its rarity in the tenant's traffic, quotes
matched by shingles, version tags, confidence; and the floor for mail naming unknown parents."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pipeline.correlation.engine import Correlator
from pipeline.correlation.explain import describe
from pipeline.correlation.methods.base import Method
from pipeline.correlation.methods.smart_matching import RARITY_PRIOR_MAILS, Evidence, rarity
from pipeline.mail.content import fingerprint_body
from pipeline.mail.record import MailRecord
from pipeline.settings import CorrelationSettings

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
NOW = T0 + timedelta(days=1000)

QUESTION = ("Our nightly export to the warehouse stopped after the upgrade to version nine, and the\n"
            "scheduler log only shows that the connection to the staging database timed out twice.\n")
TRAILER = "Reviewed-by: Release Team Member <release@vendor.example>\n"


def mail(message_id: str, subject: str, *, minutes: float = 0, sender: str = "ann@customer.example",
         to: tuple[str, ...] = ("users@list.example",), body: str = "", **fields) -> MailRecord:
    own, quoted, attribution = fingerprint_body(body)
    return MailRecord(message_id=f"<{message_id}@test>", subject=subject, from_addr=sender, to=to,
                      date=T0 + timedelta(minutes=minutes), own_shingles=own, quoted_shingles=quoted,
                      attribution=attribution, **fields)


def quote(text: str) -> str:
    return "".join(f"> {line}\n" for line in text.splitlines())


def engine(**overrides) -> Correlator:
    return Correlator(CorrelationSettings(**overrides), clock=lambda: NOW)


def test_rarity_falls_from_one_to_zero_with_the_share_of_mails_having_the_key():
    assert rarity(1, 10_000) == 1.0
    assert rarity(10_000, 10_000) == 0.0
    assert 0.0 < rarity(100, 10_000) < rarity(10, 10_000) < 1.0
    # A fresh index measures against RARITY_PRIOR_MAILS, so a word of two mails still weighs.
    assert rarity(2, 2) == rarity(2, RARITY_PRIOR_MAILS) > 0.8


def test_confidence_rises_with_each_kind_of_evidence():
    base = Evidence(quoted=0.0, quoted_shingles=0, quoted_share=0.0, subject=0.5, same_subject=False,
                    attributed=False, reply_prefix=True, tags_differ=False, addresses=0.0, hours_apart=5.0)
    stronger = [
        Evidence(**{**_fields(base), "quoted": 3.0, "quoted_shingles": 3, "quoted_share": 0.5}),
        Evidence(**{**_fields(base), "subject": 0.9}),
        Evidence(**{**_fields(base), "same_subject": True}),
        Evidence(**{**_fields(base), "attributed": True}),
        Evidence(**{**_fields(base), "addresses": 1.5}),
        Evidence(**{**_fields(base), "hours_apart": 0.1}),
    ]
    assert all(0.0 < base.confidence() < other.confidence() < 1.0 for other in stronger)
    assert Evidence(**{**_fields(base), "tags_differ": True}).confidence() < base.confidence()


def _fields(evidence: Evidence) -> dict:
    return {name: getattr(evidence, name) for name in Evidence.__slots__}


def test_a_quoted_passage_links_a_reply_whose_subject_changed_and_was_rewrapped():
    correlator = engine()
    correlator.correlate(mail("q", "Export stopped after upgrade", body=QUESTION))
    rewrapped = " ".join(QUESTION.split())
    lines = [rewrapped[i:i + 50] for i in range(0, len(rewrapped), 50)]  # another mailer's line breaks
    reply = correlator.correlate(mail("r", "Re: Export stopped after upgrade (staging db)", minutes=30,
                                      sender="bob@vendor.example", body="Check the timeout.\n" + quote("\n".join(lines))))
    assert (reply.method, reply.parent_message_id) == (Method.SMART_MATCHING, "<q@test>")
    assert reply.evidence["quoted_shingles"] >= 3 and reply.confidence >= 0.9


def test_a_quote_of_a_passage_many_mails_share_weighs_almost_nothing():
    correlator = engine()
    for n in range(20):  # every review carries the same trailer as its own text
        correlator.correlate(mail(f"p{n}", f"Review of change {n}", minutes=n, sender=f"dev{n}@vendor.example",
                                  body=f"Change {n} looks fine to me after testing it on the board.\n{TRAILER}"))
    correlator.correlate(mail("t", "Review of the release notes", minutes=50, sender="lead@vendor.example",
                              body="The release notes miss the new scheduler options entirely.\n" + TRAILER))
    reply = correlator.correlate(mail("x", "Re: Review of the release notes", minutes=60, sender="ann@customer.example",
                                      body="I agree.\n" + quote(TRAILER)))
    # The trailer is in 21 mails: the quote cannot say which one is answered (each of its
    # shingles weighs 1/21); the subject can.
    assert reply.parent_message_id == "<t@test>"
    assert 0 < reply.evidence["quoted_weight"] < 0.5


def test_an_address_on_every_mail_weighs_almost_nothing():
    correlator = engine()
    for n in range(100):  # everything goes to the list
        correlator.correlate(mail(f"m{n}", f"question {n}", minutes=n, sender=f"user{n}@x.example"))
    correlator.correlate(mail("q", "Export stopped", minutes=101, sender="ann@customer.example", body=QUESTION))
    from_list = correlator.correlate(mail("a", "Re: Export stopped", minutes=110, sender="bob@x.example"))
    direct = engine()
    direct.correlate(mail("q", "Export stopped", sender="ann@customer.example", to=("ops@vendor.example",), body=QUESTION))
    to_her = direct.correlate(mail("a", "Re: Export stopped", minutes=9, sender="bob@x.example",
                                   to=("ann@customer.example", "ops@vendor.example")))
    assert from_list.evidence["address_weight"] < 0.2 < 1.5 < to_her.evidence["address_weight"]
    assert to_her.confidence > from_list.confidence


def test_a_tag_in_every_subject_is_no_topic_in_common():
    correlator = engine()
    for n in range(30):
        correlator.correlate(mail(f"m{n}", f"[users] question number {n} about topic{n}", minutes=n,
                                  sender=f"user{n}@x.example"))
    reply = correlator.correlate(mail("r", "Re: [users] scheduler fails on start", minutes=40, sender="bob@x.example"))
    assert reply.method is Method.NONE
    abstained = reply.evidence.get("abstained")
    assert abstained is None or abstained["confidence"] < 0.5


def test_another_version_of_a_posting_is_less_likely_its_thread():
    same, other = engine(), engine()
    for correlator in (same, other):
        correlator.correlate(mail("v1", "[PATCH v2 1/3] parser: skip empty lines", sender="dev@vendor.example"))
    same_version = same.correlate(mail("a", "Re: [PATCH v2 1/3] parser: skip empty lines", minutes=60))
    next_version = other.correlate(mail("b", "Re: [PATCH v3 1/3] parser: skip empty lines", minutes=60))
    assert same_version.method is Method.SMART_MATCHING
    assert not same_version.evidence["version_differs"]
    assert next_version.confidence < same_version.confidence
    assert (next_version.evidence.get("abstained", {}).get("evidence") or next_version.evidence)["version_differs"]
    assert next_version.method is Method.NONE or next_version.evidence["version_differs"]


def test_a_reply_part_of_a_series_is_no_series_part():
    correlator = engine()
    correlator.correlate(mail("p1", "[PATCH 1/2] parser: skip empty lines", sender="dev@vendor.example"))
    review = correlator.correlate(mail("r", "Re: [PATCH 2/2] docs: describe the parser", minutes=5,
                                       sender="dev@vendor.example"))
    assert "series" not in review.evidence


def test_content_links_a_mail_naming_an_unknown_parent_only_on_strong_evidence():
    correlator = engine()
    correlator.correlate(mail("q", "Export stopped", body=QUESTION))
    # Its headers name a parent we never saw: the same subject and a prefix are not enough ...
    weak = correlator.correlate(mail("w", "Re: Export stopped", minutes=30, sender="bob@vendor.example",
                                     in_reply_to=("<never-seen@elsewhere>",)))
    assert weak.method is Method.NONE and weak.parent_message_id is None
    assert weak.evidence["abstained"]["min_confidence"] == CorrelationSettings().unknown_parent_min_confidence
    assert "below" in describe(weak.to_dict())
    # ... while the same mail without the header links on that evidence.
    plain = engine()
    plain.correlate(mail("q", "Export stopped", body=QUESTION))
    linked = plain.correlate(mail("w", "Re: Export stopped", minutes=30, sender="bob@vendor.example"))
    assert linked.parent_message_id == "<q@test>"
    # Two mails naming the same unknown parent share its conversation (a ghost parent).
    sibling = correlator.correlate(mail("s", "Re: Export stopped", minutes=40, sender="carol@vendor.example",
                                        in_reply_to=("<never-seen@elsewhere>",)))
    assert (sibling.method, sibling.parent_message_id) == (Method.IN_REPLY_TO, "<w@test>")
    assert sibling.conversation_id == weak.conversation_id and sibling.evidence["shared_reference"]
    assert sibling.confidence == 0.99 and "unknown ancestor" in describe(sibling.to_dict())


@pytest.mark.parametrize("floor", [0.0, 1.0])
def test_min_confidence_decides_whether_a_content_match_links(floor):
    correlator = engine(min_confidence=floor)
    correlator.correlate(mail("q", "Export stopped", body=QUESTION))
    reply = correlator.correlate(mail("r", "Re: Export stopped", minutes=30, sender="bob@vendor.example"))
    assert (reply.method is Method.SMART_MATCHING) == (floor == 0.0)


def test_without_a_reply_signal_only_a_very_similar_subject_and_the_dynamics_addresses_link():
    correlator = engine()
    notifier = dict(sender="notifications@tracker.example", to=("dev@list.example",))
    correlator.correlate(mail("pr", "[Tracker] parser pull request #12: fix the crash on empty input lines", **notifier))
    issue = correlator.correlate(mail("is", "[Tracker] parser issue #12: fix the crash on empty input lines",
                                      minutes=5, **notifier))
    assert issue.parent_message_id == "<pr@test>" and issue.evidence["subject_similarity"] >= 0.6
    orders = engine()
    orders.correlate(mail("o1", "Order 4711", sender="shop@vendor.example", to=("ann@customer.example",)))
    other = orders.correlate(mail("o2", "Order 4712", minutes=5, sender="shop@vendor.example", to=("ann@customer.example",)))
    assert other.method is Method.NONE and "abstained" not in other.evidence
