"""The worker's durability rules around its Faust tables, without a broker: a batch is
acknowledged only once its table writes are in the changelog, local tables left by a worker
that did not stop cleanly are not trusted, and records fetched as a recovery ends are not
dropped from the agents' queues."""

from __future__ import annotations

import asyncio
from contextlib import nullcontext
from types import SimpleNamespace

import faust
import pytest

from pipeline.runtime.batch import BatchResult
from pipeline.streams.app import (_handle_batches, hold_deliveries_until_recovery_resumes_streams,
                                  local_tables_kept_after_clean_stop)


def test_a_batch_is_acknowledged_only_after_its_changelog_is_delivered():
    happened = []

    class Table(dict):
        async def write(self, writes, producer):
            assert producer is outputs
            await asyncio.sleep(0)  # the broker's acknowledgement comes later
            happened.append(("delivered", writes))

    class Stream:
        async def take_events(self, size, within):
            message = SimpleNamespace(partition=0, offset=7, key=b"acme", value=b"mail")
            yield [SimpleNamespace(message=message)]
            happened.append("acknowledged")  # Faust acknowledges a batch when the next one is asked for

    class Step:
        def process(self, items, source_topic):
            return BatchResult(outputs=["correlated"], writes={0: {"acme\x1fm": b"entry"}})

    outputs = SimpleNamespace(send_all=lambda records: happened.append(("outputs", records)))
    settings = SimpleNamespace(worker=SimpleNamespace(batch_size=10, batch_window_s=0.1))
    asyncio.run(_handle_batches(Stream(), Step(), Table(), "mail.raw", lambda: outputs, settings))
    assert happened == [("outputs", ["correlated"]), ("delivered", {0: {"acme\x1fm": b"entry"}}), "acknowledged"]


def test_local_tables_are_kept_only_after_a_clean_stop(tmp_path):
    tables = tmp_path / "tables"
    index = tables / "correlation-index-0.db"

    def run_worker(ending: BaseException | None) -> bool:
        """Whether the worker found the index its predecessor left; it then writes one and ends."""
        with pytest.raises(type(ending)) if ending else nullcontext():
            with local_tables_kept_after_clean_stop(tables):
                found = index.exists()
                index.parent.mkdir(parents=True, exist_ok=True)
                index.write_bytes(b"rocksdb")
                if ending:
                    raise ending
        return found

    assert not run_worker(SystemExit(0))  # the first worker: nothing there; a clean stop
    assert run_worker(None)  # kept after the clean stop; a clean end without SystemExit
    assert run_worker(SystemExit(70))  # kept; this one exits with an error code
    assert not run_worker(RuntimeError("crash"))  # discarded: the last stop was not clean; ends uncleanly
    assert not run_worker(SystemExit(0))  # discarded again
    # A SIGKILL runs no code at all: the marker went when the worker started.
    with local_tables_kept_after_clean_stop(tables):
        assert index.exists()
        assert not (tables / "stopped-cleanly").exists()


def test_a_record_fetched_while_a_recovery_ends_survives_the_clearing_of_the_agent_queues():
    """Faust's order at the end of a recovery, with its own flow control and agent queue: the
    rebalance-complete signal, the source partitions resumed (a record is fetched and delivered
    the way its conductor does: flow acquired, then queued), then ``flow_control.resume()``,
    which empties the queues.  The record must be in the queue afterwards, not dropped."""
    async def end_of_recovery() -> int:
        # made inside the loop: Faust's flow control binds to the loop current at construction
        app = faust.App("stall-test", broker="kafka://127.0.0.1:9")  # never started: no broker needed
        hold_deliveries_until_recovery_resumes_streams(app)
        queue = app.FlowControlQueue(maxsize=10, clear_on_resume=True)  # what an agent's channel uses
        app.flow_control.resume()  # the flow runs while the changelogs are read
        await app.on_rebalance_complete.send()

        async def deliver() -> None:
            await app.flow_control.acquire()
            queue.put_nowait("mail.raw record")

        delivery = asyncio.ensure_future(deliver())
        await asyncio.sleep(0.01)  # Faust awaits the seek to the committed offsets here
        app.flow_control.resume()
        await delivery
        return queue.qsize()

    assert asyncio.run(end_of_recovery()) == 1


def test_the_worker_warns_at_start_of_policy_settings_without_effect(tmp_path, caplog):
    from pipeline.settings import Settings
    from pipeline.streams.app import build_app

    settings = Settings.model_validate({
        "kafka": {"bootstrap": "127.0.0.1:9"}, "worker": {"data_dir": str(tmp_path)},
        "escalation": {"policies": [{"name": "cases", "match": {"regarding_prefix": "SUPP-"},
                                     "sla": {"pause": "record_state"}}]}})
    with caplog.at_level("WARNING", logger="threadline.worker"):
        build_app(settings)
    assert [r.getMessage() for r in caplog.records if "has no effect" in r.getMessage()] == [
        "escalation policy cases: pause = record_state has no effect: the escalation agent does not read "
        "crm.entities yet, so no conversation is paused or resolved by its record's CRM status (docs/escalation.md)"]
    caplog.clear()
    build_app(settings.model_copy(update={"escalation": Settings().escalation}))
    assert not [r for r in caplog.records if "has no effect" in r.getMessage()]


def test_the_worker_keeps_the_root_logger_at_the_level_asked_for(tmp_path):
    """Faust's own worker lowers the root logger to DEBUG at -l warn (for its spinner), which
    makes every debug line of aiokafka and Faust cost a LogRecord."""
    import logging

    from pipeline.settings import Settings
    from pipeline.streams.app import build_app

    settings = Settings.model_validate({"kafka": {"bootstrap": "127.0.0.1:9"}, "worker": {"data_dir": str(tmp_path)}})
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)

    async def set_up() -> int:
        worker = build_app(settings).Worker(loglevel="warn", quiet=True)
        worker._setup_logging()  # what the worker does first when it starts
        return root.level

    try:
        assert asyncio.run(set_up()) == logging.WARNING
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers


def test_the_worker_process_collects_garbage_with_the_thresholds_of_its_settings(tmp_path, monkeypatch):
    """The worker's entry point sets CPython's collector thresholds from ``worker.gc_thresholds``
    before Faust starts (here it only prints its version)."""
    import gc
    import sys

    from pipeline.streams.app import main

    monkeypatch.setenv("THREADLINE_KAFKA_BOOTSTRAP", "127.0.0.1:9")
    monkeypatch.setenv("THREADLINE_WORKER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("THREADLINE_WORKER_GC_THRESHOLDS", "[12345, 7, 3]")
    monkeypatch.setattr(sys, "argv", ["app"])
    before = gc.get_threshold()
    try:
        with pytest.raises(SystemExit) as stop:
            main(["--version"])
        assert stop.value.code in (0, None)  # Faust printed its version: no settings error
        assert gc.get_threshold() == (12345, 7, 3)
    finally:
        gc.set_threshold(*before)
