"""CorrectionsProcessor with the MailProcessor it corrects: plain dict tables, no Faust or broker.

Two tenants share Message-IDs: a correction of one never touches the other's mail.  A correction
that comes after its mail re-emits the corrected decisions; one that comes first (a replay) is
applied as the mail is correlated; both end with the same newest decision per mail.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from pipeline.contracts.avro import AvroCodec, EmbeddedRegistry
from pipeline.contracts.records import correction_record, mail_raw_record
from pipeline.contracts.topics import CORRECTIONS, MAIL_CORRELATED, MAIL_RAW
from pipeline.correlation.corrections import Action
from pipeline.correlation.methods.base import Method
from pipeline.correlation.model import own_conversation_id
from pipeline.runtime.batch import RawItem
from pipeline.settings import Settings
from pipeline.streams.corrections import CorrectionsProcessor
from pipeline.streams.processor import INDEX_TABLE, MailProcessor

CODEC = AvroCodec(EmbeddedRegistry())
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def mail(name: str, minutes: int, replies_to: str | None = None) -> bytes:
    lines = [f"Message-ID: <{name}@test>", f"Date: {(T0 + timedelta(minutes=minutes)).strftime('%a, %d %b %Y %H:%M:%S +0000')}",
             "From: ann@customer.example", "To: desk@ours.example", f"Subject: {'Re: ' if replies_to else ''}Invoice 7"]
    if replies_to:
        lines.append(f"In-Reply-To: <{replies_to}@test>")
    return ("\r\n".join(lines) + "\r\n\r\nHello.\r\n").encode()


def raw(tenant: str, name: str, minutes: int, replies_to: str | None = None) -> bytes:
    return CODEC.encode(MAIL_RAW, mail_raw_record(tenant=tenant, mailbox=f"{tenant}-desk", direction="in",
                                                  source="test", raw=mail(name, minutes, replies_to), received_at=T0))


def correction(tenant: str, action: Action, name: str, other: str | None = None, minutes: int = 60) -> bytes:
    return CODEC.encode(CORRECTIONS, correction_record(
        tenant=tenant, action=action, message_id=f"<{name}@test>", other_message_id=f"<{other}@test>" if other else None,
        author="eve", reason="two requests", created_at=T0 + timedelta(minutes=minutes)))


class Worker:
    """The two steps as the worker wires them, their tables, and every mail.correlated record out."""

    def __init__(self, tables: tuple[dict, dict] | None = None) -> None:
        self.index_table, self.corrections_table = tables or ({}, {})
        self.corrections = CorrectionsProcessor(CODEC, self.corrections_table)
        self.mail = MailProcessor(Settings(), CODEC, self.index_table, corrections_for=self.corrections.book_of)
        self.corrections.apply = self.mail.apply_correction
        self.correlated: list[dict] = []
        self.offsets = {MAIL_RAW: 0, CORRECTIONS: 0}

    def send(self, topic: str, *values: bytes):
        step = self.mail if topic == MAIL_RAW else self.corrections
        start = self.offsets[topic]
        self.offsets[topic] += len(values)
        result = step.process([RawItem(0, start + i, b"t", value) for i, value in enumerate(values)], source_topic=topic)
        result.apply_to(self.index_table if topic == MAIL_RAW else self.corrections_table)
        result.apply_to(self.index_table, writes=result.other_writes.get(INDEX_TABLE, {}))
        self.correlated += [CODEC.decode(o.topic, o.value) for o in result.outputs if o.topic == MAIL_CORRELATED]
        return result

    def newest(self) -> dict[tuple[str, str], tuple]:
        """(tenant, message id) -> (conversation, parent, method) of the newest record, as ClickHouse keeps it."""
        return {(r["tenant"], r["message_id"]): (r["conversation_id"], r["parent_message_id"], r["method"])
                for r in self.correlated}


MAIL = [raw(tenant, name, minutes, replies_to) for tenant in ("acme", "globex")
        for name, minutes, replies_to in (("a", 0, None), ("b", 1, "a"))]


def test_a_correction_after_its_mail_re_emits_the_corrected_decision_of_that_tenant_only():
    worker = Worker()
    worker.send(MAIL_RAW, *MAIL)
    before = worker.newest()
    result = worker.send(CORRECTIONS, correction("acme", Action.UNLINK, "b"))
    assert result.counts == {"correction:unlink": 1, "corrected": 1}
    [corrected] = worker.correlated[len(MAIL):]
    assert (corrected["tenant"], corrected["message_id"], corrected["method_name"], corrected["parent_message_id"],
            corrected["conversation_id"]) == ("acme", "<b@test>", "Correction", None,
                                              own_conversation_id("acme", "<b@test>"))
    assert json.loads(corrected["evidence"])["recorrected"] is True  # escalation leaves it out
    # The same event id (the sink keeps the newest row), the mail's own mailbox, subject and position.
    [original] = [r for r in worker.correlated[:len(MAIL)] if (r["tenant"], r["message_id"]) == ("acme", "<b@test>")]
    assert {k: corrected[k] for k in ("event_id", "mailbox", "subject", "to", "source_offset")} == {
        k: original[k] for k in ("event_id", "mailbox", "subject", "to", "source_offset")}
    assert worker.newest()[("globex", "<b@test>")] == before[("globex", "<b@test>")]
    assert worker.newest()[("globex", "<b@test>")][2] == Method.IN_REPLY_TO

    # Mail correlated after the correction follows it; globex's reply to its own b does not.
    worker.send(MAIL_RAW, raw("acme", "c", 2, "b"), raw("globex", "c", 2, "b"))
    newest = worker.newest()
    assert newest[("acme", "<c@test>")][0] == own_conversation_id("acme", "<b@test>")
    assert newest[("globex", "<c@test>")][0] == newest[("globex", "<a@test>")][0]


def test_the_corrections_and_the_corrected_index_survive_a_restart_and_a_redelivery():
    worker = Worker()
    worker.send(MAIL_RAW, *MAIL)
    worker.send(CORRECTIONS, correction("acme", Action.UNLINK, "b"))
    restarted = Worker((worker.index_table, worker.corrections_table))
    restarted.offsets = dict(worker.offsets)
    again = restarted.corrections.process([RawItem(0, 0, b"t", correction("acme", Action.UNLINK, "b"))],
                                          source_topic=CORRECTIONS)
    assert again.outputs == [] and again.skipped_redeliveries == 1
    restarted.send(MAIL_RAW, raw("acme", "c", 2, "b"))
    [c] = restarted.correlated
    assert (c["parent_message_id"], c["conversation_id"]) == ("<b@test>", own_conversation_id("acme", "<b@test>"))


def test_a_replay_that_reads_the_corrections_first_ends_where_the_live_run_did():
    corrections = [correction("acme", Action.MERGE, "a", "x", minutes=60), correction("acme", Action.LINK, "y", "b", 61),
                   correction("globex", Action.SPLIT, "b", minutes=62), correction("acme", Action.LINK, "y", "a", 50)]
    mails = MAIL + [raw(tenant, name, minutes, replies_to) for tenant in ("acme", "globex")
                    for name, minutes, replies_to in (("x", 3, None), ("y", 4, "x"))]
    live = Worker()
    live.send(MAIL_RAW, *mails)
    for one in corrections:
        live.send(CORRECTIONS, one)
    replay = Worker()
    replay.send(CORRECTIONS, *corrections)
    replay.send(MAIL_RAW, *mails)
    assert replay.newest() == live.newest()
    assert live.newest()[("acme", "<y@test>")][:2] == (live.newest()[("acme", "<a@test>")][0], "<b@test>")


def test_a_correction_that_means_nothing_is_a_dead_letter():
    worker = Worker()
    record = correction_record(tenant="acme", action=Action.UNLINK, message_id="<a@test>", other_message_id=None,
                               author="eve", reason="", created_at=T0)
    result = worker.send(CORRECTIONS, CODEC.encode(CORRECTIONS, {**record, "other_message_id": "<b@test>"}))
    assert result.counts == {"deadletter:invalid_correction": 1} and worker.corrections_table.keys() == {"\x00offset\x1f0"}
