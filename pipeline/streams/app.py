"""The Faust application: the correlator (``mail.raw``), escalation (``mail.correlated``),
tracking (``tracking.raw``), CRM directory (``crm.entities``) and corrections (``corrections``) agents.

Started by ``threadline worker`` (or ``threadline up``) as ``python -m pipeline.streams.app
worker``; settings come from ``THREADLINE_SETTINGS`` and ``THREADLINE_*`` like every command.

Per batch (``stream.take_events``): the :class:`MailProcessor` correlates the records, the
outputs are produced with a confluent-kafka producer and flushed (delivery errors stop the
worker before anything is acknowledged), then the index entries are written to the Faust table
(RocksDB, and its changelog by the same producer: :class:`ChangelogAwaitedTable`) and their
changelog records awaited, and only then does Faust acknowledge
and commit the batch (at-least-once; the table's offset markers make redelivered records no-ops).
After a worker that did not stop cleanly, its local tables are discarded and restored from the
changelogs (:func:`local_tables_kept_after_clean_stop`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import time
import traceback
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from functools import cache, partial
from pathlib import Path
from typing import Awaitable, Callable, Iterator

import faust
import mode
from faust.types import TP

from pipeline.contracts.topics import CORRECTIONS, CRM_ENTITIES, MAIL_CORRELATED, MAIL_RAW, TRACKING_RAW
from pipeline.runtime.kafka import faust_credentials, topic_name
from pipeline.contracts.avro import AvroCodec, registry_from_settings
from pipeline.escalation.policy import record_state_settings
from pipeline.settings import Settings, load_settings
from pipeline.streams.corrections import CorrectionsProcessor
from pipeline.streams.crm import CrmProcessor
from pipeline.streams.escalation import EscalationProcessor
from pipeline.runtime.batch import BatchResult, BatchStep, RawItem
from pipeline.runtime.collector import tune_collector
from pipeline.runtime.producer import RecordProducer, TopicRecord
from pipeline.streams.runner import app_id
from pipeline.streams.parsing import ParsePool, default_parse_processes
from pipeline.streams.processor import INDEX_TABLE, MailProcessor
from pipeline.streams.tracking import TrackingProcessor
from pipeline.tracking.safety import key_refusal

log = logging.getLogger("threadline.worker")
EXIT_BATCH_FAILED = 70  # EX_SOFTWARE: a batch could not be made durable (see exit_without_commit)
CLEAN_STOP_MARKER = "stopped-cleanly"


def exit_without_commit(what: str, exc: BaseException) -> None:
    """End the worker at once, acknowledging nothing.  Leaving ``take_events`` by an exception
    (or a crash of the app) makes Faust acknowledge, and then commit, the whole batch in its
    ``finally``, though its outputs or table writes are not durable: the records behind it
    would never be read again.  A process that ends here is restarted (``threadline up``, a
    supervisor) and reads the batch again; the table's offset markers make what was already
    applied a no-op."""
    log.critical("%s failed, the worker stops without committing: %s", what,
                 "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip())
    logging.shutdown()
    sys.stderr.flush()
    os._exit(EXIT_BATCH_FAILED)


class ChangelogAwaitedTable(faust.Table):
    """A Faust table written a batch at a time: to the local RocksDB, and to its changelog by the
    worker's confluent-kafka producer, awaited before the batch is acknowledged.

    Not through Faust's own path (``table[key] = value``): that queues each entry's changelog
    record in Faust's producer buffer, whose flush before a commit gives up once 0.1 s pass
    without a send (in the SIGKILL test an offset was committed while over 500 index entries
    below it were still queued, and lost with the process), and its per-record Python work was
    the largest part of a worker's time after parsing.

    Tansu reports the end of a partition as the base offset of its LAST record batch + 1, and
    Faust's recovery reads a changelog only up to that end (INFRA.md §2-3).  So the last record
    a batch writes to each changelog partition is produced on its own, after all the others are
    acknowledged: it is then alone in its record batch, and the reported end is exact after every
    batch.  A worker killed between the two leaves an end short of the last records before it;
    those are entries of a batch never committed, which the next worker reads again (its offset
    markers, the last key of a step's partition, come in the second part)."""

    def on_key_set(self, key, value) -> None:
        raise TypeError(f"{self.name}: write a batch with ChangelogAwaitedTable.write, not table[key] = value")

    def on_key_del(self, key) -> None:
        raise TypeError(f"{self.name}: write a batch with ChangelogAwaitedTable.write, not del table[key]")

    async def write(self, writes: dict[int, dict[str, bytes | None]], producer: RecordProducer) -> None:
        """Apply ``writes`` (partition -> {key: value, or None to delete}, as a
        :class:`~pipeline.runtime.batch.BatchResult` holds them) and return once every changelog
        record is acknowledged; raises if one is not."""
        body, ends = self._write_locally(writes)
        loop = asyncio.get_running_loop()
        if body:
            await loop.run_in_executor(None, producer.send_records, body)
        if ends:
            delivered = await loop.run_in_executor(None, producer.send_records, ends)
            # What Faust's own changelog callback keeps: where a kept local table's recovery resumes.
            for (topic, partition), offset in delivered.items():
                self.data.set_persisted_offset(TP(topic, partition), offset)

    def _write_locally(self, writes: dict[int, dict[str, bytes | None]]) -> tuple[list[TopicRecord], list[TopicRecord]]:
        """Write to each partition's RocksDB; returns the changelog records: all but each
        partition's last, and the last ones."""
        store = self.data  # faust.stores.rocksdb.Store: one database per partition
        topic = self.changelog_topic.get_topic_name()
        body: list[TopicRecord] = []
        ends: list[TopicRecord] = []
        for partition, entries in writes.items():
            db = store._db_for_partition(partition)
            records = []
            for key, value in entries.items():
                raw_key = store._encode_key(key)
                if value is None:
                    if db.get(raw_key) is None:
                        continue  # nothing to delete
                    db.delete(raw_key)
                else:
                    db.put(raw_key, value)
                records.append(TopicRecord(topic, partition, raw_key, value))
            if records:
                body += records[:-1]
                ends.append(records[-1])
        return body, ends


@contextmanager
def local_tables_kept_after_clean_stop(tabledir: Path) -> Iterator[None]:
    """Run a worker whose local tables (``tabledir``) are kept only if the last worker on them
    stopped cleanly.  A worker that ended otherwise (SIGKILL, :func:`exit_without_commit`) may
    have left entries and offset markers in RocksDB whose changelog records were never sent;
    trusting them, the next worker skips the redelivered records as applied and the changelog
    never gets those entries, so a worker restoring from it (another machine, a lost disk)
    decides their replies differently.  Such tables are discarded: Faust restores them from the
    changelogs."""
    marker = tabledir / CLEAN_STOP_MARKER
    if tabledir.exists() and not marker.exists():
        log.warning("the last worker on %s did not stop cleanly: its local tables are restored from the "
                    "changelogs", tabledir)
        shutil.rmtree(tabledir)
    marker.unlink(missing_ok=True)
    clean = False
    try:
        yield
        clean = True
    except SystemExit as stop:  # how the Faust worker returns, also after a clean stop
        clean = stop.code in (0, None)
        raise
    finally:
        if clean:
            tabledir.mkdir(parents=True, exist_ok=True)
            marker.touch()


def hold_deliveries_until_recovery_resumes_streams(app: faust.App) -> None:
    """Records fetched while Faust ends a recovery reach the agents' queues only after Faust has
    cleared them.

    Faust 0.15.3 (``Recovery.on_recovery_completed``; faust-streaming/faust#596) resumes the
    source partitions and awaits their seek to the committed offsets while the consumer still
    runs from reading the changelogs, so records are fetched and queued for the agents meanwhile;
    then ``flow_control.resume()`` empties every agent queue.  What was in them is dropped without
    an acknowledgement: never processed, and the commits stop below it, as Faust commits only
    acknowledged offsets without a gap.  Seen: a worker restarted after a SIGKILL dropped
    mail.raw offsets 660-661 and stalled two records short of the end.  ``on_rebalance_complete``
    is sent just before the partitions resume, on each path that resumes them; suspending the flow
    there makes Faust's conductor hold every fetched record (it acquires the flow before queueing)
    until that same ``resume()`` has emptied the queues.
    """

    @app.on_rebalance_complete.connect
    async def _hold_deliveries(app, **kwargs) -> None:  # noqa: ARG001 - Faust signal signature
        app.flow_control.suspend()


class QuietWorker(faust.Worker):
    """Faust's worker without its terminal spinner.  To spin it on every log line, Faust's worker
    sets the root logger to DEBUG (``Worker._setup_spinner_handler``) whenever the level asked for
    is WARN or above (``threadline worker`` and the workers of ``up``, tests and benchmarks run
    with ``-l warn``): every debug line of aiokafka and Faust (several per record produced) then
    became a LogRecord handed to the handlers, about 5 % of a busy worker's time.  The root logger
    keeps the level asked for."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None


def _bytes_table(app: faust.App, name: str, settings: Settings) -> ChangelogAwaitedTable:
    # Faust picks a table's serializers from key_type / value_type (not from a schema): bytes
    # values are stored as given ("raw"); anything else would be JSON-decoded on every read.
    return app.Table(name, default=None, partitions=settings.kafka.partitions, key_type=str, value_type=bytes)


async def _handle_batches(stream, processor: BatchStep, table: ChangelogAwaitedTable, source_topic: str,
                          outputs: Callable[[], RecordProducer], settings: Settings, lock: asyncio.Lock | None = None,
                          on_batch=None, other_tables: dict[str, ChangelogAwaitedTable] | None = None,
                          process: Callable[[list[RawItem], str], Awaitable[BatchResult]] | None = None) -> None:
    """Per batch: process, produce and await every output, then write the table (and the
    ``other_tables`` the result writes to, by name) and await their changelogs (see module doc).
    ``lock``, shared with a tick of the same processor or another agent that uses its state,
    keeps the two from interleaving.  ``process(items, source_topic)``, when given, is awaited
    instead of ``processor.process`` (the correlator's, with its parse pool)."""
    loop = asyncio.get_running_loop()
    lock = lock or asyncio.Lock()

    async def one_batch(events) -> None:
        async with lock:
            items = [RawItem(e.message.partition, e.message.offset, e.message.key, e.message.value) for e in events]
            result = (processor.process(items, source_topic=source_topic) if process is None
                      else await process(items, source_topic))
            producer = outputs()
            await loop.run_in_executor(None, producer.send_all, result.outputs)
            # Other tables first: the step's own table holds its offset markers, and a record
            # they mark as applied must have all of its writes in.
            for name, writes in result.other_writes.items():
                await other_tables[name].write(writes, producer)
            await table.write(result.writes, producer)
        if on_batch is not None:
            on_batch()
        log.info("%s: batch of %d: %s%s", source_topic, len(items), result.counts,
                 f", {result.skipped_redeliveries} redelivered records skipped" if result.skipped_redeliveries else "")

    async for events in stream.take_events(settings.worker.batch_size, within=settings.worker.batch_window_s):
        batch = asyncio.ensure_future(one_batch(events))
        try:
            await asyncio.shield(batch)
        except asyncio.CancelledError:
            # Stopping mid-batch: take_events acknowledges the batch as we leave, so finish it first.
            await asyncio.wait({batch})
            if not batch.cancelled() and batch.exception() is not None:
                exit_without_commit(f"{source_topic}: a batch", batch.exception())
            raise
        except Exception as exc:  # noqa: BLE001 - whatever it was, the batch is not durable
            exit_without_commit(f"{source_topic}: a batch", exc)


def build_app(settings: Settings) -> faust.App:
    if not settings.kafka.bootstrap:
        raise SystemExit("threadline worker needs kafka.bootstrap (THREADLINE_KAFKA_BOOTSTRAP); "
                         "`threadline up` starts an embedded broker and sets it")
    # The tracking agent verifies tokens and the processor attributes campaign mail with these keys:
    # on a real cluster a public or weak key would let anyone's forged hits count.
    refused = key_refusal(settings.tracking, settings.kafka.bootstrap, "threadline worker")
    if refused:
        raise SystemExit(refused)
    for setting in record_state_settings(settings.escalation):
        log.warning("escalation policy %s has no effect: the escalation agent does not read crm.entities yet, so no "
                    "conversation is paused or resolved by its record's CRM status (docs/escalation.md)", setting)
    data_dir = settings.worker.data_dir.resolve()
    (data_dir / "faust").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id(settings),
        broker=",".join(f"kafka://{host}" for host in settings.kafka.bootstrap.split(",")),
        broker_credentials=faust_credentials(settings.kafka),
        store="rocksdb://",
        Table=ChangelogAwaitedTable,
        Worker=QuietWorker,
        # Local tables are named by table, not by app: each app id (generation) needs its own
        # folder, or a new generation would start from another one's index and offsets.
        datadir=str(data_dir / "faust" / app_id(settings)),
        topic_partitions=settings.kafka.partitions,
        topic_replication_factor=settings.kafka.replication_factor,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=6,
        broker_heartbeat_interval=1,
        table_standby_replicas=0,
        # The worker command overrides web_enabled (its --with-web flag defaults to on, see
        # main()); if a web server is opened anyway, Faust would bind it to 0.0.0.0 by default.
        web_enabled=False,
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        key_serializer="raw",
        value_serializer="raw",
    )
    raw_topic, correlated_topic, tracking_topic, crm_topic, corrections_topic = (  # Avro bytes in, decoded by the steps
        app.topic(topic_name(settings.kafka, name), key_type=bytes, value_type=bytes, key_serializer="raw",
                  value_serializer="raw") for name in (MAIL_RAW, MAIL_CORRELATED, TRACKING_RAW, CRM_ENTITIES, CORRECTIONS))
    index_table = _bytes_table(app, INDEX_TABLE, settings)
    corrections_table = _bytes_table(app, "corrections", settings)
    hits_table = _bytes_table(app, "tracking-hits", settings)
    crm_table = _bytes_table(app, "crm-entities", settings)
    escalation_table = _bytes_table(app, "escalation-state", settings)
    codec = AvroCodec(registry_from_settings(settings.schema_registry.url))
    crm = CrmProcessor(codec, crm_table)
    corrections = CorrectionsProcessor(codec, corrections_table)
    processor = MailProcessor(settings, codec, index_table, regarding_for=crm.regarding_for,
                              corrections_for=corrections.book_of)
    corrections.apply = processor.apply_correction
    escalation = EscalationProcessor(settings, codec, escalation_table, clock=lambda: datetime.now(timezone.utc),
                                     record_owner=crm.record_owner)
    tracking = TrackingProcessor(settings.tracking, codec, hits_table, owner_of=processor.sender_of)
    # One output producer per worker process, made on first use (inside the worker).
    outputs = cache(partial(RecordProducer, settings.kafka, settings.kafka.bootstrap))
    last_escalation_batch = {"at": time.monotonic()}
    escalation_lock = asyncio.Lock()
    correlation_lock = asyncio.Lock()  # the correlate and corrections agents both change the indexes

    steps: tuple[BatchStep, ...] = (processor, escalation, tracking, crm, corrections)
    processes = settings.worker.parse_processes
    pool = ParsePool(settings, default_parse_processes() if processes is None else processes) if processes != 0 else None

    if pool is not None:
        @app.on_before_shutdown.connect
        async def _stop_pool(app, **kwargs) -> None:  # noqa: ARG001 - Faust signal signature
            await asyncio.get_running_loop().run_in_executor(None, pool.close)

    hold_deliveries_until_recovery_resumes_streams(app)

    @app.on_partitions_revoked.connect
    async def _revoked(app, revoked, **kwargs) -> None:  # noqa: ARG001 - Faust signal signature
        for step in steps:
            step.reset()

    # A failed batch must stop the worker, not restart the agent in-process: the processors have
    # already applied the batch in memory, and its records would not be delivered again.
    @app.agent(raw_topic, supervisor_strategy=mode.CrashingSupervisor)
    async def correlate(stream):
        await _handle_batches(stream, processor, index_table, raw_topic.get_topic_name(), outputs, settings,
                              correlation_lock, process=partial(processor.process_read_by, pool) if pool is not None else None)

    @app.agent(correlated_topic, supervisor_strategy=mode.CrashingSupervisor)
    async def escalate(stream):
        await _handle_batches(stream, escalation, escalation_table, correlated_topic.get_topic_name(), outputs,
                              settings, escalation_lock,
                              on_batch=lambda: last_escalation_batch.update(at=time.monotonic()))

    @app.agent(tracking_topic, supervisor_strategy=mode.CrashingSupervisor)
    async def classify_hits(stream):
        await _handle_batches(stream, tracking, hits_table, tracking_topic.get_topic_name(), outputs, settings)

    @app.agent(crm_topic, supervisor_strategy=mode.CrashingSupervisor)
    async def directory(stream):
        await _handle_batches(stream, crm, crm_table, crm_topic.get_topic_name(), outputs, settings)

    @app.agent(corrections_topic, supervisor_strategy=mode.CrashingSupervisor)
    async def correct(stream):
        await _handle_batches(stream, corrections, corrections_table, corrections_topic.get_topic_name(), outputs,
                              settings, correlation_lock, other_tables={INDEX_TABLE: index_table})

    @app.timer(interval=settings.escalation.tick_interval_s)
    async def escalation_tick() -> None:
        # Wall-clock deadlines only once caught up: during a replay or a backlog, mail that is
        # still unread may answer a clock, so time moves with the mail (event time) until the
        # agent has been idle for a whole interval.
        if time.monotonic() - last_escalation_batch["at"] < settings.escalation.tick_interval_s:
            return
        try:
            async with escalation_lock:
                result = escalation.tick(datetime.now(timezone.utc))
                if result.outputs:
                    await asyncio.get_running_loop().run_in_executor(None, outputs().send_all, result.outputs)
                    await escalation_table.write(result.writes, outputs())
        except Exception as exc:  # noqa: BLE001 - the trackers moved on in memory; only a restart re-fires them
            exit_without_commit("an escalation tick", exc)
        if result.outputs:
            log.info("escalation tick: %s", result.counts)

    return app


def worker_web_args(settings: Settings) -> list[str]:
    """Faust worker options for its web server: none unless ``worker.web_port`` asks for one.

    ``faust worker`` sets ``web_enabled`` from its own ``--with-web/--without-web`` flag, which
    defaults to on, so ``web_enabled=False`` in the App alone still opened a web server, and
    ``--web-host`` only names the host in URLs: the socket was bound to ``web_bind``
    (0.0.0.0). Its pages serve table contents without authentication, hence off by default
    and loopback only when on.
    """
    if settings.worker.web_port is None:
        return ["--without-web"]
    return ["--with-web", "--web-bind", "127.0.0.1", "--web-host", "127.0.0.1",
            "--web-port", str(settings.worker.web_port)]


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    tune_collector(settings.worker)
    app = build_app(settings)
    args = list(argv if argv is not None else sys.argv[1:])
    if "worker" in args and not {"--with-web", "--without-web"} & set(args):
        args += worker_web_args(settings)
    sys.argv = [sys.argv[0], *args]
    with local_tables_kept_after_clean_stop(Path(app.conf.tabledir)) if "worker" in args else nullcontext():
        app.main()


if __name__ == "__main__":
    main()
