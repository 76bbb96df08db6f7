"""``threadline bench pipeline``: mails/s end to end per worker, against raw confluent-kafka.

In one run, on one broker, with the same encoded ``mail.raw`` records (synthetic mail of several
tenants, spread evenly over the partitions, as a tenant's mail is ordered on one partition):

* baseline: a confluent-kafka producer writes them and a consumer reads them back;
* pipeline: ``workers`` worker processes with every agent (started and warmed up on a first
  small batch of every tenant, so group join and recovery are not counted) get the same records
  produced to ``mail.raw``; the clock runs from the first record produced until the last
  correlator output is seen *and* the escalation agent has applied every ``mail.correlated``
  record (its offset markers in its table's changelog say so, without waiting for a commit).

Besides the rates, it reports the CPU time the workers and their parse processes used per mail
in the timed part, which the machine's other load changes far less than the rates.

The ratio pipeline/baseline is the figure to compare between machines.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Callable

from pipeline.bench.common import machine_facts
from pipeline.broker import create_topics, kafka_bootstrap
from pipeline.contracts.avro import AvroCodec, registry_from_settings
from pipeline.contracts.records import mail_raw_record
from pipeline.contracts.topics import MAIL_CORRELATED, MAIL_RAW
from pipeline.runtime.kafka import new_producer, new_reader, produce_when_room, topic_name
from pipeline.runtime.state import offset_key
from pipeline.settings import Settings
from pipeline.streams.runner import OUTPUT_TOPICS, WorkerProcess, app_id
from pipeline.synth import MailGenerator, render_rfc5322

WARM_UP = 50  # mails per tenant
TENANTS_PER_PARTITION = 2
TARGET_MAILS_PER_S = 10_000
TARGET_RATIO = 0.30
ESCALATION_TABLE = "escalation-state"


def partition_of(key: bytes, partitions: int) -> int:
    """Where the producers (murmur2, like Faust) put a key."""
    from aiokafka.partitioner import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


def bench_tenants(partitions: int, per_partition: int = TENANTS_PER_PARTITION) -> list[str]:
    """Tenant names that fill every partition with ``per_partition`` tenants."""
    tenants: list[str] = []
    placed: Counter = Counter()
    n = 0
    while len(tenants) < partitions * per_partition:
        name = f"tenant-{n:02d}"
        partition = partition_of(name.encode(), partitions)
        if placed[partition] < per_partition:
            placed[partition] += 1
            tenants.append(name)
        n += 1
    return tenants


class OutputCounter:
    """Counts records arriving on the correlator's output topics, and follows the escalation
    agent's offset markers (its table's changelog), in a background thread."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        from confluent_kafka import TopicPartition

        self.count = 0
        self.correlated_ends: dict[int, int] = {}  # partition -> last mail.correlated offset seen
        self.escalation_applied: dict[int, int] = {}  # partition -> its offset marker (last applied offset)
        self._correlated = topic_name(settings.kafka, MAIL_CORRELATED)
        self._changelog = f"{app_id(settings)}-{ESCALATION_TABLE}-changelog"
        # Faust's table keys are JSON strings on the changelog.
        self._markers = {json.dumps(offset_key(p)).encode(): p for p in range(settings.kafka.partitions)}
        self._stop = threading.Event()
        self._consumer = new_reader(settings.kafka, bootstrap, "bench")
        names = [topic_name(settings.kafka, t) for t in OUTPUT_TOPICS] + [self._changelog]
        metadata = self._consumer.list_topics(timeout=10)
        self._consumer.assign([TopicPartition(n, p, 0) for n in names for p in metadata.topics[n].partitions])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in self._consumer.consume(1000, 0.1):
                if message.error():
                    continue
                topic = message.topic()
                if topic == self._changelog:
                    partition = self._markers.get(message.key())
                    if partition is not None:
                        self.escalation_applied[partition] = int(message.value())
                    continue
                if topic == self._correlated:
                    self.correlated_ends[message.partition()] = message.offset()
                self.count += 1

    def escalation_behind(self) -> int:
        return sum(1 for p, end in self.correlated_ends.items() if self.escalation_applied.get(p, -1) < end)

    def wait_for(self, count: int, timeout_s: float, workers: list[WorkerProcess]) -> float:
        """Wait until ``count`` outputs are seen and escalation has applied every correlated record."""
        deadline = time.monotonic() + timeout_s
        while self.count < count or self.escalation_behind():
            for worker in workers:
                if not worker.alive:
                    raise RuntimeError(f"a worker exited:\n{worker.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.count} of {count} outputs, escalation {self.escalation_behind()} "
                                   f"partitions behind after {timeout_s} s")
            time.sleep(0.01)
        return time.monotonic()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._consumer.close()


def _produce(settings: Settings, bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = new_producer(settings.kafka, bootstrap)
    for key, value in records:
        produce_when_room(producer, topic, value, key)
    if producer.flush(120):
        raise RuntimeError(f"records to {topic} undelivered")


def _baseline(settings: Settings, bootstrap: str, records: list[tuple[bytes, bytes]]) -> float:
    """Mails/s of producing the records with confluent-kafka and consuming them back."""
    from confluent_kafka import TopicPartition

    topic = topic_name(settings.kafka, "bench.baseline")
    create_topics(settings.kafka, bootstrap, topics=("bench.baseline",))
    consumer = new_reader(settings.kafka, bootstrap, "bench")
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    started = time.perf_counter()
    _produce(settings, bootstrap, topic, records)
    received = 0
    while received < len(records):
        received += sum(1 for m in consumer.consume(1000, 1.0) if not m.error())
    elapsed = time.perf_counter() - started
    consumer.close()
    return len(records) / elapsed


def _encoded_mail(codec: AvroCodec, tenants: list[str], per_tenant: int, seed: int) -> list[tuple[bytes, bytes]]:
    """``per_tenant`` synthetic mails of each tenant as ``mail.raw`` records (key, value), the
    tenants' mail interleaved as it would arrive."""
    streams = []
    for n, tenant in enumerate(tenants):
        generator = MailGenerator(seed + n, tenant=tenant, customers=5_000, agents=20)
        streams.append([(tenant.encode(), codec.encode(MAIL_RAW, mail_raw_record(
            tenant=tenant, mailbox="synth", direction="in", source=f"synth#{tenant}#{k}", raw=render_rfc5322(mail))))
            for k, mail in enumerate(generator.mails(per_tenant))])
    return [record for group in zip(*streams) for record in group]


def run_pipeline_bench(settings: Settings, *, mails: int, seed: int, data_dir: Path,
                       progress: Callable[[str], None] = lambda _m: None, workers: int = 1) -> dict:
    settings = settings.model_copy(update={
        "kafka": settings.kafka.model_copy(update={"topic_prefix": f"bench{uuid.uuid4().hex[:6]}."}),
        "worker": settings.worker.model_copy(update={"app_id": f"bench{uuid.uuid4().hex[:6]}"}),
    })
    codec = AvroCodec(registry_from_settings(settings.schema_registry.url))
    tenants = bench_tenants(settings.kafka.partitions)
    per_tenant = max(1, mails // len(tenants))
    mails = per_tenant * len(tenants)
    progress(f"generating mail: {len(tenants)} tenants, {per_tenant} mails each")
    encoded = _encoded_mail(codec, tenants, WARM_UP + per_tenant, seed)
    warm, timed = encoded[:WARM_UP * len(tenants)], encoded[WARM_UP * len(tenants):]
    with kafka_bootstrap(settings, data_dir / "bench-broker.log") as bootstrap:
        create_topics(settings.kafka, bootstrap)
        progress("baseline: raw confluent-kafka produce + consume")
        baseline = _baseline(settings, bootstrap, timed)

        env_file = data_dir / "bench-settings.toml"
        env_file.write_text(f'[kafka]\ntopic_prefix = "{settings.kafka.topic_prefix}"\n'
                            f'partitions = {settings.kafka.partitions}\n'
                            f'[worker]\napp_id = "{settings.worker.app_id}"\n')
        processes: list[WorkerProcess] = []
        for n in range(workers):
            shutil.rmtree(data_dir / f"bench-worker{n}", ignore_errors=True)
            (data_dir / f"bench-worker{n}.log").unlink(missing_ok=True)
            processes.append(WorkerProcess.start(bootstrap=bootstrap, data_dir=data_dir / f"bench-worker{n}",
                                                 generation=0, log_path=data_dir / f"bench-worker{n}.log",
                                                 settings_file=env_file))
        raw_topic = topic_name(settings.kafka, MAIL_RAW)
        counter: OutputCounter | None = None
        try:
            progress(f"pipeline: {workers} worker(s) start and warm up")
            _produce(settings, bootstrap, raw_topic, warm)
            deadline = time.monotonic() + 180
            while counter is None:  # the changelog topic exists once a worker has started
                try:
                    counter = OutputCounter(settings, bootstrap)
                except KeyError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            counter.wait_for(len(warm), 180, processes)
            progress(f"pipeline: {mails} mails end to end")
            cpu_before = [p.cpu_seconds for p in processes]
            started = time.monotonic()
            _produce(settings, bootstrap, raw_topic, timed)
            produced = time.monotonic()
            finished = counter.wait_for(len(warm) + mails, max(300.0, mails / 200), processes)
            cpu = [None if a is None or b is None else b - a for a, b in zip(cpu_before, (p.cpu_seconds for p in processes))]
            peak_rss = [p.peak_rss_bytes for p in processes]
        finally:
            if counter is not None:
                counter.close()
            for process in processes:
                process.stop()
    rate = mails / (finished - started)
    cpu_total = None if None in cpu else sum(cpu)
    return {
        "benchmark": "pipeline",
        "machine": machine_facts(),
        "settings": {"mails": mails, "seed": seed, "partitions": settings.kafka.partitions, "tenants": len(tenants),
                     "batch_size": settings.worker.batch_size, "workers": workers},
        "baseline_confluent_kafka_mails_per_s": round(baseline),
        "pipeline_mails_per_s": round(rate),
        "produce_seconds": round(produced - started, 2),
        "end_to_end_seconds": round(finished - started, 2),
        "worker_peak_rss_mb": [round(r / 2**20) if r else None for r in peak_rss],
        # CPU the workers (and their parse processes) used in the timed part: the machine's other
        # load changes it far less than the rates.
        "worker_cpu_seconds": [None if c is None else round(c, 2) for c in cpu],
        "summary": {
            "workers": workers,
            "pipeline_mails_per_s": round(rate),
            "pipeline_mails_per_s_per_worker": round(rate / workers),
            "ratio_to_confluent_kafka": round(rate / baseline, 4),
            "worker_cpu_us_per_mail": None if cpu_total is None else round(cpu_total / mails * 1e6),
            "meets_target_mails_per_s": rate / workers >= TARGET_MAILS_PER_S,
            "meets_target_ratio": rate / baseline >= TARGET_RATIO,
        },
    }
