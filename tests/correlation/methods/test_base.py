"""The method registry: a new correlation method is one strategy class and one registration."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from pipeline.correlation.engine import Correlator
from pipeline.correlation.explain import describe
from pipeline.correlation.index import InMemoryStore
from pipeline.correlation.methods import BUILT_IN
from pipeline.correlation.methods.base import STRATEGIES, Match, Method, MethodStrategy, method_label, register, unregister
from pipeline.mail.record import MailRecord
from pipeline.settings import CorrelationSettings

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


class SameSender(MethodStrategy):
    """Toy method, defined here alone: the newest mail from the same sender, under a lookup of its
    own, with a switch of its own."""

    code = 9  # the first code not taken (8 is Correction)
    label = "SameSender"

    def __init__(self) -> None:
        self.on = True
        self.confidence = 0.75  # a sender says less than a header

    def enabled(self, correlator):
        return self.on

    def index_keys(self, correlator, entry):
        return (("same_sender", (entry.from_addr,)),)

    def match(self, correlator, facts):
        parent, count = correlator.most_recent(correlator.index.ids("same_sender", facts.mail.from_addr), facts.ts)
        if parent is None:
            return None
        return Match(self.code, parent, count, {"sender": facts.mail.from_addr}, confidence=self.confidence)

    def explain(self, evidence):
        return f"it comes from {evidence['sender']}, like the parent"


@pytest.fixture
def toy():
    strategy = SameSender()
    register(strategy)
    try:
        yield strategy
    finally:
        unregister(strategy)


def mail(message_id: str, subject: str, minutes: float) -> MailRecord:
    return MailRecord(message_id=message_id, subject=subject, from_addr="ann@customer.example",
                      to=("desk@ours.example",), date=T0 + timedelta(minutes=minutes))


def test_built_in_methods_are_registered_in_design_order():
    assert list(STRATEGIES) == [Method.XHEADER, Method.IN_REPLY_TO, Method.TRACKING_TOKEN,
                                            Method.CONVERSATION_INDEX, Method.SMART_MATCHING, Method.CUSTOM]
    assert [s.label for s in BUILT_IN] == ["XHeader", "InReplyTo", "TrackingToken", "ConversationIndex",
                                           "SmartMatching", "Custom"]
    assert (method_label(Method.NONE), method_label(Method.SKIPPED)) == ("None", "Skipped")


@pytest.mark.parametrize("strategy", [s for s in BUILT_IN if s.switch], ids=lambda s: s.label)
def test_a_built_in_switch_is_its_settings_flag(strategy):
    section, _, flag = strategy.switch.rpartition(".")
    off = CorrelationSettings(**({section: {flag: False}} if section else {flag: False}))
    assert strategy.enabled(Correlator(CorrelationSettings())) and not strategy.enabled(Correlator(off))


def test_a_registered_strategy_is_matched_and_explained(toy):
    engine = Correlator(CorrelationSettings(), clock=lambda: T0)
    engine.correlate(mail("<a@test>", "Invoice", 0))
    result = engine.correlate(mail("<b@test>", "Printer broken", 5))
    assert (result.method, result.method_name, result.parent_message_id) == (9, "SameSender", "<a@test>")
    record = result.to_dict()
    assert (record["method"], record["method_name"]) == (9, "SameSender")
    assert "by SameSender (9)" in describe(record)
    assert "because:      it comes from ann@customer.example, like the parent" in describe(record)
    # A duplicate delivery reports the method read back from the index again.
    assert engine.correlate(mail("<b@test>", "Printer broken", 5)).method_name == "SameSender"


def test_a_registered_strategy_finds_its_keys_in_a_rebuilt_index(toy):
    store = InMemoryStore()
    Correlator(CorrelationSettings(), store, clock=lambda: T0).correlate(mail("<a@test>", "Invoice", 0))
    restarted = Correlator(CorrelationSettings(), store, clock=lambda: T0)
    assert restarted.index.ids("same_sender", "ann@customer.example") == ["<a@test>"]
    assert restarted.correlate(mail("<b@test>", "Printer broken", 5)).parent_message_id == "<a@test>"


def test_a_strategys_confidence_is_the_decisions_and_a_repeat_reports_it_again(toy):
    store = InMemoryStore()
    engine = Correlator(CorrelationSettings(), store, clock=lambda: T0)
    engine.correlate(mail("<a@test>", "Invoice", 0))
    assert engine.correlate(mail("<b@test>", "Printer broken", 5)).confidence == 0.75
    toy.confidence = 0.5  # what the first decision said stands, not what the method would say now
    restarted = Correlator(CorrelationSettings(), store, clock=lambda: T0)
    again = restarted.correlate(mail("<b@test>", "Printer broken", 5))
    assert (again.untracked_reason, again.confidence) == ("duplicate", 0.75)


def test_our_mail_coming_back_reports_the_confidence_of_its_decision(toy):
    engine = Correlator(CorrelationSettings(), clock=lambda: T0)
    engine.correlate(mail("<a@test>", "Invoice", 0))
    engine.correlate(replace(mail("<b@test>", "Printer broken", 5), direction="out"))
    echo = engine.correlate(mail("<b@test>", "Printer broken", 6))
    assert (echo.untracked_reason, echo.confidence) == ("loop", 0.75)


def test_a_switched_off_strategy_is_not_tried_but_keeps_its_keys(toy):
    toy.on = False
    engine = Correlator(CorrelationSettings(), clock=lambda: T0)
    engine.correlate(mail("<a@test>", "Invoice", 0))
    assert engine.correlate(mail("<b@test>", "Printer broken", 5)).method is Method.NONE
    assert engine.index.ids("same_sender", "ann@customer.example") == ["<a@test>", "<b@test>"]


def test_registration_refuses_a_taken_code_or_label(toy):
    with pytest.raises(ValueError):
        register(SameSender())
    with pytest.raises(ValueError):
        register(type("Clash", (SameSender,), {"code": Method.NONE, "label": "Other"})())


def test_without_the_registration_the_mail_starts_a_conversation():
    engine = Correlator(CorrelationSettings(), clock=lambda: T0)
    engine.correlate(mail("<a@test>", "Invoice", 0))
    assert engine.correlate(mail("<b@test>", "Printer broken", 5)).method is Method.NONE
