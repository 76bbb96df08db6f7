"""Topics: ``threadline tail TOPIC``, the decoded records of a registry topic as JSON lines.

One JSON object per record on stdout: topic, partition, offset, key, timestamp and the decoded
value, with datetimes as ISO 8601 strings and bytes as in Avro's JSON encoding (each byte one
character U+0000-U+00FF, as Confluent's kafka-avro-console-consumer prints them: a mail reads as
text) or, with ``--bytes``, as base64 or as UTF-8 text.  A record that cannot be decoded is one line on
stderr with its position, and the reading goes on; the count is in the summary on stderr.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, Callable
from uuid import UUID

from pipeline.cli.common import (CommandFactory, UserError, add_tenant_filter, avro_codec, broker_bootstrap, choice,
                                 ctrl_c_stops, settings_from)


def _avro_json_bytes(data: bytes) -> str:
    return data.decode("latin-1")


def _base64_bytes(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _text_bytes(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


# --bytes: lossless and readable for ASCII (Avro's JSON encoding), lossless, or readable but lossy.
BYTES_ENCODINGS: dict[str, Callable[[bytes], str]] = {"avro": _avro_json_bytes, "base64": _base64_bytes,
                                                      "text": _text_bytes}


def json_value(value: Any, encode_bytes: Callable[[bytes], str] = _avro_json_bytes) -> Any:
    """A decoded Avro value as JSON types: datetimes and dates as ISO strings, bytes by
    ``encode_bytes``, decimals and UUIDs as strings, records, maps and arrays element-wise."""
    if isinstance(value, dict):
        return {key: json_value(item, encode_bytes) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(item, encode_bytes) for item in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return encode_bytes(bytes(value))
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (Decimal, UUID)):
        return str(value)
    return value


def record_line(topic: str, partition: int, offset: int, key: bytes | None, timestamp_ms: int | None,
                value: dict | None, encode_bytes: Callable[[bytes], str] = _avro_json_bytes) -> str:
    """One record as one JSON line. The key (the tenant on every topic but deadletter, whose key
    is the failed record's) is text when it is UTF-8, else encoded like bytes."""
    try:
        key_text = None if key is None else key.decode("utf-8")
    except UnicodeDecodeError:
        key_text = encode_bytes(key)
    timestamp = (None if timestamp_ms is None else
                 datetime.fromtimestamp(timestamp_ms / 1000, timezone.utc).isoformat(timespec="milliseconds"))
    line = json.dumps({"topic": topic, "partition": partition, "offset": offset, "key": key_text,
                       "timestamp": timestamp, "value": json_value(value, encode_bytes)}, ensure_ascii=False)
    # UTF-8 as it is, but escaped where a reader might see a line break (Python's splitlines does).
    return line.translate(_LINE_BREAKS)


# Characters that JSON leaves unescaped but that some readers take for the end of a line; outside
# strings json.dumps writes only ASCII, so their escapes are always inside a string.
_LINE_BREAKS = {ord(character): f"\\u{ord(character):04x}" for character in "\x85\u2028\u2029"}


def cmd_tail(args: argparse.Namespace) -> int:
    from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaException

    from pipeline.contracts.avro import AvroDecodeError
    from pipeline.contracts.topics import TOPIC_NAMES
    from pipeline.runtime.kafka import topic_name
    from pipeline.streams.reader import TopicMissing, read_messages

    if args.topic not in TOPIC_NAMES:
        raise UserError(f"unknown topic {args.topic!r}: one of {', '.join(TOPIC_NAMES)}")
    settings = settings_from(args)
    bootstrap = broker_bootstrap(settings)
    codec = avro_codec(settings)
    encode_bytes = BYTES_ENCODINGS[args.bytes]
    follow = args.follow or args.from_end
    wanted_key = None if args.tenant is None else args.tenant.encode("utf-8")
    name = topic_name(settings.kafka, args.topic)
    printed = undecodable = skipped = 0

    def at_end() -> None:
        if follow:
            print(f"tail: at the end of {name} on {bootstrap}" + ("" if args.from_end else f" after {printed} records")
                  + "; waiting for new ones (Ctrl-C stops)", file=sys.stderr, flush=True)

    try:  # Ctrl-C stops the read (--follow's way to stop), then the summary
        with ctrl_c_stops() as interrupted:
            for message in read_messages(settings.kafka, bootstrap, name, args.timeout, from_end=args.from_end,
                                         follow=follow, missing_ok=False, on_end=at_end, stop=interrupted):
                if wanted_key is not None and message.key() != wanted_key:
                    skipped += 1
                    continue
                raw = message.value()
                try:
                    value = None if raw is None else codec.decode(args.topic, raw)
                except AvroDecodeError as exc:
                    undecodable += 1
                    print(f"tail: {name} partition {message.partition()} offset {message.offset()}: cannot decode "
                          f"{len(raw)} bytes ({exc.reason}: {exc.message})", file=sys.stderr)
                    continue
                kind, timestamp_ms = message.timestamp()
                line = record_line(args.topic, message.partition(), message.offset(), message.key(),
                                   None if kind == TIMESTAMP_NOT_AVAILABLE else timestamp_ms, value, encode_bytes)
                print(line, flush=follow)
                printed += 1
                if args.limit is not None and printed >= args.limit:
                    break
    except TopicMissing as exc:
        raise UserError(f"{exc} (topics are created by `threadline up` and the worker)") from exc
    except (KafkaException, TimeoutError) as exc:
        raise UserError(f"cannot read {name} from the broker at {bootstrap}: {exc}") from exc
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's exit flush from failing too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    summary = f"tail: {printed} records of {name}"
    if undecodable:
        summary += f", {undecodable} undecodable (above)"
    if skipped:
        summary += f", {skipped} of other tenants skipped"
    print(summary, file=sys.stderr)
    return 0


def _count(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number of records")
    return int(value)


def add_tail(command: CommandFactory) -> None:
    tail = command("tail", cmd_tail, "Print a topic's records, decoded, as JSON lines on stdout (like `kcat -C -e` "
                                     "with the Avro decoder): from the beginning to the end, or --follow.")
    tail.add_argument("topic", metavar="TOPIC", help="a topic of the registry, e.g. mail.correlated (without "
                                                    "kafka.topic_prefix)")
    tail.set_defaults(from_end=False)
    where = tail.add_mutually_exclusive_group()
    where.add_argument("--from-beginning", dest="from_end", action="store_false",
                       help="start at the first record (the default)")
    where.add_argument("--from-end", dest="from_end", action="store_true",
                       help="only records written from now on (implies --follow)")
    tail.add_argument("-f", "--follow", action="store_true",
                      help="at the end of the topic, wait for new records until Ctrl-C (default: stop there)")
    add_tenant_filter(tail, "only records whose key is this tenant (default: every tenant)")
    tail.add_argument("-n", "--limit", type=_count, help="stop after this many records")
    tail.add_argument("--bytes", **choice(*BYTES_ENCODINGS), default="avro", metavar="|".join(BYTES_ENCODINGS),
                      help="bytes fields (mail.raw's raw, deadletter's value) as in Avro's JSON encoding, one "
                           "character per byte (default, lossless), base64 (lossless), or text (UTF-8, "
                           "undecodable bytes replaced: for reading)")
    tail.add_argument("--timeout", type=float, default=15.0, metavar="S",
                      help="give up when the broker sends nothing for this long (default: %(default)s s)")
