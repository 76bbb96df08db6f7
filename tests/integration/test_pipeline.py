"""The correlator pipeline on the real embedded broker with real Faust workers.

Every test compares the pipeline with the pure engine run in this process on the same mail:
the pipeline must decide exactly as the engine does, whatever happens to its workers.
"""

from __future__ import annotations

import os
import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.runtime.kafka import new_producer, topic_name
from pipeline.contracts.records import mail_raw_record
from pipeline.correlation.engine import Correlator
from pipeline.mail.hostile import big_mail
from pipeline.mail.parse import parse_mail
from pipeline.mail.record import MailParseError
from pipeline.mail.sources import iter_mbox
from pipeline.settings import Settings
from pipeline.streams.ingest import ingest
from pipeline.streams.reader import read_topic
from pipeline.streams.replay import diff_generations
from pipeline.streams.runner import count_outputs, wait_for_outputs
from pipeline.synth import MailGenerator, render_rfc5322

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "ponymail" / "messages.mbox"


def synthetic(tenant: str, count: int, seed: int) -> list[tuple[str, bytes]]:
    generator = MailGenerator(seed, tenant=tenant, customers=300, agents=5)
    return [(f"synth:{tenant}#{n}", render_rfc5322(mail)) for n, mail in enumerate(generator.mails(count))]


def engine_run(settings: Settings, tenant: str, messages: list[tuple[str, bytes]]):
    """(mail, correlation) of each mail that parses, from one pure engine of this tenant alone, in order."""
    correlator = Correlator(settings.correlation, tenant=tenant, untracked=settings.untracked)
    for source, raw in messages:
        try:
            mail = parse_mail(raw, tenant=tenant, mailbox=source.partition("#")[0])
        except MailParseError:
            continue
        yield mail, correlator.correlate(mail)


def engine_decisions(settings: Settings, mail_by_tenant: dict[str, list[tuple[str, bytes]]]) -> dict:
    """(tenant, message id) -> decision, from the pure engine in this process."""
    decisions = {}
    for tenant, messages in mail_by_tenant.items():
        for mail, result in engine_run(settings, tenant, messages):
            if result.untracked_reason:
                if result.untracked_reason != "duplicate":
                    decisions[(tenant, mail.message_id)] = ("untracked", result.untracked_reason)
            else:
                decisions[(tenant, mail.message_id)] = (result.method_name, result.parent_message_id,
                                                       result.conversation_id)
    return decisions


def pipeline_decisions(sandbox, settings: Settings, generation: int) -> dict:
    """The same, read back from the output topics; a redelivered record must repeat its decision."""
    decisions: dict = {}
    by_event: dict = {}

    def record(event_id, key, decision):
        assert by_event.setdefault(event_id, decision) == decision, f"{key}: redelivery decided differently"
        decisions[key] = decision

    for _, _, _, value in read_topic(settings.kafka, sandbox.bootstrap, "mail.correlated", sandbox.codec):
        if value["generation"] == generation:
            record(value["event_id"], (value["tenant"], value["message_id"]),
                   (value["method_name"], value["parent_message_id"], value["conversation_id"]))
    for _, _, _, value in read_topic(settings.kafka, sandbox.bootstrap, "mail.untracked", sandbox.codec):
        if value["generation"] == generation and value["reason"] != "duplicate":
            record(value["event_id"], (value["tenant"], value["message_id"]), ("untracked", value["reason"]))
    return decisions


def ingest_all(sandbox, settings: Settings, mail_by_tenant: dict) -> int:
    delivered = 0
    for tenant, messages in mail_by_tenant.items():
        report = ingest(messages, settings, sandbox.codec, sandbox.bootstrap, tenant=tenant)
        assert report.errors == []
        delivered += report.delivered
    return delivered


@pytest.mark.skipif(not CORPUS.is_file(), reason=f"corpus not found at {CORPUS}")
def test_corpus_end_to_end_equals_engine_and_hostile_input_is_dead_lettered(sandbox):
    settings = sandbox.settings()
    corpus = list(iter_mbox(CORPUS))
    producer = new_producer(settings.kafka, sandbox.bootstrap)
    raw_topic = topic_name(settings.kafka, "mail.raw")

    def encoded(raw: bytes) -> bytes:
        return sandbox.codec.encode("mail.raw", mail_raw_record(tenant="default", mailbox="x", direction="in",
                                                                source="test", raw=raw))

    hostile = {
        b"not avro at all": "not_confluent_wire_format",
        b"\x00\x00\x00\x7f\xff" + b"\x02x" * 5: "unknown_schema_id",
        encoded(b""): "empty",
        encoded(b"X-Junk: " + b"a" * 300_000): "header_too_large",
    }
    for value in hostile:  # before the real mail: the worker must keep going after them
        producer.produce(raw_topic, value, b"default")
    assert producer.flush(30) == 0
    assert ingest_all(sandbox, settings, {"default": corpus}) == len(corpus)

    worker = sandbox.start_worker()
    counts = wait_for_outputs(settings.kafka, sandbox.bootstrap, sandbox.codec, 0, len(corpus) + len(hostile),
                              workers=[worker], timeout_s=240)
    assert counts["deadletter"] == len(hostile)
    dead = {value["value_sha256"]: value for _, _, _, value in
            read_topic(settings.kafka, sandbox.bootstrap, "deadletter", sandbox.codec)}
    assert {value: dead[hashlib.sha256(value).hexdigest()]["reason"] for value in hostile} == hostile
    assert all(record["source_topic"] == raw_topic and record["error"] for record in dead.values())

    expected = engine_decisions(settings, {"default": [(f"x#{n}", raw) for n, (_, raw) in enumerate(corpus)]})
    assert pipeline_decisions(sandbox, settings, 0) == expected
    methods = {decision[0] for decision in expected.values()}
    assert {"InReplyTo", "None"} <= methods


def test_one_worker_and_two_workers_decide_identically_across_tenants(sandbox):
    settings = sandbox.settings()
    mail = {f"tenant-{n}": synthetic(f"tenant-{n}", 700, seed=n) for n in range(6)}
    total = ingest_all(sandbox, settings, mail)

    single = [sandbox.start_worker(generation=0, name="single")]
    wait_for_outputs(settings.kafka, sandbox.bootstrap, sandbox.codec, 0, total, workers=single, timeout_s=240)
    pair = [sandbox.start_worker(generation=1, name=f"pair-{n}") for n in range(2)]
    wait_for_outputs(settings.kafka, sandbox.bootstrap, sandbox.codec, 1, total, workers=pair, timeout_s=240)

    expected = engine_decisions(settings, mail)
    assert len(expected) == total
    assert pipeline_decisions(sandbox, settings, 0) == expected
    assert pipeline_decisions(sandbox, settings, 1) == expected


def test_sigkill_mid_stream_loses_nothing_and_tables_recover_from_the_changelog(sandbox):
    settings = sandbox.settings()
    mail = {"acme": synthetic("acme", 6000, seed=11)}
    total = ingest_all(sandbox, settings, mail)
    data_dir = sandbox.root / "worker-data"

    def run_until(handled_at_least: int):
        worker = sandbox.start_worker(data_dir=data_dir, name=f"run-{len(sandbox.workers)}")
        deadline = time.monotonic() + 180
        while sum(count_outputs(settings.kafka, sandbox.bootstrap, sandbox.codec, 0).values()) < handled_at_least:
            assert worker.alive, worker.log_tail()
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.3)
        return worker

    run_until(1500).kill()  # SIGKILL: no commit, no flush, RocksDB left as it was
    run_until(3500).kill()
    shutil.rmtree(data_dir)  # the third run has no local state: the table comes from the changelog only
    last = sandbox.start_worker(data_dir=data_dir, name="final")
    wait_for_outputs(settings.kafka, sandbox.bootstrap, sandbox.codec, 0, total, workers=[last], timeout_s=300)

    assert pipeline_decisions(sandbox, settings, 0) == engine_decisions(settings, mail)


def test_replay_with_changed_filter_changes_exactly_the_expected_correlations(sandbox):
    settings = sandbox.settings()
    mail = {"acme": synthetic("acme", 2500, seed=5)}
    total = ingest_all(sandbox, settings, mail)
    first = sandbox.start_worker(generation=0, name="g0")
    wait_for_outputs(settings.kafka, sandbox.bootstrap, sandbox.codec, 0, total, workers=[first], timeout_s=240)

    # A filter that also removes every word of 7+ letters (as if a user filtered order numbers
    # and codes): subjects made only of long words leave no hash, so their smart-matching links
    # go, while every header, token and Thread-Index link stays.
    new_file = sandbox.settings_file("new.toml", extra="""
[correlation.smart_matching]
hash_filter_keywords = '^[\\s]*([\\w]+\\s?:[\\s]*)+|\\w{7,}'
""")
    new_settings = sandbox.settings(new_file)
    assert new_settings.correlation.fingerprint() != settings.correlation.fingerprint()
    replay = sandbox.start_worker(generation=1, name="g1", settings_file=new_file)
    wait_for_outputs(settings.kafka, sandbox.bootstrap, sandbox.codec, 1, total, workers=[replay], timeout_s=240)

    before, after = engine_decisions(settings, mail), engine_decisions(new_settings, mail)
    expected_changed = sorted(key[1] for key in after if after[key][:2] != before[key][:2])
    assert len(expected_changed) > 50, "the new filter must change something for this test to mean anything"
    diff = diff_generations(settings.kafka, sandbox.bootstrap, sandbox.codec, 0, 1)
    assert sorted(diff.changed_ids) == expected_changed
    assert diff.mails == len(after)

    # `threadline replay` twice in a row, with the settings still saying generation 0: each run
    # finds the generations on the cluster, makes the next one and says what it compared with.
    # Back to the first settings, generation 2 undoes exactly what generation 1 changed; the
    # filter again, generation 3 redoes it.
    env = {key: value for key, value in os.environ.items() if not key.startswith("THREADLINE_")}
    env["THREADLINE_KAFKA_BOOTSTRAP"] = sandbox.bootstrap

    def replay(new_settings: Path, *options: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline.cli", "--settings", str(sandbox.settings_file()),
                               "replay", "--settings", str(new_settings), "--no-progress", *options],
                              cwd=sandbox.root, env=env, capture_output=True, text=True, timeout=600)

    for generation, new_settings, mails in ((2, sandbox.settings_file(), len(before)), (3, new_file, len(after))):
        result = replay(new_settings)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"as the new generation {generation}, to compare with generation {generation - 1}" in result.stderr
        assert result.stdout.splitlines()[0] == (f"new generation {generation} compared with generation "
                                                 f"{generation - 1}: {mails} mails, {len(expected_changed)} "
                                                 "correlations changed")
    assert pipeline_decisions(sandbox, settings, 3) == pipeline_decisions(sandbox, settings, 1)

    refused = replay(new_file, "--generation", "1")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "generation 1 already exists (generations on the cluster: 0, 1, 2, 3)" in refused.stderr
    assert "nothing was started" in refused.stderr and refused.stdout == ""
    assert not (sandbox.root / "data" / "replay-g1-0.log").exists()


def poison_mail(seed: int) -> bytes:
    """The issue's poison record: ~1 MB whose 270 KB folded header makes it a dead letter."""
    folded = b"X-Filler: " + b"\r\n ".join([b"%070d" % (seed + n) for n in range(3800)]) + b"\r\n"
    raw = big_mail(720_000, seed)
    cut = raw.index(b"\r\n") + 2
    raw = raw[:cut] + folded + raw[cut:]
    return raw + b" " * (999_800 - len(raw))


def test_poison_and_big_mail_of_two_tenants_survive_a_kill_and_restart_with_every_input_accounted(sandbox):
    settings = sandbox.settings()
    mail: dict[str, list[tuple[str, bytes]]] = {}
    for n, tenant in enumerate(("acme", "beta")):
        messages = synthetic(tenant, 400, seed=40 + n)
        big = [big_mail(2 * 2**20, seed=n), big_mail(10 * 2**20, seed=n, kind="html")]
        # the poison first and the good mail right behind it: that is what used to vanish
        messages[150:150] = [(f"poison:{tenant}", poison_mail(n))] + [(f"big:{tenant}#{i}", b) for i, b in
                                                                      enumerate(big)]
        mail[tenant] = messages
    total = ingest_all(sandbox, settings, mail)
    assert total == sum(len(m) for m in mail.values())
    raw = [(p, o, v) for p, o, _, v in read_topic(settings.kafka, sandbox.bootstrap, "mail.raw", sandbox.codec)]
    assert sum(v["raw_blob"] is not None for _, _, v in raw) == 6  # every mail over 512 KiB went by digest
    poison_at = {(p, o) for p, o, v in raw if v["source"].startswith("poison:")}

    data_dir = sandbox.root / "worker-data"
    first = sandbox.start_worker(data_dir=data_dir, name="first")
    deadline = time.monotonic() + 180
    while sum(count_outputs(settings.kafka, sandbox.bootstrap, sandbox.codec, 0).values()) < total // 2:
        assert first.alive, first.log_tail()
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.3)
    first.kill()
    last = sandbox.start_worker(data_dir=data_dir, name="last")
    wait_for_outputs(settings.kafka, sandbox.bootstrap, sandbox.codec, 0, total, workers=[last], timeout_s=300)
    assert last.alive, last.log_tail()

    assert pipeline_decisions(sandbox, settings, 0) == engine_decisions(settings, mail)
    # At least once: a poison record redelivered after the kill is dead-lettered again under the same
    # event id (the sink's table keeps one row per id), so the letters are counted by id.
    by_id: dict[str, list[dict]] = {}
    for _, _, _, v in read_topic(settings.kafka, sandbox.bootstrap, "deadletter", sandbox.codec):
        by_id.setdefault(v["event_id"], []).append(v)
    letters = [copies[0] for copies in by_id.values()]
    assert all({(c["source_partition"], c["source_offset"], c["value"]) for c in copies} ==
               {(copies[0]["source_partition"], copies[0]["source_offset"], copies[0]["value"])}
               for copies in by_id.values()), "one event id, different dead letters"
    assert {(v["source_partition"], v["source_offset"]) for v in letters} == poison_at
    assert {v["reason"] for v in letters} == {"header_too_large"}
    # The poison went by digest, so its dead letter holds the whole (small) record naming the blob.
    assert [sandbox.codec.decode("mail.raw", v["value"])["raw_blob"]["size"] for v in letters] == [999_800] * 2
    decided = pipeline_decisions(sandbox, settings, 0)
    for tenant, messages in mail.items():
        for source, raw_mail in messages:
            if source.startswith("big:"):
                assert (tenant, parse_mail(raw_mail).message_id) in decided, source
