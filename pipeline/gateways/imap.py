"""IMAP folders -> ``mail.raw`` (``threadline imap``): the poller of docs/imap.md.

* Each configured folder is opened read-only (EXAMINE) and its new messages are fetched by UID
  with ``BODY.PEEK[]`` (the exact raw bytes; no ``\\Seen`` flag is set) and INTERNALDATE (the
  record's ``received_at``), in batches of ``imap.batch_size``.
* One record per message on ``mail.raw``: tenant ``imap.tenant`` (the key), mailbox = the folder
  name, the folder's direction, source ``imap:HOST/FOLDER/UID``.
* **State**: the folder's UIDVALIDITY and the last UID produced, per account and folder, in a
  JSON file in ``worker.data_dir``.  It is replaced atomically (temporary file, fsync, rename,
  fsync of the folder) after each batch is durably in Kafka, i.e. after the idempotent
  producer's flush returned with every record of the batch acknowledged.  A restart continues
  after the last UID: nothing is skipped; a crash between Kafka's acknowledgement and the state
  write produces that one batch again (at least once; the same bytes have the same ``event_id``,
  so the correlator reports the copies as duplicates).  A lock file keeps a second poller off
  the same state.
* **UIDVALIDITY changed** (the server rebuilt the folder, or it was deleted and created again):
  the old UIDs mean nothing any more, so the whole folder is read again from UID 1.  Mail that
  was already ingested is produced again and reported as duplicates by the correlator.
* **IDLE** (RFC 2177): Python 3.11's imaplib has no ``idle()``, so it is implemented here on
  imaplib's connection: the tagged ``IDLE`` command is sent, the ``+`` continuation read, then the
  socket is watched with ``select()`` (also checking imaplib's read buffer and the TLS buffer, so
  a notification that arrived together with the continuation is not missed).  An untagged
  EXISTS / RECENT / EXPUNGE ends the wait at once; keep-alive lines (``* OK Still here``) do not.
  ``DONE`` ends IDLE, then every folder is polled.  IDLE watches the first configured folder;
  the other folders are polled every ``imap.poll_interval_s`` (the longest IDLE, capped at
  29 minutes as RFC 2177 asks).  IDLE is an optimisation only: every wake-up fetches by UID
  range, so a missed notification delays mail by at most one poll interval and loses nothing.
  Without IDLE (``imap.idle = false`` or not offered) the folders are polled at that interval.
* Connection problems (reset, timeout, server restart) reconnect with back-off; a refused login,
  a missing folder or a Kafka delivery error stop the poller with the reason (the state is never
  advanced past what Kafka acknowledged).
"""

from __future__ import annotations

import base64
import errno
import fcntl
import imaplib
import json
import logging
import re
import select
import ssl
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from pipeline.contracts.avro import AvroCodec
from pipeline.durable import write_atomically
from pipeline.settings import ImapSettings, Settings

log = logging.getLogger(__name__)

IDLE_MAX_S = 29 * 60  # RFC 2177: re-issue IDLE at least every 29 minutes
STATE_VERSION = 1
_UID = re.compile(rb"\bUID (\d+)", re.IGNORECASE)
_STATUS_UIDVALIDITY = re.compile(rb"UIDVALIDITY (\d+)", re.IGNORECASE)
_CHANGES = ("EXISTS", "RECENT", "EXPUNGE", "FETCH")


class ImapError(RuntimeError):
    """A problem the user must fix (login refused, folder missing, state file unusable)."""


class DeliveryError(ImapError):
    """Kafka did not acknowledge a batch; the state was not advanced (a restart fetches it again)."""


# -- folder names and UID sets -------------------------------------------------------------------
def imap_utf7(name: str) -> str:
    """A folder name in IMAP's modified UTF-7 (RFC 3501 §5.1.3): ``Entwürfe`` -> ``Entw&APw-rfe``."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            encoded = base64.b64encode("".join(pending).encode("utf-16-be")).decode("ascii")
            out.append("&" + encoded.rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def quoted_folder(name: str) -> str:
    encoded = imap_utf7(name)
    return '"' + encoded.replace("\\", "\\\\").replace('"', '\\"') + '"'


def uid_set(uids: Iterable[int]) -> str:
    """``1,2,3,7,9,10`` -> ``1:3,7,9:10`` (sorted, compact)."""
    ranges: list[list[int]] = []
    for uid in sorted(set(uids)):
        if ranges and uid == ranges[-1][1] + 1:
            ranges[-1][1] = uid
        else:
            ranges.append([uid, uid])
    return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in ranges)


@dataclass(frozen=True, slots=True)
class FetchedMessage:
    uid: int
    raw: bytes
    internal_date: datetime | None


def parse_fetch(data: list) -> list[FetchedMessage]:
    """imaplib's ``UID FETCH (UID INTERNALDATE BODY.PEEK[])`` answer -> messages.  The UID may come
    before the literal (``1 (UID 5 INTERNALDATE ... BODY[] {29}``) or after it (in the trailer);
    unsolicited FETCH responses without a body (flag changes) are ignored."""
    found: list[FetchedMessage] = []
    pending: tuple[bytes, bytes] | None = None
    for item in data:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], bytes):
            head, body = item
            match = _UID.search(head)
            if match:
                found.append(FetchedMessage(int(match.group(1)), body, _internal_date(head)))
                pending = None
            else:
                pending = (head, body)
        elif isinstance(item, bytes) and pending is not None:
            match = _UID.search(item)
            if match:
                found.append(FetchedMessage(int(match.group(1)), pending[1],
                                            _internal_date(pending[0]) or _internal_date(item)))
            pending = None
    return found


def _internal_date(text: bytes) -> datetime | None:
    parsed = imaplib.Internaldate2tuple(text) if b"INTERNALDATE" in text.upper() else None
    if parsed is None:
        return None
    try:
        return datetime.fromtimestamp(time.mktime(parsed), timezone.utc)
    except (OverflowError, ValueError, OSError):
        return None


# -- state ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FolderState:
    uidvalidity: int
    last_uid: int


class ImapState:
    """``{"version": 1, "accounts": {"USER@HOST:PORT": {"FOLDER": {"uidvalidity": V, "last_uid": U}}}}``,
    replaced atomically on every :meth:`set`.  Holds an exclusive lock (``STATE.lock``) while open."""

    def __init__(self, path: Path, account: str) -> None:
        self.path = Path(path)
        self.account = account
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path.with_name(self.path.name + ".lock"), "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise ImapError(f"another `threadline imap` uses {self.path} (lock held)") from exc
            raise
        self.data = self._load()

    def _load(self) -> dict:
        if not self.path.exists():
            return {"version": STATE_VERSION, "accounts": {}}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ImapError(f"the IMAP state file {self.path} is unreadable ({exc}); fix or remove it "
                            "(without it every folder is read again from the start)") from exc
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION or not isinstance(data.get("accounts"), dict):
            raise ImapError(f"the IMAP state file {self.path} has an unknown format")
        return data

    def get(self, folder: str) -> FolderState | None:
        entry = self.data["accounts"].get(self.account, {}).get(folder)
        if not entry:
            return None
        return FolderState(int(entry["uidvalidity"]), int(entry["last_uid"]))

    def set(self, folder: str, state: FolderState) -> None:
        self.data["accounts"].setdefault(self.account, {})[folder] = {"uidvalidity": state.uidvalidity,
                                                                     "last_uid": state.last_uid}
        write_atomically(self.path, json.dumps(self.data, indent=1, sort_keys=True).encode() + b"\n")

    def close(self) -> None:
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()


# -- IDLE ----------------------------------------------------------------------------------------
def _buffered_input(conn: imaplib.IMAP4) -> bool:
    """True when imaplib's read buffer (or the TLS layer) already holds server data, which
    ``select()`` on the socket cannot see."""
    sock = conn.sock
    pending = getattr(sock, "pending", None)
    if pending is not None and pending():
        return True
    timeout = sock.gettimeout()
    sock.settimeout(0)  # peek must not block: an empty buffer then reads nothing
    try:
        return bool(conn.file.peek(1))
    except (BlockingIOError, ssl.SSLWantReadError, InterruptedError):
        return False
    finally:
        sock.settimeout(timeout)


def idle_wait(conn: imaplib.IMAP4, timeout_s: float, stop: threading.Event | None = None) -> bool:
    """IDLE on the selected folder for up to ``timeout_s``: True when the server reported a change
    (EXISTS, RECENT, EXPUNGE, FETCH), False on timeout or ``stop``.  Raises ``imaplib.IMAP4.error``
    when the server refuses IDLE, ``imaplib.IMAP4.abort`` / ``OSError`` when the connection breaks."""
    for name in _CHANGES:
        conn.untagged_responses.pop(name, None)
    tag = conn._new_tag()  # registers the tag, like imaplib's own commands
    conn.send(tag + b" IDLE\r\n")
    while conn._get_response() is not None:  # None: the "+ idling" continuation
        if conn.tagged_commands.get(tag) is not None:  # NO / BAD instead of a continuation
            typ, data = conn.tagged_commands.pop(tag)
            raise conn.error(f"IDLE refused: {typ} {data}")
    changed = False
    deadline = time.monotonic() + timeout_s
    while not changed and not (stop is not None and stop.is_set()):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if _buffered_input(conn) or select.select([conn.sock], [], [], min(remaining, 0.5))[0]:
            conn._get_response()  # one line: a change, or a keep-alive such as "* OK Still here"
            changed = any(name in conn.untagged_responses for name in _CHANGES)
            if conn.tagged_commands.get(tag) is not None:  # the server ended IDLE by itself
                break
    if conn.tagged_commands.get(tag) is None:
        conn.send(b"DONE\r\n")
        while conn.tagged_commands.get(tag) is None:
            conn._get_response()
    typ, data = conn.tagged_commands.pop(tag)
    for name in _CHANGES:
        conn.untagged_responses.pop(name, None)
    if typ != "OK":
        raise conn.error(f"IDLE ended with {typ} {data}")
    return changed


# -- the poller ----------------------------------------------------------------------------------
@dataclass
class PollReport:
    produced: int = 0
    per_folder: dict[str, int] = field(default_factory=dict)
    uidvalidity_changes: list[str] = field(default_factory=list)
    polls: int = 0
    idle: bool = False

    def format(self) -> str:
        folders = ", ".join(f"{name} {count}" for name, count in self.per_folder.items()) or "no folder"
        text = f"{self.produced} mails produced to mail.raw in {self.polls} polls ({folders})"
        if self.uidvalidity_changes:
            text += f"; UIDVALIDITY changed, read again: {', '.join(self.uidvalidity_changes)}"
        return text


class ImapPoller:
    """Polls ``settings.imap.folders`` into ``mail.raw``; see the module doc."""

    def __init__(self, settings: Settings, bootstrap: str, codec: AvroCodec) -> None:
        from pipeline.contracts.records import MailRawCodec
        from pipeline.runtime.producer import RecordProducer

        self.imap = settings.imap
        if not self.imap.host:
            raise ImapError("no IMAP server configured: set imap.host (THREADLINE_IMAP_HOST)")
        if not self.imap.username or self.imap.password is None:
            raise ImapError("set imap.username and imap.password (THREADLINE_IMAP_PASSWORD)")
        self.own_domains = frozenset(d.lower() for d in settings.untracked.own_domains)
        if any(f["direction"] == "auto" for f in self.imap.folders) and not self.own_domains:
            raise ImapError("a folder with direction auto needs untracked.own_domains")
        self.conn: imaplib.IMAP4 | None = None
        self.idle_supported = False
        self.state = ImapState(settings.worker.data_dir / self.imap.state_file,
                               f"{self.imap.username}@{self.imap.host}:{self.imap.effective_port()}")
        self.producer = RecordProducer(settings.kafka, bootstrap)
        self.mail_raw = MailRawCodec(settings.mail, settings.blob_dir, codec)
        self.report = PollReport(per_folder={f["name"]: 0 for f in self.imap.folders})

    # connection
    def connect(self) -> None:
        self.conn = _connect(self.imap)
        try:
            self.conn.login(self.imap.username, self.imap.password)
            typ, data = self.conn.capability()
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error as exc:
            self.disconnect()
            raise ImapError(f"IMAP login as {self.imap.username} at {self.imap.host} refused: {exc}") from exc
        capabilities = b" ".join(d for d in data if isinstance(d, bytes)).upper().split() if typ == "OK" else []
        self.idle_supported = b"IDLE" in capabilities
        self.report.idle = self.idle_supported and self.imap.idle
        log.info("connected to %s as %s (IDLE %s)", self.imap.host, self.imap.username,
                 "used" if self.report.idle else "not used")

    def disconnect(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            conn.logout()
        except Exception:  # noqa: BLE001 - the connection may already be gone
            try:
                conn.shutdown()
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        self.disconnect()
        self.producer.finish(30.0)
        self.state.close()

    # one folder
    def _examine(self, name: str) -> tuple[int, int | None, int]:
        """Open ``name`` read-only: (UIDVALIDITY, UIDNEXT or None, message count)."""
        conn = self.conn
        typ, data = conn.select(quoted_folder(name), readonly=True)
        if typ != "OK":
            raise ImapError(f"cannot open IMAP folder {name!r}: {b' '.join(d for d in data if d).decode(errors='replace')}")
        exists = int(data[0]) if data and data[0] else 0
        uidvalidity = conn.untagged_responses.get("UIDVALIDITY", [None])[-1]
        uidnext = conn.untagged_responses.get("UIDNEXT", [None])[-1]
        if uidvalidity is None:  # not sent with EXAMINE: ask with STATUS
            typ, data = conn.status(quoted_folder(name), "(UIDVALIDITY)")
            match = _STATUS_UIDVALIDITY.search(b" ".join(d for d in data if isinstance(d, bytes))) if typ == "OK" else None
            if match is None:
                raise ImapError(f"the server names no UIDVALIDITY for {name!r}")
            uidvalidity = match.group(1)
        return int(uidvalidity), (int(uidnext) if uidnext else None), exists

    def poll_folder(self, name: str, direction: str) -> int:
        """Produce the folder's new messages; returns how many."""
        uidvalidity, uidnext, exists = self._examine(name)
        known = self.state.get(name)
        last_uid = 0
        if known is not None and known.uidvalidity == uidvalidity:
            last_uid = known.last_uid
        elif known is not None:
            log.warning("UIDVALIDITY of %s changed from %s to %s: reading the folder again "
                        "(mail already ingested is reported as duplicates)", name, known.uidvalidity, uidvalidity)
            self.report.uidvalidity_changes.append(name)
        if known is None or known.uidvalidity != uidvalidity:
            self.state.set(name, FolderState(uidvalidity, last_uid))
        if exists == 0 or (uidnext is not None and uidnext <= last_uid + 1):
            return 0
        typ, data = self.conn.uid("SEARCH", f"UID {last_uid + 1}:*")
        if typ != "OK":
            raise ImapError(f"UID SEARCH in {name!r} failed: {data}")
        uids = sorted(int(u) for d in data if d for u in d.split() if int(u) > last_uid)
        produced = 0
        for start in range(0, len(uids), self.imap.batch_size):
            batch = uids[start:start + self.imap.batch_size]
            produced += self._ingest_batch(name, direction, uidvalidity, batch)
        return produced

    def _ingest_batch(self, name: str, direction: str, uidvalidity: int, uids: list[int]) -> int:
        from pipeline.contracts.records import mail_raw_record
        from pipeline.mail.parse import mail_direction

        typ, data = self.conn.uid("FETCH", uid_set(uids), "(UID INTERNALDATE BODY.PEEK[])")
        if typ != "OK":
            raise ImapError(f"UID FETCH in {name!r} failed: {data}")
        wanted = set(uids)
        messages = sorted({m.uid: m for m in parse_fetch(data) if m.uid in wanted}.values(), key=lambda m: m.uid)
        if len(messages) < len(uids):  # expunged since the SEARCH: nothing left to fetch
            log.info("%s: %d of %d messages were gone when fetched", name, len(uids) - len(messages), len(uids))
        report = self.producer.report
        delivered_before, errors_before = report.delivered, len(report.errors)
        now = datetime.now(timezone.utc)
        for message in messages:
            record = mail_raw_record(tenant=self.imap.tenant, mailbox=name,
                                     direction=mail_direction(message.raw, direction, self.own_domains),
                                     source=f"imap:{self.imap.host}/{name}/{message.uid}", raw=message.raw,
                                     received_at=message.internal_date or now)
            try:
                self.producer.produce_mail(self.mail_raw, record, agent="imap")
            except Exception as exc:  # KafkaException, or the blob store cannot be written
                raise DeliveryError(f"{name}: UID {message.uid} ({len(message.raw)} bytes) cannot be produced: "
                                    f"{exc}; the state stays before it") from exc
            report.bytes += len(message.raw)
        self.producer.finish(max(30.0, self.imap.timeout_s * 2))  # flush: waits for every acknowledgement
        delivered = report.delivered - delivered_before
        if delivered != len(messages) or len(report.errors) > errors_before:
            errors = report.errors[errors_before:][:3]
            raise DeliveryError(f"{name}: {delivered} of {len(messages)} mails acknowledged by Kafka"
                                f"{' (' + '; '.join(errors) + ')' if errors else ''}; the state "
                                f"stays at UID {self.state.get(name).last_uid if self.state.get(name) else 0}, "
                                "a restart fetches the batch again")
        self.state.set(name, FolderState(uidvalidity, max(uids)))
        self.report.produced += len(messages)
        self.report.per_folder[name] = self.report.per_folder.get(name, 0) + len(messages)
        return len(messages)

    def poll_once(self) -> int:
        """Every folder once; connects when needed. Returns the mails produced."""
        if self.conn is None:
            self.connect()
        produced = sum(self.poll_folder(f["name"], f["direction"]) for f in self.imap.folders)
        self.report.polls += 1
        return produced

    def wait(self, stop: threading.Event) -> bool:
        """Until the next poll: IDLE on the first folder when possible, else sleep. True: woken by new mail."""
        timeout = min(self.imap.poll_interval_s, IDLE_MAX_S)
        if self.imap.idle and self.idle_supported and self.conn is not None:
            self._examine(self.imap.folders[0]["name"])
            try:
                return idle_wait(self.conn, timeout, stop)
            except imaplib.IMAP4.abort:
                raise
            except imaplib.IMAP4.error as exc:
                log.warning("IDLE refused (%s): polling every %.0f s instead", exc, timeout)
                self.idle_supported = False
                self.report.idle = False
        stop.wait(timeout)
        return False

    def run(self, *, once: bool = False, stop: threading.Event | None = None) -> PollReport:
        """Poll until ``stop`` is set (or once). Connection failures reconnect with back-off
        (``once``: raise ImapError); ImapError and DeliveryError end the run."""
        stop = stop or threading.Event()
        backoff = 1.0
        while not stop.is_set():
            try:
                self.poll_once()
                backoff = 1.0
                if once:
                    break
                self.wait(stop)
            except ssl.SSLCertVerificationError as exc:
                raise ImapError(f"the certificate of {self.imap.host} is not trusted: {exc}") from exc
            except (imaplib.IMAP4.abort, OSError) as exc:  # connection reset, timeout, server restart
                self.disconnect()
                if once:
                    raise ImapError(f"IMAP connection to {self.imap.host} failed: {exc}") from exc
                log.warning("IMAP connection to %s failed (%s); reconnecting in %.0f s", self.imap.host, exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 300.0)
            except imaplib.IMAP4.error as exc:
                raise ImapError(f"IMAP server {self.imap.host}: {exc}") from exc
        return self.report


def _connect(imap: ImapSettings) -> imaplib.IMAP4:
    port = imap.effective_port()
    if imap.ssl:
        return imaplib.IMAP4_SSL(imap.host, port, ssl_context=ssl.create_default_context(), timeout=imap.timeout_s)
    return imaplib.IMAP4(imap.host, port, timeout=imap.timeout_s)
