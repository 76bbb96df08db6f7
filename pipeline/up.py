"""``threadline up``: the whole pipeline on one machine, on the embedded defaults.

Broker (embedded unless ``kafka.bootstrap`` is set) -> topics -> worker(s) -> ingest of a sample
mailbox -> wait until every mail is handled -> a summary with explained correlations -> keep
running until Ctrl-C (or stop at once with ``--exit-when-done``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

from pipeline.analytics.report import render_report
from pipeline.broker import EmbeddedBroker, create_topics, free_port
from pipeline.contracts.avro import AvroCodec, registry_from_settings
from pipeline.contracts.records import correlation_of
from pipeline.contracts.topics import (DEADLETTER, ESCALATIONS, MAIL_CORRELATED, MAIL_RAW, MAIL_UNTRACKED,
                                       SINK_TOPICS, SLA_EVENTS, TRACKING_EVENTS, TRACKING_RAW)
from pipeline.correlation.explain import describe
from pipeline.escalation.figures import current_states, format_duration, sla_figures
from pipeline.gateways.schema_registry import start_registry
from pipeline.mail.sources import iter_mail_sources
from pipeline.running import RunningStack, publish, withdraw
from pipeline.settings import Settings
from pipeline.sinks.clickhouse import ClickHouseSink, ClickHouseStore, sink_until
from pipeline.sinks.http_interface import serve as serve_store
from pipeline.streams.ingest import ingest
from pipeline.streams.reader import read_topic
from pipeline.streams.runner import WorkerProcess, app_id, count_records, wait_for_consumed, wait_for_outputs
from pipeline.synth import AutomaticMail, MailGenerator, render_rfc5322, with_automatic_mail
from pipeline.synth_traffic import CampaignTraffic, produce_traffic

SAMPLE_SIZE = 2_000
SAMPLE_OWN_DOMAIN = "support.threadline.test"  # the agents' domain in pipeline.synth
SAMPLE_CAMPAIGNS, SAMPLE_RECIPIENTS = 3, 300


def write_sample_mbox(path: Path, count: int = SAMPLE_SIZE, seed: int = 7) -> Path:
    """A synthetic support mailbox (see pipeline.synth) as an mbox file: ``count`` people's mails
    and the automatic mail they draw (out-of-office replies, acknowledgements, bounces)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as mbox:
        # A mail every two minutes: replies come minutes to days later, so clocks warn and escalate.
        people = MailGenerator(seed, customers=500, agents=8, seconds_between_mails=120).mails(count)
        for mail in with_automatic_mail(people, seed=seed):
            raw = (mail.raw if isinstance(mail, AutomaticMail) else render_rfc5322(mail)).replace(b"\r\n", b"\n")
            body = b"\n".join(b">" + line if line.startswith(b"From ") else line for line in raw.split(b"\n"))
            mbox.write(b"From threadline@synth Thu Jan  1 00:00:00 2026\n" + body + b"\n\n")
    return path


def activate_hint() -> list[tuple[str, str]]:
    """The hint's command that puts this ``threadline`` on PATH in another shell (``make demo`` runs
    ``.venv/bin/threadline`` without activating the venv, so a plain ``threadline`` is not found
    there); none outside a venv."""
    activate = Path(sys.prefix) / "bin" / "activate"
    if sys.prefix == sys.base_prefix or not activate.is_file():
        return []
    shown = os.path.relpath(activate) if activate.is_relative_to(Path.cwd()) else str(activate)
    return [(f". {shown}", "puts threadline on PATH in that shell")]


def _interrupt(*_args) -> None:
    raise KeyboardInterrupt


def _stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


def summarize(settings: Settings, bootstrap: str, codec: AvroCodec, generation: int, examples: int = 3) -> str:
    methods: Counter = Counter()
    automatic: Counter = Counter()
    explained: dict[str, str] = {}
    for _, _, _, record in read_topic(settings.kafka, bootstrap, MAIL_CORRELATED, codec):
        if record["generation"] != generation:
            continue
        methods[record["method_name"]] += 1
        if record["automatic"]:
            automatic[record["automatic"]] += 1
        if record["parent_message_id"] and record["method_name"] not in explained and len(explained) < examples:
            explained[record["method_name"]] = describe(correlation_of(record))
    untracked = Counter(r["reason"] for _, _, _, r in read_topic(settings.kafka, bootstrap, MAIL_UNTRACKED, codec)
                        if r["generation"] == generation)
    dead = Counter(r["reason"] for _, _, _, r in read_topic(settings.kafka, bootstrap, DEADLETTER, codec))
    transitions = [r for _, _, _, r in read_topic(settings.kafka, bootstrap, ESCALATIONS, codec)]
    sla_events = [r for _, _, _, r in read_topic(settings.kafka, bootstrap, SLA_EVENTS, codec)]
    lines = ["correlated by method:"]
    lines += [f"  {name:<18}{count:>8}" for name, count in methods.most_common()]
    if automatic:
        lines.append("automatic mail (labelled; the default policy ignores every kind but list):")
        lines += [f"  {name:<18}{count:>8}" for name, count in automatic.most_common()]
    if untracked:
        lines.append("untracked:")
        lines += [f"  {name:<18}{count:>8}" for name, count in untracked.most_common()]
    states = current_states(transitions)
    lines.append(f"escalations now, per conversation ({len(transitions)} transitions):" + ("" if states else " none"))
    lines += [f"  {name:<18}{count:>8}" for name, count in sorted(states.items())]
    lines.append("SLA targets (met on time of those met or breached; working time to meet, p50 / p90):"
                 + ("" if sla_events else " none"))
    for target, figures in sla_figures(sla_events).items():
        share = "–" if figures.share_met is None else f"{figures.share_met:.1%}"
        decided = figures.met_on_time + figures.met_late + figures.breached_open
        lines.append(f"  {target:<18}{share:>8} of {decided:<6} {format_duration(figures.p50_business_seconds)} / "
                     f"{format_duration(figures.p90_business_seconds)}, {figures.open} still open")
    lines.append("dead letters:" + ("" if dead else " none"))
    lines += [f"  {name:<18}{count:>8}" for name, count in dead.most_common()]
    for text in explained.values():
        lines += ["", text]
    return "\n".join(lines)


def run_up(settings: Settings, *, mailboxes: list[str], tenant: str, direction: str, workers: int,
           exit_when_done: bool, settings_file: Path | None, progress: Callable[[str, int | None], Callable[[int], None]],
           say: Callable[[str], None] = print) -> int:
    data_dir = settings.worker.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # SIGTERM stops like Ctrl-C at any point, so that the broker and the workers started below are
    # always stopped too (the default SIGTERM ends Python without unwinding and leaves them running).
    signal.signal(signal.SIGTERM, _interrupt)
    codec = AvroCodec(registry_from_settings(settings.schema_registry.url))
    generation = settings.worker.generation
    with ExitStack() as stack:
        if settings.kafka.bootstrap:
            bootstrap = settings.kafka.bootstrap
            say(f"using the Kafka cluster at {bootstrap}")
        else:
            # The embedded broker keeps topics in memory: local table state and the embedded
            # ClickHouse of an earlier run would describe topics that no longer exist.
            shutil.rmtree(data_dir / "workers", ignore_errors=True)
            shutil.rmtree(data_dir / "clickhouse", ignore_errors=True)
            broker = stack.enter_context(EmbeddedBroker.start(data_dir / "broker.log"))
            bootstrap = broker.bootstrap
            say(f"embedded broker on {bootstrap} (in memory; log {data_dir / 'broker.log'})")
        created = create_topics(settings.kafka, bootstrap)
        say(f"topics: {len(created)} created, {settings.kafka.partitions} partitions each")

        sample_mailbox = None
        if not mailboxes:
            sample = data_dir / "sample.mbox"
            say(f"no mailbox given: generating {SAMPLE_SIZE} synthetic support mails, with the out-of-office "
                f"replies, acknowledgements and bounces they draw, in {sample}")
            mailboxes, sample_mailbox = [str(write_sample_mbox(sample))], "support"
            if not settings.untracked.own_domains:
                # The sample desk's agents write from this domain: their mail is outbound, and the
                # agent a customer wrote to owns the mail's clock.
                settings = settings.model_copy(update={"untracked": settings.untracked.model_copy(
                    update={"own_domains": [SAMPLE_OWN_DOMAIN]})})
        own_domains = json.dumps(list(settings.untracked.own_domains))
        started = [WorkerProcess.start(bootstrap=bootstrap, data_dir=data_dir / "workers" / str(n),
                                       generation=generation, log_path=data_dir / "workers" / f"{n}.log",
                                       settings_file=settings_file,
                                       extra_env={"THREADLINE_UNTRACKED_OWN_DOMAINS": own_domains})
                   for n in range(workers)]
        for worker in started:
            stack.callback(worker.stop)
        say(f"{workers} correlator worker(s) started, generation {generation} (logs in {data_dir / 'workers'})")
        tracking_port = free_port()
        tracking = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "tracking", "--port", str(tracking_port)],
            env={**os.environ, "THREADLINE_KAFKA_BOOTSTRAP": bootstrap, "THREADLINE_WORKER_DATA_DIR": str(data_dir),
                 **({"THREADLINE_SETTINGS": str(settings_file)} if settings_file else {})},
            stdout=subprocess.DEVNULL, stderr=open(data_dir / "tracking.log", "ab"), stdin=subprocess.DEVNULL)
        stack.callback(_stop_process, tracking)
        say(f"tracking endpoint on http://127.0.0.1:{tracking_port} (pixel /o/TOKEN.gif, clicks /c/TOKEN; "
            f"log {data_dir / 'tracking.log'})")
        registry_url = None
        if not settings.schema_registry.url:  # else the records carry the configured registry's ids
            registry = start_registry(data_dir, topic_prefix=settings.kafka.topic_prefix,
                                      keep_registrations=bool(settings.kafka.bootstrap))
            stack.callback(registry.stop)
            registry_url = registry.url
            say(f"schema registry on {registry_url} (Confluent REST API: the schema ids the records carry)")

        if direction == "auto" and not settings.untracked.own_domains:
            say("no untracked.own_domains configured: every mail is ingested as inbound")
            direction = "in"
        messages = list(iter_mail_sources(mailboxes))
        began = time.monotonic()
        report = ingest(messages, settings, codec, bootstrap, tenant=tenant, direction=direction,
                        mailbox=sample_mailbox, on_progress=progress("ingest mail.raw", len(messages)))
        if report.errors:
            say(f"ingest: {len(report.errors)} delivery errors, first: {report.errors[0]}")
        say(f"ingested {report.delivered} of {report.produced} mails ({report.bytes / 2**20:.1f} MB)")
        expected_mail, hits = report.delivered, 0
        if sample_mailbox is not None:
            traffic = CampaignTraffic(settings.tracking, tenant=tenant, sender_domain=SAMPLE_OWN_DOMAIN).records(
                SAMPLE_CAMPAIGNS, SAMPLE_RECIPIENTS)
            produce_traffic(traffic, settings, codec, bootstrap)
            expected_mail += sum(record.topic == MAIL_RAW for record in traffic)
            hits = sum(record.topic == TRACKING_RAW for record in traffic)
            say(f"generated {SAMPLE_CAMPAIGNS} campaigns to {SAMPLE_RECIPIENTS} recipients each: "
                f"{len(traffic)} records (sends, bounces, replies, {hits} pixel and click hits, conversions)")

        counts = wait_for_outputs(settings.kafka, bootstrap, codec, generation, expected_mail, workers=started,
                                  timeout_s=max(300.0, expected_mail / 50),
                                  on_progress=progress("correlate", expected_mail))
        deadline = time.monotonic() + 120
        while hits and count_records(settings.kafka, bootstrap, TRACKING_EVENTS) < hits:
            dead = [w for w in started if not w.alive]
            if dead:
                raise RuntimeError(dead[0].exit_report())
            if time.monotonic() > deadline:
                raise TimeoutError("the tracking agent did not classify every generated hit within 120 s")
            time.sleep(1)
        # The escalation agent reads the correlations after the correlator wrote them: its escalations
        # and SLA events belong in the report too.
        wait_for_consumed(settings.kafka, bootstrap, app_id(settings), MAIL_CORRELATED, workers=started,
                          timeout_s=max(300.0, expected_mail / 50), progress=progress)
        elapsed = time.monotonic() - began
        say(f"\n{sum(counts.values())} mails handled in {elapsed:.1f} s: {dict(counts)}\n")
        say(summarize(settings, bootstrap, codec, generation))

        store = ClickHouseStore(settings.clickhouse, data_dir / "clickhouse")
        store.migrate()
        sink = ClickHouseSink(settings.kafka, bootstrap, store, codec, app_id=settings.worker.app_id)
        stack.callback(sink.close)
        served = None
        if not settings.clickhouse.url:  # a real server serves itself
            served = serve_store(data_dir / "clickhouse")  # read-only, for commands in other shells and Grafana
            stack.callback(served.stop)
            say(f"ClickHouse HTTP interface on {served.url} (read-only; user {served.user}, its password in "
                f"{data_dir / 'stack.json'})")
        records = sum(count_records(settings.kafka, bootstrap, topic) for topic in SINK_TOPICS)
        sink_until(sink, lambda: sum(sink.inserted.values()) >= records, timeout_s=max(120.0, records / 500),
                   on_progress=progress("ClickHouse sink", records))
        report_path = data_dir / "report.html"
        say("rendering the dashboards as one page ...")
        report_path.write_text(render_report(store), encoding="utf-8")
        say(f"\n{sum(sink.inserted.values())} rows in ClickHouse ({store.location}); "
            f"dashboards as one page: {report_path}")
        peaks = [w.peak_rss_bytes for w in started if w.alive]
        if peaks and None not in peaks:
            say("worker peak memory: " + ", ".join(f"{peak / 2**20:.0f} MB" for peak in peaks))
        dead = [w for w in started if not w.alive]
        if dead:  # everything was handled, but a worker crashed meanwhile (e.g. an agent up does not wait for)
            say(dead[0].exit_report())
            return 1
        stack.callback(withdraw, data_dir)
        publish(data_dir, RunningStack(pid=os.getpid(), bootstrap=bootstrap, embedded_broker=not settings.kafka.bootstrap,
                                       clickhouse_url=served and served.url, clickhouse_user=served and served.user,
                                       clickhouse_password=served and served.password, schema_registry_url=registry_url,
                                       tracking_url=f"http://127.0.0.1:{tracking_port}"))
        if exit_when_done:
            say("\ndone; the embedded broker stops now (run `threadline up` without --exit-when-done to keep it)")
            return 0
        hints = activate_hint() + [
            (f"export THREADLINE_KAFKA_BOOTSTRAP={bootstrap}", ""),
            ("threadline doctor", "broker, topics, schemas, settings"),
            ('threadline sql "SELECT count() FROM {db}.mail_correlated"', "the store, which this process serves"),
            (f"open {report_path}", "response times, campaigns, correlation quality"),
            ("threadline replay --settings NEW.toml", "recompute every correlation as a new generation"),
            ("threadline tail mail.correlated", "the output topic, decoded, one JSON line per record"),
            ("threadline explain MESSAGE-ID", "why a mail was linked, e.g. one of those above"),
        ] + ([(f"curl {registry_url}/subjects", "the Schema Registry for Avro consumers (docs/pipeline.md)")]
             if registry_url else [])
        width = max(len(command) for command, _ in hints) + 2
        say("\nLook further, in another shell in this folder:" + "".join(
            f"\n  {command:<{width}}# {comment}" if comment else f"\n  {command}" for command, comment in hints))
        say("\nrunning (new mail on mail.raw is correlated and lands in ClickHouse); Ctrl-C stops everything")
        try:
            while True:
                dead = [w for w in started if not w.alive]
                if dead:
                    say(dead[0].exit_report())
                    return 1
                sink.poll_once(timeout_s=1.0)
        except KeyboardInterrupt:
            pass
        say("stopping ...")
    say("stopped")
    return 0
