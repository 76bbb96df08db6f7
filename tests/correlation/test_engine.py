"""The correlation engine, one rule at a time, on records built in the test (no parsing)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from pipeline.correlation import thread_index
from pipeline.correlation.engine import Correlator
from pipeline.correlation.explain import describe
from pipeline.correlation.index import CLOCK_QUORUM
from pipeline.correlation.methods.base import Method
from pipeline.correlation.methods.conversation_index import ConversationIndex
from pipeline.correlation.methods.in_reply_to import InReplyTo
from pipeline.correlation.methods.smart_matching import SmartMatching
from pipeline.correlation.methods.xheader import format_xref
from pipeline.mail.content import fingerprint_body
from pipeline.mail.record import MailRecord
from pipeline.settings import CorrelationSettings, SmartMatchingSettings, TrackingTokenSettings, UntrackedSettings

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
NOW = T0 + timedelta(days=1000)


def mail(message_id: str, subject: str = "Quarterly numbers", *, minutes: float = 0, sender: str = "ann@customer.example",
         to: tuple[str, ...] = ("desk@ours.example",), cc: tuple[str, ...] = (), body: str = "",
         direction: str = "in", **fields) -> MailRecord:
    own, quoted, attribution = fingerprint_body(body)
    fields.setdefault("date", T0 + timedelta(minutes=minutes))
    return MailRecord(message_id=f"<{message_id}@test>", subject=subject, from_addr=sender, to=to, cc=cc,
                      direction=direction, own_shingles=own, quoted_shingles=quoted,
                      attribution=attribution, **fields)


def correlator(**overrides) -> Correlator:
    return Correlator(CorrelationSettings(**overrides), clock=lambda: NOW)


def test_first_mail_starts_a_conversation():
    result = correlator().correlate(mail("a"))
    assert result.method is Method.NONE
    assert result.parent_message_id is None
    assert result.mail_type == "new"
    assert result.conversation_id.startswith("c-")


def test_new_conversations_header_links_and_skips_are_certain():
    engine = correlator()
    first = engine.correlate(mail("a"))
    reply = engine.correlate(mail("b", subject="x", minutes=1, in_reply_to=("<a@test>",)))
    skipped = correlator(enabled=False).correlate(mail("c"))
    assert (first.method, reply.method, skipped.method) == (Method.NONE, Method.IN_REPLY_TO, Method.SKIPPED)
    assert (first.confidence, reply.confidence, skipped.confidence) == (1.0, 1.0, 1.0)
    assert engine.index.get("<b@test>").confidence == 1.0


@pytest.fixture
def sure(monkeypatch):
    """``sure(Strategy, x)``: the strategy's matches say confidence x (its calibration is not what
    these tests are about)."""
    def say(strategy: type, confidence: float) -> None:
        found = strategy.match

        def match(self, correlator, facts):
            result = found(self, correlator, facts)
            return replace(result, confidence=confidence) if result is not None else None
        monkeypatch.setattr(strategy, "match", match)
    return say


def test_a_content_match_below_min_confidence_abstains(sure):
    sure(SmartMatching, 0.3)
    engine = correlator(min_confidence=0.5)
    first = engine.correlate(mail("a"))
    result = engine.correlate(mail("b", subject="Re: Quarterly numbers", minutes=1))
    assert (result.method, result.parent_message_id, result.mail_type) == (Method.NONE, None, "reply")
    assert result.conversation_id != first.conversation_id
    abstained = result.evidence["abstained"]
    assert {key: abstained[key] for key in ("method", "would_match", "confidence", "min_confidence")} == {
        "method": "SmartMatching", "would_match": "<a@test>", "confidence": 0.3, "min_confidence": 0.5}
    assert abstained["evidence"]["same_subject"]
    assert result.confidence == pytest.approx(0.7)
    assert engine.index.get("<b@test>").method == Method.NONE


def test_explain_shows_the_confidence_and_what_would_have_matched(sure):
    sure(SmartMatching, 0.3)
    engine = correlator(min_confidence=0.5)
    engine.correlate(mail("a"))
    doubted = engine.correlate(mail("b", subject="Re: Quarterly numbers", minutes=1))
    text = describe(doubted.to_dict())
    assert "new conversation: no method was sure enough of an earlier mail" in text
    because = SmartMatching().explain(doubted.evidence["abstained"]["evidence"])
    assert f"would match:  <a@test>  by SmartMatching, because {because}" in text and "subject hashes agree" in because
    assert "abstained:    its confidence 0.30 is below min_confidence 0.50" in text
    assert "confidence:   0.70" in text
    linked = engine.correlate(mail("c", subject="x", minutes=2, in_reply_to=("<a@test>",))).to_dict()
    assert "confidence:   1.00" in describe(linked)
    assert "confidence:" not in describe({key: value for key, value in linked.items() if key != "confidence"})


def test_a_content_match_at_min_confidence_links(sure):
    sure(SmartMatching, 0.5)
    engine = correlator(min_confidence=0.5)
    engine.correlate(mail("a"))
    result = engine.correlate(mail("b", subject="Re: Quarterly numbers", minutes=1))
    assert (result.method, result.parent_message_id, result.confidence) == (Method.SMART_MATCHING, "<a@test>", 0.5)
    assert "abstained" not in result.evidence


def test_a_header_link_ignores_min_confidence(sure):
    sure(InReplyTo, 0.2)
    engine = correlator(min_confidence=0.9)
    engine.correlate(mail("a"))
    result = engine.correlate(mail("b", subject="x", minutes=1, in_reply_to=("<a@test>",)))
    assert (result.method, result.parent_message_id, result.confidence) == (Method.IN_REPLY_TO, "<a@test>", 0.2)


def test_after_an_abstention_the_next_method_may_link_and_the_most_confident_abstention_is_reported(sure):
    root = thread_index.encode_new(uuid.UUID(int=7), T0)
    child = thread_index.encode_child(root, T0 + timedelta(minutes=5))
    sure(ConversationIndex, 0.3)
    sure(SmartMatching, 0.9)
    engine = correlator()
    engine.correlate(mail("a", thread_index=root))
    linked = engine.correlate(mail("b", subject="Re: Quarterly numbers", minutes=5, thread_index=child))
    assert (linked.method, linked.parent_message_id, linked.confidence) == (Method.SMART_MATCHING, "<a@test>", 0.9)
    sure(SmartMatching, 0.2)
    doubted = engine.correlate(mail("c", subject="Re: Quarterly numbers", minutes=6, thread_index=child))
    assert doubted.method is Method.NONE
    assert (doubted.evidence["abstained"]["method"], doubted.confidence) == ("ConversationIndex", pytest.approx(0.7))


def test_xheader_names_the_referenced_mail():
    engine = correlator()
    sent = engine.correlate(mail("a", direction="out", sender="desk@ours.example", to=("ann@customer.example",)))
    result = engine.correlate(mail("b", subject="unrelated", minutes=5, xref=format_xref("threadline", "<a@test>")))
    assert (result.method, result.parent_message_id) == (Method.XHEADER, "<a@test>")
    assert result.conversation_id == sent.conversation_id
    assert result.evidence == {"header": "X-Threadline-Ref", "ref": "<a@test>"}


def test_xheader_of_another_instance_is_ignored():
    engine = correlator()
    engine.correlate(mail("a"))
    result = engine.correlate(mail("b", subject="other", minutes=5, xref=format_xref("elsewhere", "<a@test>")))
    assert result.method is Method.NONE


def test_in_reply_to_then_references_last_to_first():
    engine = correlator()
    engine.correlate(mail("a"))
    engine.correlate(mail("b", subject="Re: Quarterly numbers", minutes=1, in_reply_to=("<a@test>",)))
    by_reply = engine.correlate(mail("c", subject="x", minutes=2, in_reply_to=("<b@test>",)))
    assert (by_reply.method, by_reply.parent_message_id, by_reply.evidence["header"]) == (Method.IN_REPLY_TO, "<b@test>", "In-Reply-To")
    by_refs = engine.correlate(mail("d", subject="y", minutes=3, references=("<a@test>", "<b@test>", "<unknown@x>")))
    assert (by_refs.parent_message_id, by_refs.evidence["header"]) == ("<b@test>", "References")
    assert by_refs.mail_type == "reply"  # no prefix, but its headers make it a reply


def test_header_rule_wins_over_later_rules():
    engine = correlator()
    engine.correlate(mail("a", subject="Offer CRM:0001001"))
    engine.correlate(mail("b", subject="Another offer CRM:0001002", minutes=1))
    result = engine.correlate(mail("c", subject="Re: Offer CRM:0001002", minutes=2, in_reply_to=("<a@test>",)))
    assert (result.method, result.parent_message_id) == (Method.IN_REPLY_TO, "<a@test>")


def test_tracking_token_decides_alone_by_default():
    engine = correlator()
    engine.correlate(mail("a", subject="Your offer CRM:0001001", direction="out", sender="desk@ours.example"))
    result = engine.correlate(mail("b", subject="Completely new words CRM:0001001", minutes=3, sender="zed@else.example"))
    assert (result.method, result.parent_message_id) == (Method.TRACKING_TOKEN, "<a@test>")
    assert result.tracking_token == "CRM:0001001"


def test_tracking_token_in_confirm_mode_needs_an_address_when_the_subject_changed():
    settings = {"tracking_token": TrackingTokenSettings(mode="confirms")}
    engine = correlator(**settings)
    engine.correlate(mail("a", subject="Your offer CRM:0001001", sender="desk@ours.example", to=("ann@customer.example",)))
    stranger = engine.correlate(mail("b", subject="Other words CRM:0001001", minutes=1, sender="zed@else.example", to=("x@y.example",)))
    assert stranger.method is Method.NONE
    known = engine.correlate(mail("c", subject="Third words CRM:0001001", minutes=2, sender="ann@customer.example"))
    assert known.method is Method.TRACKING_TOKEN and known.evidence["subject_changed"] is True
    same_subject = correlator(**settings)
    same_subject.correlate(mail("a", subject="Your offer CRM:0001001"))
    assert same_subject.correlate(mail("b", subject="RE: Your offer CRM:0001001", minutes=1, sender="q@r.example",
                                       to=("s@t.example",))).method is Method.TRACKING_TOKEN


def test_token_of_another_base_digit_is_not_ours():
    engine = correlator()
    engine.correlate(mail("a", subject="Offer CRM:0001001"))
    result = engine.correlate(mail("b", subject="Unrelated CRM:1001001", minutes=1, sender="q@r.example", to=("s@t.example",)))
    assert result.method is Method.NONE


def test_outlook_thread_index_names_the_conversation():
    root = thread_index.encode_new(uuid.UUID(int=42), T0)
    child = thread_index.encode_child(root, T0 + timedelta(minutes=5))
    engine = correlator()
    engine.correlate(mail("a", subject="Planning", thread_index=root))
    result = engine.correlate(mail("b", subject="Totally different", minutes=5, thread_index=child, sender="q@r.example"))
    assert (result.method, result.parent_message_id) == (Method.CONVERSATION_INDEX, "<a@test>")


def test_dynamics_smart_matching_needs_two_common_addresses():
    dynamics = {"smart_matching": SmartMatchingSettings(strategy="dynamics")}
    engine = correlator(**dynamics)
    engine.correlate(mail("a", subject="Server down", sender="ann@customer.example", to=("desk@ours.example",)))
    one_address = engine.correlate(mail("b", subject="RE: Server down", minutes=1, sender="bob@other.example",
                                        to=("desk@ours.example",)))
    assert one_address.method is Method.NONE
    two = engine.correlate(mail("c", subject="RE: server DOWN", minutes=2, sender="desk@ours.example",
                                to=("ann@customer.example",), direction="out"))
    assert (two.method, two.parent_message_id) == (Method.SMART_MATCHING, "<a@test>")
    assert two.evidence["matched_addresses"] == ["ann@customer.example", "desk@ours.example"]


def test_dynamics_subject_delta_allows_extra_words():
    settings = {"smart_matching": SmartMatchingSettings(strategy="dynamics", hash_delta_subject_count=1)}
    engine = correlator(**settings)
    engine.correlate(mail("a", subject="printer jam floor", to=("desk@ours.example",)))
    result = engine.correlate(mail("b", subject="RE: printer jam floor two", minutes=1, to=("desk@ours.example",)))
    assert result.method is Method.SMART_MATCHING
    too_far = engine.correlate(mail("c", subject="printer broken", minutes=2, to=("desk@ours.example",)))
    assert too_far.method is Method.NONE


def test_evidence_strategy_links_a_reply_by_subject_with_one_common_address():
    engine = correlator()
    engine.correlate(mail("a", subject="[users] Build fails on ARM", sender="ann@customer.example", to=("users@list.example",)))
    result = engine.correlate(mail("b", subject="AW: [users] RE: Build fails on ARM", minutes=30, sender="bob@x.example",
                                   to=("users@list.example",)))
    assert (result.method, result.parent_message_id) == (Method.SMART_MATCHING, "<a@test>")
    assert result.evidence["same_subject"] and result.evidence["reply_prefix"]


def test_evidence_strategy_does_not_link_same_subject_without_any_reply_signal():
    engine = correlator()
    engine.correlate(mail("a", subject="Question", sender="ann@customer.example", to=("users@list.example",)))
    result = engine.correlate(mail("b", subject="Question", minutes=60, sender="bob@x.example", to=("users@list.example",)))
    assert result.method is Method.NONE


QUESTION = """Hello,
our nightly import stops with a timeout after exactly thirty minutes
whenever the archive holds more than ten thousand records.
Is there a setting for the limit?
"""


def test_quoted_text_links_a_reply_whose_subject_changed():
    engine = correlator()
    engine.correlate(mail("a", subject="Import problem", body=QUESTION, from_name="Ann Example"))
    engine.correlate(mail("noise", subject="Lunch", minutes=1, sender="c@d.example"))
    reply = "Yes, raise import.timeout.\n\nOn Monday, Ann Example wrote:\n" + "".join(
        "> " + line + "\n" for line in QUESTION.splitlines())
    result = engine.correlate(mail("b", subject="Timeout setting", minutes=20, sender="bob@x.example",
                                   to=("ann@customer.example",), body=reply))
    assert (result.method, result.parent_message_id) == (Method.SMART_MATCHING, "<a@test>")
    assert result.evidence["quoted_shingles"] >= 2 and result.evidence["attribution"] == "ann example"


def test_quoted_text_alone_from_another_thread_is_not_enough():
    engine = correlator()
    engine.correlate(mail("a", subject="Import problem", body=QUESTION, from_name="Ann Example"))
    pasted = "Same here:\n" + "".join("> " + line + "\n" for line in QUESTION.splitlines())
    result = engine.correlate(mail("b", subject="Unrelated crash", minutes=20, sender="bob@x.example", body=pasted))
    assert result.method is Method.NONE


def test_a_footer_quoted_back_is_no_evidence():
    footer = "To unsubscribe, e-mail: users-unsubscribe@list.example\nFor additional commands, e-mail: users-help@list.example\n"
    engine = correlator()
    engine.correlate(mail("a", subject="Disk quota", body="We hit the quota on every build server today.\n" + footer))
    reply = "Thanks!\n" + "".join("> " + line + "\n" for line in footer.splitlines()) + footer
    # Another sender: the subject words and the one common address alone make no candidate.
    result = engine.correlate(mail("b", subject="Disk quota follow-up", minutes=5, body=reply, sender="bob@x.example"))
    assert result.method is Method.NONE


def test_patch_series_parts_join_the_cover_letter():
    engine = correlator()
    engine.correlate(mail("p0", subject="[PATCH 0/3] Faster import", sender="dev@ours.example"))
    engine.correlate(mail("x", subject="[PATCH 0/3] Other series", minutes=1, sender="someone@else.example"))
    part = engine.correlate(mail("p2", subject="[PATCH 2/3] parser: skip empty lines", minutes=2, sender="dev@ours.example"))
    assert (part.method, part.parent_message_id, part.evidence["series"]) == (Method.SMART_MATCHING, "<p0@test>", "2/3")
    late = engine.correlate(mail("p3", subject="[PATCH 3/3] docs", minutes=24 * 60, sender="dev@ours.example"))
    assert late.method is Method.NONE  # a series leaves its sender within minutes, not a day later


def test_most_recent_candidate_wins():
    engine = correlator()
    engine.correlate(mail("a", subject="Status"))
    engine.correlate(mail("b", subject="Status", minutes=10))  # no reply signal: a new conversation
    result = engine.correlate(mail("c", subject="Re: Status", minutes=20))
    assert result.parent_message_id == "<b@test>"
    assert result.candidate_count == 2


def test_custom_rule_runs_last():
    def rule(record, index):
        return "<a@test>" if "see ticket" in record.subject else None

    engine = Correlator(CorrelationSettings(), custom_rule=rule, clock=lambda: NOW)
    engine.correlate(mail("a", subject="Ticket"))
    result = engine.correlate(mail("b", subject="please see ticket", minutes=1, sender="q@r.example", to=("s@t.example",)))
    assert (result.method, result.parent_message_id, result.evidence["rule"]) == (Method.CUSTOM, "<a@test>", "injected")


def test_custom_rule_from_settings_must_load():
    with pytest.raises(ValueError, match="cannot be loaded"):
        Correlator(CorrelationSettings(custom_rule="no_such_module_xyz:rule"))


def test_disabled_correlation_skips_everything():
    result = correlator(enabled=False).correlate(mail("a"))
    assert (result.method, result.untracked_reason) == (Method.SKIPPED, "correlation_disabled")


def test_time_window_excludes_and_evicts_old_mail():
    engine = correlator(window_days=10)
    engine.correlate(mail("a", subject="Old thing"))
    late = engine.correlate(mail("b", subject="Re: Old thing", minutes=11 * 24 * 60, in_reply_to=("<a@test>",)))
    assert late.method is Method.NONE
    assert "<a@test>" in engine.index  # the clock moves only once CLOCK_QUORUM mails show the new time
    for n in range(CLOCK_QUORUM):
        engine.correlate(mail(f"later{n}", subject=f"Topic {n}", minutes=11 * 24 * 60 + n))
    assert "<a@test>" not in engine.index
    assert len(engine.index) == CLOCK_QUORUM + 1


def dated_run(engine: Correlator, count: int, *, start_minutes: float = 0) -> None:
    for n in range(count):
        engine.correlate(mail(f"m{n}", subject=f"Question {n}", minutes=start_minutes + n,
                              received_at=T0 + timedelta(minutes=start_minutes + n + 5)))


def test_mail_dated_in_the_future_does_not_move_the_clock():
    # A sender chooses the Date: a few mails dated years ahead must not evict the tenant's index.
    engine = correlator(window_days=10)
    dated_run(engine, 50)
    for n in range(CLOCK_QUORUM - 1):  # no arrival time known: only the quorum protects
        engine.correlate(mail(f"future{n}", subject=f"Spam {n}", minutes=60 + 5 * 365 * 24 * 60))
    for n in range(CLOCK_QUORUM * 3):  # arrived now: their Date counts no later than a day after arrival
        engine.correlate(mail(f"forged{n}", subject=f"Forged {n}", minutes=60 + 5 * 365 * 24 * 60,
                              received_at=T0 + timedelta(minutes=70)))
    reply = engine.correlate(mail("r", subject="Re: Question 0", minutes=120, in_reply_to=("<m0@test>",)))
    assert (reply.method, reply.parent_message_id) == (Method.IN_REPLY_TO, "<m0@test>")
    assert "<m0@test>" in engine.index


def test_undated_mail_does_not_move_the_clock():
    # An old mailbox ingested today: mail without a Date gets today's arrival time as its event
    # time, which says nothing about when it was written, so it must not evict the dated mail.
    engine = correlator(window_days=10)
    dated_run(engine, 50)
    for n in range(CLOCK_QUORUM * 3):
        engine.correlate(mail(f"undated{n}", subject=f"No date {n}", date=None, received_at=NOW))
    reply = engine.correlate(mail("r", subject="Re: Question 0", minutes=120, in_reply_to=("<m0@test>",)))
    assert (reply.method, reply.parent_message_id) == (Method.IN_REPLY_TO, "<m0@test>")


def test_forwards_can_start_a_new_conversation():
    engine = correlator(forwards_as_replies=False)
    first = engine.correlate(mail("a", subject="Contract"))
    result = engine.correlate(mail("b", subject="Fwd: Contract", minutes=1, in_reply_to=("<a@test>",)))
    assert result.method is Method.NONE and result.mail_type == "forward"
    assert result.conversation_id != first.conversation_id
    assert result.evidence["would_match"] == "<a@test>"
    default = correlator()
    default.correlate(mail("a", subject="Contract"))
    assert default.correlate(mail("b", subject="Fwd: Contract", minutes=1, in_reply_to=("<a@test>",))).method is Method.IN_REPLY_TO


def test_our_own_mail_coming_back_is_a_loop():
    engine = correlator()
    engine.correlate(mail("a", direction="out", sender="desk@ours.example", to=("list@lists.example",)))
    result = engine.correlate(mail("a", minutes=2, sender="desk@ours.example", to=("list@lists.example",)))
    assert (result.method, result.untracked_reason, result.loop) == (Method.SKIPPED, "loop", True)
    stamped = engine.correlate(mail("z", minutes=3, xref=format_xref("threadline", "<z@test>")))
    assert stamped.untracked_reason == "loop"


def test_a_repeated_delivery_reports_the_same_decision():
    engine = correlator()
    engine.correlate(mail("a"))
    first = engine.correlate(mail("b", subject="Re: Quarterly numbers", minutes=1, in_reply_to=("<a@test>",)))
    again = engine.correlate(mail("b", subject="Re: Quarterly numbers", minutes=1, in_reply_to=("<a@test>",)))
    assert (again.method, again.conversation_id, again.parent_message_id) == (first.method, first.conversation_id, first.parent_message_id)
    assert (again.untracked_reason, again.evidence) == ("duplicate", {"duplicate_of": "<b@test>"})
    assert again.event_id != first.event_id  # the repeat never replaces the first decision downstream


def test_regarding_propagates_and_sender_resolver_fills_new_mail():
    engine = Correlator(CorrelationSettings(), clock=lambda: NOW,
                        regarding_resolver=lambda m: "LEAD-7" if m.from_addr.endswith("@prospect.example") else None)
    engine.correlate(mail("a", direction="out", sender="desk@ours.example",
                          xref=format_xref("threadline", "<a@test>", regarding="SUPP-11102003.2512242023")))
    reply = engine.correlate(mail("b", subject="Re: Quarterly numbers", minutes=5, in_reply_to=("<a@test>",)))
    assert reply.regarding == "SUPP-11102003.2512242023"
    new = engine.correlate(mail("c", subject="Pricing?", minutes=6, sender="p@prospect.example"))
    assert (new.method, new.regarding) == (Method.NONE, "LEAD-7")


def test_outbound_reply_to_inbound_mail_is_a_response():
    engine = correlator()
    engine.correlate(mail("a"))
    result = engine.correlate(mail("b", subject="Re: Quarterly numbers", minutes=90, direction="out",
                                   sender="desk@ours.example", to=("ann@customer.example",), in_reply_to=("<a@test>",)))
    assert result.response is not None
    assert (result.response.answers_message_id, result.response.seconds) == ("<a@test>", 5400.0)


@pytest.mark.parametrize("record, reason", [
    (dict(sender="a@ours.example", to=("b@ours.example",)), "internal"),
    (dict(sender="a@blocked.example"), "excluded_recipient"),
    (dict(mailbox="legal"), "excluded_mailbox"),
])
def test_untracked_mail_says_why(record, reason):
    untracked = UntrackedSettings(own_domains=("ours.example",), excluded_domains=("blocked.example",),
                                  excluded_mailboxes=("legal",))
    engine = Correlator(CorrelationSettings(), untracked=untracked, clock=lambda: NOW)
    result = engine.correlate(mail("a", **record))
    assert (result.method, result.untracked_reason) == (Method.SKIPPED, reason)
    assert "<a@test>" not in engine.index


def test_mail_without_date_uses_the_injected_clock():
    engine = correlator()
    result = engine.correlate(MailRecord(message_id="<nodate@test>", subject="x"))
    assert result.event_time == NOW


def test_event_ids_are_stable_per_generation():
    first = Correlator(CorrelationSettings(), clock=lambda: NOW).correlate(mail("a"))
    second = Correlator(CorrelationSettings(), clock=lambda: NOW).correlate(mail("a"))
    other = Correlator(CorrelationSettings(), clock=lambda: NOW, generation=2).correlate(mail("a"))
    assert first.event_id == second.event_id != other.event_id
