"""pipeline/decisions.py without a broker or a store: the decisions of a correlate file, which
one is explained per tenant, and one shape for the topics' records and the JSONL's correlations
(tests/integration/test_tail_explain.py searches the real topics and chDB)."""

from __future__ import annotations

import dataclasses
import json

from pipeline.contracts.avro import AvroCodec, EmbeddedRegistry
from pipeline.contracts.records import (SourcePosition, correlated_record, correlation_of, response_of,
                                        response_record, untracked_correlation_of, untracked_record)
from pipeline.correlation.engine import Correlator
from pipeline.correlation.explain import describe
from pipeline.decisions import choose, in_file
from pipeline.mail.parse import parse_mail
from pipeline.settings import CorrelationSettings

QUESTION = (b"Message-ID: <q@customer.test>\r\nDate: Mon, 02 Mar 2026 09:00:00 +0000\r\nFrom: ann@customer.test\r\n"
            b"To: desk@support.test\r\nSubject: Invoice 7\r\n\r\nWrong.\r\n")
REPLY = (b"Message-ID: <r@customer.test>\r\nDate: Mon, 02 Mar 2026 09:30:00 +0000\r\nFrom: ann@customer.test\r\n"
         b"To: desk@support.test\r\nSubject: Re: Invoice 7\r\nIn-Reply-To: <q@customer.test>\r\n\r\nStill.\r\n")

ANSWER = (b"Message-ID: <a@support.test>\r\nDate: Mon, 02 Mar 2026 10:00:00 +0000\r\nFrom: desk@support.test\r\n"
          b"To: ann@customer.test\r\nSubject: Re: Invoice 7\r\nIn-Reply-To: <q@customer.test>\r\n\r\nFixed.\r\n")


def correlations(tenant: str = "acme"):
    correlator = Correlator(CorrelationSettings(), tenant=tenant)
    return [correlator.correlate(parse_mail(raw, tenant=tenant)) for raw in (QUESTION, REPLY)]


def test_a_topic_record_read_back_is_described_as_the_correlation_itself():
    codec = AvroCodec(EmbeddedRegistry())
    for correlation in correlations():
        record = correlated_record(correlation, "support", SourcePosition("mail.raw", 0, 3))
        decoded = codec.decode("mail.correlated", codec.encode("mail.correlated", record))
        shaped = correlation_of(decoded)
        assert shaped["evidence"] == json.loads(json.dumps(correlation.evidence))
        assert shaped["event_time"] == correlation.event_time.isoformat()
        assert describe(shaped) == describe(correlation.to_dict())
    # Our answer: its reply time is on mail.responses, joined back as the correlation's response.
    correlator = Correlator(CorrelationSettings(), tenant="acme")
    correlator.correlate(parse_mail(QUESTION, tenant="acme"))
    answer = correlator.correlate(parse_mail(ANSWER, tenant="acme", direction="out"))
    assert answer.response is not None
    shaped = {**correlation_of(correlated_record(answer, "support", SourcePosition("mail.raw", 0, 4))),
              "response": response_of(response_record(answer, "support"))}
    assert describe(shaped) == describe(answer.to_dict()) and "  answers:      <q@customer.test> after 1.0 h" in describe(shaped)
    untracked = dataclasses.replace(correlations()[1], untracked_reason="internal", conversation_id="")
    row = {**untracked_record(untracked, "support"), "conversation_id": None}  # a Nullable column in ClickHouse
    # mail.untracked holds less (no mail type, settings or confidence), but what it holds is said alike.
    said = set(describe(untracked_correlation_of(row)).splitlines()) & set(describe(untracked.to_dict()).splitlines())
    assert {"  subject:      Re: Invoice 7",
            "  not tracked:  every participant is in one of our own domains (internal mail)"} <= said
    head = describe(untracked_correlation_of(row)).splitlines()
    assert head[0] == "<r@customer.test>  (in)" and head[2] == "  conversation: (none)  generation 0"


def decision(tenant: str, generation: int, reason: str | None = None, method: str = "InReplyTo") -> dict:
    return {"tenant": tenant, "generation": generation, "untracked_reason": reason, "method_name": method}


def test_the_newest_generation_per_tenant_and_the_tracked_decision_before_a_repetition():
    found = [decision("globex", 0), decision("acme", 0, method="old"), decision("acme", 2, "duplicate"),
             decision("acme", 2), decision("acme", 1), decision("acme", 2, "duplicate")]
    chosen = choose(found)
    assert [(c.tenant, c.decision["generation"], c.decision["untracked_reason"], c.generations) for c in chosen] == [
        ("acme", 2, None, (0, 1, 2)), ("globex", 0, None, (0,))]
    assert [c.decision["method_name"] for c in choose(found, tenant="acme", generation=0)] == ["old"]
    assert choose(found, generation=5) == [] and choose(found, tenant="initech") == []
    # Untracked for a reason of its own (internal) beats a repetition; the last one read wins among equals.
    only_untracked = [decision("acme", 0, "duplicate"), decision("acme", 0, "internal", "a"),
                      decision("acme", 0, "internal", "b"), decision("acme", 0, "duplicate")]
    assert choose(only_untracked)[0].decision["method_name"] == "b"


def test_a_correlate_file_gives_every_line_about_the_mail_and_parses_no_other(tmp_path):
    path = tmp_path / "correlations.jsonl"
    lines = [json.dumps(c.to_dict()) for c in correlations()] + ["not json, and not about the mail"]
    path.write_text("\n".join(lines) + "\n")
    assert [d["message_id"] for d in in_file(path, "<r@customer.test>")] == ["<r@customer.test>"]
    # <q@...> is named in the reply's line too (its parent): only the mail's own line is its decision.
    assert [d["message_id"] for d in in_file(path, "<q@customer.test>")] == ["<q@customer.test>"]
