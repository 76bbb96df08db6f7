"""``threadline bench replay``: how long the product's replay of N mails takes with W workers.

On an embedded broker (memory only: this bench measures what the mail costs it), in one run:

1. **ingest**: synthetic support mail (``pipeline.synth``, one seeded generator per tenant, two
   tenants per partition, rendered to RFC 5322 in a pool of processes and streamed in chunks,
   never held whole) goes through ``threadline``'s ingest into ``mail.raw``; timed on its own.
2. **baseline**: raw confluent-kafka reads the same ``mail.raw`` records back (one consumer,
   every partition), in the same run on the same broker.
3. **replay**: ``threadline replay --workers W`` as a user runs it (a subprocess of the CLI: a
   new generation, W worker processes, its own progress (the group's commits), its comparison of generations
   at the end).  The clock runs from starting the command to the last output record (on
   ``mail.correlated``, ``mail.untracked`` or the dead letters) arriving at a reader of this
   bench; the command's whole wall time is reported beside it.

Peak RSS (VmHWM) and CPU seconds of the broker, the replay command and each worker are sampled
from /proc while it runs.  Each partition holds as many tenants (``bench_tenants``), so W workers
that split the partitions evenly also split the work evenly.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from pipeline.bench.common import machine_facts
from pipeline.bench.pipeline import bench_tenants
from pipeline.broker import EmbeddedBroker, create_topics
from pipeline.contracts.avro import AvroCodec, registry_from_settings
from pipeline.contracts.topics import MAIL_RAW
from pipeline.runtime.kafka import new_reader, topic_name
from pipeline.runtime.producer import IngestReport
from pipeline.settings import Settings, load_settings
from pipeline.streams.ingest import ingest
from pipeline.streams.runner import OUTPUT_TOPICS

TARGET_SECONDS_PER_MILLION = 300.0  # issue 18: 1M mails in < 5 minutes with 2 workers
TARGET_MAILS_PER_S = 1_000_000 / TARGET_SECONDS_PER_MILLION
CHUNK = 5_000  # mails a generator process renders and hands over at a time
OWN_DOMAIN = "support.threadline.test"  # the synthetic agents' domain: their replies are outbound


def _render_tenants(tenants: list[tuple[str, int, int]], queue) -> None:
    """In a generator process: ``(tenant, seed, mails)`` each, in chunks, round robin, onto ``queue``."""
    from pipeline.synth import MailGenerator, render_rfc5322

    streams = [(tenant, MailGenerator(seed, tenant=tenant, customers=5_000, agents=20).mails(mails), mails)
               for tenant, seed, mails in tenants]
    done = [0] * len(streams)
    while any(d < total for d, (_, _, total) in zip(done, streams)):
        for i, (tenant, mails, total) in enumerate(streams):
            if done[i] >= total:
                continue
            size = min(CHUNK, total - done[i])
            chunk = [(f"synth-{tenant}#{done[i] + k}", render_rfc5322(mail)) for k, mail in
                     zip(range(size), mails)]
            done[i] += size
            queue.put((tenant, chunk))
    queue.put(None)


def synthetic_chunks(mails: int, tenants: list[str], seed: int, processes: int) -> Iterator[tuple[str, list]]:
    """``(tenant, [(source_ref, raw), ...])`` chunks of ``mails`` mails over ``tenants`` (as even
    as division allows; tenant n seeded ``seed + n``), rendered by ``processes`` processes."""
    shares = [mails // len(tenants) + (1 if n < mails % len(tenants) else 0) for n in range(len(tenants))]
    jobs = [(tenant, seed + n, share) for n, (tenant, share) in enumerate(zip(tenants, shares)) if share]
    processes = max(1, min(processes, len(jobs)))
    context = multiprocessing.get_context("spawn")  # the parent has librdkafka threads: never fork them
    queue = context.Queue(maxsize=4 * processes)  # bounds what waits in memory
    children = [context.Process(target=_render_tenants, args=(jobs[p::processes], queue), daemon=True)
                for p in range(processes)]
    for child in children:
        child.start()
    try:
        running = processes
        while running:
            item = queue.get(timeout=600)
            if item is None:
                running -= 1
            else:
                yield item
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
            child.join(10)


@dataclass
class ProcessSample:
    """Peak RSS and CPU seconds of a process, as last read from /proc (kept after it exits)."""

    pid: int
    name: str
    peak_rss_bytes: int = 0
    cpu_s: float = 0.0

    def read(self) -> bool:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                self.peak_rss_bytes = max(self.peak_rss_bytes, int(line.split()[1]) * 1024)
        fields = stat.rsplit(")", 1)[1].split()
        self.cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return True

    def as_dict(self) -> dict:
        return {"pid": self.pid, "name": self.name, "peak_rss_mb": round(self.peak_rss_bytes / 2**20, 1),
                "cpu_s": round(self.cpu_s, 1)}


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return sorted(found)


@dataclass
class OutputArrivals:
    """Reads the output topics in a thread (values not decoded): how many records arrived, and
    when the last one did."""

    settings: Settings
    bootstrap: str
    count: int = 0
    last_arrival: float | None = None  # time.monotonic()
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        from confluent_kafka import TopicPartition

        self._consumer = new_reader(self.settings.kafka, self.bootstrap, "bench-replay")
        names = [topic_name(self.settings.kafka, t) for t in OUTPUT_TOPICS]
        metadata = self._consumer.list_topics(timeout=10)
        self._consumer.assign([TopicPartition(n, p, 0) for n in names for p in metadata.topics[n].partitions])
        self._thread = threading.Thread(target=self._run, name="bench-replay-outputs", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            arrived = sum(1 for message in self._consumer.consume(1000, 0.1) if not message.error())
            if arrived:
                self.count += arrived
                self.last_arrival = time.monotonic()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._consumer.close()


def _ingest_all(chunks: Iterator[tuple[str, list]], settings: Settings, codec: AvroCodec, bootstrap: str,
                mails: int, broker: ProcessSample, progress: Callable[[str], None]) -> tuple[int, int]:
    """``threadline``'s ingest of every chunk: one ``ingest`` call (one producer) per tenant, each
    in a thread fed through a short queue (a producer per chunk would wait for its acks each
    time).  Returns (mails delivered, raw bytes); raises when any was not delivered."""
    feeds: dict[str, queue.Queue] = {}
    threads: list[threading.Thread] = []
    reports: dict[str, IngestReport] = {}
    produced: dict[str, int] = {}
    failures: list[BaseException] = []

    def stream(feed: queue.Queue) -> Iterator[tuple[str, bytes]]:
        while (chunk := feed.get()) is not None:
            yield from chunk

    def run(tenant: str, feed: queue.Queue) -> None:
        try:
            reports[tenant] = ingest(stream(feed), settings, codec, bootstrap, tenant=tenant, direction="auto",
                                     mailbox="synth", on_progress=lambda count: produced.__setitem__(tenant, count))
        except BaseException as exc:  # handed to the main thread, which raises it
            failures.append(exc)

    def hand(tenant: str, item: list | None) -> None:
        while True:
            if failures:
                raise RuntimeError(f"ingest failed: {failures[0]!r}") from failures[0]
            try:
                feeds[tenant].put(item, timeout=1)
                return
            except queue.Full:
                continue

    started = last_report = time.monotonic()
    for tenant, chunk in chunks:
        if tenant not in feeds:
            feeds[tenant] = queue.Queue(maxsize=2)
            threads.append(threading.Thread(target=run, args=(tenant, feeds[tenant]), name=f"ingest-{tenant}",
                                            daemon=True))
            threads[-1].start()
        hand(tenant, chunk)
        if (now := time.monotonic()) - last_report >= 10:
            last_report = now
            broker.read()
            done = sum(produced.values())
            progress(f"ingest: {done:,} of {mails:,} mails ({done / (now - started):,.0f}/s), "
                     f"broker RSS {broker.peak_rss_bytes / 2**20:,.0f} MB")
    for tenant in feeds:
        hand(tenant, None)
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"ingest failed: {failures[0]!r}") from failures[0]
    delivered = sum(r.delivered for r in reports.values())
    errors = [e for r in reports.values() for e in r.errors]
    if delivered != mails or errors:
        raise RuntimeError(f"ingest delivered {delivered} of {mails} mails; first errors: {errors[:3]}")
    return delivered, sum(r.bytes for r in reports.values())


def _read_back(settings: Settings, bootstrap: str, expected: int) -> float:
    """Mails/s of one raw confluent-kafka consumer reading the ``expected`` records of ``mail.raw``."""
    from confluent_kafka import TopicPartition

    name = topic_name(settings.kafka, MAIL_RAW)
    consumer = new_reader(settings.kafka, bootstrap, "bench-replay-baseline")
    partitions = consumer.list_topics(name, timeout=10).topics[name].partitions
    consumer.assign([TopicPartition(name, p, 0) for p in partitions])
    started = time.perf_counter()
    received = 0
    deadline = time.monotonic() + max(120.0, expected / 1000)
    while received < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the baseline read {received} of {expected} records of {name}")
        received += sum(1 for m in consumer.consume(1000, 1.0) if not m.error())
    elapsed = time.perf_counter() - started
    consumer.close()
    return expected / elapsed


def _settings_file(path: Path, prefix: str, app: str, partitions: int, root: Path) -> Path:
    path.write_text(f'[kafka]\ntopic_prefix = "{prefix}"\npartitions = {partitions}\n'
                    f'[mail]\nblob_dir = "{root / "blobs"}"\n'
                    f'[untracked]\nown_domains = ["{OWN_DOMAIN}"]\n'
                    f'[worker]\napp_id = "{app}"\ndata_dir = "{root / "worker"}"\n')
    return path


def _stop_command(command: subprocess.Popen, worker_pids: list[int]) -> None:
    """Interrupt the replay command (it stops its workers), then kill whatever is left."""
    if command.poll() is None:
        command.send_signal(signal.SIGINT)
        try:
            command.wait(30)
        except subprocess.TimeoutExpired:
            command.kill()
            command.wait(10)
    for pid in worker_pids:
        try:  # still that worker (not a process that got its pid since): in its own process group
            if b"pipeline.streams.app" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


def run_replay_bench(settings: Settings, *, mails: int, workers: int, seed: int, data_dir: Path,
                     tenants_per_partition: int = 2,
                     progress: Callable[[str], None] = lambda _m: None) -> dict:
    root = data_dir / "bench-replay"
    if root.exists():
        import shutil

        shutil.rmtree(root)
    root.mkdir(parents=True)
    tag = uuid.uuid4().hex[:6]
    settings_path = _settings_file(root / "settings.toml", f"bench{tag}.", f"benchreplay{tag}",
                                   settings.kafka.partitions, root)
    bench_settings = load_settings(settings_path)
    names = bench_tenants(bench_settings.kafka.partitions, tenants_per_partition)
    codec = AvroCodec(registry_from_settings(bench_settings.schema_registry.url))
    with EmbeddedBroker.start(root / "broker.log") as broker:
        bootstrap = broker.bootstrap
        broker_sample = ProcessSample(broker.process.pid, "broker")
        bench_settings = bench_settings.model_copy(update={
            "kafka": bench_settings.kafka.model_copy(update={"bootstrap": bootstrap})})
        create_topics(bench_settings.kafka, bootstrap)

        progress(f"ingest: {mails:,} synthetic mails of {len(names)} tenants into mail.raw")
        started = time.monotonic()
        produced, raw_bytes = _ingest_all(synthetic_chunks(mails, names, seed, processes=os.cpu_count() or 1),
                                          bench_settings, codec, bootstrap, mails, broker_sample, progress)
        ingest_s = time.monotonic() - started
        broker_sample.read()
        broker_after_ingest = broker_sample.peak_rss_bytes

        progress("baseline: raw confluent-kafka reads mail.raw")
        baseline = _read_back(bench_settings, bootstrap, mails)

        progress(f"replay: threadline replay --workers {workers}")
        arrivals = OutputArrivals(bench_settings, bootstrap)
        env = {**os.environ, "THREADLINE_KAFKA_BOOTSTRAP": bootstrap, "THREADLINE_SETTINGS": str(settings_path)}
        env.pop("THREADLINE_WORKER_GENERATION", None)
        command_log = root / "replay-command.log"
        samples: dict[int, ProcessSample] = {}
        replay_started = time.monotonic()
        with open(command_log, "wb") as log:
            command = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "replay", "--settings", str(settings_path),
                                        "--workers", str(workers), "--no-progress"],
                                       env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       cwd=root, start_new_session=True)
        samples[command.pid] = ProcessSample(command.pid, "replay command")
        workers_started: float | None = None
        worker_pids: list[int] = []
        try:
            last_report = replay_started
            while command.poll() is None:
                for pid in children_of(command.pid):
                    if pid not in samples:
                        samples[pid] = ProcessSample(pid, f"worker {len(worker_pids) + 1}")
                        worker_pids.append(pid)
                        if workers_started is None:
                            workers_started = time.monotonic()
                for n, worker_pid in enumerate(worker_pids, start=1):
                    for pid in children_of(worker_pid):  # its parse pool: its memory and CPU count too
                        samples.setdefault(pid, ProcessSample(pid, f"worker {n} helper"))
                for sample in [*samples.values(), broker_sample]:
                    sample.read()
                now = time.monotonic()
                if now - last_report >= 10:
                    last_report = now
                    worker_rss = ", ".join(f"{samples[pid].peak_rss_bytes / 2**20:,.0f}" for pid in worker_pids)
                    progress(f"replay: {arrivals.count:,} of {mails:,} outputs after {now - replay_started:,.0f} s "
                             f"({arrivals.count / (now - replay_started):,.0f}/s); peak RSS MB: workers [{worker_rss}], "
                             f"broker {broker_sample.peak_rss_bytes / 2**20:,.0f}")
                time.sleep(0.5)
        except BaseException:
            _stop_command(command, worker_pids)
            raise
        finally:
            arrivals.close()
        command_s = time.monotonic() - replay_started
        output = command_log.read_text(errors="replace")
        if command.returncode != 0:
            raise RuntimeError(f"threadline replay exited with code {command.returncode}:\n{output[-3000:]}")
        broker_sample.read()
    if arrivals.last_arrival is None or arrivals.count < mails:
        raise RuntimeError(f"the replay ended with {arrivals.count} of {mails} outputs seen:\n{output[-3000:]}")
    seconds = arrivals.last_arrival - replay_started
    rate = mails / seconds
    worker_samples = [samples[pid] for pid in worker_pids]
    helpers = [s for s in samples.values() if s.name.endswith(" helper")]
    return {
        "benchmark": "replay",
        "machine": machine_facts(),
        "settings": {"mails": mails, "workers": workers, "seed": seed, "tenants": names,
                     "partitions": bench_settings.kafka.partitions, "batch_size": bench_settings.worker.batch_size,
                     "direction": f"auto (own domain {OWN_DOMAIN})"},
        "ingest": {"mails": produced, "raw_mb": round(raw_bytes / 2**20, 1), "seconds": round(ingest_s, 1),
                   "mails_per_s": round(produced / ingest_s), "note": "generation in a process pool + ingest"},
        "baseline_confluent_kafka_read_mails_per_s": round(baseline),
        "replay": {
            "seconds_to_last_output": round(seconds, 1),
            "seconds_to_workers_started": round(workers_started - replay_started, 1) if workers_started else None,
            "command_seconds": round(command_s, 1),
            "outputs_seen": arrivals.count,
            "command_output": output.strip().splitlines()[-12:],
        },
        "processes": [s.as_dict() for s in [*samples.values(), broker_sample]],
        "broker_rss_after_ingest_mb": round(broker_after_ingest / 2**20, 1),
        "summary": {
            "mails": mails,
            "workers": workers,
            "seconds": round(seconds, 1),
            "mails_per_s": round(rate),
            "mails_per_s_per_worker": round(rate / workers),
            "baseline_confluent_kafka_read_mails_per_s": round(baseline),
            "ratio_to_confluent_kafka": float(f"{rate / baseline:.3g}"),
            "command_seconds": round(command_s, 1),
            "workers_peak_rss_mb": [round(s.peak_rss_bytes / 2**20, 1) for s in worker_samples],
            # The workers' own processes (the parse pool), all of them together.
            "worker_helpers": len(helpers),
            "worker_helpers_peak_rss_mb": round(sum(s.peak_rss_bytes for s in helpers) / 2**20, 1),
            "cpu_s": {"workers": round(sum(s.cpu_s for s in worker_samples), 1),
                      "worker_helpers": round(sum(s.cpu_s for s in helpers), 1),
                      "replay_command": round(samples[command.pid].cpu_s, 1), "broker": round(broker_sample.cpu_s, 1)},
            "broker_peak_rss_mb": round(broker_sample.peak_rss_bytes / 2**20, 1),
            "target": f"1,000,000 mails in < {TARGET_SECONDS_PER_MILLION:.0f} s with 2 workers "
                      f"({TARGET_MAILS_PER_S:,.0f} mails/s)",
            # Only a run at the target's size says whether it is met: fixed costs (start-up, group
            # join) weigh more on fewer mails.
            "meets_target": (seconds < TARGET_SECONDS_PER_MILLION * mails / 1_000_000 and workers <= 2)
                            if mails >= 1_000_000 else None,
        },
    }
