"""The escalation batch step and its wall-clock tick, several tenants on several partitions."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pipeline.contracts.avro import AvroCodec, EmbeddedRegistry
from pipeline.contracts.records import mail_raw_record
from pipeline.mail.parse import mail_direction
from pipeline.mail.sources import iter_mbox
from pipeline.settings import Settings
from pipeline.runtime.state import offset_key, tenant_key
from pipeline.streams.escalation import EscalationProcessor
from pipeline.streams.processor import MailProcessor
from pipeline.runtime.batch import RawItem

CODEC = AvroCodec(EmbeddedRegistry())
CORPUS_MBOX = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "ponymail" / "messages.mbox"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def correlated(tenant: str, message_id: str, when: datetime) -> bytes:
    return CODEC.encode("mail.correlated", {
        "event_id": f"{tenant}-{message_id}", "tenant": tenant, "generation": 0, "settings_fingerprint": "f",
        "message_id": message_id, "conversation_id": f"conv-{message_id}", "parent_message_id": None,
        "regarding": None, "method": 0, "method_name": "None", "mail_type": "new", "direction": "in",
        "event_time": when, "tracking_token": None, "candidate_count": 0, "evidence": "{}",
        "subject": "Help", "from_addr": "customer@example.com", "to": ["agent@support.example"], "cc": [],
        "bcc": [], "mailbox": "support", "source_partition": 0, "source_offset": 0})


def test_a_tick_writes_the_state_of_every_tenant_it_moved_in_that_tenants_partition():
    table: dict = {}
    processor = EscalationProcessor(Settings(), CODEC, table, clock=lambda: T0)
    # acme on partition 0, beta on partition 3: each opens a clock.
    for partition, tenant in ((0, "acme"), (3, "beta")):
        batch = processor.process([RawItem(partition, 0, tenant.encode(), correlated(tenant, "<m1@x>", T0))])
        batch.apply_to(table)

    tick = processor.tick(T0 + timedelta(days=3))
    states = {CODEC.decode("escalations", o.value)["tenant"] for o in tick.outputs if o.topic == "escalations"}
    assert states == {"acme", "beta"}
    assert set(tick.writes) == {0, 3}
    assert tenant_key("acme", "conv-<m1@x>") in tick.writes[0]
    assert tenant_key("beta", "conv-<m1@x>") in tick.writes[3]

    # The next batch holds only partition 0: it carries no write of another partition (the tick's
    # were its own), so applying it never needs an event of partition 3.
    after = processor.process([RawItem(0, 1, b"acme", correlated("acme", "<m2@x>", T0 + timedelta(days=3)))])
    assert set(after.writes) == {0}
    assert offset_key(0) in after.writes[0]


def test_a_tick_after_a_restart_fires_nothing_twice_once_its_writes_are_applied():
    table: dict = {}
    processor = EscalationProcessor(Settings(), CODEC, table, clock=lambda: T0)
    processor.process([RawItem(2, 0, b"acme", correlated("acme", "<m1@x>", T0))]).apply_to(table)
    first = processor.tick(T0 + timedelta(days=3))
    assert first.outputs
    first.apply_to(table)

    restarted = EscalationProcessor(Settings(), CODEC, table, clock=lambda: T0)
    restarted.process([RawItem(2, 0, b"acme", correlated("acme", "<m1@x>", T0))])  # a redelivery: skipped
    assert restarted.tick(T0 + timedelta(days=3)).outputs == []


def mail(tenant: str, message_id: str, when: datetime, *, conversation: str = "c1", direction: str = "in",
         generation: int = 0, regarding: str | None = None, evidence: dict | None = None) -> bytes:
    record = CODEC.decode("mail.correlated", correlated(tenant, message_id, when))
    record.update(conversation_id=conversation, direction=direction, generation=generation, regarding=regarding,
                  event_id=f"{tenant}-{message_id}-{direction}")
    if evidence is not None:
        record["evidence"] = json.dumps(evidence)
    if direction == "out":
        record.update(from_addr="agent@support.example", to=["customer@example.com"])
    return CODEC.encode("mail.correlated", record)


def escalation_records(result) -> list[dict]:
    return [CODEC.decode("escalations", o.value) for o in result.outputs if o.topic == "escalations"]


def escalations(result) -> list[tuple[str, str, str]]:
    return [(r["tenant"], r["conversation_id"], r["state"]) for r in escalation_records(result)]


def test_an_inbound_mail_opens_a_clock_and_our_reply_resolves_it_and_clears_the_state():
    table: dict = {}
    processor = EscalationProcessor(Settings(), CODEC, table, clock=lambda: T0)
    opened = processor.process([RawItem(0, 0, b"acme", mail("acme", "<q@x>", T0))])
    assert escalations(opened) == [("acme", "c1", "OPEN")]
    assert json.loads(opened.writes[0][tenant_key("acme", "c1")])  # the running clock is state
    opened.apply_to(table)

    replied = processor.process([RawItem(0, 1, b"acme", mail("acme", "<a@x>", T0 + timedelta(hours=1),
                                                              direction="out"))])
    assert escalations(replied) == [("acme", "c1", "RESOLVED")]
    replied.apply_to(table)
    # Resolved in time: the deadlines never fire.
    assert escalations(processor.tick(T0 + timedelta(days=5))) == []


def test_the_deadlines_warn_then_escalate_once_each():
    table: dict = {}
    processor = EscalationProcessor(Settings(), CODEC, table, clock=lambda: T0)
    processor.process([RawItem(0, 0, b"acme", mail("acme", "<q@x>", T0))]).apply_to(table)
    warned = processor.tick(T0 + timedelta(hours=5))  # default policy: WARNED after 4 h, ESCALATED after 8 h
    assert escalations(warned) == [("acme", "c1", "WARNED")]
    warned.apply_to(table)
    escalated = processor.tick(T0 + timedelta(hours=9))
    assert escalations(escalated) == [("acme", "c1", "ESCALATED")]
    escalated.apply_to(table)
    assert escalations(processor.tick(T0 + timedelta(days=30))) == []


def test_two_tenants_with_the_same_conversation_id_keep_separate_clocks():
    table: dict = {}
    processor = EscalationProcessor(Settings(), CODEC, table, clock=lambda: T0)
    batch = processor.process([RawItem(1, 0, b"acme", mail("acme", "<q@x>", T0)),
                               RawItem(1, 1, b"beta", mail("beta", "<q@x>", T0))])
    assert sorted(escalations(batch)) == [("acme", "c1", "OPEN"), ("beta", "c1", "OPEN")]
    batch.apply_to(table)
    # acme's reply resolves acme's clock only.
    reply = processor.process([RawItem(1, 2, b"acme", mail("acme", "<a@x>", T0 + timedelta(hours=1),
                                                            direction="out"))])
    assert escalations(reply) == [("acme", "c1", "RESOLVED")]
    reply.apply_to(table)
    assert escalations(processor.tick(T0 + timedelta(hours=5))) == [("beta", "c1", "WARNED")]


def test_another_generations_mail_and_a_bad_record_are_skipped_without_stopping_the_batch():
    table: dict = {}
    processor = EscalationProcessor(Settings(), CODEC, table, clock=lambda: T0)
    batch = processor.process([RawItem(0, 0, b"acme", mail("acme", "<old@x>", T0, generation=7)),
                               RawItem(0, 1, b"acme", b"\x00\x00\x00\x00\x07not avro"),
                               RawItem(0, 2, b"acme", mail("acme", "<q@x>", T0))])
    assert escalations(batch) == [("acme", "c1", "OPEN")]  # only the current generation's mail
    dead = [CODEC.decode("deadletter", o.value) for o in batch.outputs if o.topic == "deadletter"]
    assert [(d["source_offset"], d["agent"]) for d in dead] == [(1, "escalation")]
    assert offset_key(0) in batch.writes[0]  # the marker moved past all three


def test_a_mail_re_decided_by_a_correction_leaves_the_clocks_as_they_are():
    table: dict = {}
    processor = EscalationProcessor(Settings(), CODEC, table, clock=lambda: T0)
    late = T0 + timedelta(days=3)
    processor.process([RawItem(0, 0, b"acme", mail("acme", "<now@x>", late, conversation="c0"))]).apply_to(table)
    # A correction split <q@x>, answered days ago, into a conversation of its own: its corrected
    # record would open a clock three days overdue; the first decision of a corrected mail counts.
    correction = {"correction": {"event_id": "k1", "action": "SPLIT"}}
    batch = processor.process([RawItem(0, 1, b"acme", mail("acme", "<q@x>", T0, conversation="c9",
                                                            evidence={**correction, "recorrected": True})),
                               RawItem(0, 2, b"acme", mail("acme", "<new@x>", late, conversation="c8",
                                                            evidence=correction))])
    assert escalations(batch) == [("acme", "c8", "OPEN")] and batch.counts["skipped:recorrected"] == 1


def test_after_a_reset_the_state_is_rebuilt_from_the_table_and_decides_like_before():
    table: dict = {}
    processor = EscalationProcessor(Settings(), CODEC, table, clock=lambda: T0)
    processor.process([RawItem(0, 0, b"acme", mail("acme", "<q@x>", T0)),
                       RawItem(0, 1, b"beta", mail("beta", "<q@x>", T0, conversation="c2"))]).apply_to(table)
    processor.reset()  # a rebalance: caches gone, only the table remains
    rebuilt = processor.process([RawItem(0, 2, b"acme", mail("acme", "<a@x>", T0 + timedelta(hours=1),
                                                              direction="out"))])
    assert escalations(rebuilt) == [("acme", "c1", "RESOLVED")]
    rebuilt.apply_to(table)
    processor.process([RawItem(0, 3, b"beta", mail("beta", "<n@x>", T0 + timedelta(hours=1), conversation="c3"))])
    # beta's first clock came back from the table too and fires at its deadline.
    fired = sorted(escalations(processor.tick(T0 + timedelta(hours=5))))
    assert ("beta", "c2", "WARNED") in fired and not any(t == "acme" for t, _, _ in fired)


def test_a_mail_about_a_record_belongs_to_the_records_owner():
    table: dict = {}
    owners = {("acme", "case-9"): "owner@support.example"}
    settings = Settings(untracked={"own_domains": ["support.example"]})  # whose addresses are agents
    processor = EscalationProcessor(settings, CODEC, table, clock=lambda: T0,
                                    record_owner=lambda tenant, record: owners.get((tenant, record)))
    batch = processor.process([RawItem(0, 0, b"acme", mail("acme", "<q@x>", T0, regarding="case-9")),
                               RawItem(0, 1, b"acme", mail("acme", "<r@x>", T0, conversation="c2"))])
    owner_of = {r["conversation_id"]: r["owner"] for r in escalation_records(batch)}
    assert owner_of == {"c1": "owner@support.example", "c2": "agent@support.example"}


def test_after_a_reset_every_tenants_clocks_are_rebuilt_from_one_pass_over_the_table(scan_counting_table):
    table = scan_counting_table
    tenants = ("acme", "beta", "gamma")
    processor = EscalationProcessor(Settings(), CODEC, table, clock=lambda: T0)
    processor.process([RawItem(0, n, t.encode(), mail(t, "<q@x>", T0)) for n, t in enumerate(tenants)]).apply_to(table)
    processor.reset()
    table.scans = 0
    replies = processor.process([RawItem(0, 3 + n, t.encode(), mail(t, "<a@x>", T0 + timedelta(hours=1),
                                                                    direction="out"))
                                 for n, t in enumerate(tenants)])
    assert escalations(replies) == [(t, "c1", "RESOLVED") for t in tenants]  # each clock came back
    assert table.scans == 1  # not one pass per tenant


# -- SLA targets -------------------------------------------------------------------------------
def sla_records(result) -> list[dict]:
    return [CODEC.decode("sla.events", o.value) for o in result.outputs if o.topic == "sla.events"]


def sla_outcomes(result) -> list[tuple[str, str, str, str, int]]:
    return [(r["tenant"], r["conversation_id"], r["target"], r["outcome"], r["cycle"]) for r in sla_records(result)]


def automatic_mail(tenant: str, message_id: str, when: datetime, kind: str, **kwargs) -> bytes:
    record = CODEC.decode("mail.correlated", mail(tenant, message_id, when, **kwargs))
    record["automatic"] = kind
    return CODEC.encode("mail.correlated", record)


def test_sla_targets_run_next_to_the_escalation_clock_per_tenant():
    table: dict = {}
    processor = EscalationProcessor(Settings(), CODEC, table, clock=lambda: T0)
    # acme on partition 0 and beta on partition 3, the same conversation id; only acme answers.
    batch = processor.process([RawItem(0, 0, b"acme", mail("acme", "<q@x>", T0))])
    assert sla_outcomes(batch) == [("acme", "c1", "first_response", "started", 1),
                                   ("acme", "c1", "resolution", "started", 1)]
    batch.apply_to(table)
    processor.process([RawItem(3, 0, b"beta", mail("beta", "<q@x>", T0))]).apply_to(table)
    reply = processor.process([RawItem(0, 1, b"acme", mail("acme", "<a@x>", T0 + timedelta(hours=1),
                                                            direction="out"))])
    assert escalations(reply) == [("acme", "c1", "RESOLVED")]
    assert sla_outcomes(reply) == [("acme", "c1", "first_response", "met", 1), ("acme", "c1", "resolution", "paused", 1)]
    [met, _] = sla_records(reply)
    assert met["on_time"] and met["business_seconds"] == 3600.0 and met["message_id"] == "<q@x>"
    assert all(o.key == b"acme" for o in reply.outputs if o.topic == "sla.events")
    reply.apply_to(table)

    tick = processor.tick(T0 + timedelta(hours=9))  # default targets: warned after 4 h, breached after 8 h
    assert sla_outcomes(tick) == [("beta", "c1", "first_response", "warned", 1),
                                  ("beta", "c1", "first_response", "breached", 1)]
    assert set(tick.writes) == {3}  # only beta's state moved, in beta's partition
    entry = json.loads(tick.writes[3][tenant_key("beta", "c1")])
    assert entry["escalation"]["state"] == "ESCALATED" and entry["sla"]["conversation_id"] == "c1"
    breached = sla_records(tick)[1]
    assert breached["event_time"] == breached["due_at"] == T0 + timedelta(hours=8)
    # Two tenants' records of one conversation id are different records.
    assert not {r["event_id"] for r in sla_records(batch)} & {r["event_id"] for r in sla_records(tick)}


def test_automatic_mail_the_policy_ignores_changes_no_sla_outcome():
    def run(with_automatic: bool) -> list[tuple]:
        table: dict = {}
        processor = EscalationProcessor(Settings(), CODEC, table, clock=lambda: T0)
        stream = [mail("acme", "<q@x>", T0)]
        if with_automatic:
            # Our desk's "we received your request" and a bounce: neither a first response nor a customer.
            stream += [automatic_mail("acme", "<ack@x>", T0 + timedelta(minutes=1), "auto_reply", direction="out"),
                       automatic_mail("acme", "<dsn@x>", T0 + timedelta(minutes=2), "bounce")]
        stream.append(mail("acme", "<a@x>", T0 + timedelta(hours=2), direction="out"))
        if with_automatic:  # the customer's out-of-office answers our reply: no follow-up to answer
            stream.append(automatic_mail("acme", "<ooo@x>", T0 + timedelta(hours=2, minutes=1), "auto_reply"))
        stream.append(mail("acme", "<f@x>", T0 + timedelta(hours=3)))
        outcomes = []
        for offset, value in enumerate(stream):
            result = processor.process([RawItem(0, offset, b"acme", value)])
            result.apply_to(table)
            outcomes += [(r["target"], r["outcome"], r["cycle"], r["message_id"], r["event_time"], r["business_seconds"])
                         for r in sla_records(result)]
        tick = processor.tick(T0 + timedelta(days=3))
        return outcomes + [(r["target"], r["outcome"], r["cycle"], r["message_id"], r["event_time"],
                            r["business_seconds"]) for r in sla_records(tick)]

    plain = run(with_automatic=False)
    assert ("first_response", "met", 1, "<q@x>", T0 + timedelta(hours=2), 7200.0) in plain
    assert ("next_response", "started", 1, "<f@x>", T0 + timedelta(hours=3), 0.0) in plain
    assert run(with_automatic=True) == plain


def test_an_entry_written_before_sla_targets_resumes_as_the_escalation_clock():
    table: dict = {}
    processor = EscalationProcessor(Settings(), CODEC, table, clock=lambda: T0)
    processor.process([RawItem(0, 0, b"acme", mail("acme", "<q@x>", T0))]).apply_to(table)
    # What the worker wrote before this release: the escalation clock's fields, nothing else.
    table[tenant_key("acme", "c1")] = json.dumps(json.loads(table[tenant_key("acme", "c1")])["escalation"]).encode()
    processor.reset()
    reply = processor.process([RawItem(0, 1, b"acme", mail("acme", "<a@x>", T0 + timedelta(hours=1),
                                                            direction="out"))])
    assert escalations(reply) == [("acme", "c1", "RESOLVED")]
    assert sla_outcomes(reply) == []  # no SLA target was running for it
    entry = json.loads(reply.writes[0][tenant_key("acme", "c1")])
    assert entry["escalation"]["state"] == "RESOLVED" and entry["sla"] is None


@pytest.mark.skipif(not CORPUS_MBOX.is_file(), reason=f"the shared corpus is not at {CORPUS_MBOX}")
def test_real_mail_of_two_tenants_decides_alike_with_a_restart_after_every_batch():
    settings = Settings(untracked={"own_domains": ["apache.org"]})  # the list's committers are the desk
    own = frozenset(settings.untracked.own_domains)
    correlated_stream: list[RawItem] = []
    for partition, tenant in ((0, "acme"), (2, "beta")):
        raw_items = [RawItem(partition, n, tenant.encode(), CODEC.encode("mail.raw", mail_raw_record(
            tenant=tenant, mailbox="dev", direction=mail_direction(raw, "auto", own), source="corpus", raw=raw,
            received_at=T0))) for n, (_, raw) in enumerate(iter_mbox(CORPUS_MBOX))]
        values = [o.value for o in MailProcessor(settings, CODEC, {}).process(raw_items).outputs
                  if o.topic == "mail.correlated"]
        # Hostile bytes among them: a dead letter, and the rest decided as without it.
        values.insert(100, b"\x00\x00\x00\x00\x08\xff\xfe not avro")
        correlated_stream += [RawItem(partition, n, tenant.encode(), value) for n, value in enumerate(values)]

    def run(restart_every_batch: bool) -> dict[str, list[dict]]:
        table: dict = {}
        processor = EscalationProcessor(settings, CODEC, table, clock=lambda: T0)
        outputs: dict[str, list[dict]] = {"sla.events": [], "escalations": [], "alerts": [], "deadletter": []}
        for start in range(0, len(correlated_stream), 50):
            result = processor.process(correlated_stream[start:start + 50])
            for output in result.outputs:
                outputs[output.topic].append(CODEC.decode(output.topic, output.value))
            result.apply_to(table)
            if restart_every_batch:
                processor = EscalationProcessor(settings, CODEC, table, clock=lambda: T0)
        dead = outputs.pop("deadletter")
        assert [(d["source_partition"], d["source_offset"], d["reason"]) for d in dead] == [
            (0, 100, "bad_avro"), (2, 100, "bad_avro")]
        return outputs

    outputs = run(restart_every_batch=False)
    assert run(restart_every_batch=True) == outputs
    sla = outputs["sla.events"]
    by_tenant = {tenant: sorted((r["message_id"], r["target"], r["outcome"], r["cycle"], r["event_time"],
                                 r["business_seconds"]) for r in sla if r["tenant"] == tenant)
                 for tenant in ("acme", "beta")}
    assert by_tenant["acme"] == by_tenant["beta"]
    outcomes = {(r["target"], r["outcome"]) for r in sla}
    assert {("first_response", "met"), ("first_response", "breached"), ("next_response", "started"),
            ("resolution", "paused"), ("resolution", "met")} <= outcomes
