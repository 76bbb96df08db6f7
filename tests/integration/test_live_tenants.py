"""Issue 12: tenants never interfere, and tick-driven state writes never wait for a batch.

The original crash: `threadline up` running and idle (its escalation ticks firing the deadlines
of the first tenant's mail), then `threadline ingest --tenant acme ...` of a second tenant: the
next batch held only the new tenant's partition, the tick's state writes named the first one's,
and the escalate agent died with KeyError in ``event_context(last_event[partition])``.

Here the real stack runs: `threadline up` (its worker, sink and tracking endpoint) on the session
broker, tenant ``acme`` ingested by `up`, a short tick interval, then ``globex`` (another
partition) and ``stark`` (acme's partition, and half of acme's very mails) by `threadline
ingest`.  Every tenant's correlations, escalations, SLA events and escalation state must be those
of a run of that tenant alone (the pure engine and trackers in this process), and the worker must
live.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pipeline.escalation.model import MailEvent
from pipeline.escalation.policy import default_owner
from pipeline.escalation.sla import SlaTracker
from pipeline.escalation.tracker import EscalationTracker
from pipeline.mail.sources import iter_mbox
from pipeline.runtime.state import encode_state
from pipeline.streams.reader import read_messages, read_topic
from pipeline.streams.runner import count_outputs, first_crash
from test_pipeline import engine_decisions, engine_run, pipeline_decisions

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
PARTITIONS = 4
# murmur2 (Faust's and our producers' partitioner) over 4 partitions: acme 0, globex 3, stark 0;
# the test checks where their records really landed.
TENANTS = {  # tenant: (corpus, first mail, end)
    "acme": ("ponymail", 75, 225),
    "globex": ("xdp-newbies", 0, 150),
    "stark": ("ponymail", 150, 300),  # shares acme's partition and 75 of its mails (same Message-IDs)
}
TICK_S = 2.0
SETTINGS = f"""
[escalation]
tick_interval_s = {TICK_S}
# Nothing is forgotten, so that every clock is still in the state when the test reads it (and
# the escalations do not depend on when a tick happened to fire).
resolved_retention_days = 36500
"""


def mbox_slice(source: Path, start: int, stop: int, target: Path) -> Path:
    """Messages ``start``..``stop - 1`` of an mbox, byte for byte (split as ``iter_mbox`` does)."""
    number, previous_blank = -1, True
    with open(source, "rb") as mbox, open(target, "wb") as out:
        for line in mbox:
            if line.startswith(b"From ") and previous_blank:
                number += 1
                if number >= stop:
                    break
            previous_blank = line in (b"\n", b"\r\n")
            if start <= number:
                out.write(line)
    return target


def expected_escalations(settings, tenant: str, messages, now: datetime):
    """A run of this tenant alone: the engine, then the trackers on event time, then one tick at
    ``now``.  Returns (transitions by event id, SLA events by event id, the tick's escalation event
    ids, final state by table key, as the table entry's JSON reads)."""
    tracker = EscalationTracker(settings.escalation, clock=lambda: now)
    sla = SlaTracker(settings.escalation, clock=lambda: now)
    transitions, sla_events, conversations = {}, {}, set()
    for mail, correlation in engine_run(settings, tenant, messages):
        if correlation.untracked_reason:
            continue
        owner = default_owner(mail.direction, mail.to + mail.cc, frozenset())
        event = MailEvent.from_correlation(correlation, mailbox=mail.mailbox, owner=owner)
        for transition in tracker.on_correlation(event):
            transitions[transition.event_id] = (transition.state.value, transition.message_id, transition.event_time)
        sla_events.update((outcome.event_id, outcome.to_record()) for outcome in sla.on_mail(event))
        conversations.add(correlation.conversation_id)
    ticked = tracker.advance(now)
    for transition in ticked:
        transitions[transition.event_id] = (transition.state.value, transition.message_id, transition.event_time)
    sla_events.update((outcome.event_id, outcome.to_record()) for outcome in sla.advance(now))
    states = {}
    for c in conversations:
        clock, targets = tracker.state_of(tenant, c), sla.state_of(tenant, c)
        if clock is not None or targets is not None:
            states[f"{tenant}\x1f{c}"] = json.loads(encode_state({
                "escalation": None if clock is None else clock.to_dict(),
                "sla": None if targets is None else targets.to_dict()}))
    return transitions, sla_events, {t.event_id for t in ticked}, states


def test_a_second_and_third_tenant_after_an_escalation_tick_leave_the_worker_alive_and_change_nothing(sandbox):
    settings_file = sandbox.settings_file(extra=SETTINGS)
    settings = sandbox.settings(settings_file)
    mailboxes = {tenant: mbox_slice(CORPUS / corpus / "messages.mbox", start, stop, sandbox.root / f"{tenant}.mbox")
                 for tenant, (corpus, start, stop) in TENANTS.items()}
    mail = {tenant: list(iter_mbox(path)) for tenant, path in mailboxes.items()}
    assert [len(m) for m in mail.values()] == [150, 150, 150]
    now = datetime.now(timezone.utc)  # every deadline of this old mail is long past: any tick fires all
    expected = {tenant: expected_escalations(settings, tenant, messages, now) for tenant, messages in mail.items()}
    assert all(ticked for _, _, ticked, _ in expected.values()), "each tenant's tick must have something to fire"

    env = {key: value for key, value in os.environ.items() if not key.startswith("THREADLINE_")}
    env.update(THREADLINE_KAFKA_BOOTSTRAP=sandbox.bootstrap, PYTHONUNBUFFERED="1")
    cli = [sys.executable, "-m", "pipeline.cli", "--settings", str(settings_file)]
    up_out = open(sandbox.root / "up.out", "w+")
    up = subprocess.Popen([*cli, "up", str(mailboxes["acme"]), "--tenant", "acme", "--direction", "in",
                           "--no-progress"], cwd=sandbox.root, env=env, stdout=up_out, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL)
    worker_log = sandbox.root / "data" / "workers" / "0.log"

    def up_output() -> str:
        return (sandbox.root / "up.out").read_text(errors="replace")

    def healthy() -> None:
        assert up.poll() is None, f"up exited ({up.returncode}):\n{up_output()[-4000:]}"
        log = worker_log.read_text(errors="replace") if worker_log.exists() else ""
        crash = first_crash(log)
        assert crash is None, f"the worker reported a crash: {crash.summary()}\n{crash.details()}"

    def wait_until(what: str, condition, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            healthy()
            assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
            time.sleep(0.5)

    def escalations(tenant: str) -> dict:
        return {v["event_id"]: (v["state"], v["message_id"], v["event_time"])
                for _, _, _, v in read_topic(settings.kafka, sandbox.bootstrap, "escalations", sandbox.codec)
                if v["tenant"] == tenant}

    def sla_events(tenant: str) -> dict:
        return {v["event_id"]: v for _, _, _, v in read_topic(settings.kafka, sandbox.bootstrap, "sla.events",
                                                              sandbox.codec) if v["tenant"] == tenant}

    def escalation_state() -> dict[int, dict[str, dict | None]]:
        """The escalation table as its changelog holds it: partition -> key -> newest value."""
        table: dict[int, dict[str, dict | None]] = {}
        for message in read_messages(settings.kafka, sandbox.bootstrap,
                                     f"{sandbox.app_id}-g0-escalation-state-changelog"):
            key = json.loads(message.key())
            value = message.value()
            table.setdefault(message.partition(), {})[key] = None if value is None else json.loads(value)
        return table

    def states_of(tenant: str, table: dict) -> dict[int, dict]:
        return {partition: {k: v for k, v in entries.items() if k.startswith(tenant + "\x1f") and v is not None}
                for partition, entries in table.items()
                if any(k.startswith(tenant + "\x1f") and v is not None for k, v in entries.items())}

    try:
        wait_until("up running", lambda: "running (new mail on mail.raw" in up_output(), 150)
        partition_of = {}
        for partition, _, key, _ in read_topic(settings.kafka, sandbox.bootstrap, "mail.raw"):
            partition_of.setdefault(key.decode(), set()).add(partition)
        assert partition_of == {"acme": {0}}

        # Idle for a tick interval: the tick fires acme's last deadlines, and writes their state
        # into acme's partition at once, without a batch of that partition behind it.
        acme_transitions, _, acme_ticked, acme_states = expected["acme"]
        wait_until("acme's tick", lambda: acme_ticked <= set(escalations("acme")), 30)
        wait_until("acme's tick state", lambda: states_of("acme", escalation_state()) == {0: acme_states}, 15)
        assert escalations("acme") == acme_transitions

        # The two tenants at once, as two users would: `threadline ingest` in two shells.
        ingests = [subprocess.Popen([*cli, "ingest", str(mailboxes[tenant]), "--tenant", tenant, "--no-progress"],
                                    cwd=sandbox.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True) for tenant in ("globex", "stark")]
        for ingest in ingests:
            output = ingest.communicate(timeout=120)[0]
            assert ingest.returncode == 0, output
        partition_of = {}
        for partition, _, key, _ in read_topic(settings.kafka, sandbox.bootstrap, "mail.raw"):
            partition_of.setdefault(key.decode(), set()).add(partition)
        assert partition_of == {"acme": {0}, "globex": {3}, "stark": {0}}

        total = sum(len(m) for m in mail.values())
        wait_until("every mail handled",
                   lambda: sum(count_outputs(settings.kafka, sandbox.bootstrap, sandbox.codec, 0).values()) >= total,
                   60)
        for tenant in ("globex", "stark"):
            _, _, ticked, _ = expected[tenant]
            wait_until(f"{tenant}'s tick", lambda: ticked <= set(escalations(tenant)), 30)
        wait_until("every tenant's state", lambda: all(
            states_of(tenant, escalation_state()) == {min(partition_of[tenant]): states}
            for tenant, (_, _, _, states) in expected.items()), 15)
        time.sleep(TICK_S)  # one more tick over all three tenants
        healthy()

        decided = pipeline_decisions(sandbox, settings, 0)
        alone = {tenant: engine_decisions(settings, {tenant: messages}) for tenant, messages in mail.items()}
        for tenant in mail:
            assert {k: v for k, v in decided.items() if k[0] == tenant} == alone[tenant], tenant
            assert escalations(tenant) == expected[tenant][0], tenant
            assert sla_events(tenant) == expected[tenant][1], tenant
        assert set(decided) == {key for decisions in alone.values() for key in decisions}
        # stark's copies of acme's mail are stark's own: they link within stark, as stark alone would
        shared = {mid for (tenant, mid) in decided if tenant == "acme"} & {mid for (t, mid) in decided if t == "stark"}
        assert len(shared) >= 70
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)  # up stops its worker, sink and endpoint
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                up.kill()
        up_out.close()
    assert up.returncode == 0, up_output()[-4000:]
    assert "a worker exited" not in up_output()
