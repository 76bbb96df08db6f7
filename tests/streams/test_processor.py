"""MailProcessor: the correlator's batch step without Faust or a broker.

The table is a plain dict (a real MutableMapping); ``apply`` writes a batch's table writes to it
exactly as the agent in ``pipeline.streams.app`` does, after the outputs are out.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pipeline.batch import ParseFailure, correlate_sources
from pipeline.contracts.avro import AvroCodec, EmbeddedRegistry
from pipeline.correlation.engine import Correlator
from pipeline.correlation.index import CLOCK_QUORUM
from pipeline.correlation.methods.base import Method
from pipeline.mail.sources import iter_mbox
from pipeline.settings import Settings
from pipeline.runtime.batch import Output, RawItem
from pipeline.runtime.state import offset_key, tenant_key
from pipeline.streams.processor import AGENT, MailProcessor
from pipeline.contracts.records import (
    DEADLETTER_EXCERPT_BYTES, MailRawCodec, SourcePosition, correlated_record, mail_raw_record,
)
from pipeline.synth import MailGenerator, render_rfc5322

CORPUS_MBOX = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "ponymail" / "messages.mbox"
CODEC = AvroCodec(EmbeddedRegistry())
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


# -- helpers -------------------------------------------------------------------------------------
def raw_value(raw: bytes, *, tenant: str = "default", mailbox: str = "support", direction: str = "in",
              received_at: datetime = T0) -> bytes:
    return CODEC.encode("mail.raw", mail_raw_record(tenant=tenant, mailbox=mailbox, direction=direction,
                                                    source="test", raw=raw, received_at=received_at))


def items(values: list[bytes], *, partition: int = 0, start: int = 0, key: bytes | None = b"default") -> list[RawItem]:
    return [RawItem(partition, start + i, key, value) for i, value in enumerate(values)]


def run(processor: MailProcessor, table: dict, stream: list[RawItem], batch_size: int) -> list[Output]:
    outputs: list[Output] = []
    for start in range(0, len(stream), batch_size):
        result = processor.process(stream[start:start + batch_size])
        outputs += result.outputs
        result.apply_to(table)
    return outputs


def decoded(outputs: list[Output], topic: str) -> list[dict]:
    return [CODEC.decode(o.topic, o.value) for o in outputs if o.topic == topic]


def decisions(outputs: list[Output]) -> dict[str, tuple]:
    """message id -> (method, parent_message_id, conversation_id, untracked_reason)."""
    found: dict[str, tuple] = {}
    for output in outputs:
        if output.topic not in ("mail.correlated", "mail.untracked"):
            continue
        record = CODEC.decode(output.topic, output.value)
        assert record["message_id"] not in found, f"two decisions for {record['message_id']}"
        if output.topic == "mail.correlated":
            found[record["message_id"]] = (record["method"], record["parent_message_id"],
                                           record["conversation_id"], None)
        else:
            found[record["message_id"]] = (None, None, record["conversation_id"], record["reason"])
    return found


def mail(message_id: str, subject: str, *, when: datetime, sender: str = "customer@example.com",
         to: str = "agent@support.example", in_reply_to: str | None = None, body: str = "Hello there.") -> bytes:
    lines = [f"Message-ID: {message_id}", f"Date: {when.strftime('%a, %d %b %Y %H:%M:%S +0000')}",
             f"From: {sender}", f"To: {to}", f"Subject: {subject}"]
    if in_reply_to:
        lines += [f"In-Reply-To: {in_reply_to}", f"References: {in_reply_to}"]
    return ("\r\n".join(lines) + "\r\n\r\n" + body + "\r\n").encode()


@pytest.fixture(scope="module")
def synthetic() -> list[bytes]:
    """~3000 mail.raw values of seeded synthetic support mail (every kind of link)."""
    values = []
    for record in MailGenerator(11, customers=2_000).mails(3000):
        values.append(raw_value(render_rfc5322(record), direction=record.direction, mailbox=record.mailbox,
                                received_at=record.received_at))
    return values


@pytest.fixture(scope="module")
def uninterrupted(synthetic) -> tuple[list[Output], dict]:
    """Outputs and final table of one processor that saw the whole synthetic stream."""
    table: dict = {}
    return run(MailProcessor(Settings(), CODEC, table), table, items(synthetic), 100), table


# -- the real corpus: the processor decides like the pure engine --------------------------------
@pytest.mark.skipif(not CORPUS_MBOX.is_file(), reason=f"the shared corpus is not at {CORPUS_MBOX}")
def test_corpus_in_batches_decides_like_the_pure_engine():
    settings = Settings()
    mailbox = str(CORPUS_MBOX)  # what pipeline.batch.parse_sources uses: source_ref.partition("#")[0]
    stream = items([raw_value(raw, mailbox=mailbox, direction="in") for _, raw in iter_mbox(CORPUS_MBOX)])
    assert len(stream) == 762

    table: dict = {}
    processor = MailProcessor(settings, CODEC, table)
    outputs: list[Output] = []
    deletes = 0
    for start in range(0, len(stream), 100):
        result = processor.process(stream[start:start + 100])
        outputs += result.outputs
        deletes += sum(value is None for writes in result.writes.values() for value in writes.values())
        result.apply_to(table)

    engine = Correlator(settings.correlation, tenant="default", untracked=settings.untracked)
    expected = list(correlate_sources([mailbox], settings.correlation, tenant="default", direction="in", correlator=engine))
    assert not [e for e in expected if isinstance(e, ParseFailure)]
    assert not decoded(outputs, "deadletter")
    want = {c.message_id: (None, None, c.conversation_id, c.untracked_reason) if c.untracked_reason
            else (int(c.method), c.parent_message_id, c.conversation_id, None) for c in expected}
    got = decisions(outputs)
    assert list(got) == [c.message_id for c in expected]  # one decision per mail, in input order
    differing = {mid: (got[mid], want[mid]) for mid in want if got[mid] != want[mid]}
    assert not differing, f"{len(differing)} decisions differ, e.g. {next(iter(differing.items()))}"
    # The comparison is not vacuous: most mail is linked, by headers and by content.
    methods = [decision[0] for decision in got.values()]
    assert methods.count(int(Method.IN_REPLY_TO)) > 300 and methods.count(int(Method.SMART_MATCHING)) > 0

    # The whole correlated record is the same bytes the engine's decision encodes to.
    correlated = [o for o in outputs if o.topic == "mail.correlated"]
    by_id = {c.message_id: c for c in expected}
    for offset, output in enumerate(correlated):
        record = CODEC.decode("mail.correlated", output.value)
        assert record["source_offset"] == offset
        assert output.value == CODEC.encode("mail.correlated", correlated_record(
            by_id[record["message_id"]], mailbox, SourcePosition("mail.raw", 0, offset)))

    # The corpus spans 19 years: the 90-day window evicted entries, and the table holds exactly
    # what the engine's index still holds.
    assert deletes > 0
    entry_keys = {key for key in table if key != offset_key(0)}
    assert len(entry_keys) == len(engine.index) < len(stream)
    assert all(key.startswith("default\x1f") and key.partition("\x1f")[2] in engine.index for key in entry_keys)
    assert table[offset_key(0)] == b"761"


# -- at-least-once: redelivery, restart, crash before the table write ---------------------------
def test_redelivered_batch_is_skipped_without_outputs(synthetic):
    table: dict = {}
    processor = MailProcessor(Settings(), CODEC, table)
    stream = items(synthetic[:200])
    first = processor.process(stream[:100])
    assert len(first.outputs) >= 100 and first.skipped_redeliveries == 0
    first.apply_to(table)
    snapshot = dict(table)

    again = processor.process(stream[:100])
    assert again.outputs == [] and again.counts == {}
    assert again.skipped_redeliveries == 100
    again.apply_to(table)
    assert table == snapshot

    # After a restart the table's offset marker does the same; an overlapping batch is handled
    # from the first new offset on.
    fresh = MailProcessor(Settings(), CODEC, table)
    overlap = fresh.process(stream[50:150])
    assert overlap.skipped_redeliveries == 50
    offsets = {r["source_offset"] for r in decoded(overlap.outputs, "mail.correlated")}
    assert offsets and min(offsets) == 100 and max(offsets) <= 149
    assert len(decisions(overlap.outputs)) == 50
    assert overlap.writes[0][offset_key(0)] == b"149"


def test_restart_continues_like_an_uninterrupted_processor(synthetic, uninterrupted):
    stream = items(synthetic)
    reference, reference_table = uninterrupted
    restart_at, rebalance_at = 1234, 2345  # both in the middle of a batch of 100

    table: dict = {}
    before = MailProcessor(Settings(), CODEC, table)
    outputs = run(before, table, stream[:restart_at], 100)
    # A new worker, with the table recovered from its changelog.
    table = dict(table)
    after = MailProcessor(Settings(), CODEC, table)
    outputs += run(after, table, stream[restart_at:rebalance_at], 100)
    assert [(o.topic, o.key, o.value) for o in outputs] == [
        (o.topic, o.key, o.value) for o in reference[:len(outputs)]], "differs after the restart"
    # A rebalance: the same worker drops its derived state and rebuilds it from the table.
    after.reset()
    outputs += run(after, table, stream[rebalance_at:], 100)

    assert [(o.topic, o.key, o.value) for o in outputs] == [(o.topic, o.key, o.value) for o in reference]
    assert table == reference_table
    # Not vacuous: after each interruption, mail is linked to parents seen only before it (headers,
    # Thread-Index and content), and the stream has tokens and responses too.
    correlated = decoded(reference, "mail.correlated")
    for split in (restart_at, rebalance_at):
        seen = {r["message_id"] for r in correlated if r["source_offset"] < split}
        across = {r["method_name"] for r in correlated
                  if r["source_offset"] >= split and r["parent_message_id"] in seen}
        assert {"InReplyTo", "ConversationIndex", "SmartMatching"} <= across, split
    assert "TrackingToken" in {r["method_name"] for r in correlated}
    assert decoded(reference, "mail.responses")


def test_crash_before_table_write_reprocesses_to_identical_outputs(synthetic):
    garbage = b"garbage"
    values = synthetic[:300]
    values = values[:250] + [garbage] + values[250:]
    stream = items(values)
    table: dict = {}
    first = MailProcessor(Settings(), CODEC, table)
    run(first, table, stream[:200], 100)
    before_crash = dict(table)

    crashed = first.process(stream[200:])  # produced, but the worker died before the table write
    assert table == before_crash

    recovered = MailProcessor(Settings(), CODEC, table)
    again = recovered.process(stream[200:])
    assert again.skipped_redeliveries == 0
    assert [(o.topic, o.key) for o in again.outputs] == [(o.topic, o.key) for o in crashed.outputs]
    for old, new in zip(crashed.outputs, again.outputs):
        if old.topic == "deadletter":
            old_record, new_record = CODEC.decode("deadletter", old.value), CODEC.decode("deadletter", new.value)
            old_record.pop("failed_at"), new_record.pop("failed_at")
            assert old_record == new_record
        else:
            assert old.value == new.value
    assert again.writes == crashed.writes
    assert not decoded(again.outputs, "mail.untracked")  # decisions, not "duplicate" records
    assert len(decisions(again.outputs)) == 100


def test_offset_markers_and_writes_are_per_partition():
    a = [raw_value(mail(f"<a{i}@x>", f"Subject {i}", when=T0 + timedelta(minutes=i)), tenant="acme") for i in range(3)]
    b = [raw_value(mail(f"<b{i}@x>", f"Subject {i}", when=T0 + timedelta(minutes=i)), tenant="acme2") for i in range(3)]
    batch = [RawItem(0, 10, b"acme", a[0]), RawItem(1, 5, b"acme2", b[0]),
             RawItem(0, 11, b"acme", a[1]), RawItem(1, 6, b"acme2", b[1])]
    table: dict = {}
    processor = MailProcessor(Settings(), CODEC, table)
    result = processor.process(batch)
    # Each partition's entries go to that partition (the agent writes them in the context of one of its events).
    assert {partition: set(writes) for partition, writes in result.writes.items()} == {
        0: {offset_key(0), "acme\x1f<a0@x>", "acme\x1f<a1@x>"},
        1: {offset_key(1), "acme2\x1f<b0@x>", "acme2\x1f<b1@x>"},
    }
    assert (result.writes[0][offset_key(0)], result.writes[1][offset_key(1)]) == (b"11", b"6")
    result.apply_to(table)
    # Partition 1 is redelivered from offset 5 while partition 0 moves on: skipping is per partition.
    fresh = MailProcessor(Settings(), CODEC, table)
    result = fresh.process([RawItem(1, 5, b"acme2", b[0]), RawItem(1, 6, b"acme2", b[1]),
                            RawItem(1, 7, b"acme2", b[2]), RawItem(0, 12, b"acme", a[2])])
    assert result.skipped_redeliveries == 2
    assert [r["message_id"] for r in decoded(result.outputs, "mail.correlated")] == ["<b2@x>", "<a2@x>"]
    assert (result.writes[0][offset_key(0)], result.writes[1][offset_key(1)]) == (b"12", b"7")


# -- hostile input -------------------------------------------------------------------------------
def test_hostile_records_are_dead_lettered_and_the_batch_goes_on():
    parent = mail("<p1@example.com>", "Broken invoice", when=T0)
    reply = mail("<r1@example.com>", "Re: Broken invoice", when=T0 + timedelta(hours=1),
                 sender="agent@support.example", to="customer@example.com", in_reply_to="<p1@example.com>")
    huge_header = b"Subject: x\r\nX-Filler: " + b"a" * (300 * 1024) + b"\r\n"
    hostile = {
        "not_confluent_wire_format": b"garbage",
        "unknown_schema_id": b"\x00\x00\x00\x7f\xffxx",
        "empty": raw_value(b""),
        "header_too_large": raw_value(huge_header),
    }
    values = [raw_value(parent), *hostile.values(), raw_value(reply, direction="out")]
    stream = [RawItem(3, 40 + i, None if i == 2 else b"default", value) for i, value in enumerate(values)]
    table: dict = {}
    result = MailProcessor(Settings(), CODEC, table).process(stream)

    dead = [o for o in result.outputs if o.topic == "deadletter"]
    assert len(dead) == len(hostile)
    for output, (reason, value), item in zip(dead, hostile.items(), stream[1:]):
        record = CODEC.decode("deadletter", output.value)
        assert record["reason"] == reason
        # Bounded: the start of the value, its size and digest; the whole record stays at its offset.
        assert record["value"] == value[:DEADLETTER_EXCERPT_BYTES]
        assert (record["value_size"], record["value_sha256"]) == (len(value), hashlib.sha256(value).hexdigest())
        assert (record["source_topic"], record["source_partition"], record["source_offset"]) == ("mail.raw", 3, item.offset)
        assert record["key"] == item.key and output.key == (item.key or b"")
        assert record["agent"] == AGENT and record["error"].startswith(reason)
    assert result.counts == {"None": 1, "InReplyTo": 1, **{f"deadletter:{reason}": 1 for reason in hostile}}

    linked = decoded(result.outputs, "mail.correlated")[-1]
    assert (linked["message_id"], linked["method_name"], linked["parent_message_id"]) == (
        "<r1@example.com>", "InReplyTo", "<p1@example.com>")
    assert linked["source_offset"] == 45
    assert len(decoded(result.outputs, "mail.responses")) == 1
    result.apply_to(table)
    assert set(table) == {offset_key(3), tenant_key("default", "<p1@example.com>"), tenant_key("default", "<r1@example.com>")}
    assert table[offset_key(3)] == b"45"


def test_an_unexpected_error_parks_the_record_as_internal_error(monkeypatch):
    import pipeline.streams.parsing as parsing_module

    real = parsing_module.parse_mail

    def parse_mail(raw, **kwargs):
        if b"BOOM" in raw:
            raise RuntimeError("engine bug")
        return real(raw, **kwargs)

    monkeypatch.setattr(parsing_module, "parse_mail", parse_mail)
    values = [raw_value(mail("<a@x>", "BOOM", when=T0)), raw_value(mail("<b@x>", "fine", when=T0))]
    result = MailProcessor(Settings(), CODEC, {}).process(items(values))
    [dead] = decoded(result.outputs, "deadletter")
    assert dead["reason"] == "internal_error" and "RuntimeError: engine bug" in dead["error"]
    assert [r["message_id"] for r in decoded(result.outputs, "mail.correlated")] == ["<b@x>"]


# -- tenants and eviction ------------------------------------------------------------------------
def test_tenants_have_separate_indexes_and_prefixed_keys():
    parent = mail("<p@a.example>", "Order 17 missing", when=T0, body="Where is my order 17?")
    reply = mail("<r@b.example>", "Re: Order 17 missing", when=T0 + timedelta(minutes=5), in_reply_to="<p@a.example>",
                 body="We are on it.\n\n> Where is my order 17?")
    table: dict = {}
    processor = MailProcessor(Settings(), CODEC, table)
    result = processor.process([
        RawItem(0, 0, b"acme", raw_value(parent, tenant="acme")),
        RawItem(0, 1, b"acme2", raw_value(reply, tenant="acme2")),
        RawItem(0, 2, b"acme", raw_value(reply, tenant="acme")),
    ])
    b_reply, a_reply = decoded(result.outputs, "mail.correlated")[1:]
    assert (b_reply["tenant"], b_reply["method_name"], b_reply["parent_message_id"]) == ("acme2", "None", None)
    assert (a_reply["tenant"], a_reply["method_name"], a_reply["parent_message_id"]) == ("acme", "InReplyTo", "<p@a.example>")
    assert [o.key for o in result.outputs if o.topic == "mail.correlated"] == [b"acme", b"acme2", b"acme"]
    result.apply_to(table)
    assert set(table) == {offset_key(0), "acme\x1f<p@a.example>", "acme\x1f<r@b.example>", "acme2\x1f<r@b.example>"}

    # Rebuilt from the table after a restart, each tenant still sees only its own entries.
    fresh = MailProcessor(Settings(), CODEC, table)
    later = mail("<r2@b.example>", "Re: Order 17 missing", when=T0 + timedelta(minutes=9), in_reply_to="<p@a.example>")
    result = fresh.process([RawItem(0, 3, b"acme2", raw_value(later, tenant="acme2")),
                            RawItem(0, 4, b"acme", raw_value(later, tenant="acme"))])
    in_b, in_a = decoded(result.outputs, "mail.correlated")
    # acme2 never saw <p@a.example>, only its own mail naming it: a sibling, never acme's mail.
    assert in_b["parent_message_id"] == "<r@b.example>" and '"shared_reference": true' in in_b["evidence"]
    assert in_a["parent_message_id"] == "<p@a.example>" and in_a["method_name"] == "InReplyTo"


def test_window_evicts_old_entries_with_delete_writes():
    # The index's clock moves once CLOCK_QUORUM mails show the new time; the mail after them evicts.
    settings = Settings.model_validate({"correlation": {"window_days": 1}})
    day = timedelta(days=1)

    def day_mails(tag: str, start: datetime) -> list[bytes]:
        return [mail(f"<{tag}-{n}@x>", f"Day {tag} topic {n}", when=start + timedelta(seconds=n))
                for n in range(CLOCK_QUORUM + 1)]

    first = [mail("<d0a@x>", "Day zero", when=T0), mail("<d0b@x>", "Day zero too", when=T0 + timedelta(hours=2))]
    second = day_mails("d1", T0 + day + timedelta(hours=1))
    third = [*day_mails("d2", T0 + 2 * day + timedelta(hours=3)),
             mail("<late@x>", "Re: Day zero", when=T0 + 2 * day + timedelta(hours=4), in_reply_to="<d0a@x>")]
    table: dict = {}
    processor = MailProcessor(settings, CODEC, table)
    results = []
    offset = 0
    for batch in (first, second, third):
        # Ingested after all of it was written (a backfill): arrival does not cap the Dates.
        result = processor.process(items([raw_value(m, received_at=T0 + 3 * day) for m in batch], start=offset))
        offset += len(batch)
        results.append(result)
        result.apply_to(table)

    def deleted(result):
        return {key for writes in result.writes.values() for key, value in writes.items() if value is None}

    day_one = {tenant_key("default", f"<d1-{n}@x>") for n in range(CLOCK_QUORUM + 1)}
    day_two = {tenant_key("default", f"<d2-{n}@x>") for n in range(CLOCK_QUORUM + 1)}
    assert deleted(results[0]) == set()
    assert deleted(results[1]) == {tenant_key("default", "<d0a@x>")}  # 25 h old; d0b is 23 h old
    assert deleted(results[2]) == {tenant_key("default", "<d0b@x>")} | day_one
    assert set(table) == {offset_key(0), tenant_key("default", "<late@x>")} | day_two
    late = decoded(results[2].outputs, "mail.correlated")[-1]
    assert (late["message_id"], late["parent_message_id"], late["method_name"]) == ("<late@x>", None, "None")


def test_entries_written_without_their_offset_marker_are_not_correlated_twice(synthetic):
    # A crash after the batch's index entries reached the changelog but before its offset marker
    # did: the restarted worker must skip the records it already indexed, not call them duplicates.
    table: dict = {}
    stream = items(synthetic[:200])
    MailProcessor(Settings(), CODEC, table).process(stream[:100]).apply_to(table)
    marker = table.pop(offset_key(0))
    assert marker == b"99"
    restarted = MailProcessor(Settings(), CODEC, table)
    again = restarted.process(stream[:100])
    # Every one of these mails made an index entry, so every record is recognised: no output at
    # all (before the fix, each came out again as an untracked "duplicate" of itself).
    assert again.skipped_redeliveries == 100 and again.outputs == []
    assert again.writes[0][offset_key(0)] == b"99"


def test_after_a_reset_every_tenants_index_is_rebuilt_from_one_pass_over_the_table(scan_counting_table):
    table = scan_counting_table
    tenants = ("acme", "beta", "gamma")
    processor = MailProcessor(Settings(), CODEC, table)
    processor.process([RawItem(0, n, t.encode(), raw_value(mail(f"<p@{t}>", "Order 17", when=T0), tenant=t))
                       for n, t in enumerate(tenants)]).apply_to(table)
    processor.reset()  # a rebalance: the indexes are gone, the table remains
    table.scans = 0
    result = processor.process([
        RawItem(0, 3 + n, t.encode(), raw_value(mail(f"<r@{t}>", "Re: Order 17", when=T0 + timedelta(minutes=5),
                                                     in_reply_to=f"<p@{t}>"), tenant=t))
        for n, t in enumerate(tenants)])
    linked = decoded(result.outputs, "mail.correlated")
    assert [(r["tenant"], r["parent_message_id"]) for r in linked] == [(t, f"<p@{t}>") for t in tenants]
    assert table.scans == 1  # not one pass per tenant
