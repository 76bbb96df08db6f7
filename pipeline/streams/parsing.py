"""``mail.raw`` records to :class:`MailRecord`, in the worker process or ahead of the correlator
in a pool of processes.

Reading a record is pure and needs no order: its Avro value decoded, its mail fetched from the
blob store when it is claim-checked, parsed (:func:`~pipeline.mail.parse.parse_mail`), a
campaign mail's signed token verified, a delivery failure's report read.  It was most of a
worker's time, under the GIL of the one process that also runs Faust and the correlator, so the
correlator's agent hands each batch's new records to a :class:`ParsePool` of
``worker.parse_processes`` processes and correlates the results in the records' order.

What can go wrong with a record comes back as data (:class:`Parsed`), never as an exception of
the pool, and :meth:`Parsed.mail_or_raise` raises it in the correlator as it would have been
raised inline: a :class:`~pipeline.errors.RejectedInput` (a mail that is not one, a blob gone)
and any other exception (:class:`ParseFailed`) become dead letters; an ``OSError`` (the blob
store unreachable) stops the batch uncommitted.  A parser process that dies (a crash in a
compiled parser, the memory limit) takes no batch with it: the pool is started again and the
records of the lost chunk are read one by one, so that only the record that kills a process
becomes a dead letter (``internal_error``).  The processes end with their worker, also when it
is killed or exits without a clean stop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import os
import re
import threading
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Awaitable, Callable

from pipeline.contracts.avro import AvroCodec, registry_from_settings
from pipeline.contracts.records import MailRawCodec
from pipeline.contracts.topics import MAIL_RAW
from pipeline.errors import RejectedInput
from pipeline.mail.bounce import Bounce, parse_bounce
from pipeline.mail.parse import parse_mail
from pipeline.mail.record import MailRecord
from pipeline.settings import Settings
from pipeline.tracking.tokens import Keyring, TokenError, verify_token

log = logging.getLogger("threadline.worker")
_UNSUBSCRIBE_TOKEN = re.compile(rb"^List-Unsubscribe:[^\r\n]*?/u/([A-Za-z0-9_-]+)", re.IGNORECASE | re.MULTILINE)
CHUNK = 100  # records per task of a pool process: the correlator takes each chunk while the next are parsed


class ParseFailed(Exception):
    """An unexpected failure reading a record (a bug, a parser process that died): ``detail``
    is what its dead letter says (``internal_error``)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Parsed:
    """One record read: its mail (and the delivery failure report of a bounce), or what went wrong."""

    mail: MailRecord | None = None
    bounce: Bounce | None = None
    rejected: tuple[str, str] | None = None  # a RejectedInput's reason and message
    failed: str | None = None  # any other exception, as its dead letter's detail
    unavailable: str | None = None  # an OSError: the blob store cannot be read

    def __reduce__(self):
        # A frozen dataclass is unpickled field by field in Python (dataclasses._dataclass_setstate),
        # 24-59 us a mail in the worker process; its fields as a tuple given to __init__ take 7-10.
        mail = None if self.mail is None else tuple(getattr(self.mail, name) for name in _MAIL_FIELDS)
        return _parsed, (mail, self.bounce, self.rejected, self.failed, self.unavailable)

    def mail_or_raise(self) -> MailRecord:
        if self.unavailable is not None:
            raise OSError(self.unavailable)
        if self.rejected is not None:
            raise RejectedInput(*self.rejected)
        if self.failed is not None:
            raise ParseFailed(self.failed)
        assert self.mail is not None
        return self.mail


_MAIL_FIELDS = tuple(field.name for field in dataclasses.fields(MailRecord))


def _parsed(mail: tuple | None, *rest) -> Parsed:
    return Parsed(None if mail is None else MailRecord(*mail), *rest)


class MailReader:
    """Reads ``mail.raw`` values with the worker's settings; one per process."""

    def __init__(self, settings: Settings, codec: AvroCodec | None = None) -> None:
        self.settings = settings
        self.codec = codec or AvroCodec(registry_from_settings(settings.schema_registry.url))
        self.mail_raw = MailRawCodec(settings.mail, settings.blob_dir, self.codec)
        self.keyring = Keyring.from_settings(settings.tracking)  # once, not per campaign mail

    def read(self, value: bytes) -> Parsed:
        try:
            record = self.codec.decode(MAIL_RAW, value)
            raw = self.mail_raw.raw_of(record)
            mail = parse_mail(raw, direction=record["direction"], tenant=record["tenant"], mailbox=record["mailbox"],
                              received_at=record["received_at"], xheader_name=self.settings.correlation.xheader_name,
                              max_size=self.settings.mail.max_message_bytes)
            if mail.direction == "out":
                mail = self._with_campaign(mail, raw)
            return Parsed(mail, parse_bounce(raw) if mail.is_bounce else None)
        except RejectedInput as exc:
            return Parsed(rejected=(exc.reason, exc.message))
        except OSError as exc:
            return Parsed(unavailable=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the partition: the record is parked
            return Parsed(failed="".join(traceback.format_exception_only(type(exc), exc)).strip())

    def _with_campaign(self, mail: MailRecord, raw: bytes) -> MailRecord:
        """Campaign mail carries a signed unsubscribe token naming its campaign; keep it with the
        mail so that a later bounce of it counts for the campaign."""
        match = _UNSUBSCRIBE_TOKEN.search(raw, 0, raw.find(b"\r\n\r\n") if b"\r\n\r\n" in raw else len(raw))
        if match is None:
            return mail
        try:
            # Signature only, no unsubscribe_max_age_days: this attributes our own sent mail to its
            # campaign and acts on nothing, and with an expiry a Sent folder ingested late (or a
            # replay) would lose its campaigns depending on when it is read.
            payload = verify_token(match.group(1).decode("ascii"), self.keyring, expect_kind="unsubscribe")
        except TokenError:
            return mail
        return dataclasses.replace(mail, campaign_id=payload.campaign_id) if payload.campaign_id else mail


_READER: MailReader | None = None  # a pool process's own


def _start_process(settings: Settings) -> None:
    global _READER
    _READER = MailReader(settings)
    threading.Thread(target=_end_with_parent, args=(os.getppid(),), name="end-with-worker", daemon=True).start()


def _end_with_parent(parent: int, every_s: float = 0.5) -> None:
    """A pool process ends when its worker does, however the worker ended: a clean stop closes
    the pool, but a worker that exits at once (``exit_without_commit``) or is killed leaves its
    processes to the init process, where they would wait for chunks forever."""
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(0)


def _read_chunk(values: list[bytes]) -> list[Parsed]:
    """In a pool process: the values read by the process's reader (made when it started)."""
    assert _READER is not None
    return [_READER.read(value) for value in values]


def default_parse_processes() -> int:
    """One less than the machine's cores (the worker process needs one), at least one."""
    return max(1, (os.cpu_count() or 1) - 1)


class ParsePool:
    """``processes`` processes that read ``mail.raw`` values; started on first use, in the
    worker (never in a process that only builds the app), stopped by :meth:`close`."""

    def __init__(self, settings: Settings, processes: int, read_chunk: Callable[[list[bytes]], list[Parsed]] | None = None) -> None:
        """``read_chunk``: what a process does with a chunk of values (a module's function;
        :func:`_read_chunk` reads them with a :class:`MailReader` of ``settings``)."""
        self.settings = settings
        self.processes = processes
        self.read_chunk = read_chunk or _read_chunk
        self._executor: ProcessPoolExecutor | None = None
        self._closed: MailReader | None = None  # after close: reads in this process

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # spawn: the worker has threads (librdkafka's, Faust's), which a fork would copy mid-state.
            self._executor = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_start_process, initargs=(self.settings,))
        return self._executor

    def _restart(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def chunks(self, values: list[bytes]) -> list[tuple[int, Awaitable[list[Parsed]]]]:
        """The values cut into chunks, all submitted at once: per chunk, its length and an
        awaitable of its values read, in order (a chunk can be used while the next are read)."""
        if self._closed is not None:
            return [(len(values), self._inline(values))] if values else []
        pool = self._pool()
        return [(len(chunk), self._chunk(pool, chunk, pool.submit(self.read_chunk, chunk)))
                for chunk in (values[start:start + CHUNK] for start in range(0, len(values), CHUNK))]

    async def read(self, values: list[bytes]) -> list[Parsed]:
        """Every value read, in order."""
        parsed: list[Parsed] = []
        for _, chunk in self.chunks(values):
            parsed += await chunk
        return parsed

    async def _inline(self, values: list[bytes]) -> list[Parsed]:
        assert self._closed is not None
        return [self._closed.read(value) for value in values]

    async def _chunk(self, pool: ProcessPoolExecutor, values: list[bytes], future) -> list[Parsed]:
        try:
            return await asyncio.wrap_future(future)
        except BrokenProcessPool:
            if self._executor is pool:
                self._restart()  # a process died: the chunks not done with are lost with the pool
            return await self._one_by_one(values)

    async def _one_by_one(self, values: list[bytes]) -> list[Parsed]:
        """The values of a chunk whose process died, each alone: only the one that kills a
        process again is lost (as a failure for its dead letter)."""
        parsed = []
        for value in values:
            try:
                parsed += await asyncio.wrap_future(self._pool().submit(self.read_chunk, [value]))
            except BrokenProcessPool:
                log.error("a mail parser process died reading a mail.raw record of %d bytes; it is dead-lettered",
                          len(value))
                self._restart()
                parsed.append(Parsed(failed="the mail parser process died reading this record"))
        return parsed

    def close(self) -> None:
        """Stop the processes once the chunks submitted are read; later reads happen in this process."""
        self._closed = MailReader(self.settings)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
