"""``threadline smtp``: an SMTP relay (aiosmtpd) that records every mail in ``mail.raw`` before it leaves.

Outbound (default; the organisation's clients submit here)::

    client --SMTP--> relay: prepare_outbound --> mail.raw (wait for the broker's ack)
                                            --> queue file (fsync) --> upstream smarthost --> 250

* :func:`prepare_outbound` (pure, no I/O) stamps what is missing: ``Message-ID``
  (``<GUID@instance_id>``), ``Date``, and our ``X-Threadline-Ref`` header (``instance``, ``ref`` =
  the mail's own Message-ID, ``regarding`` from a client's ``X-Threadline-Regarding`` header,
  which never leaves); a subject tracking token when ``relay.subject_tokens`` is on (the
  subject's own token is kept); and the open pixel / signed links when the mail opts in to
  tracking (``#track`` in the subject, ``%track%`` in the body).  A token names one recipient,
  so a tracked mail to several recipients leaves as one marked copy per recipient (same
  Message-ID; each copy is its own ``mail.raw`` record: the correlator reports the later ones
  as duplicates of the first).
* Inbound (``--inbound``, an MX-side filter): nothing is stamped or marked; direction ``in``.

Closed by default (:mod:`pipeline.gateways.smtp.relay_policy`): outbound, only a client that logged in or
is in ``relay.client_networks`` (loopback) may send, and only as a sender of the own domains;
inbound, only recipients of the own domains are accepted.  Recipients per mail, messages and
recipients per client and time, connections and session time are limited; a configuration that
is unsafe for the listening address does not start.

Every mail gets a ``Received`` trace header (RFC 5321 §4.4) and CRLF line ends; those final
bytes are what ``mail.raw`` holds and what the next hop receives.

Replies: the broker did not acknowledge the record -> ``451`` (temporary: the client retries,
nothing is relayed, nothing lost).  Recorded -> the final bytes go to a queue file (one per
message, fsync'd, ``worker.data_dir/relay-queue/<mode>/``) and are handed to the upstream;
accepted -> the file is removed and the client gets ``250``.  Upstream down or answering 4xx ->
the file stays, the client still gets ``250``, and a background thread retries the queue with
back-off (also right after a restart); a file is removed only once the upstream accepted it.
The upstream refusing the mail for good (5xx for every recipient) during the session -> that
5xx goes back to the client (the ``mail.raw`` record stays: it says what was attempted); later
permanent refusals of queued mail move the file to ``failed/`` with the reason, for an operator.

Credentials (AUTH passwords, the upstream password) are never logged; the log names queue ids,
Message-IDs, sizes and recipient counts, not addresses.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import json
import logging
import os
import re
import signal
import smtplib
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.header import decode_header, make_header
from email.utils import formatdate, getaddresses
from pathlib import Path
from typing import Callable, Sequence

from pipeline.durable import fsync_dir, write_atomically
from pipeline.broker import topic_name
from pipeline.runtime.kafka import new_producer
from pipeline.contracts.avro import AvroCodec
from pipeline.contracts.records import MailRawCodec, MailTooLarge, mail_raw_record
from pipeline.correlation.methods.xheader import format_xref
from pipeline.correlation.tokens import TokenCounter, find_token
from pipeline.gateways.smtp import relay_policy as policy
from pipeline.mail.parse import _message_ids
from pipeline.settings import RelaySettings, Settings, TrackingTokenSettings
from pipeline.tracking.mark import mark_message

log = logging.getLogger("threadline.smtp")

REGARDING_HEADER = "X-Threadline-Regarding"
OUTBOUND_MAILBOX = "smtp-relay"
INBOUND_MAILBOX = "smtp-inbound"
SOURCE = "smtp"
MAX_HOPS = 50                      # Received headers; more means a mail loop (RFC 5321 §6.3)
COUNTER_FILE = "relay-token-counters.json"
PASSED_MAIL_OPTIONS = ("SMTPUTF8", "BODY=8BITMIME")


class RelayError(RuntimeError):
    """The relay cannot start as configured; the message says what to fix."""


# -- header block, byte for byte --------------------------------------------------------------
class _HeaderBlock:
    """The header fields of a message as raw bytes: fields can be read, removed and added while
    every other byte (other fields, their folding, the body) stays exactly as it was."""

    def __init__(self, raw: bytes) -> None:
        first_end = raw.find(b"\n")
        self.linesep = b"\r\n" if first_end > 0 and raw[first_end - 1:first_end] == b"\r" else b"\n"
        # A field's lines are collected and joined once: appending every continuation line to
        # the field's bytes so far is quadratic, and a folded header of a few MB (the mail limit
        # allows tens) would then hold the relay for minutes.
        collected: list[tuple[str, list[bytes]]] = []
        pos, length = 0, len(raw)
        self.separator, self.body = b"", b""
        while pos < length:
            end = raw.find(b"\n", pos)
            end = length if end < 0 else end + 1
            line = raw[pos:end]
            if line in (b"\r\n", b"\n"):
                self.separator, self.body = line, raw[end:]
                break
            if line[:1] in (b" ", b"\t") and collected:
                collected[-1][1].append(line)
            else:
                name, colon, _ = line.partition(b":")
                collected.append((name.strip().decode("latin-1").lower() if colon else "", [line]))
            pos = end
        # (lower-case name or "" for junk, raw field)
        self.fields: list[tuple[str, bytes]] = [(name, b"".join(lines)) for name, lines in collected]
        if self.fields and not self.fields[-1][1].endswith(b"\n"):
            name, last = self.fields[-1]
            self.fields[-1] = (name, last + self.linesep)
        if not self.separator and self.body == b"":
            self.separator = self.linesep  # a message of headers only: end the header block

    def values(self, name: str) -> list[str]:
        """Unfolded values of every field called ``name`` (bytes read as UTF-8, else latin-1)."""
        wanted = name.lower()
        found = []
        for field_name, data in self.fields:
            if field_name == wanted:
                value = data.partition(b":")[2]
                value = re.sub(rb"\r?\n", b"", value).strip()
                try:
                    found.append(value.decode("utf-8"))
                except UnicodeDecodeError:
                    found.append(value.decode("latin-1"))
        return found

    def first(self, name: str) -> str | None:
        values = self.values(name)
        return values[0] if values else None

    def index(self, name: str) -> int | None:
        wanted = name.lower()
        return next((i for i, (field_name, _) in enumerate(self.fields) if field_name == wanted), None)

    def remove(self, name: str) -> None:
        wanted = name.lower()
        self.fields = [(n, data) for n, data in self.fields if n != wanted]

    def add(self, name: str, value: str) -> None:
        self.fields.append((name.lower(), f"{name}: {value}".encode() + self.linesep))

    def append_to(self, index: int, text: str) -> None:
        """Append ``text`` at the end of the (last line of the) field at ``index``."""
        name, data = self.fields[index]
        stripped = data.rstrip(b"\r\n")
        self.fields[index] = (name, stripped + text.encode() + data[len(stripped):])

    def to_bytes(self) -> bytes:
        return b"".join(data for _, data in self.fields) + self.separator + self.body


def _decoded(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except (LookupError, UnicodeError, ValueError):
        return value


def _id_domain(instance_id: str) -> str:
    domain = re.sub(r"[^A-Za-z0-9.-]+", "-", instance_id).strip(".-")
    return domain or "threadline"


def _clean_regarding(value: str) -> str | None:
    """A record id for ``regarding=``: ASCII, one line, no ``;`` (the field separator)."""
    text = " ".join(_decoded(value).replace(";", " ").split())
    if not text:
        return None
    if not text.isascii():
        log.warning("%s is not ASCII: the mail's reference header names no regarding record", REGARDING_HEADER)
        return None
    return text


def user_number(relay: RelaySettings, sender: str | None, from_header: str | None) -> int:
    """The sending user's number for tracking tokens: the envelope sender, else the From
    address, looked up in ``relay.sender_user_numbers``; 0 when neither is listed."""
    numbers = relay.sender_user_numbers
    candidates = [sender or ""] + [address for _, address in getaddresses([from_header or ""])]
    for address in candidates:
        number = numbers.get(address.strip().casefold())
        if number is not None:
            return number
    return 0


def stamp_outbound(raw: bytes, settings: Settings, counter: TokenCounter | None, *, sender: str | None = None,
                   now: float | None = None, make_id: Callable[[], str] | None = None) -> bytes:
    """Message-ID, Date and X-Threadline-Ref where absent, the regarding header folded into our
    header, and a subject token when ``relay.subject_tokens`` is on (needs ``counter``).  Every
    other byte of ``raw`` is kept."""
    headers = _HeaderBlock(raw)
    correlation = settings.correlation
    ids = _message_ids(headers.first("Message-ID"))
    if ids:
        message_id = ids[0]
    else:  # absent, or nothing usable in it
        headers.remove("Message-ID")
        message_id = f"<{make_id() if make_id else uuid.uuid4()}@{_id_domain(correlation.instance_id)}>"
        headers.add("Message-ID", message_id)
    if headers.index("Date") is None:
        headers.add("Date", formatdate(time.time() if now is None else now, usegmt=True))

    regarding = next((cleaned for value in headers.values(REGARDING_HEADER)
                      if (cleaned := _clean_regarding(value))), None)
    headers.remove(REGARDING_HEADER)
    if not any(value.strip() for value in headers.values(correlation.xheader_name)):
        headers.remove(correlation.xheader_name)
        headers.add(correlation.xheader_name, format_xref(correlation.instance_id, message_id, regarding))

    token_settings: TrackingTokenSettings = correlation.tracking_token
    if settings.relay.subject_tokens and token_settings.enabled and counter is not None:
        at = headers.index("Subject")
        subject = _decoded(headers.values("Subject")[0]) if at is not None else ""
        if find_token(token_settings, subject) is None:  # a reply keeps its conversation's token
            token = counter.next_token(user_number(settings.relay, sender, headers.first("From")))
            if at is None:
                headers.add("Subject", token)
            else:
                headers.append_to(at, (" " if subject.strip() else "") + token)
    return headers.to_bytes()


def outbound_copies(raw: bytes, settings: Settings, counter: TokenCounter | None, *, sender: str | None,
                    recipients: Sequence[str], tenant: str = "default", now: float | None = None,
                    make_id: Callable[[], str] | None = None) -> list[tuple[tuple[str, ...], bytes]]:
    """``(recipients, final bytes)`` for every copy that leaves: one copy, or, for a mail that
    opts in to tracking and has several recipients, one marked copy per recipient."""
    stamped = stamp_outbound(raw, settings, counter, sender=sender, now=now, make_id=make_id)
    recipients = tuple(recipients)
    copies = []
    for recipient in recipients or (None,):
        try:
            marked = mark_message(stamped, settings.tracking, tenant=tenant, recipient=recipient, now=now)
        except Exception as exc:  # a mail that cannot be marked still goes out, unmarked
            log.warning("tracking marks could not be added (%s): sent unmarked", type(exc).__name__)
            return [(recipients, stamped)]
        if not marked.summary.tracked:
            return [(recipients, stamped)]
        copies.append(((recipient,) if recipient else recipients, marked.data))
    return copies


def prepare_outbound(raw: bytes, settings: Settings, counter: TokenCounter | None, *, sender: str | None = None,
                     recipient: str | None = None, tenant: str = "default", now: float | None = None,
                     make_id: Callable[[], str] | None = None) -> bytes:
    """The final bytes of an outbound mail to one recipient (``recipient``; default the single
    To/Cc/Bcc address): :func:`stamp_outbound`, then tracking marks when the mail opts in."""
    copies = outbound_copies(raw, settings, counter, sender=sender, recipients=(recipient,) if recipient else (),
                             tenant=tenant, now=now, make_id=make_id)
    return copies[0][1]


def to_crlf(raw: bytes) -> bytes:
    """SMTP line ends: every bare LF becomes CRLF."""
    return re.sub(rb"(?<!\r)\n", b"\r\n", raw)


def hop_count(raw: bytes) -> int:
    return sum(1 for name, _ in _HeaderBlock(raw).fields if name == "received")


# -- token counters ---------------------------------------------------------------------------
def load_counter(path: Path, settings: TrackingTokenSettings) -> TokenCounter:
    """The persisted per-user counters (a fresh counter when the file does not exist)."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))["next"]
        return TokenCounter(settings, {int(user): int(value) for user, value in state.items()})
    except FileNotFoundError:
        return TokenCounter(settings)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RelayError(f"{path} is not a token counter file ({exc}); fix or remove it") from exc


def save_counter(path: Path, counter: TokenCounter) -> None:
    state = {str(user): value for user, value in sorted(counter.state().items())}
    write_atomically(path, json.dumps({"format": 1, "next": state}, indent=1).encode())


# -- the queue --------------------------------------------------------------------------------
@dataclass(frozen=True)
class QueuedMail:
    name: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    mail_options: tuple[str, ...]
    data: bytes
    queued_at: float
    message_id: str | None = None


class RelayQueue:
    """Durable spool: one file per message (a JSON envelope line, then the final bytes)."""

    SUFFIX = ".msg"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.failed_dir = directory / "failed"
        self._claimed: set[str] = set()
        self._mutex = threading.Lock()
        self._lock_handle = None

    def open(self) -> None:
        """Create the folders, take the folder's lock (one relay per queue) and drop the
        half-written files of a crash (their clients never got a 250)."""
        self.failed_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.directory / ".lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise RelayError(f"another relay uses the queue {self.directory}: give each relay its own "
                             "worker.data_dir (or mode)") from None
        self._lock_handle = handle
        for leftover in self.directory.glob(".*.tmp"):
            leftover.unlink()

    def close(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    @staticmethod
    def new_name() -> str:
        return f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}{RelayQueue.SUFFIX}"

    def pending(self) -> list[str]:
        return sorted(path.name for path in self.directory.glob("*" + self.SUFFIX))

    def claim(self, name: str) -> bool:
        with self._mutex:
            if name in self._claimed:
                return False
            self._claimed.add(name)
            return True

    def release(self, name: str) -> None:
        with self._mutex:
            self._claimed.discard(name)

    def put(self, name: str, mail_from: str, rcpt_tos: Sequence[str], mail_options: Sequence[str], data: bytes,
            message_id: str | None = None) -> None:
        envelope = {"mail_from": mail_from, "rcpt_tos": list(rcpt_tos), "mail_options": list(mail_options),
                    "queued_at": time.time(), "message_id": message_id}
        write_atomically(self.directory / name, json.dumps(envelope).encode() + b"\n" + data)

    def load(self, name: str) -> QueuedMail:
        content = (self.directory / name).read_bytes()
        line, _, data = content.partition(b"\n")
        envelope = json.loads(line)
        return QueuedMail(name, envelope["mail_from"], tuple(envelope["rcpt_tos"]), tuple(envelope["mail_options"]),
                          data, float(envelope["queued_at"]), envelope.get("message_id"))

    def keep_for(self, item: QueuedMail, rcpt_tos: Sequence[str]) -> None:
        """Only ``rcpt_tos`` still wait (the others were delivered or refused for good)."""
        if tuple(rcpt_tos) != item.rcpt_tos:
            self.put(item.name, item.mail_from, rcpt_tos, item.mail_options, item.data, item.message_id)

    def remove(self, name: str) -> None:
        (self.directory / name).unlink(missing_ok=True)
        fsync_dir(self.directory)

    def fail(self, item: QueuedMail, refused: dict[str, str]) -> None:
        """Keep a copy for the recipients the upstream refused for good, with the reasons."""
        target = self.failed_dir / item.name
        self.failed_dir.mkdir(parents=True, exist_ok=True)
        envelope = {"mail_from": item.mail_from, "rcpt_tos": sorted(refused), "mail_options": list(item.mail_options),
                    "queued_at": item.queued_at, "message_id": item.message_id, "refused": refused,
                    "failed_at": time.time()}
        write_atomically(target, json.dumps(envelope).encode() + b"\n" + item.data)


# -- the upstream -----------------------------------------------------------------------------
@dataclass
class DeliveryResult:
    delivered: tuple[str, ...] = ()
    temporary: dict[str, str] = field(default_factory=dict)   # recipient -> reason (4xx, connection)
    permanent: dict[str, str] = field(default_factory=dict)   # recipient -> reason (5xx)
    unreachable: bool = False                                 # no session with the upstream at all

    @property
    def first_permanent(self) -> str:
        return next(iter(self.permanent.values()), "")


def _reply(code: int, message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
    return f"{code} {' '.join(text.split())}"[:300]


def deliver_upstream(relay: RelaySettings, mail_from: str, rcpt_tos: Sequence[str], data: bytes,
                     mail_options: Sequence[str] = (), smtp_factory: Callable[..., smtplib.SMTP] = smtplib.SMTP
                     ) -> DeliveryResult:
    """Hand one message to ``relay.upstream_host``; say, per recipient, what became of it."""
    rcpts = tuple(rcpt_tos)
    options = [o for o in mail_options if o.upper() in PASSED_MAIL_OPTIONS]

    def everyone(reason: str, *, permanent: bool, unreachable: bool = False) -> DeliveryResult:
        reasons = {r: reason for r in rcpts}
        return DeliveryResult(permanent=reasons if permanent else {}, temporary={} if permanent else reasons,
                              unreachable=unreachable)

    try:
        smtp = smtp_factory(relay.upstream_host, relay.upstream_port, timeout=relay.upstream_timeout_s)
    except (OSError, smtplib.SMTPException) as exc:
        return everyone(f"upstream unreachable: {type(exc).__name__}: {exc}", permanent=False, unreachable=True)
    try:
        try:
            smtp.ehlo()
            if relay.upstream_starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if relay.upstream_username:
                smtp.login(relay.upstream_username, relay.upstream_password or "")
        except smtplib.SMTPAuthenticationError as exc:  # our configuration: keep the mail, say so
            return everyone(f"upstream refused relay.upstream_username's login: {_reply(exc.smtp_code, exc.smtp_error)}",
                            permanent=False, unreachable=True)
        except (OSError, smtplib.SMTPException) as exc:
            return everyone(f"upstream session failed: {type(exc).__name__}: {exc}", permanent=False, unreachable=True)
        try:
            refused = smtp.sendmail(mail_from, list(rcpts), data, mail_options=options)
        except smtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients
        except smtplib.SMTPResponseException as exc:  # MAIL FROM or DATA refused: the same for everyone
            return everyone(_reply(exc.smtp_code, exc.smtp_error), permanent=exc.smtp_code >= 500)
        except (OSError, smtplib.SMTPException) as exc:
            return everyone(f"upstream session failed: {type(exc).__name__}: {exc}", permanent=False)
    finally:
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            smtp.close()
    result = DeliveryResult(delivered=tuple(r for r in rcpts if r not in refused))
    for rcpt, (code, message) in refused.items():
        (result.permanent if code >= 500 else result.temporary)[rcpt] = _reply(code, message)
    return result


# -- mail.raw ---------------------------------------------------------------------------------
class RecordWriteError(RuntimeError):
    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


_TOO_LARGE = ("MSG_SIZE_TOO_LARGE", "_MSG_SIZE_TOO_LARGE")


class RawRecordWriter:
    """A confluent-kafka producer whose every write is a future resolved by its delivery report."""

    def __init__(self, settings: Settings, bootstrap: str, codec: AvroCodec) -> None:
        self.settings = settings
        self.codec = codec
        self.topic = topic_name(settings.kafka, "mail.raw")
        timeout_ms = int(settings.relay.kafka_timeout_s * 1000)
        # Big mail goes to the blob store, so every record stays under the clients' 1 MB default.
        self.mail_raw = MailRawCodec(settings, codec)
        self.bootstrap = bootstrap
        self.options = {"message.timeout.ms": timeout_ms,
                       "request.timeout.ms": min(30_000, timeout_ms)}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._producer = self._new_producer()
        self._poller = threading.Thread(target=self._poll, name="relay-kafka-poll", daemon=True)
        self._poller.start()

    def _new_producer(self):
        return new_producer(self.settings.kafka, self.bootstrap, self.options)

    def _poll(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                producer = self._producer
            producer.poll(0.1)

    def write(self, tenant: str, record: dict) -> concurrent.futures.Future:
        from confluent_kafka import KafkaException

        future: concurrent.futures.Future = concurrent.futures.Future()

        def delivered(error, message) -> None:
            if error is None:
                future.set_result((message.partition(), message.offset()))
                return
            if error.fatal():  # an idempotent producer in a fatal state takes no more records
                with self._lock:
                    self._producer = self._new_producer()
            future.set_exception(RecordWriteError(f"mail.raw: {error.str()}",
                                                  permanent=error.name() in _TOO_LARGE))

        try:
            value = self.mail_raw.encode(record)
        except MailTooLarge as exc:  # the relay's own header fields can push a mail at the limit over it
            future.set_exception(RecordWriteError(f"mail.raw: {exc}", permanent=True))
            return future
        except OSError as exc:
            future.set_exception(RecordWriteError(f"mail.raw: the blob store cannot be written ({exc})"))
            return future
        try:
            with self._lock:
                self._producer.produce(self.topic, value, tenant.encode(), on_delivery=delivered)
        except BufferError as exc:
            future.set_exception(RecordWriteError(f"mail.raw: producer queue full ({exc})"))
        except KafkaException as exc:
            error = exc.args[0]
            future.set_exception(RecordWriteError(f"mail.raw: {error.str()}", permanent=error.name() in _TOO_LARGE))
        return future

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._poller.join(2)
        self._producer.flush(timeout_s)


# -- the server -------------------------------------------------------------------------------
def _tls_context(relay: RelaySettings) -> ssl.SSLContext | None:
    if not relay.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(relay.tls_cert_file), str(relay.tls_key_file))
    except (OSError, ssl.SSLError) as exc:
        raise RelayError(f"relay.tls_cert_file / relay.tls_key_file cannot be loaded: {exc}") from exc
    return context


def _helo_text(value: str | None) -> str:
    return re.sub(r"[^\w.:\[\]-]", "", value or "")[:100] or "unknown"


class SmtpRelay:
    """The relay: an aiosmtpd server, the ``mail.raw`` writer, the queue and its retry thread."""

    def __init__(self, settings: Settings, bootstrap: str, codec: AvroCodec, *, inbound: bool | None = None,
                 host: str | None = None, port: int | None = None,
                 writer: RawRecordWriter | None = None,
                 deliver: Callable[..., DeliveryResult] = deliver_upstream) -> None:
        self.settings = settings
        self.relay = settings.relay
        self.bootstrap = bootstrap
        self.codec = codec
        self.inbound = self.relay.mode == "inbound" if inbound is None else inbound
        self.host = host or self.relay.host
        self.port = self.relay.port if port is None else port
        self.mode = "inbound" if self.inbound else "outbound"
        data_dir = settings.worker.data_dir.resolve()
        self.queue = RelayQueue(data_dir / "relay-queue" / self.mode)
        self.counter_path = data_dir / COUNTER_FILE
        self.counter: TokenCounter | None = None
        self._counter_lock = threading.Lock()
        self._writer = writer
        self._deliver = deliver
        self._controller = None
        self._stop = threading.Event()
        self._retrier: threading.Thread | None = None
        self._backoff: dict[str, tuple[int, float]] = {}   # queue name -> (failed attempts, next try)
        self._backoff_lock = threading.Lock()
        self.hostname = socket.gethostname()
        self.own_domains = policy.own_domains(settings)
        self.client_networks = policy.parse_networks(self.relay.client_networks)
        self.limits = policy.ClientLimits(self.relay)

    # -- lifecycle --
    def check(self) -> None:
        """Refuse to start when the configuration is unsafe or incomplete in this mode on this
        address (the same judgement as ``threadline doctor``'s)."""
        problems = policy.relay_config_problems(self.settings, inbound=self.inbound, host=self.host)
        if problems:
            raise RelayError(f"the {self.mode} relay on {self.host} does not start: "
                             + "; ".join(str(p) for p in problems))

    def start(self) -> "SmtpRelay":
        from pipeline.gateways.smtp.relay_server import RelayController

        self.check()
        # aiosmtpd logs every command, sender and recipient at INFO (personal data): keep its own
        # log to warnings; ours names queue ids and Message-IDs, never addresses or credentials.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        tls = _tls_context(self.relay)
        self.queue.open()
        try:
            if not self.inbound and self.relay.subject_tokens:
                self.counter = load_counter(self.counter_path, self.settings.correlation.tracking_token)
            if self._writer is None:
                self._writer = RawRecordWriter(self.settings, self.bootstrap, self.codec)
            auth = bool(self.relay.auth_username)
            self._controller = RelayController(
                _Handler(self), self.limits, self.relay.session_timeout_s,
                hostname=self.host, port=self.port, server_hostname=self.hostname,
                ident="threadline relay", enable_SMTPUTF8=True,
                data_size_limit=self.relay.max_message_size or self.settings.mail.max_message_bytes,
                decode_data=False, tls_context=tls,
                # RFC 3207: an MX must not require TLS from the MTAs that deliver to it
                require_starttls=tls is not None and not self.inbound,
                # AUTH is checked and limited by the server class (relay_server.LimitedSMTP).  Not
                # aiosmtpd's auth_required: a client of relay.client_networks may send without a
                # login, so handle_MAIL decides (see may_send).
                auth=auth, auth_required=False,
                auth_require_tls=not (auth and self.relay.auth_allow_plaintext and tls is None),
                # Reset by every command but not by DATA lines: it also bounds a whole DATA transfer,
                # so a client dribbling its data is cut off too.
                timeout=self.relay.command_timeout_s,
            )
            self._controller.start()
        except BaseException:
            if self._writer is not None:
                self._writer.close(0)
            self.queue.close()
            raise
        self._retrier = threading.Thread(target=self._retry_loop, name="relay-queue-retry", daemon=True)
        self._retrier.start()
        log.info("smtp relay (%s) on %s:%d -> %s:%d, queue %s", self.mode, self.host, self.port,
                 self.relay.upstream_host, self.relay.upstream_port, self.queue.directory)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
        if self._retrier is not None:
            self._retrier.join(self.relay.upstream_timeout_s + 5)
        if self._writer is not None:
            self._writer.close()
        self.queue.close()

    def __enter__(self) -> "SmtpRelay":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the envelope: who may send, to whom, how much --
    def may_send(self, session, address: str) -> str | None:
        """MAIL FROM: the refusal reply, or ``None`` when the client may start this mail."""
        key = policy.client_key(session.peer)
        if not self.inbound:
            if not session.authenticated and not policy.in_networks(policy.client_ip(session.peer),
                                                                    self.client_networks):
                log.warning("MAIL refused: %s is neither logged in nor in relay.client_networks", key)
                return policy.AUTH_REQUIRED if self.relay.auth_username else policy.CLIENT_NOT_ALLOWED
            # The null sender (<>) is refused too: bounces come from MTAs, not from submitting clients.
            if policy.address_domain(address) not in self.own_domains:
                log.warning("MAIL refused from %s: the sender's domain is not in relay.own_domains", key)
                return policy.SENDER_NOT_OURS
        if not self.limits.take_message(key):
            log.warning("MAIL refused from %s: over relay.max_messages_per_client", key)
            return policy.MESSAGE_RATE
        return None

    def may_receive(self, session, envelope, address: str) -> str | None:
        """RCPT TO: the refusal reply, or ``None`` when this recipient is accepted."""
        key = policy.client_key(session.peer)
        if self.inbound and policy.address_domain(address) not in self.own_domains:
            return policy.RECIPIENT_NOT_OURS
        if len(envelope.rcpt_tos) >= self.relay.max_recipients_per_message:
            refusal, limit = policy.TOO_MANY_RECIPIENTS, "relay.max_recipients_per_message"
        elif not self.limits.take_recipient(key):
            refusal, limit = policy.RECIPIENT_RATE, "relay.max_recipients_per_client"
        else:
            return None
        # One log line per mail, not one per refused RCPT (thousands of them are the attack).
        if not getattr(envelope, "threadline_over_limit", False):
            envelope.threadline_over_limit = True
            log.warning("RCPT refused from %s: over %s (%d accepted in this mail)", key, limit, len(envelope.rcpt_tos))
        return refusal

    # -- one mail --
    def _received(self, session, queue_id: str) -> bytes:
        protocol = ("ESMTP" if session.extended_smtp else "SMTP") + ("S" if session.ssl else "") + \
            ("A" if session.authenticated else "")
        peer = session.peer[0] if session.peer else "unknown"
        return (f"Received: from {_helo_text(session.host_name)} ([{peer}])\r\n"
                f"\tby {self.hostname} (threadline relay) with {protocol} id {queue_id};\r\n"
                f"\t{formatdate(usegmt=True)}\r\n").encode()

    def _prepare(self, raw: bytes, envelope) -> list[tuple[tuple[str, ...], bytes]]:
        if self.inbound:
            return [(tuple(envelope.rcpt_tos), raw)]
        with self._counter_lock:
            before = self.counter.state() if self.counter else None
            copies = outbound_copies(raw, self.settings, self.counter, sender=envelope.mail_from,
                                     recipients=envelope.rcpt_tos, tenant=self.relay.tenant)
            if self.counter is not None and self.counter.state() != before:
                save_counter(self.counter_path, self.counter)
        return copies

    async def handle(self, session, envelope) -> str:
        loop = asyncio.get_running_loop()
        # Work in proportion to the mail's size runs off the event loop: a big mail must not
        # hold every other session of the relay.
        raw = await loop.run_in_executor(None, to_crlf, envelope.original_content or b"")
        if await loop.run_in_executor(None, hop_count, raw) >= MAX_HOPS:
            return "554 5.4.6 Too many hops: a mail loop?"
        try:
            copies = await loop.run_in_executor(None, self._prepare, raw, envelope)
        except Exception:
            log.exception("could not prepare a mail")
            return "451 4.3.0 Temporary failure while preparing the mail; try again later"
        names = [self.queue.new_name() for _ in copies]
        finals = [(rcpts, self._received(session, name.removesuffix(RelayQueue.SUFFIX)) + data)
                  for name, (rcpts, data) in zip(names, copies)]
        direction = "in" if self.inbound else "out"
        mailbox = INBOUND_MAILBOX if self.inbound else OUTBOUND_MAILBOX
        received_at = datetime.now(timezone.utc)
        try:
            # Off the event loop: a big mail is written (and fsynced) to the blob store first.
            futures = [await loop.run_in_executor(None, self._writer.write, self.relay.tenant, mail_raw_record(
                tenant=self.relay.tenant, mailbox=mailbox, direction=direction, source=SOURCE, raw=data,
                received_at=received_at)) for _, data in finals]
            await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(f) for f in futures)),
                                   self.relay.kafka_timeout_s + 10)
        except RecordWriteError as exc:
            log.error("mail not recorded (%s): answered %s", exc, "552" if exc.permanent else "451")
            if exc.permanent:
                return "552 5.3.4 Message too big to be recorded"
            return "451 4.3.0 Temporary failure: the mail could not be recorded; try again later"
        except asyncio.TimeoutError:
            log.error("mail not recorded: no delivery report from the broker: answered 451")
            return "451 4.3.0 Temporary failure: the mail could not be recorded; try again later"
        except Exception:
            log.exception("mail not recorded: answered 451")
            return "451 4.3.0 Temporary failure: the mail could not be recorded; try again later"

        items, results = [], []
        for name, (rcpts, data) in zip(names, finals):
            message_id = next(iter(_message_ids(_HeaderBlock(data).first("Message-ID"))), None)
            self.queue.claim(name)
            try:
                await loop.run_in_executor(None, self.queue.put, name, envelope.mail_from, rcpts,
                                           envelope.mail_options, data, message_id)
            except OSError as exc:
                self.queue.release(name)
                log.error("queue write failed (%s): answered 451", exc)
                return "451 4.3.0 Temporary failure: the relay queue is not writable; try again later"
            try:
                item = QueuedMail(name, envelope.mail_from, tuple(rcpts), tuple(envelope.mail_options), data,
                                  time.time(), message_id)
                items.append(item)
                results.append(await loop.run_in_executor(None, self._attempt, item, True))
            except Exception:  # the queue file is durable: the retries take it from here
                log.exception("%s: delivery attempt failed unexpectedly; left in the queue", name)
                results.append(DeliveryResult(temporary={r: "unexpected error" for r in rcpts}))
            finally:
                self.queue.release(name)
        delivered = sum(len(r.delivered) for r in results)
        waiting = sum(len(r.temporary) for r in results)
        refused = [r.first_permanent for r in results if r.permanent]
        if refused and not delivered and not waiting:  # refused for good: the client hears it now
            reason = refused[0]
            code = reason[:3] if reason[:1] == "5" and reason[:3].isdigit() else "550"
            return f"{code} 5.0.0 The upstream refused the mail: {reason[4:] if reason[:3].isdigit() else reason}"[:500]
        for item, result in zip(items, results):  # the client hears 250: keep what was refused
            if result.permanent:
                await loop.run_in_executor(None, self.queue.fail, item, result.permanent)
        queue_ids = ", ".join(n.removesuffix(RelayQueue.SUFFIX) for n in names)
        if waiting:
            return f"250 2.0.0 Ok: queued as {queue_ids} (upstream not reachable now: delivery is retried)"
        return f"250 2.0.0 Ok: queued as {queue_ids}"

    def _attempt(self, item: QueuedMail, live: bool = False) -> DeliveryResult:
        """One delivery try of a queued (and claimed) message; updates its file accordingly.
        ``live``: during the client's session (the caller decides what to do with refusals);
        else recipients refused for good are kept in ``failed/``."""
        try:
            result = self._deliver(self.relay, item.mail_from, item.rcpt_tos, item.data, item.mail_options)
        except Exception as exc:  # e.g. an address smtplib cannot send: keep the mail, say why
            log.exception("%s: delivery failed unexpectedly", item.name)
            result = DeliveryResult(temporary={r: f"{type(exc).__name__}: {exc}" for r in item.rcpt_tos})
        if result.permanent and not live:
            self.queue.fail(item, result.permanent)
        if result.permanent:
            log.error("%s (%s): the upstream refused %d recipient(s) for good: %s", item.name, item.message_id,
                      len(result.permanent), result.first_permanent)
        if result.temporary:
            self.queue.keep_for(item, tuple(result.temporary))
            with self._backoff_lock:
                attempts = self._backoff.get(item.name, (0, 0.0))[0] + 1
                delay = min(self.relay.retry_interval_s * 2 ** (attempts - 1), self.relay.retry_max_interval_s)
                self._backoff[item.name] = (attempts, time.monotonic() + delay)
            log.warning("%s (%s) queued for %d recipient(s), attempt %d, next in %.1f s: %s", item.name,
                        item.message_id, len(result.temporary), attempts, delay, next(iter(result.temporary.values())))
        else:
            with self._backoff_lock:
                self._backoff.pop(item.name, None)
            self.queue.remove(item.name)
            log.info("%s (%s) delivered to %d recipient(s), %d bytes", item.name, item.message_id,
                     len(result.delivered), len(item.data))
        return result

    # -- the queue's retries --
    def retry_queue(self) -> int:
        """One pass over the queue: try every file that is due; stop at an unreachable upstream.
        Returns the number of files delivered (and removed)."""
        done = 0
        now = time.monotonic()
        for name in self.queue.pending():
            if self._stop.is_set():
                break
            with self._backoff_lock:
                if self._backoff.get(name, (0, 0.0))[1] > now:
                    continue
            if not self.queue.claim(name):
                continue
            try:
                try:
                    item = self.queue.load(name)
                except FileNotFoundError:
                    continue
                except (ValueError, KeyError, TypeError) as exc:
                    log.error("%s is not a relay queue file (%s): moved to %s", name, exc, self.queue.failed_dir)
                    os.replace(self.queue.directory / name, self.queue.failed_dir / name)
                    continue
                result = self._attempt(item)
                if not result.temporary:
                    done += 1
                if result.unreachable:
                    break  # every other file would fail the same way: wait for the back-off
            finally:
                self.queue.release(name)
        return done

    def _retry_loop(self) -> None:
        tick = min(1.0, self.relay.retry_interval_s)
        while True:
            try:
                self.retry_queue()
            except Exception:
                log.exception("retrying the relay queue failed")
            if self._stop.wait(tick):
                return


class _Handler:
    def __init__(self, relay: SmtpRelay) -> None:
        self.relay = relay

    async def handle_MAIL(self, server, session, envelope, address, mail_options) -> str:  # aiosmtpd hook
        refusal = self.relay.may_send(session, address)
        if refusal:
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:  # aiosmtpd hook
        refusal = self.relay.may_receive(session, envelope, address)
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:  # aiosmtpd hook
        # Shielded: a client dropped by a timeout (or gone) while the mail is being recorded and
        # queued must not cut that work in half (recorded but never queued); the mail goes on,
        # and the client, who heard no 250, sends it again (at-least-once, docs/smtp.md).
        return await asyncio.shield(self.relay.handle(session, envelope))


def run_relay(settings: Settings, bootstrap: str, codec: AvroCodec, *, inbound: bool | None = None,
              host: str | None = None, port: int | None = None) -> int:
    """``threadline smtp``: serve until SIGINT / SIGTERM."""
    import sys

    from pipeline.broker import create_topics

    relay = SmtpRelay(settings, bootstrap, codec, inbound=inbound, host=host, port=port)
    relay.check()  # an unsafe configuration is refused before anything else is tried
    try:
        create_topics(settings.kafka, bootstrap, timeout_s=5)
    except Exception as exc:  # the relay answers 451 until the broker is back
        print(f"threadline: broker not reachable yet ({exc}); mail is refused with 451 until it is", file=sys.stderr)
    stopped = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopped.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        relay.start()
        pending = len(relay.queue.pending())
        print(f"smtp relay ({relay.mode}) on {relay.host}:{relay.port} -> {settings.relay.upstream_host}:"
              f"{settings.relay.upstream_port}; queue {relay.queue.directory} ({pending} waiting); Ctrl-C stops",
              file=sys.stderr, flush=True)
        stopped.wait()
    finally:
        relay.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
