"""What the command areas share: the user error, settings and broker lookup, the ClickHouse store,
the codec, delivery summaries, table printing and the options several commands take."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator, Sequence

from pipeline.settings import Settings, SettingsError, load_settings

Handler = Callable[[argparse.Namespace], int]
# command(name, handler, help_text) -> the subparser to add arguments to (built by pipeline.cli.main).
CommandFactory = Callable[[str, Handler, str], argparse.ArgumentParser]


class UserError(Exception):
    """A problem the user can fix; printed without a traceback."""


@contextmanager
def as_user_error(*errors: type[Exception]) -> Iterator[None]:
    """Report these exceptions as a UserError with their own message: their text says what to fix."""
    try:
        yield
    except errors as exc:
        raise UserError(str(exc)) from exc


@contextmanager
def ctrl_c_stops() -> Iterator[Callable[[], bool]]:
    """Within the block, Ctrl-C sets a flag (the yielded function says whether it is set) that a
    Kafka read checks between polls (``read_messages``' ``stop``), instead of raising a
    KeyboardInterrupt wherever Python runs: inside one of librdkafka's callbacks (its log, its
    statistics, frequent while a broker is gone) that came out of ``poll`` as a SystemError with a
    traceback. A second Ctrl-C interrupts at once."""
    interrupted = threading.Event()

    def on_interrupt(*_) -> None:
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield interrupted.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def settings_from(args: argparse.Namespace, option: str = "settings") -> Settings:
    """The settings of the file that ``option`` names (``--settings`` unless a command names another)."""
    with as_user_error(SettingsError):
        return load_settings(getattr(args, option))


def refuse_unsafe_keys(settings: Settings, command: str, listen_host: str | None = None) -> None:
    """Stop before anything starts when the tracking keys are unsafe outside the loopback demo."""
    from pipeline.tracking.safety import key_refusal

    refused = key_refusal(settings.tracking, settings.kafka.bootstrap, command, listen_host=listen_host)
    if refused:
        raise UserError(refused)


def require_paths(paths: Sequence[str]) -> None:
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise UserError(f"no such mailbox: {', '.join(missing)}")


def broker_bootstrap(settings: Settings) -> str:
    """``kafka.bootstrap``, or else the broker of the ``threadline up`` running on this data folder."""
    from pipeline.running import running_stack

    if settings.kafka.bootstrap:
        return settings.kafka.bootstrap
    stack = running_stack(settings.worker.data_dir.resolve())
    if stack is None:
        raise UserError("no broker configured and no `threadline up` running on this data folder "
                        f"({settings.worker.data_dir}): start `threadline up`, or set THREADLINE_KAFKA_BOOTSTRAP "
                        "or kafka.bootstrap in the settings file")
    return stack.bootstrap


def ensure_topics(settings: Settings, bootstrap: str, timeout_s: float = 30.0) -> None:
    """Create the topics that do not exist yet; a broker that cannot be reached within
    ``timeout_s`` is the user's error (one line, no traceback)."""
    from confluent_kafka import KafkaException

    from pipeline.broker import BrokerError, create_topics

    try:
        create_topics(settings.kafka, bootstrap, timeout_s=timeout_s)
    except (KafkaException, BrokerError) as exc:
        raise UserError(f"cannot reach the broker at {bootstrap} ({exc}); is it running (`threadline up`)?") from exc


def produce_one(settings: Settings, topic: str, tenant: str, record: dict, timeout_s: float = 10.0) -> None:
    """Write one record keyed by ``tenant`` and wait for the broker's acknowledgement; a broker
    that cannot be reached within ``timeout_s`` is the user's error."""
    from pipeline.runtime.producer import RecordProducer

    bootstrap = broker_bootstrap(settings)
    value = avro_codec(settings).encode(topic, record)
    ensure_topics(settings, bootstrap, timeout_s)
    producer = RecordProducer(settings.kafka, bootstrap)
    producer.produce(topic, tenant.encode(), value)
    report = producer.finish(timeout_s)
    if report.errors:
        raise UserError(f"not delivered to {topic}: {report.errors[0]}")


def avro_codec(settings: Settings):
    from pipeline.contracts.avro import AvroCodec, registry_from_settings

    return AvroCodec(registry_from_settings(settings.schema_registry.url))


def _served_store(settings: Settings):
    """The running stack of the ``threadline up`` that serves this data folder's store, unless
    ``clickhouse.url`` names a server (which then comes first); else None."""
    from pipeline.running import running_stack

    stack = None if settings.clickhouse.url else running_stack(settings.worker.data_dir.resolve())
    return stack if stack is not None and stack.clickhouse_url else None


def open_store(settings: Settings, *, write: bool = False):
    """``clickhouse.url``'s server; else the store a ``threadline up`` running on this data folder
    serves over HTTP (its running-stack file; read-only, so a command that ``write``s refuses it);
    else the embedded chDB in the data folder."""
    from pipeline.sinks.clickhouse import ClickHouseStore

    data_dir = settings.worker.data_dir.resolve()
    served = _served_store(settings)
    if served is not None and write:
        raise UserError(f"threadline up (pid {served.pid}) holds the embedded store in {data_dir / 'clickhouse'} and "
                        "serves it read-only: stop it first (Ctrl-C), or set THREADLINE_CLICKHOUSE_URL to a server")
    try:
        store = ClickHouseStore(settings.clickhouse, data_dir / "clickhouse", served=served)
    except Exception as exc:  # chDB refuses a folder another process holds; servers refuse logins
        if served is not None:
            raise UserError(f"cannot reach the store `threadline up` serves at {served.clickhouse_url} "
                            f"(pid {served.pid}): {exc}") from exc
        raise UserError(f"cannot open ClickHouse: {exc} (is `threadline up` running on the same data folder? "
                        "chDB allows one process per folder; set THREADLINE_CLICKHOUSE_URL to share a server)") from exc
    store.migrate()
    return store


def store_exists(settings: Settings) -> bool:
    """Whether :func:`open_store` would find a store rather than create an empty one: a server,
    a running ``threadline up``'s, or a chDB folder in the data folder."""
    return bool(settings.clickhouse.url or _served_store(settings) is not None
                or (settings.worker.data_dir.resolve() / "clickhouse").is_dir())


def print_table(result) -> None:
    """A ClickHouse query result as tab-separated lines on stdout, the column names first."""
    print_rows(result.column_names, result.result_rows)


def print_rows(columns: Sequence[str], rows) -> None:
    print("\t".join(columns))
    for row in rows:
        print("\t".join("" if value is None else str(value) for value in row))


def delivery_summary(report, what: str) -> int:
    """Print how many records the broker acknowledged and the first delivery errors; exit code."""
    print(f"{report.delivered} of {report.produced} {what}", file=sys.stderr)
    if report.dead_lettered:
        print(f"  {report.dead_lettered} mails over mail.max_message_bytes went to deadletter (reason too_large)",
              file=sys.stderr)
    for error in report.errors[:10]:
        print(f"  delivery error: {error}", file=sys.stderr)
    return 1 if report.errors else 0


def progress_bar(desc: str, total: int | None = None, iterable=None):
    """A tqdm bar of mails on stderr, over ``iterable`` when one is given."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="mail", file=sys.stderr, **_bar_layout())


def _bar_layout() -> dict:
    """As wide as the terminal, following its resizes; a terminal that reports no size (0 x 0:
    some ptys, IDE consoles) gets $COLUMNS x $LINES or 80 x 24, where tqdm draws an empty line
    (it hides a bar below the screen's last row); a file or pipe gets an update every 10 s
    instead of every half second."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # not a terminal (or no real file: a test's capture)
        return {"mininterval": 10.0}
    if size.columns and size.lines:
        return {"mininterval": 0.5, "dynamic_ncols": True}
    fallback = shutil.get_terminal_size()
    return {"mininterval": 0.5, "ncols": fallback.columns, "nrows": fallback.lines}


def add_progress_flag(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def tenant_value(value: str) -> str:
    """A ``--tenant``: the record key and the first part of every table key (runtime/state.py),
    so not empty and without control characters (the table keys' separator is one)."""
    if not value.strip() or any(ord(character) < 32 or ord(character) == 127 for character in value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a tenant: give a non-empty name without control characters")
    return value


def add_tenant(sub: argparse.ArgumentParser) -> None:
    """``--tenant`` of a command that writes records: they belong to one tenant, ``default`` unless given."""
    sub.add_argument("--tenant", default="default", type=tenant_value,
                     help="tenant the records belong to (default: %(default)s)")


def add_tenant_filter(sub: argparse.ArgumentParser, help_text: str = "only this tenant (default: every tenant)") -> None:
    """``--tenant`` of a command that reads: None (every tenant) unless given."""
    sub.add_argument("--tenant", default=None, type=tenant_value, help=help_text)


class AnyCase:
    """An option's ``type`` that accepts its choices in any case and gives the canonical spelling
    (argparse then checks it against ``choices``, whose spelling ``--help`` shows)."""

    def __init__(self, values: Sequence[str]) -> None:
        self.canonical = {value.casefold(): value for value in values}

    def __call__(self, text: str) -> str:
        return self.canonical.get(text.casefold(), text)  # anything else: argparse's "invalid choice"


def choice(*values: str) -> dict:
    """``add_argument(..., **choice("OPEN", "WARNED"))``: these values, in any case."""
    return {"choices": values, "type": AnyCase(values)}


def deprecated(command: str, option: str, instead: str) -> None:
    """The note of an option an argument replaced, which works for one more release."""
    print(f"threadline: {command} {option} is deprecated and goes in the next release: write `threadline {instead}`",
          file=sys.stderr)


STDOUT = "-"


def add_out(sub: argparse.ArgumentParser, default: str | None, what: str, metavar: str = "PATH") -> None:
    """``-o/--out PATH`` of a command that writes a file; ``-`` (and no default) is stdout."""
    where = "stdout" if default in (None, STDOUT) else "%(default)s"
    sub.add_argument("-o", "--out", default=default, metavar=metavar,
                     help=f"write {what} here; - for stdout (default: {where})")


def is_stdout(path: str | None) -> bool:
    return path in (None, STDOUT)


@contextmanager
def open_out(path: str | None, binary: bool = False) -> Iterator[IO]:
    """The file ``-o`` names (its folder made), or stdout for ``-``; stdout is flushed, not closed."""
    if is_stdout(path):
        stream = sys.stdout.buffer if binary else sys.stdout
        try:
            yield stream
        finally:
            stream.flush()
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as stream:
        yield stream


def message_id_value(value: str) -> str:
    """A Message-ID as a user types it, with or without its angle brackets."""
    value = value.strip()
    if not value or any(character.isspace() for character in value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a Message-ID")
    return value if value.startswith("<") else f"<{value}>"
