"""Automatic mail through the correlation engine, from raw bytes: an auto-acknowledgement or a
reply to an out-of-office is no mail.responses Response, a person's reply is (also when linked to
our acknowledgement: it answers the customer's mail); the label travels in the decision, its JSON
(``threadline correlate``), the mail.correlated record and ``explain``."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pipeline.contracts.records import SourcePosition, correlated_record
from pipeline.correlation.corrections import Action, Correction
from pipeline.correlation.engine import Correlator
from pipeline.correlation.explain import describe
from pipeline.mail.hostile import hostile_mails
from pipeline.mail.parse import parse_mail
from pipeline.mail.record import MailParseError
from pipeline.settings import CorrelationSettings
from pipeline.synth import AutomaticMail, AutomaticMix, MailGenerator, with_automatic_mail

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
TENANTS = ("acme", "globex")


def raw_mail(message_id: str, subject: str, *fields: str, minutes: int = 0, sender: str = "dana@customer.example",
             to: str = "support@desk.example", in_reply_to: str | None = None) -> bytes:
    date = (T0 + timedelta(minutes=minutes)).strftime("%a, %d %b %Y %H:%M:%S +0000")
    head = [f"From: {sender}", f"To: {to}", f"Subject: {subject}", f"Date: {date}",
            f"Message-ID: <{message_id}@test>", *fields]
    if in_reply_to:
        head += [f"In-Reply-To: <{in_reply_to}@test>", f"References: <{in_reply_to}@test>"]
    return ("\r\n".join(head) + "\r\n\r\nHello,\r\nthe printer on floor 3 is broken.\r\n").encode()


def correlate(engine: Correlator, raw: bytes, tenant: str, direction: str = "in"):
    return engine.correlate(parse_mail(raw, tenant=tenant, direction=direction))


def engines() -> dict[str, Correlator]:
    return {tenant: Correlator(CorrelationSettings(), tenant=tenant, clock=lambda: T0 + timedelta(days=30))
            for tenant in TENANTS}


REQUEST = raw_mail("req", "Printer broken")
ACKNOWLEDGEMENT = raw_mail("ack", "Request received: Printer broken", "Auto-Submitted: auto-replied", minutes=1,
                           sender="support@desk.example", to="dana@customer.example", in_reply_to="req")
PERSONS_REPLY = raw_mail("answer", "Re: Printer broken", minutes=95, sender="sam@desk.example",
                         to="dana@customer.example", in_reply_to="req")


@pytest.mark.parametrize("tenant", TENANTS)
def test_an_auto_acknowledgement_is_no_response_and_a_persons_reply_is(tenant):
    engine = engines()[tenant]
    request = correlate(engine, REQUEST, tenant)
    acknowledgement = correlate(engine, ACKNOWLEDGEMENT, tenant, "out")
    reply = correlate(engine, PERSONS_REPLY, tenant, "out")
    assert (request.automatic, acknowledgement.automatic, reply.automatic) == ("", "auto_reply", "")
    assert acknowledgement.parent_message_id == "<req@test>"  # still correlated into the conversation
    assert acknowledgement.response is None
    assert reply.response is not None
    assert (reply.response.answers_message_id, reply.response.seconds) == ("<req@test>", 95 * 60.0)


def test_a_persons_reply_linked_to_our_acknowledgement_answers_the_customers_mail():
    for tenant, engine in engines().items():
        correlate(engine, REQUEST, tenant)
        correlate(engine, ACKNOWLEDGEMENT, tenant, "out")
        reply = correlate(engine, raw_mail("answer", "Re: Request received: Printer broken", minutes=95,
                                           sender="sam@desk.example", to="dana@customer.example", in_reply_to="ack"),
                          tenant, "out")
        assert reply.parent_message_id == "<ack@test>"
        assert (reply.response.answers_message_id, reply.response.seconds) == ("<req@test>", 95 * 60.0)


def test_responses_on_traffic_with_automatic_mail_equal_those_without_it():
    """The issue's target: out-of-office replies, acknowledgements and bounces mixed in change no
    response (the people's mail alone is the hand-made truth)."""
    for tenant in TENANTS:
        people = list(MailGenerator(16, tenant=tenant, customers=120, agents=5, seconds_between_mails=120).mails(1500))
        mixed = list(with_automatic_mail(people, seed=len(tenant), mix=AutomaticMix(0.5, 0.9, 0.1)))
        assert len(mixed) > len(people) + 300

        def responses(stream):
            engine = engines()[tenant]
            found = {}
            for item in stream:
                result = engine.correlate(item.record if isinstance(item, AutomaticMail) else item)
                if result.response is not None:
                    found[result.message_id] = (result.response.answers_message_id, result.response.seconds)
            return found

        alone = responses(people)
        assert len(alone) > 300
        assert responses(mixed) == alone


def test_a_reply_to_an_out_of_office_is_no_response_in_either_tenant():
    both = engines()
    for tenant, engine in both.items():
        correlate(engine, raw_mail("ours", "Invoice 4711", sender="sam@desk.example", to="dana@customer.example"),
                  tenant, "out")
        away = correlate(engine, raw_mail("away", "Automatic reply: Invoice 4711", minutes=1, in_reply_to="ours"),
                         tenant)
        answer = correlate(engine, raw_mail("back", "Re: Automatic reply: Invoice 4711", minutes=30,
                                            sender="sam@desk.example", to="dana@customer.example", in_reply_to="away"),
                           tenant, "out")
        assert (away.automatic, answer.automatic) == ("auto_reply", "")
        assert answer.parent_message_id == "<away@test>"
        assert answer.response is None


def test_a_reply_to_mailing_list_traffic_is_a_response():
    engine = engines()["acme"]
    question = correlate(engine, raw_mail("q", "Printer broken", "List-Id: <users.desk.example>"), "acme")
    answer = correlate(engine, raw_mail("a", "Re: Printer broken", minutes=10, sender="sam@desk.example",
                                        in_reply_to="q"), "acme", "out")
    assert question.automatic == "list"
    assert answer.response is not None


def test_the_label_travels_into_json_the_record_and_explain():
    engine = engines()["acme"]
    correlate(engine, REQUEST, "acme")
    acknowledgement = correlate(engine, ACKNOWLEDGEMENT, "acme", "out")
    as_json = acknowledgement.to_dict()
    assert as_json["automatic"] == "auto_reply"
    assert correlated_record(acknowledgement, "support", SourcePosition("mail.raw", 0, 7))["automatic"] == "auto_reply"
    assert "automatic mail: automatic reply (out-of-office, request received)" in describe(as_json)
    person = correlate(engine, PERSONS_REPLY, "acme", "out").to_dict()
    assert "automatic mail" not in describe(person)
    assert "automatic mail" not in describe({key: value for key, value in person.items() if key != "automatic"})


def test_a_correction_keeps_the_label():
    engine = engines()["acme"]
    correlate(engine, REQUEST, "acme")
    correlate(engine, ACKNOWLEDGEMENT, "acme", "out")
    corrected = engine.correct(Correction(event_id="k-1", tenant="acme", action=Action.UNLINK, message_id="<ack@test>",
                                          other_message_id=None, author="agent@desk.example", reason="test",
                                          created_at=T0))
    assert [(c.message_id, c.automatic) for c in corrected] == [("<ack@test>", "auto_reply")]


def test_hostile_mail_correlates_with_a_kind_or_nothing():
    engine = engines()["globex"]
    for _, raw in hostile_mails(30, seed=18):
        try:
            record = parse_mail(raw, tenant="globex")
        except MailParseError:
            continue
        assert engine.correlate(record).automatic == record.automatic


def _token_subject(subject: str) -> str:
    from pipeline.correlation import tokens
    from pipeline.settings import TrackingTokenSettings

    settings = TrackingTokenSettings()
    return tokens.add_token(settings, subject, tokens.TokenCounter(settings).next_token(1))


@pytest.mark.parametrize("tenant", TENANTS)
def test_an_out_of_office_copying_our_token_is_not_the_parent_of_the_customers_next_mail(tenant):
    engine = engines()[tenant]
    subject = _token_subject("Invoice 4711")
    correlate(engine, raw_mail("ours", subject, sender="sam@desk.example", to="dana@customer.example"), tenant, "out")
    away = correlate(engine, raw_mail("away", f"Automatic reply: {subject}", "Auto-Submitted: auto-replied",
                                      minutes=1), tenant)
    assert away.method_name == "TrackingToken" and away.parent_message_id == "<ours@test>"
    # The customer answers our mail days later from a client that keeps only the subject.
    back = correlate(engine, raw_mail("back", f"Re: {subject}", minutes=3000), tenant)
    assert back.method_name == "TrackingToken" and back.parent_message_id == "<ours@test>"
    answer = correlate(engine, raw_mail("answer", f"Re: {subject}", minutes=3100, sender="sam@desk.example",
                                        to="dana@customer.example", in_reply_to="back"), tenant, "out")
    assert answer.response is not None and answer.response.answers_message_id == "<back@test>"


def test_an_out_of_office_flood_changes_no_content_match():
    """Automatic mail copying a subject is neither a content candidate nor counted in the
    document frequencies that weigh subject words: the same decision, the same confidence."""
    def reply_without_headers(flood: int):
        engine = engines()["acme"]
        ours = raw_mail("ours", "Quarterly statement mismatch on contract 88", sender="sam@desk.example",
                        to="dana@customer.example")
        correlate(engine, ours, "acme", "out")
        for n in range(flood):
            correlate(engine, raw_mail(f"away{n}", "Automatic reply: Quarterly statement mismatch on contract 88",
                                       "Auto-Submitted: auto-replied", minutes=1 + n, sender=f"c{n}@customer.example",
                                       to="sam@desk.example"), "acme")
        return correlate(engine, raw_mail("back", "Re: Quarterly statement mismatch on contract 88", minutes=600,
                                          to="sam@desk.example"), "acme")

    quiet, flooded = reply_without_headers(0), reply_without_headers(40)
    assert quiet.method_name == "SmartMatching" and quiet.parent_message_id == "<ours@test>"
    assert (flooded.method_name, flooded.parent_message_id, flooded.confidence) == (
        quiet.method_name, quiet.parent_message_id, quiet.confidence)
