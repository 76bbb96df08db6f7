"""``threadline bench pipeline``: mails/s end to end per worker, against raw confluent-kafka.

In one run, on one broker, with the same encoded ``mail.raw`` records:

* baseline: a confluent-kafka producer writes them and a consumer reads them back;
* pipeline: one correlator worker (started and warmed up on a first small batch, so group join
  and recovery are not counted) gets the records from ``threadline``'s ingest and emits its
  outputs; the clock runs from the first record produced to the last output seen.

The ratio pipeline/baseline is the figure to compare between machines.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from pipeline.bench.common import machine_facts
from pipeline.broker import create_topics, kafka_bootstrap
from pipeline.contracts.topics import MAIL_RAW
from pipeline.runtime.kafka import new_producer, new_reader, produce_when_room, topic_name
from pipeline.contracts.avro import AvroCodec, registry_from_settings
from pipeline.settings import Settings
from pipeline.streams.ingest import ingest
from pipeline.streams.runner import OUTPUT_TOPICS, WorkerProcess
from pipeline.synth import MailGenerator, render_rfc5322

WARM_UP = 200
TARGET_MAILS_PER_S = 10_000
TARGET_RATIO = 0.30


class OutputCounter:
    """Counts records arriving on the output topics, in a background thread."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        from confluent_kafka import TopicPartition

        self.count = 0
        self._stop = threading.Event()
        self._consumer = new_reader(settings.kafka, bootstrap, "bench")
        names = [topic_name(settings.kafka, t) for t in OUTPUT_TOPICS]
        metadata = self._consumer.list_topics(timeout=10)
        self._consumer.assign([TopicPartition(n, p, 0) for n in names for p in metadata.topics[n].partitions])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in self._consumer.consume(1000, 0.1):
                if not message.error():
                    self.count += 1

    def wait_for(self, count: int, timeout_s: float, worker: WorkerProcess) -> float:
        deadline = time.monotonic() + timeout_s
        while self.count < count:
            if not worker.alive:
                raise RuntimeError(f"the worker exited:\n{worker.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.count} of {count} outputs after {timeout_s} s")
            time.sleep(0.01)
        return time.monotonic()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._consumer.close()


def _baseline(settings: Settings, bootstrap: str, values: list[bytes]) -> float:
    """Mails/s of producing the records with confluent-kafka and consuming them back."""
    from confluent_kafka import TopicPartition

    topic = topic_name(settings.kafka, "bench.baseline")
    create_topics(settings.kafka, bootstrap, topics=("bench.baseline",))
    producer = new_producer(settings.kafka, bootstrap)
    consumer = new_reader(settings.kafka, bootstrap, "bench")
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    started = time.perf_counter()
    for value in values:
        produce_when_room(producer, topic, value, b"default")
    producer.flush(120)
    received = 0
    while received < len(values):
        received += sum(1 for m in consumer.consume(1000, 1.0) if not m.error())
    elapsed = time.perf_counter() - started
    consumer.close()
    return len(values) / elapsed


def run_pipeline_bench(settings: Settings, *, mails: int, seed: int, data_dir: Path,
                       progress: Callable[[str], None] = lambda _m: None) -> dict:
    settings = settings.model_copy(update={
        "kafka": settings.kafka.model_copy(update={"topic_prefix": f"bench{uuid.uuid4().hex[:6]}."}),
        "worker": settings.worker.model_copy(update={"app_id": f"bench{uuid.uuid4().hex[:6]}"}),
    })
    codec = AvroCodec(registry_from_settings(settings.schema_registry.url))
    generator = MailGenerator(seed, customers=5_000, agents=20)
    progress("generating mail")
    messages = [(f"synth#{n}", render_rfc5322(mail)) for n, mail in enumerate(generator.mails(mails + WARM_UP))]
    warm, timed = messages[:WARM_UP], messages[WARM_UP:]
    with kafka_bootstrap(settings, data_dir / "bench-broker.log") as bootstrap:
        create_topics(settings.kafka, bootstrap)
        from pipeline.contracts.records import mail_raw_record

        progress("baseline: raw confluent-kafka produce + consume")
        baseline_values = [codec.encode(MAIL_RAW, mail_raw_record(tenant="default", mailbox="synth", direction="in",
                                                                    source=ref, raw=raw)) for ref, raw in timed]
        baseline = _baseline(settings, bootstrap, baseline_values)

        env_file = data_dir / "bench-settings.toml"
        env_file.write_text(f'[kafka]\ntopic_prefix = "{settings.kafka.topic_prefix}"\n'
                            f'partitions = {settings.kafka.partitions}\n'
                            f'[worker]\napp_id = "{settings.worker.app_id}"\n')
        shutil.rmtree(data_dir / "bench-worker", ignore_errors=True)
        (data_dir / "bench-worker.log").unlink(missing_ok=True)
        worker = WorkerProcess.start(bootstrap=bootstrap, data_dir=data_dir / "bench-worker", generation=0,
                                     log_path=data_dir / "bench-worker.log", settings_file=env_file)
        counter = OutputCounter(settings, bootstrap)
        try:
            progress("pipeline: worker start and warm-up")
            ingest(warm, settings, codec, bootstrap)
            counter.wait_for(WARM_UP, 180, worker)
            progress(f"pipeline: {mails} mails end to end")
            started = time.monotonic()
            ingest(timed, settings, codec, bootstrap)
            ingested = time.monotonic()
            finished = counter.wait_for(WARM_UP + mails, max(300.0, mails / 200), worker)
        finally:
            counter.close()
            worker.stop()
    rate = mails / (finished - started)
    return {
        "benchmark": "pipeline",
        "machine": machine_facts(),
        "settings": {"mails": mails, "seed": seed, "partitions": settings.kafka.partitions,
                     "batch_size": settings.worker.batch_size, "workers": 1},
        "baseline_confluent_kafka_mails_per_s": round(baseline),
        "pipeline_mails_per_s": round(rate),
        "ingest_seconds": round(ingested - started, 2),
        "end_to_end_seconds": round(finished - started, 2),
        "summary": {
            "pipeline_mails_per_s_per_worker": round(rate),
            "ratio_to_confluent_kafka": round(rate / baseline, 4),
            "meets_target_mails_per_s": rate >= TARGET_MAILS_PER_S,
            "meets_target_ratio": rate / baseline >= TARGET_RATIO,
        },
    }
