"""The method registry: a new correlation method is one strategy class and one registration."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from pipeline.correlation.engine import Correlator
from pipeline.correlation.explain import describe
from pipeline.correlation.methods import BUILT_IN
from pipeline.correlation.methods.base import STRATEGIES, Match, Method, MethodStrategy, method_label, register, unregister
from pipeline.mail.record import MailRecord
from pipeline.settings import CorrelationSettings

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


class SubjectNamesParent(MethodStrategy):
    """Toy method: the subject names the parent's Message-ID ("about <id>")."""

    code = 8
    label = "SubjectNamesParent"

    def match(self, correlator, facts):
        found = re.search(r"about (<[^>]+>)", facts.mail.subject)
        parent = correlator.index.get(found.group(1)) if found else None
        return Match(self.code, parent, 1, {"ref": parent.message_id}) if parent is not None else None

    def explain(self, evidence):
        return f"its subject names {evidence['ref']}"


@pytest.fixture
def toy():
    strategy = SubjectNamesParent()
    register(strategy)
    try:
        yield strategy
    finally:
        unregister(strategy)


def mail(message_id: str, subject: str, minutes: float) -> MailRecord:
    return MailRecord(message_id=message_id, subject=subject, from_addr="ann@customer.example",
                      to=("desk@ours.example",), date=T0 + timedelta(minutes=minutes))


def test_built_in_methods_are_registered_in_design_order():
    assert [s.code for s in STRATEGIES] == [Method.XHEADER, Method.IN_REPLY_TO, Method.TRACKING_TOKEN,
                                            Method.CONVERSATION_INDEX, Method.SMART_MATCHING, Method.CUSTOM]
    assert [s.label for s in BUILT_IN] == ["XHeader", "InReplyTo", "TrackingToken", "ConversationIndex",
                                           "SmartMatching", "Custom"]
    assert (method_label(Method.NONE), method_label(Method.SKIPPED)) == ("None", "Skipped")


def test_a_registered_strategy_is_matched_and_explained(toy):
    engine = Correlator(CorrelationSettings(), clock=lambda: T0)
    engine.correlate(mail("<a@test>", "Invoice", 0))
    result = engine.correlate(mail("<b@test>", "Question about <a@test>", 5))
    assert (result.method, result.method_name, result.parent_message_id) == (8, "SubjectNamesParent", "<a@test>")
    record = result.to_dict()
    assert (record["method"], record["method_name"]) == (8, "SubjectNamesParent")
    assert "by SubjectNamesParent (8)" in describe(record)
    assert "because:      its subject names <a@test>" in describe(record)
    # A duplicate delivery reports the method read back from the index again.
    assert engine.correlate(mail("<b@test>", "Question about <a@test>", 5)).method_name == "SubjectNamesParent"


def test_registration_refuses_a_taken_code_or_label(toy):
    with pytest.raises(ValueError):
        register(SubjectNamesParent())
    with pytest.raises(ValueError):
        register(type("Clash", (SubjectNamesParent,), {"code": Method.NONE, "label": "Other"})())


def test_without_the_registration_the_mail_starts_a_conversation():
    engine = Correlator(CorrelationSettings(), clock=lambda: T0)
    engine.correlate(mail("<a@test>", "Invoice", 0))
    assert engine.correlate(mail("<b@test>", "Question about <a@test>", 5)).method is Method.NONE
