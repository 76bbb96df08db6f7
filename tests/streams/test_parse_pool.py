"""The correlator's parse pool: real processes read mail.raw values exactly as the worker
process would, in order, and a value that kills its process costs only that value."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime, timezone

from pipeline.contracts.avro import AvroCodec, EmbeddedRegistry
from pipeline.contracts.records import mail_raw_record
from pipeline.contracts.topics import MAIL_RAW
from pipeline.settings import Settings
from pipeline.streams.parsing import MailReader, ParsePool, Parsed, _read_chunk
from pipeline.synth import MailGenerator, render_rfc5322

CODEC = AvroCodec(EmbeddedRegistry())
RECEIVED = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def value(raw: bytes, tenant: str = "default") -> bytes:
    return CODEC.encode(MAIL_RAW, mail_raw_record(tenant=tenant, mailbox="support", direction="in", source="test",
                                                  raw=raw, received_at=RECEIVED))


def values() -> list[bytes]:
    mails = [render_rfc5322(m) for m in MailGenerator(3, customers=50, agents=3).mails(40)]
    hostile = [b"not avro at all", value(b"\xff\xfe\x00 no headers, no body"), value(b"Subject: x\r\n\r\nbody", "other")]
    return [value(raw, tenant=("a", "b")[n % 2]) for n, raw in enumerate(mails)] + hostile


def killing_read_chunk(chunk: list[bytes]) -> list[Parsed]:
    """A parser that dies on one record, as a crash in compiled code or the memory limit would."""
    if any(b"KILL-ME" in v for v in chunk):
        os._exit(1)
    return _read_chunk(chunk)


def test_the_pool_reads_every_value_as_the_worker_process_does_in_order(tmp_path):
    settings = Settings.model_validate({"worker": {"data_dir": str(tmp_path)}})
    inputs = values()
    pool = ParsePool(settings, 2)
    try:
        parsed = asyncio.run(pool.read(inputs))
    finally:
        pool.close()
    assert parsed == [MailReader(settings, CODEC).read(v) for v in inputs]
    assert parsed[-3].rejected[0] == "not_confluent_wire_format"
    assert all(p.mail is not None for p in parsed[:40])


def test_a_value_that_kills_its_process_is_the_only_one_lost(tmp_path):
    settings = Settings.model_validate({"worker": {"data_dir": str(tmp_path)}})
    inputs = values()
    inputs.insert(7, value(b"Message-ID: <k@x>\r\nSubject: KILL-ME\r\n\r\nbody"))
    pool = ParsePool(settings, 1, read_chunk=killing_read_chunk)

    async def twice() -> tuple[list[Parsed], list[Parsed]]:
        return await pool.read(inputs), await pool.read(inputs[8:])  # the pool works again after

    try:
        parsed, after = asyncio.run(twice())
    finally:
        pool.close()
    expected = [MailReader(settings, CODEC).read(v) for v in inputs]
    assert parsed[7] == Parsed(failed="the mail parser process died reading this record")
    assert parsed[:7] + parsed[8:] == expected[:7] + expected[8:]
    assert after == expected[8:]
    assert asyncio.run(pool.read(inputs[:2])) == expected[:2]  # closed: read in this process


def test_the_correlator_decides_the_same_with_its_mail_parsed_in_the_pool(tmp_path):
    """Outputs, table writes and counts of batches correlated chunk by chunk as the pool reads
    them equal those of the records read inline, redeliveries included."""
    from pipeline.runtime.batch import RawItem
    from pipeline.streams.processor import MailProcessor

    settings = Settings.model_validate({"worker": {"data_dir": str(tmp_path)}})
    mails = [render_rfc5322(m) for m in MailGenerator(5, customers=80, agents=4).mails(450)]
    stream = [RawItem(n % 2, n // 2, b"t", value(raw, tenant=("a", "b")[n % 2])) for n, raw in enumerate(mails)]
    # The second redelivers 50 records; the third holds records twice, as a consumer that read
    # a killed worker's partitions again handed them over.
    batches = [stream[:200], stream[150:330], stream[330:380] + stream[370:390] + stream[385:]]
    pool = ParsePool(settings, 1)

    async def pooled(processor):
        return [await processor.process_read_by(pool, batch) for batch in batches]

    try:
        inline_processor, pooled_processor = MailProcessor(settings, CODEC, {}), MailProcessor(settings, CODEC, {})
        inline = [inline_processor.process(batch) for batch in batches]
        assert asyncio.run(pooled(pooled_processor)) == inline
    finally:
        pool.close()
    assert [batch.skipped_redeliveries for batch in inline] == [0, 50, 15]


def test_the_pool_processes_end_when_their_worker_is_killed(tmp_path):
    """A worker that exits at once (exit_without_commit) or is killed by its PID must not leave
    its parser processes behind."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = tmp_path / "worker.py"
    script.write_text(
        "import asyncio, os, sys\n"
        "from pipeline.settings import Settings\n"
        "from pipeline.streams.parsing import ParsePool\n"
        "if __name__ == '__main__':\n"
        f"    pool = ParsePool(Settings.model_validate({{'worker': {{'data_dir': {str(tmp_path)!r}}}}}), 2)\n"
        "    asyncio.run(pool.read([b'x']))\n"
        "    print(' '.join(str(p) for p in pool._executor._processes), flush=True)\n"
        "    sys.stdin.read()\n")
    worker = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    children = [int(p) for p in worker.stdout.readline().split()]
    assert children and all(_running(p) for p in children)
    worker.send_signal(signal.SIGKILL)  # the worker only, not its process group
    worker.wait(10)
    deadline = time.monotonic() + 10
    while any(_running(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_running(p) for p in children)


def _running(pid: int) -> bool:
    try:
        status = open(f"/proc/{pid}/status").read()
    except OSError:
        return False
    return "\\nState:\\tZ" not in status  # a zombie has ended; only its parent's wait is missing


def test_a_read_record_crosses_processes_unchanged(tmp_path):
    import pickle

    settings = Settings.model_validate({"worker": {"data_dir": str(tmp_path)}})
    reader = MailReader(settings, CODEC)
    for parsed in [reader.read(v) for v in values()] + [Parsed(failed="x"), Parsed(unavailable="y")]:
        again = pickle.loads(pickle.dumps(parsed))
        assert again == parsed and type(again.mail) is type(parsed.mail)
